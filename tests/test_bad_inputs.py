"""Bad input corpus: every mistake a user can make on the launch line, in a grid file or in the
results root. Each must end with exit code 2 and ONE line on stderr that names the key, the value
and what is allowed, with nothing submitted and not one byte changed under the results root.

Most cases call collapse.launch.launch(argv) in-process (fast); a few go through
`python sweeps/launch.py` to check the real command line. Bad grids live in a private grid
folder ($COLLAPSE_GRID_DIR). The results root of every case already holds a finished record and
records an older version left behind, which must not trip anything.
"""
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from collapse import launch as launch_module, manifest
from collapse.reporting import write_reports
from collapse.executors import local

REPO = Path(__file__).resolve().parent.parent

BAD_GRIDS = {
    "bad_unknown_key": "experiment: vae_mnist\nfoo: 1\n",
    "bad_no_experiment": "rows:\n  - {distill.lam: 0.0}\n",
    "bad_rows_scalar": "experiment: vae_mnist\nrows: 5\n",
    "bad_rows_items": "experiment: vae_mnist\nrows: [1, 2]\n",
    "bad_axes_empty": "experiment: vae_mnist\naxes: {distill.lam: []}\n",
    "bad_yaml": "experiment: vae_mnist\nrows: [ {distill.lam: \n",
    "bad_top_list": "- experiment: vae_mnist\n",
    "bad_experiment": "experiment: nope\n",
    "bad_experiment_path": "experiment: ../../etc/passwd\n",
    "bad_row_key": "experiment: vae_mnist\nrows:\n  - {train.epochz: 1}\n",
    "bad_row_value": "experiment: vae_mnist\nrows:\n  - {distill.lam: -1.0}\n",
    "bad_seeds_neg": "experiment: vae_mnist\nseeds: [-1]\n",
    "bad_seeds_str": "experiment: vae_mnist\nseeds: abc\n",
    "bad_overrides_list": "experiment: vae_mnist\noverrides: [1, 2]\n",
    "bad_overrides_value": "experiment: vae_mnist\noverrides: {train.epochs: 0}\n",
}

