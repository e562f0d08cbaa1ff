"""Records name torch as torch itself does (torch.__version__, build tag included: 2.14.1+cu130, where the
wheel's metadata says 2.14.1) and the CUDA it was built for (torch.version.cuda, None for a CPU build),
on any node: neither needs a GPU."""
import json
import subprocess
import sys
import types
from pathlib import Path

from collapse import manifest

REPO = Path(__file__).resolve().parent.parent


def test_a_stage_runner_records_torch_as_torch_reads_it():
    probe = ("import json, torch, collapse.run; from collapse import manifest; "
             "print(json.dumps([manifest.provenance()['versions'], torch.__version__, torch.version.cuda]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    versions, version, cuda = json.loads(out.stdout.splitlines()[-1])
    assert versions["torch"] == version and versions["torch_cuda"] == cuda
    assert "torch_cuda" in versions          # present on a CPU build too (None there)


def test_the_build_tag_and_cuda_build_are_kept_as_written(monkeypatch):
    fake = types.SimpleNamespace(__version__="2.14.1+cu130", version=types.SimpleNamespace(cuda="13.0"))
    monkeypatch.setitem(sys.modules, "torch", fake)
    manifest.versions.cache_clear()
    try:
        got = manifest.versions()
        assert (got["torch"], got["torch_cuda"]) == ("2.14.1+cu130", "13.0")
        fake.__version__, fake.version.cuda = "2.14.1+cpu", None
        manifest.versions.cache_clear()
        assert (manifest.versions()["torch"], manifest.versions()["torch_cuda"]) == ("2.14.1+cpu", None)
    finally:
        manifest.versions.cache_clear()
