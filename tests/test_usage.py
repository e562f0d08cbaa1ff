"""--help of every sweeps/ command answers at once, without torch: usage, and for a launch the grids
with their descriptions, the profiles, the clusters and the keys it takes itself."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHECK = """import runpy, sys
sys.argv = [{script!r}, "--help"]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as e:
    assert e.code == 0, e.code
assert "torch" not in sys.modules, "--help imported torch"
"""


@pytest.mark.parametrize("command", ["launch.py", "status.py", "cancel.py", "report.py"])
def test_help_is_complete_and_imports_no_torch(command):
    script = str(REPO / "sweeps" / command)
    out = subprocess.run([sys.executable, "-c", CHECK.format(script=script)], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"usage: python sweeps/{command}") and "docs/usage.md" in out.stdout
    if command == "launch.py":
        for needle in ("vae_coeffs ", "Table 1 of the paper", "ddpm_lambda_celeba", "profiles", "smoke",
                       "clusters", "auto", "slurm", "local", "results_root=DIR", "seeds=", "dry_run=true", "redo="):
            assert needle in out.stdout, needle
    if command == "status.py":
        for needle in ("results_root=DIR", "grid=NAME", "watch=true", "--watch", "every=", "log=NAME", "lines=",
                       "time to go", "tail -f", "unique prefix"):
            assert needle in out.stdout, needle
