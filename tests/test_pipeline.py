"""End to end on the embedded local executor: a 3-point grid with real DeepSpeed in subprocesses."""
import csv
import json
import os

import pytest

from collapse import manifest
from helpers import launch


def records(root):
    return {r["key"]: r for r in manifest.read_all(root)}


def by_kind(recs, kind):
    return [r for r in recs.values() if r.get("kind") == kind]


@pytest.mark.slow
def test_grid_runs_once_skips_on_relaunch_and_reruns_only_a_missing_student(tmp_path, tiny):
    root = tmp_path / "r"
    out = launch("grid=vae_smoke3", f"results_root={root}", *tiny)
    assert "10 stages, 0 already done, 10 to run on local" in out.stdout

    recs = records(root)
    assert all(r["status"] == "done" for r in recs.values()), [r.get("error") for r in recs.values()]
    teachers, synths = by_kind(recs, "teacher"), by_kind(recs, "synth")
    students, evals = by_kind(recs, "student"), by_kind(recs, "eval")
    assert len(teachers) == 1 and len(synths) == 1 and len(students) == 3 and len(evals) == 4
    assert synths[0]["metrics"]["n"] == 256  # same size as the real training set
    assert {tuple(sorted(s["deps"].values())) for s in students} == {tuple(sorted([teachers[0]["key"], synths[0]["key"]]))}
    from collapse.executors.local import available_cores
    cores = available_cores()
    assert teachers[0]["metrics"]["threads"] == cores      # it runs alone: every core is its
    assert all(s["metrics"]["threads"] <= max(1, cores // 2) for s in students)   # they share them
    for r in teachers + students:
        assert r["metrics"]["best_test_loss"] == min(h["test_loss"] for h in r["metrics"]["history"])
        assert r["git_commit"] is None or len(r["git_commit"]) == 40
        assert r["started"] <= r["ended"] and r["host"]

    with open(root / "report" / "vae_smoke3.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["model"] for row in table] == ["M0 (teacher)", "M1", "student", "student"]
    assert [row["lambda"] for row in table] == ["", "0.000", "1.000", "1.000"]
    assert table[0]["status"] == "reference" and all(row["status"] == "done" for row in table[1:])
    m1 = next(r for r in evals if r["deps"]["model"] in {s["key"] for s in students if s["config"]["distill"]["lam"] == 0})
    assert float(table[1]["L_M(Test)"]) == pytest.approx(m1["metrics"]["test_loss"], abs=1e-3)
    assert (root / "report" / "vae_smoke3_coefficients.png").stat().st_size > 1000
    (report,) = by_kind(recs, "report")   # the report is a stage: it read every eval, after the last
    assert sorted(report["deps"].values()) == sorted(e["key"] for e in evals)
    assert "report/vae_smoke3.md" in report["metrics"]["files"] and report["metrics"]["inputs_done"] == 4
    for png in (root / "report").glob("*.png"):   # a PDF beside every figure, recorded with it (test_figures.py)
        assert png.with_suffix(".pdf").read_bytes().startswith(b"%PDF-"), png
        assert f"report/{png.stem}.pdf" in report["metrics"]["files"], (png, report["metrics"]["files"])
    assert report["started"] >= max(e["ended"] for e in evals)

    teacher_mtime = os.path.getmtime(root / "manifest" / f"{teachers[0]['key']}.json")
    again = launch("grid=vae_smoke3", f"results_root={root}", *tiny)
    assert "10 already done, 0 to run" in again.stdout
    assert os.path.getmtime(root / "manifest" / f"{teachers[0]['key']}.json") == teacher_mtime

    victim = next(s for s in students if s["config"]["distill"]["lam"] == 1.0 and s["config"]["distill"]["beta"] == 0)
    (root / "manifest" / f"{victim['key']}.json").unlink()
    before = {k: os.path.getmtime(root / "manifest" / f"{k}.json") for k in recs if k != victim["key"]}
    third = launch("grid=vae_smoke3", f"results_root={root}", *tiny)
    assert "9 already done, 1 to run" in third.stdout
    after = records(root)
    assert after[victim["key"]]["status"] == "done"
    changed = [k for k, t in before.items() if os.path.getmtime(root / "manifest" / f"{k}.json") != t]
    assert changed == [] or all(after[k]["kind"] == "sweep" for k in changed)
    assert after[victim["key"]]["metrics"]["best_test_loss"] == pytest.approx(victim["metrics"]["best_test_loss"], rel=1e-6)


def test_same_teacher_config_gives_the_same_key_and_coefficients_do_not_touch_it():
    from collapse import plan
    from collapse.grid import load_sweep
    sweep = load_sweep(["grid=vae_coeffs", "profile=smoke", "cluster=local"])
    p = plan.build(sweep)
    kinds = [s.kind for s in p.stages.values()]
    assert kinds.count("teacher") == 1 and kinds.count("synth") == 1 and kinds.count("student") == 16
    assert kinds.count("eval") == 17
    seeds = load_sweep(["grid=vae_smoke3", "seeds=[0,1]", "cluster=local"])
    kinds = [s.kind for s in plan.build(seeds).stages.values()]
    assert kinds.count("teacher") == 2 and kinds.count("student") == 6
    a = plan.build(load_sweep(["grid=vae_smoke3", "cluster=local", "train.threads=2"]))
    b = plan.build(load_sweep(["grid=vae_smoke3", "cluster=local"]))
    assert list(a.stages) == list(b.stages)  # execution details are not part of the key
    c = plan.build(load_sweep(["grid=vae_smoke3", "cluster=local", "train.epochs=3"]))
    assert not set(c.stages) & set(b.stages)
    # binary synthetic images: a new synth and new students, the same teacher; at its default
    # (false) the field, added later, is not in the key, so earlier results keep their keys
    d = plan.build(load_sweep(["grid=vae_smoke3", "cluster=local", "synth.binarize=true"]))
    assert {b.stages[k].kind for k in set(d.stages) & set(b.stages)} == {"teacher", "eval"}
    assert len(set(d.stages) & set(b.stages)) == 2    # the teacher and its eval
    synth = next(s for s in b.stages.values() if s.kind == "synth")
    assert "binarize" not in plan.key_material("synth", synth.config)["synth"]


def test_a_failed_grid_point_is_recorded_and_the_rest_of_the_grid_finishes(tmp_path, tiny, monkeypatch):
    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "one_diverges.yaml").write_text(
        "experiment: vae_mnist\n"
        "rows:\n"
        "  - {distill.lam: 0.0}\n"
        "  - {distill.lam: 1.0e+39}\n")  # beyond float32: L_SD is inf at the first step
    monkeypatch.setenv("COLLAPSE_GRID_DIR", str(grids))
    root = tmp_path / "r"
    out = launch("grid=one_diverges", f"results_root={root}", *tiny, check=False)
    assert out.returncode == 1
    recs = records(root)
    failed = [r for r in recs.values() if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["kind"] == "student"
    assert "DivergedError" in failed[0]["error"] and "at step 0" in failed[0]["error"]
    assert (root / failed[0]["log"]).is_file()
    assert sum(r["status"] == "done" and r["kind"] in ("student", "eval") for r in recs.values()) == 3
    table = (root / "report" / "one_diverges.md").read_text()
    assert "failed: student failed: DivergedError" in table and failed[0]["log"] in table
    assert "| M1 |" in table
    # the report ran although an input failed, and says so: 'partial', so the next launch writes it again
    (report,) = [r for r in recs.values() if r["kind"] == "report"]
    assert report["status"] == "partial" and report["metrics"]["inputs_done"] == 2, report
    assert "2 failed or blocked" in out.stdout, out.stdout   # the student, and its eval blocked


@pytest.mark.parametrize("part, whole, profile", [("vae_coeffs_key", "vae_coeffs", None),
                                                  ("ddpm_lambda_key", "ddpm_lambda", "ddpm_cpu"),
                                                  ("ddpm_lambda_best", "ddpm_lambda", "ddpm_cpu"),
                                                  ("t5_lambda_key", "t5_lambda", "t5_cpu")])
def test_a_shipped_subset_grid_has_only_stages_of_its_whole_grid(part, whole, profile):
    """The docs launch these into the whole grid's results root; a stage of their own would be trained again."""
    from collapse import plan
    from collapse.grid import load_sweep
    extra = [f"profile={profile}"] if profile else []

    def stages(grid):
        sweep = load_sweep([f"grid={grid}", "cluster=local", "seeds=[0]", *extra])
        return {key for key, stage in plan.build(sweep).stages.items() if stage.kind != "report"}

    assert stages(part) < stages(whole)
