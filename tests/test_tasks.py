"""The task interface (collapse/tasks/base.py): every modality states what it requires, the rest has
defaults, and a new one takes one module and its configs. The toy modality of tests/toy_task.py, named through $COLLAPSE_TASKS and
configured from tests/toy/, runs a grid end to end on the local executor."""
import json
import os
import subprocess
import sys
from pathlib import Path

from collapse import tasks
from collapse.tasks import base
from collapse.tasks.base import Simulation, Task
from helpers import toy_env

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def test_every_task_defines_the_whole_interface():
    for name in tasks.names():
        module = tasks.get(name)
        assert isinstance(module, Task) or isinstance(module, Simulation), name
        assert set(module.PRIMARY[2:]) <= {"lower", "higher"}


def test_the_base_requires_a_dozen_members_and_the_toy_states_no_more_than_it_must():
    """base.REQUIRED is at most 12; tests/toy_task.py states each of them and, of the optional members,
    only those whose value differs from base.Defaults'; a module that lacks a required member is refused
    by name; the report columns come from the terms whatever a module says."""
    import importlib
    import types
    import pytest
    assert len(base.REQUIRED) <= 12 and len(base.SIMULATION_REQUIRED) <= 12
    toy = importlib.import_module("toy_task")
    assert base.missing(toy) == []
    for member in base.OPTIONAL:
        if hasattr(toy, member):
            assert getattr(toy, member) != getattr(base.Defaults, member), member
    assert not hasattr(toy, "REPORT_COLUMNS") and base.Stated(toy).REPORT_COLUMNS == {"distill.lam": "lambda"}
    stated = base.Stated(toy)
    assert stated.check_data(None) is None and stated.gpu_seconds("teacher", {}) is None
    assert stated.KEY_SECTIONS == () and stated.TEACHER_OUTPUTS_DETERMINISTIC is True   # its own, not the default
    assert isinstance(stated, Task) and not isinstance(toy, Task)   # the defaults complete the interface
    lacking = types.ModuleType("lacking")
    for member in base.REQUIRED:
        if member != "evaluate":
            setattr(lacking, member, getattr(toy, member))
    sys.modules["lacking"] = lacking
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(tasks.ENV, "lacking=lacking")
            with pytest.raises(TypeError, match="task 'lacking' .* does not state evaluate"):
                tasks.get("lacking")
    finally:
        del sys.modules["lacking"]


def test_a_modality_from_outside_the_package_runs_a_grid_end_to_end(tmp_path):
    env = toy_env()
    root = tmp_path / "r"
    out = subprocess.run([sys.executable, str(REPO / "sweeps" / "launch.py"), "grid=toy_lambda", "cluster=local",
                          "train.threads=1", f"results_root={root}"], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    records = {r["name"]: r for r in (json.loads(p.read_text()) for p in (root / "manifest").glob("*.json"))}
    assert {r["status"] for r in records.values()} == {"done"}
    kinds = sorted(r["kind"] for r in records.values() if r["kind"] != "sweep")
    assert kinds == ["eval", "eval", "eval", "report", "student", "student", "synth", "teacher"]
    m0 = records["eval:teacher[seed=0]"]["metrics"]["test_loss"]
    m1 = records["eval:student[lam=0,seed=0]"]["metrics"]["test_loss"]
    assert m0 == m0 and m1 == m1 and abs(m0) < 10 and abs(m1) < 10   # fitted: finite, near the data's NLL
    assert (root / "report" / "results.csv").is_file()
    lines = (root / "report" / "toy_lambda_toy.md").read_text().splitlines()   # the toy's write_report, from the view
    assert lines[0] == "# toy_lambda: NLL (lower is better)"
    assert lines[2] == f"- M0: {m0:.4f} over 1 seed(s)"
    assert lines[3] == f"- M1 (lambda 0): {m1:.4f} over 1 seed(s)"
    distilled = records["eval:student[lam=1,seed=0]"]["metrics"]["test_loss"]
    assert lines[4] == f"- student (lambda 1): {distilled:.4f} over 1 seed(s), {distilled - m1:+.4f} against M1"


def test_a_config_stored_before_the_redesign_still_loads():
    """Specs and records written before the task sections moved out of config.py carry sections and
    fields a task no longer has (the Gaussian section in every config, synth.binarize in the DDPM's):
    from_stored drops them, so an old results root's stages load; typed input still rejects them."""
    import pytest
    from collapse.config import ConfigError, to_dict
    from collapse.experiment import from_dict, from_stored
    legacy_gaussian = {"n": 100, "dim": 1, "sigma0": 1.0, "estimator": "mle", "covariance": "isotropic", "chains": 5000}
    for name in ("vae", "ddpm"):
        now = to_dict(from_dict({"task": name}))
        stored = {**now, "gaussian": legacy_gaussian, "synth": {**now["synth"], "binarize": False}}
        assert to_dict(from_stored(stored)) == now
        with pytest.raises(ConfigError, match="unknown key '(gaussian|synth.binarize)'"):
            from_dict(stored)


def test_each_task_states_its_distillation_terms_once_and_the_rest_derives_from_them():
    """The loss's terms, which row is M1 and the report's coefficient columns: one declaration per task."""
    import dataclasses
    from collapse.tasks.base import distills, loss_form, report_columns
    for name in tasks.names():
        module = tasks.get(name)
        if not isinstance(module, Task):
            continue
        terms = module.DISTILL_TERMS
        assert terms and len({t.coefficient for t in terms}) == len(terms), name
        assert module.REPORT_COLUMNS == report_columns(terms), name
        coeffs = module.CONFIG_SECTIONS["distill"]()   # the task's distill section at its defaults
        fields = {f.name for f in dataclasses.fields(coeffs)}
        assert {t.coefficient for t in terms} <= fields, (name, fields)
        plain = dataclasses.replace(coeffs, **{t.coefficient: 0.0 for t in terms})
        assert not distills(module, plain) and loss_form(terms, plain) == "L = L_M"
        for t in terms:   # each weight alone makes a distilled student, named in the printed loss
            one = dataclasses.replace(plain, **{t.coefficient: 0.5})
            assert distills(module, one) and loss_form(terms, one) == f"L = L_M + 0.5 * {t.name}", (name, t)
