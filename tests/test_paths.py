"""Relative paths on the launch line: made absolute against the launch's working directory when the
config is loaded, so a stage (run in another directory, or on another node) reads what the launch
checked; stated absolute in every stage spec; the stage keys the same whichever way a path is spelled;
and a relative path naming nothing is one line before any job (collapse/experiment.py)."""
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from collapse import experiment, fingerprint, launch as launch_module, plan as planning
from collapse.config import ConfigError
from collapse.executors import local
from collapse.grid import load_sweep
from collapse.stages import read_spec

BASE = ["grid=vae_smoke3", "cluster=local", "data.train_size=16", "data.test_size=8"]


def small_mnist(folder: Path) -> Path:
    """A torchvision-style MNIST folder of 16 training and 8 test images (all zero)."""
    folder.mkdir(parents=True)
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(np.array([2051, 16, 28, 28], dtype=">i4").tobytes() + bytes(16 * 28 * 28))
    (folder / "t10k-images-idx3-ubyte").write_bytes(np.array([2051, 8, 28, 28], dtype=">i4").tobytes()
                                                    + bytes(8 * 28 * 28))
    return folder


@pytest.fixture
def submitted(monkeypatch):
    """The stages a launch hands to the local executor (nothing runs)."""
    calls = []
    monkeypatch.setattr(local, "run", lambda todo, root, parallel, code=None, **options: calls.append((todo, root)) or {})
    return calls


def test_relative_paths_are_absolute_in_the_config_and_in_every_written_spec(tmp_path, monkeypatch, submitted):
    here = tmp_path / "launch"
    data = small_mnist(here / "mnist")
    monkeypatch.chdir(here)
    fingerprint.cache_clear()
    assert launch_module.launch([*BASE, "data.root=mnist", "results_root=out"]) == 0
    (todo, root), = submitted
    assert root == here / "out"
    specs = [read_spec(root, s.key) for s in todo]
    assert len(specs) == len(todo) > 4
    for spec in specs:
        assert spec["config"]["data"]["root"] == str(data)
        assert spec["config"]["results_root"] == str(here / "out")
    # the stage reads its spec from anywhere: the path is the one the launch checked
    monkeypatch.chdir(tmp_path)
    cfg = experiment.from_stored(specs[0]["config"])
    assert cfg.data.root == str(data) and Path(cfg.data.root).is_dir()
    # the keys: the same given absolute from elsewhere, or relative by another route
    absolute = planning.build(load_sweep([*BASE, f"data.root={data}", f"results_root={here / 'out'}"]))
    assert set(absolute.stages) == {s.key for s in todo}
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    sweep = load_sweep([*BASE, "data.root=../launch/mnist/", "results_root=../launch/out"])
    assert {p.config.data.root for p in sweep.points} == {str(data)}
    assert set(planning.build(sweep).stages) == set(absolute.stages)


def pretrained(folder: Path, version: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "FINGERPRINT").write_text(version + "\n")
    return folder


def test_a_path_in_the_key_gives_the_same_keys_relative_or_absolute(tmp_path, monkeypatch):
    """model.path enters the teacher's key (as its content's fingerprint), unlike data.root."""
    model = pretrained(tmp_path / "a" / "t5-small", "t5-small-v1")
    argv = ["grid=t5_lambda", "cluster=local"]
    monkeypatch.chdir(tmp_path / "a")
    fingerprint.cache_clear()
    relative = planning.build(load_sweep([*argv, "model.path=t5-small"]))
    monkeypatch.chdir(tmp_path)
    absolute = planning.build(load_sweep([*argv, f"model.path={model}"]))
    assert list(relative.stages) == list(absolute.stages)
    teacher = next(s for s in relative.stages.values() if s.kind == "teacher")
    assert teacher.config["model"]["path"] == str(model)
    assert teacher.fingerprints["model.path"] == "t5-small-v1"
    # other content at the same relative path: other keys
    pretrained(tmp_path / "b" / "t5-small", "t5-small-v2")
    monkeypatch.chdir(tmp_path / "b")
    fingerprint.cache_clear()
    other = planning.build(load_sweep([*argv, "model.path=t5-small"]))
    assert next(s for s in other.stages.values() if s.kind == "teacher").key != teacher.key


@pytest.mark.parametrize("argv,key,value,expected", [
    ([*BASE, "data.root=no_such_dir"], "data.root", "no_such_dir", "an existing directory"),
    (["grid=t5_lambda", "cluster=local", "model.path=models/t5-small"], "model.path", "models/t5-small",
     "config.json"),
    (["grid=t5_lambda", "cluster=local", "eval.ppl_model.path=gpt2"], "eval.ppl_model.path", "gpt2", "config.json"),
    (["grid=ddpm_lambda", "cluster=local", "eval.inception=weights/inception.pt"], "eval.inception",
     "weights/inception.pt", "an existing file or directory"),
], ids=["data.root", "model.path", "eval.ppl_model.path", "eval.inception"])
def test_a_relative_path_naming_nothing_is_one_line_before_any_job(argv, key, value, expected, tmp_path, monkeypatch,
                                                                   capsys, submitted):
    here = tmp_path / "launch"
    here.mkdir()
    monkeypatch.chdir(here)
    code = launch_module.launch([*argv, "results_root=out"])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2 and out == "" and not submitted
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for part in (f"key '{key}'", repr(value), str(here / value), expected):
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    assert list(here.iterdir()) == [], "a rejected launch wrote something"


def test_tilde_is_expanded_and_the_caller_dict_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    data = small_mnist(tmp_path / "mnist")
    given = {"task": "vae", "results_root": "~/r", "data": {"root": "~/mnist"}}
    before = json.dumps(given, sort_keys=True)
    cfg = experiment.from_dict(given)
    assert (cfg.data.root, cfg.results_root) == (str(data), str(tmp_path / "r"))
    assert json.dumps(given, sort_keys=True) == before


def test_a_stored_config_is_read_as_stored(tmp_path, monkeypatch):
    """A spec's or record's config is not resolved again (and a relative path in a record written
    before this stays relative, as that stage read it)."""
    small_mnist(tmp_path / "mnist")
    monkeypatch.chdir(tmp_path)
    assert experiment.from_stored({"task": "vae", "results_root": "r", "data": {"root": "mnist"}}).data.root == "mnist"
    with pytest.raises(ConfigError, match=r"key 'data.root': value 'nope' is not allowed \(absolute path tried: "):
        experiment.from_dict({"task": "vae", "data": {"root": "nope"}})