# (id, argv beyond the base, substrings the one error line must hold). {root}, {file}, {data.*}
# are filled in per test. The base is grid=vae_smoke3 profile=smoke cluster=local results_root={root}.
CASES = [
    # selectors and names
    ("grid-missing", ["-grid"], ["missing grid=NAME", "vae_smoke3"]),
    ("grid-unknown", ["grid=nope"], ["key 'grid'", "'nope'", "one of:", "vae_smoke3"]),
    ("grid-traversal", ["grid=../../etc/passwd"], ["key 'grid'", "'../../etc/passwd'", "one of:"]),
    ("grid-absolute", ["grid=/etc/passwd"], ["key 'grid'", "'/etc/passwd'"]),
    ("grid-empty", ["grid="], ["key 'grid'", "''"]),
    ("grid-nul", ["grid=vae_smoke3\x00x"], ["key 'grid'", "vae_smoke3\\x00x"]),
    ("profile-unknown", ["profile=nope"], ["key 'profile'", "'nope'", "expected one of: ", " smoke"]),
    ("profile-traversal", ["profile=../profile/smoke"], ["key 'profile'", "'../profile/smoke'"]),
    ("cluster-unknown", ["cluster=nope"], ["key 'cluster'", "'nope'", "local"]),
    ("cluster-traversal", ["cluster=../../etc/passwd"], ["key 'cluster'", "'../../etc/passwd'"]),
    # keys, types, ranges
    ("unknown-top-key", ["foo=1"], ["unknown key 'foo'", "allowed here:"]),
    ("unknown-nested-key", ["train.epochz=3"], ["unknown key 'train.epochz'", "epochs"]),
    ("section-scalar", ["train=5"], ["key 'train'", "5", "a mapping"]),
    ("int-as-str", ["train.epochs=abc"], ["key 'train.epochs'", "'abc'", "an integer"]),
    ("int-as-float", ["train.epochs=1.5"], ["key 'train.epochs'", "1.5", "an integer"]),
    ("int-empty", ["train.epochs="], ["key 'train.epochs'", "an integer"]),
    ("epochs-zero", ["train.epochs=0"], ["key 'train.epochs'", "0", ">= 1"]),
    ("batch-zero", ["train.batch_size=0"], ["key 'train.batch_size'", ">= 1"]),
    ("lr-negative", ["train.lr=-1"], ["key 'train.lr'", "-1.0", "> 0"]),
    ("lr-word-nan", ["train.lr=nan"], ["key 'train.lr'", "'nan'", "a number"]),
    ("lr-nan", ["train.lr=.nan"], ["key 'train.lr'", "nan", "> 0"]),
    ("lr-inf", ["train.lr=.inf"], ["key 'train.lr'", "inf", "finite"]),
    ("zero-stage", ["train.zero_stage=5"], ["key 'train.zero_stage'", "5", "one of 0, 1, 2, 3"]),
    ("bool", ["train.bf16=maybe"], ["key 'train.bf16'", "'maybe'", "true or false"]),
    ("seed-negative", ["train.seed=-1"], ["key 'train.seed'", "-1", "in [0, 4294967295]"]),
    ("seed-huge", ["train.seed=" + "9" * 3000], ["key 'train.seed'", "(3000 characters)", "64 bits"]),
    ("seed-past-32-bits", ["train.seed=4294967296"], ["key 'train.seed'", "4294967296", "in [0, 4294967295]"]),
    ("synth-seed-huge", ["synth.seed=" + "7" * 25], ["key 'synth.seed'", "64 bits"]),
    ("train-size-past-the-set", ["data.train_size=99999999"], ["key 'data.train_size'", "99999999",
                                                               "at most 60000"]),
    ("test-size-past-the-set", ["data.test_size=10001"], ["key 'data.test_size'", "10001", "at most 10000"]),
    ("reduction", ["train.reduction=mean"], ["key 'train.reduction'", "'mean'", "sum, pixel, element"]),
    ("lam-negative", ["distill.lam=-0.5"], ["key 'distill.lam'", "-0.5", ">= 0"]),
    ("beta-nan", ["distill.beta=.nan"], ["key 'distill.beta'", "nan"]),
    ("gamma-inf", ["distill.gamma=.inf"], ["key 'distill.gamma'", "inf", "finite"]),
    ("hidden-zero", ["model.hidden=0"], ["key 'model.hidden'", "0", ">= 1"]),
    ("grid-samples", ["eval.grid_samples=5000"], ["key 'eval.grid_samples'", "5000", "[1, 1024]"]),
    ("synth-size", ["synth.size=0"], ["key 'synth.size'", "0", "in [1, "]),
    ("synth-binarize", ["synth.binarize=yes please"], ["key 'synth.binarize'", "'yes please'", "true or false"]),
    ("train-size-zero", ["data.train_size=0"], ["key 'data.train_size'", "0", "in [1, "]),
    ("dataset", ["data.dataset=cifar"], ["key 'data.dataset'", "'cifar'", "mnist"]),
    ("task", ["task=gan"], ["key 'task'", "'gan'", "vae"]),
    ("seeds-negative", ["seeds=[-1]"], ["key 'seeds'", "[-1]", "integers >= 0"]),
    ("seeds-str", ["seeds=abc"], ["key 'seeds'", "'abc'"]),
    ("seeds-empty", ["seeds=[]"], ["key 'seeds'", "[]", "non-empty"]),
    ("bare-word", ["train.epochs"], ["'train.epochs'", "key=value"]),
    ("empty-key", ["=5"], ["'=5'", "key=value"]),
    # data
    ("data-root-missing", ["data.root=/nonexistent/mnist"], ["key 'data.root'", "'/nonexistent/mnist'", "an existing directory"]),
    ("data-root-file", ["data.root={file}"], ["key 'data.root'", "{file}", "an existing directory"]),
    ("data-root-empty-dir", ["data.root={data.empty}"], ["key 'data.root'", "{data.empty}", "train-images-idx3-ubyte"]),
    ("data-garbage-idx", ["data.root={data.garbage}"], ["key 'data.root'", "{data.garbage}", "not an MNIST idx image file"]),
    ("data-truncated-idx", ["data.root={data.truncated}"], ["key 'data.root'", "{data.truncated}", "not an MNIST idx image file"]),
    ("data-bad-gzip", ["data.root={data.badgz}"], ["key 'data.root'", "{data.badgz}", "not a readable idx image file"]),
    ("data-too-few", ["data.root={data.good}", "data.train_size=1000"], ["key 'data.train_size'", "1000", "at most 16"]),
    # cluster options sbatch would reject
    ("backend", ["cluster.backend=bogus"], ["key 'cluster.backend'", "'bogus'", "auto, local, slurm"]),
    ("max-parallel", ["cluster.max_parallel=-1"], ["key 'cluster.max_parallel'", "-1", ">= 0"]),
    ("time-min", ["cluster.time_min=0"], ["key 'cluster.time_min'", "0", ">= 1"]),
    ("partition-space", ["cluster.partition=a b"], ["key 'cluster.partition'", "'a b'", "without spaces"]),
    ("mem-negative", ["cluster.mem_gb=-2"], ["key 'cluster.mem_gb'", "-2", "> 0"]),
    ("gpus-negative", ["cluster.gpus_per_node=-1"], ["key 'cluster.gpus_per_node'", "-1", ">= 0"]),
    ("stage-kind", ["cluster.stages.bogus.time_min=5"], ["key 'cluster.stages'", "'bogus'", "teacher"]),
    ("sbatch-managed", ["cluster.sbatch.wrap=ls"], ["key 'cluster.sbatch.wrap'", "'ls'", "not one of"]),
    ("sbatch-option-name", ["cluster.sbatch.a b=1"], ["key 'cluster.sbatch'", "'a b'", "option names"]),
    # results root
    ("root-file", ["results_root={file}"], ["key 'results_root'", "{file}", "a directory"]),
    ("root-under-file", ["results_root={file}/sub"], ["key 'results_root'", "{file}/sub", "is a file"]),
    ("root-empty", ["results_root="], ["key 'results_root'", "None", "a string"]),
    ("root-blank", ["results_root=' '"], ["key 'results_root'", "' '", "not empty"]),
    # grid files
    *[(f"gridfile-{name[4:]}", [f"grid={name}"], [f"{name}"]) for name in BAD_GRIDS],
]

