"""profile=smoke serves every grid: configs/profile/smoke.yaml with the grid's task's own SMOKE sizes over
it (collapse/grid.py), so every shipped grid passes the launch's checks at smoke size (a DDPM's FID within
its hold-out), a modality from outside the package brings its own, and a DDPM grid at those sizes runs."""
import json

import pytest

from collapse import launch, plan as planning, tasks
from collapse.config import to_dict
from collapse.grid import GRID_DIR, load_grid, load_sweep
from collapse.tasks.base import Simulation
from helpers import NEEDS, PATHS, TESTS, folders, launch as launch_process

SHIPPED = sorted(p.stem for p in GRID_DIR.glob("*.yaml"))


def dotted_get(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def set_by_grid(name: str) -> set:
    """The keys a grid file sets itself (its overrides, rows and axes): these win over any profile."""
    grid = load_grid(name)
    return {*(grid.get("overrides") or {}), *(grid.get("axes") or {}), *(k for row in grid.get("rows") or [] for k in row)}


@pytest.fixture(autouse=True)
def shipped_only(monkeypatch, tmp_path):
    monkeypatch.delenv("COLLAPSE_GRID_DIR", raising=False)
    monkeypatch.setenv("COLLAPSE_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("grid", SHIPPED)
def test_every_shipped_grid_passes_the_launch_checks_at_the_tasks_smoke_sizes(grid, tmp_path, capsys):
    argv = [f"grid={grid}", "profile=smoke", "cluster=local", f"results_root={tmp_path / 'r'}"]
    if grid in NEEDS:   # data and weights not on this machine: stand-in folders, planned only
        made = folders(tmp_path / "paths")
        argv += [f"{PATHS[n]}={made[n]}" for n in NEEDS[grid]]
        plan = planning.build(load_sweep(argv))
    else:
        assert launch.launch([*argv, "dry_run=true"]) == 0, capsys.readouterr().err
        plan = launch.prepare(argv)[1]
    sweep = load_sweep(argv)
    task = tasks.get(sweep.base.task)
    smoke = task.SMOKE
    assert smoke or isinstance(task, Simulation), f"task {sweep.base.task} states no smoke sizes"
    for point in sweep.points:
        config = to_dict(point.config)
        for key, value in smoke.items():
            if key not in set_by_grid(grid):
                assert dotted_get(config, key) == value, (grid, key)
    assert any(s.kind == "report" for s in plan.stages.values())


def test_each_task_gets_its_own_sizes_and_the_vae_keeps_its_keys():
    ddpm = load_sweep(["grid=ddpm_lambda", "profile=smoke", "cluster=local"]).base
    vae = load_sweep(["grid=vae_coeffs", "profile=smoke", "cluster=local"]).base
    assert ddpm.eval.fid_samples <= ddpm.data.test_size < 5000 and ddpm.train.steps < 1000
    assert (vae.data.train_size, vae.data.test_size, vae.train.epochs, vae.eval.grid_samples) == (2000, 500, 2, 16)
    # the command line still wins over the task's sizes
    assert load_sweep(["grid=ddpm_lambda", "profile=smoke", "cluster=local", "train.steps=7"]).base.train.steps == 7


def test_a_modality_from_outside_the_package_brings_its_smoke_sizes(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("COLLAPSE_TASKS", "toy=toy_task")
    monkeypatch.setenv("COLLAPSE_CONFIG_DIR", str(TESTS / "toy"))
    monkeypatch.setenv("COLLAPSE_GRID_DIR", str(TESTS / "toy" / "grids"))
    base = load_sweep(["grid=toy_lambda", "profile=smoke", "cluster=local"]).base
    import toy_task   # importable only with tests/ on sys.path, set just above
    assert {"data.train_size": base.data.train_size, "data.test_size": base.data.test_size,
            "train.epochs": base.train.epochs} == toy_task.SMOKE


@pytest.mark.slow
def test_a_ddpm_row_runs_end_to_end_at_smoke_size(tmp_path, monkeypatch):
    """One row of ddpm_lambda at the smoke sizes (the whole grid takes minutes: see the README), with
    fewer steps and samples so the test stays near a minute: teacher, synth, M1, two evals, report."""
    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "ddpm_smoke_row.yaml").write_text("experiment: ddpm_mnist\nrows:\n  - {distill.lam: 0.5}\n")
    monkeypatch.setenv("COLLAPSE_GRID_DIR", str(grids))
    root = tmp_path / "r"
    out = launch_process("grid=ddpm_smoke_row", "profile=smoke", "cluster=local", f"results_root={root}",
                         "data.train_size=64", "train.steps=4", "train.eval_every_steps=2", "eval.fid_samples=8")
    assert "done: 6 stages ran, 0 failed" in out.stdout, out.stdout
    records = [json.loads(p.read_text()) for p in (root / "manifest").glob("*.json")]
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 2 and all(r["metrics"]["fid"] > 0 and r["metrics"]["fid_samples"] == 8 for r in evals)
    teacher = next(r for r in records if r["kind"] == "teacher")
    assert teacher["config"]["model"]["block_channels"] == tasks.get("ddpm").SMOKE["model.block_channels"]
    assert (root / "report" / "ddpm_smoke_row.md").is_file()