GRID_EXPECT = {   # what each bad grid's line must also say
    "bad_unknown_key": ["unknown key 'foo'", "allowed: experiment"],
    "bad_no_experiment": ["missing key 'experiment'"],
    "bad_rows_scalar": ["key 'grid.rows'", "5", "a list of mappings"],
    "bad_rows_items": ["key 'grid.rows'", "[1, 2]", "a list of mappings"],
    "bad_axes_empty": ["key 'grid.axes'", "a mapping from dotted keys to non-empty lists"],
    "bad_yaml": ["not valid YAML"],
    "bad_top_list": ["expected a mapping at the top level"],
    "bad_experiment": ["key 'experiment'", "'nope'", "one of: "],
    "bad_experiment_path": ["key 'experiment'", "'../../etc/passwd'"],
    "bad_row_key": ["unknown key 'train.epochz'"],
    "bad_row_value": ["key 'distill.lam'", "-1.0", ">= 0"],
    "bad_seeds_neg": ["key 'seeds'", "[-1]"],
    "bad_seeds_str": ["key 'seeds'", "'abc'"],
    "bad_overrides_list": ["key 'grid.overrides'", "[1, 2]", "a mapping"],
    "bad_overrides_value": ["key 'train.epochs'", "0", ">= 1"],
}


def idx_bytes(n: int) -> bytes:
    return np.array([2051, n, 28, 28], dtype=">i4").tobytes() + bytes(n * 28 * 28)


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    base = tmp_path_factory.mktemp("inputs")
    grids = base / "grids"
    grids.mkdir()
    for name, text in BAD_GRIDS.items():
        (grids / f"{name}.yaml").write_text(text)
    dirs = {}
    for name in ("empty", "garbage", "truncated", "badgz", "good"):
        dirs[name] = base / "data" / name
        dirs[name].mkdir(parents=True)
    (dirs["garbage"] / "train-images-idx3-ubyte").write_bytes(b"this is not an idx file at all" * 100)
    (dirs["garbage"] / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(8))
    (dirs["truncated"] / "train-images-idx3-ubyte").write_bytes(idx_bytes(16)[:-100])
    (dirs["truncated"] / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(8))
    (dirs["badgz"] / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    (dirs["badgz"] / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(8))
    with gzip.open(dirs["good"] / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(idx_bytes(16))
    (dirs["good"] / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(8))
    a_file = base / "a_file"
    a_file.write_text("not a directory\n")
    return {"grids": grids, "data": dirs, "file": a_file}


def make_results_root(root: Path) -> None:
    """A results root with history: one finished stage, and records an older version left."""
    manifest.write(root, {"kind": "teacher", "key": "00000000deadbeef", "name": "teacher[seed=0]", "status": "done",
                          "metrics": {"best_test_loss": 1.0}, "artifacts": {}})
    (root / "stages" / "00000000deadbeef").mkdir(parents=True)
    (root / "stages" / "00000000deadbeef" / "best.safetensors").write_bytes(b"weights")
    folder = manifest.folder(root)
    (folder / "0000000000000old.json").write_text(json.dumps({"version": 0, "key": "0000000000000old",
                                                             "status": "done", "kind": "student"}))
    (folder / "00000000000torn.json").write_text('{"version": 1, "kind": "stu')
    (folder / "sweep-0000000000000old.json").write_text(json.dumps(
        {"version": 1, "kind": "sweep", "key": "sweep-0000000000000old", "name": "vae_smoke3", "status": "done"}))


def snapshot(top: Path) -> dict:
    out = {}
    for p in sorted(top.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(top))] = (p.read_bytes() if p.is_file() else "dir", st.st_mtime_ns, st.st_mode)
    return out


def fill(text: str, root: Path, places: dict) -> str:
    text = text.replace("{root}", str(root)).replace("{file}", str(places["file"]))
    for name, path in places["data"].items():
        text = text.replace("{data." + name + "}", str(path))
    return text


@pytest.fixture
def no_submit(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a bad input reached an executor")
    monkeypatch.setattr(local, "run", refuse)
    try:
        from collapse.executors import slurm
        monkeypatch.setattr(slurm, "submit", refuse)
    except ImportError:
        pass


@pytest.mark.parametrize("case_id,extra,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(case_id, extra, expect, places, tmp_path, monkeypatch,
                                                          capsys, no_submit):
    monkeypatch.setenv("COLLAPSE_GRID_DIR", str(places["grids"]))
    root = tmp_path / "results"
    make_results_root(root)
    base = {"grid": "grid=vae_smoke3", "profile": "profile=smoke", "cluster": "cluster=local",
            "results_root": f"results_root={root}"}
    rest = []
    for item in extra:
        item = fill(item, root, places)
        if item.startswith("-"):
            base.pop(item[1:])
            continue
        key = item.split("=", 1)[0]
        if key in base and "=" in item:
            base[key] = item
        else:
            rest.append(item)
    argv = [*base.values(), *rest]
    before = snapshot(tmp_path)
    code = launch_module.launch(argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, f"exit {code} for {argv!r}\nstdout: {out}\nstderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    wanted = [fill(e, root, places) for e in expect]
    if case_id.startswith("gridfile-"):
        wanted += GRID_EXPECT["bad_" + case_id[len("gridfile-"):]]
    for w in wanted:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    assert out == ""
    assert snapshot(tmp_path) == before, "a rejected launch changed files"


# the real command line, for a handful: the process's whole stderr is the one line
CLI_CASES = [
    ("no-args", [], ["missing grid=NAME"]),
    ("traversal", ["grid=../../etc/passwd"], ["key 'grid'", "'../../etc/passwd'"]),
    ("type", ["grid=vae_smoke3", "train.epochs=abc"], ["key 'train.epochs'", "'abc'", "an integer"]),
    ("root-file", ["grid=vae_smoke3", "results_root={file}"], ["key 'results_root'", "a directory"]),
]


@pytest.mark.parametrize("case_id,argv,expect", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_command_line_rejects_in_one_line(case_id, argv, expect, places, tmp_path):
    root = tmp_path / "results"
    make_results_root(root)
    argv = [fill(a, root, places) for a in argv]
    if not any(a.startswith("results_root=") for a in argv):
        argv.append(f"results_root={root}")
    before = snapshot(tmp_path)
    p = subprocess.run([sys.executable, "sweeps/launch.py", *argv], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    for w in expect:
        assert fill(w, root, places) in lines[0]
    assert p.stdout == "" and snapshot(tmp_path) == before


def test_unwritable_results_root_is_rejected(tmp_path):
    """Root ignores permission bits, so the launch runs without CAP_DAC_OVERRIDE (as a user would)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not installed")
    root = tmp_path / "results"
    make_results_root(root)
    root.chmod(0o555)
    before = snapshot(tmp_path)
    try:
        p = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps",
                            "-dac_override,-dac_read_search", sys.executable, "sweeps/launch.py", "grid=vae_smoke3",
                            "profile=smoke", "cluster=local", f"results_root={root}/new"], cwd=REPO,
                           capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        root.chmod(0o755)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.splitlines() == [p.stderr.strip()] and "key 'results_root'" in p.stderr
    assert "not writable" in p.stderr and str(root) in p.stderr
    root.chmod(0o555)
    after = snapshot(tmp_path)
    root.chmod(0o755)
    assert after == before


def test_records_left_by_an_older_version_trip_neither_launch_nor_report(tmp_path, capsys):
    root = tmp_path / "results"
    make_results_root(root)
    folder = manifest.folder(root)
    # a current-version sweep pointing at stages whose records are old, torn, missing or lack metrics
    manifest.write(root, {"kind": "eval", "key": "00000000000nomet", "name": "eval:x", "status": "done"})
    manifest.write(root, {"kind": "sweep", "key": "sweep-00000000000new", "name": "old_grid", "status": "done",
                          "ended": 1.0, "config": {"grid": "old_grid", "task": "vae", "points": [
                              {"label": {"distill.lam": 0.0, "train.seed": 0}, "student": "0000000000000old",
                               "eval": "00000000000torn", "teacher": "00000000deadbeef",
                               "teacher_eval": "00000000000nomet"},
                              {"label": {"distill.lam": 1.0, "train.seed": 0}, "student": "000000000missing",
                               "eval": "00000000000nomet", "teacher": "00000000deadbeef",
                               "teacher_eval": "000000000missing"}]}})
    records = {r["key"]: r for r in manifest.read_all(root)}
    assert records["0000000000000old"]["status"] == "unreadable"
    assert records["00000000000torn"]["status"] == "unreadable"
    written = write_reports(root)          # must not raise
    table = (root / "report" / "old_grid.md").read_text()
    assert "student unreadable" in table and any(p.name == "old_grid.csv" for p in written)
    # launch plans such a stage again rather than trusting it
    from types import SimpleNamespace
    for key in ("0000000000000old", "00000000000torn", "000000000missing"):
        assert not launch_module.reusable(root, SimpleNamespace(key=key, name=key))
    # a done record whose artifact is gone is redone, with a warning naming the file
    assert launch_module.reusable(root, SimpleNamespace(key="00000000deadbeef", name="teacher"))
    manifest.write(root, {**records["00000000deadbeef"], "artifacts": {"weights": {
        "path": "stages/00000000deadbeef/best.safetensors", "sha256": "0" * 64, "bytes": 7}}})
    assert not launch_module.reusable(root, SimpleNamespace(key="00000000deadbeef", name="teacher[seed=0]"))
    assert "best.safetensors is corrupt" in capsys.readouterr().err


def test_slurm_without_a_cluster_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """cluster=slurm where sinfo is not on PATH: one line, nothing under results_root (not even a spec)."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    root = tmp_path / "results"
    code = launch_module.launch(["grid=vae_smoke3", "profile=smoke", "cluster=slurm", f"results_root={root}"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1
    assert "key 'cluster.backend'" in err[0] and "sinfo does not answer" in err[0]
    assert not root.exists(), sorted(str(p) for p in root.rglob("*"))


def test_a_grid_takes_another_grids_rows_and_a_wrong_rows_from_is_one_line(tmp_path, monkeypatch):
    """rows_from: the paper grids reuse their stand-in grids' rows; beside rows, or in a loop, it is refused."""
    from collapse.config import ConfigError
    from collapse.grid import load_grid
    assert load_grid("ddpm_lambda_celeba")["rows"] == load_grid("ddpm_lambda")["rows"]
    assert load_grid("t5_lambda_cnndm")["rows"] == load_grid("t5_lambda")["rows"]
    (tmp_path / "both.yaml").write_text("experiment: vae_mnist\nrows_from: vae_coeffs\nrows:\n  - {distill.lam: 0.5}\n")
    (tmp_path / "loop_a.yaml").write_text("experiment: vae_mnist\nrows_from: loop_b\n")
    (tmp_path / "loop_b.yaml").write_text("experiment: vae_mnist\nrows_from: loop_a\n")
    monkeypatch.setenv("COLLAPSE_GRID_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"key 'grid.rows_from': value 'vae_coeffs' is not allowed; expected no "
                                          r"rows_from beside rows") as e:
        load_grid("both")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"key 'grid.rows_from': value 'loop_a' is not allowed; expected the name "
                                          r"of another grid, not one that leads back here"):
        load_grid("loop_a")


def test_a_field_of_one_modality_is_an_unknown_key_on_another(tmp_path, capsys, no_submit):
    """train.reduction is the VAE's (its train section, collapse/tasks/vae_config.py): on a DDPM grid it is
    refused as any unknown key is, naming what that grid's train section allows."""
    root = tmp_path / "results"
    code = launch_module.launch(["grid=ddpm_lambda", "profile=smoke", "cluster=local", f"results_root={root}",
                                 "train.reduction=pixel"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and not root.exists(), (out, err)
    assert err.startswith("error: unknown key 'train.reduction'; allowed here: epochs,") and "reduction" not in err.split(";")[1]
