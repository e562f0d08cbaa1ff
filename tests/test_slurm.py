"""The SLURM backend (collapse/executors/slurm.py) and sweeps/status.py.

The tests marked `slurm` run real sweeps on a real cluster (the local one from `bash slurm/start.sh`,
or yours) and are skipped, with the reason, when `sinfo` does not answer. Stages are tiny (256 real
training items, one epoch); every wait is bounded. The others need no cluster: the grouping of a
stage graph into arrays and dependencies, the cluster config, and the speed of status.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collapse import plan as planning  # noqa: E402
from collapse.config import ConfigError, to_dict  # noqa: E402
from collapse.experiment import from_dict  # noqa: E402
from collapse import slurm_index  # noqa: E402
from collapse.executors import slurm  # noqa: E402
from collapse.executors.slurm_groups import make_groups  # noqa: E402
from collapse.grid import load_sweep  # noqa: E402
from collapse.plan import Stage  # noqa: E402
from collapse import status, train  # noqa: E402

from helpers import (GRID_TIMEOUT_S, TERMINAL, TINY_SLURM as TINY, cluster, cluster_answers, launch,  # noqa: E402,F401
                     launch_jobs, records, sacct, show, squeued, status_table, table_row as row_of, ts, wait_done,
                     wait_for)


# ---------------------------------------------------------------- no cluster needed

def fake_stage(kind, name, deps=None):
    return Stage(kind, f"{kind}-{name}", name, dict(deps or {}), {})


def test_groups_one_array_per_level_and_kind_with_aftercorr_where_aligned():
    sweep = load_sweep(["grid=vae_smoke3", "seeds=[0,1]", *TINY])
    plan = planning.build(sweep)
    groups = make_groups(list(plan.stages.values()))
    shape = [(g.level, g.kind, len(g.stages)) for g in groups]
    assert shape == [(0, "teacher", 2), (1, "synth", 2), (1, "eval", 2), (2, "student", 6), (3, "eval", 6),
                     (4, "report", 1)]
    for i, g in enumerate(groups):
        g.job_id = str(100 + i)
    deps = [g.dependency(groups) for g in groups]
    # synth and the teacher's eval line up with the teachers; students need all synths (and, implied by
    # them, the teachers); each student's eval waits on its own student only
    assert deps == [None, "aftercorr:100", "aftercorr:100", "afterok:101", "aftercorr:103",
                    "afterany:100:101:102:103:104"]   # the report: after every job, whatever their outcome
    students, evals = groups[3].stages, groups[4].stages
    assert [e.deps["model"] for e in evals] == [s.key for s in students]


def test_groups_chains_line_up_and_done_or_queued_inputs():
    # two chains teacher -> synth -> gen1 -> gen2, gen2 also reading synth (accumulate) and the teacher
    stages = []
    for c in ("a", "b"):
        t = fake_stage("teacher", c)
        s = fake_stage("synth", c, {"teacher": t.key})
        g1 = fake_stage("generation", c + "1", {"data.0": s.key, "distill_from": t.key})
        g2 = fake_stage("generation", c + "2", {"data.0": s.key, "data.1": g1.key, "distill_from": t.key})
        stages += [t, s, g1, g2]
    groups = make_groups(stages)
    assert [(g.level, g.kind, len(g.stages)) for g in groups] == [
        (0, "teacher", 2), (1, "synth", 2), (2, "generation", 2), (3, "generation", 2)]
    for i, g in enumerate(groups):
        g.job_id = str(7 + i)
    assert [g.dependency(groups) for g in groups] == [None, "aftercorr:7", "aftercorr:8", "aftercorr:9"]

    # inputs already done need nothing; inputs queued by an earlier launch are waited for by job id
    t, s = stages[0], stages[1]
    g1 = stages[2]
    groups = make_groups([g1, stages[3]], external={})
    assert [(g.level, len(g.stages)) for g in groups] == [(0, 1), (1, 1)]
    groups[0].job_id, groups[1].job_id = "20", "21"
    assert groups[0].dependency(groups) is None and groups[1].dependency(groups) == "afterok:20"
    groups = make_groups([stages[3]], external={g1.key: "15_1", s.key: "14"})
    groups[0].job_id = "22"
    assert groups[0].dependency(groups) == "afterok:14:15_1"


def test_groups_afterok_names_only_the_tasks_needed():
    a = [fake_stage("teacher", str(i)) for i in range(3)]
    b = [fake_stage("synth", "x", {"teacher": a[0].key}), fake_stage("synth", "y", {"teacher": a[2].key})]
    groups = make_groups(a + b)
    groups[0].job_id, groups[1].job_id = "30", "31"
    assert groups[1].dependency(groups) == "afterok:30_0:30_2"


def test_cluster_config_per_kind_resources_and_one_line_errors():
    base = {"cluster": {"backend": "slurm", "partition": "gpu", "time_min": 30, "sbatch": {"mail-type": "END"},
                        "stages": {"teacher": {"gpus_per_node": 2, "time_min": 240, "sbatch": {"exclusive": True}},
                                   "report": {"partition": "cpu"}}}}
    cfg = from_dict(base).cluster
    teacher, ev, rep = cfg.resources("teacher"), cfg.resources("eval"), cfg.resources("report")
    assert (teacher.partition, teacher.time_min, teacher.gpus_per_node) == ("gpu", 240, 2)
    assert teacher.sbatch == {"mail-type": "END", "exclusive": True}
    assert (ev.time_min, ev.gpus_per_node, rep.partition) == (30, 0, "cpu")
    params = slurm.sbatch_parameters(teacher, "g.teacher", "afterok:1")
    assert params["ntasks_per_node"] == 2 and params["gpus_per_node"] == 2 and params["dependency"] == "afterok:1"
    assert params["additional_parameters"] == {"mail-type": "END", "exclusive": True, "kill-on-invalid-dep": "yes"}
    for bad, message in [
        ({"stages": {"studnet": {}}}, "key 'cluster.stages': value 'studnet' is not allowed; expected stage kinds"),
        ({"stages": {"eval": {"gpus": 1}}}, "unknown key 'cluster.stages.eval.gpus'; allowed here: partition"),
        ({"stages": {"eval": {"time_min": 0}}}, "key 'cluster.stages.eval.time_min': value 0 is not allowed"),
        ({"sbatch": {"dependency": "afterok:1"}}, "key 'cluster.sbatch.dependency': value 'afterok:1' is not allowed"),
        ({"mem_gb": -1}, "key 'cluster.mem_gb': value -1.0 is not allowed; expected a number > 0 or null"),
    ]:
        with pytest.raises(ConfigError) as e:
            from_dict({"cluster": bad})
        assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_status_reads_1000_records_in_under_2s(tmp_path):
    (tmp_path / "manifest").mkdir()
    (tmp_path / "slurm").mkdir()
    config = to_dict(load_sweep(["grid=vae_smoke3", *TINY]).base)
    jobs, keys = {}, []
    for i in range(1000):
        key = f"{i:016x}"
        keys.append(key)
        st = ("done", "failed", "running")[i % 3]
        rec = {"version": 1, "kind": "student", "key": key, "name": f"student[{i}]", "status": st,
               "started": 1.0, "ended": 2.5, "log": f"logs/student-{key}.log", "config": config, "deps": {}}
        if st == "failed":
            rec["error"] = "DivergedError: loss is nan"
        (tmp_path / "manifest" / f"{key}.json").write_text(json.dumps(rec))
        jobs[key] = {"job": f"{500 + i // 100}_{i % 100}", "kind": "student", "name": f"student[{i}]"}
    (tmp_path / "manifest" / "sweep-x.json").write_text(json.dumps(
        {"version": 1, "kind": "sweep", "key": "sweep-x", "name": "g", "status": "done", "ended": 1,
         "config": {"stages": keys + ["ffffffffffffffff"]}}))
    (tmp_path / "slurm" / "jobs.json").write_text(json.dumps({"version": 1, "stages": jobs}))
    calls = []

    def fake_squeue(ids):
        calls.append("squeue")
        return {"500_2": ("RUNNING", "1:00", "None", "g.student")}

    def fake_sacct(ids):
        calls.append("sacct")
        return {"501_1": ("TIMEOUT", "01:00:00")}

    started = time.monotonic()
    rows, sweeps = status.collect(tmp_path, "g", fake_squeue, fake_sacct)
    text = status.render(rows, tmp_path, sweeps)
    took = time.monotonic() - started
    assert took < 2.0, f"status took {took:.2f}s for 1000 records"
    assert calls == ["squeue", "sacct"]
    assert len(rows) == 1001 and "1001 stages: 334 done, 332 running, 0 pending, 334 failed, 1 missing" in text
    by_name = {r.name: r for r in rows}
    assert by_name["student[1]"].state == "failed" and "student-" in by_name["student[1]"].note
    assert by_name["student[101]"].state == "failed" and "TIMEOUT" in by_name["student[101]"].note
    assert by_name["ffffffffffffffff"].state == "missing"
    # and the real command, with real (or absent) squeue/sacct
    out = subprocess.run([sys.executable, str(REPO / "sweeps" / "status.py"), f"results_root={tmp_path}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    took = float(re.search(r"\(([\d.]+)s\)", out.stderr).group(1))
    assert took < 2.0, f"sweeps/status.py took {took:.2f}s for 1000 records"


def test_report_job_records_stages_whose_job_died_silently(tmp_path):
    (tmp_path / "manifest").mkdir()
    (tmp_path / "slurm").mkdir()
    for key, st in (("a" * 16, "running"), ("b" * 16, "running"), ("c" * 16, "done")):
        (tmp_path / "manifest" / f"{key}.json").write_text(json.dumps(
            {"version": 1, "kind": "student", "key": key, "name": key[:3], "status": st, "started": 1.0,
             "log": f"logs/student-{key}.log"}))
    (tmp_path / "slurm" / "jobs.json").write_text(json.dumps({"version": 1, "stages": {
        "a" * 16: {"job": "7_0"}, "b" * 16: {"job": "7_1"}, "c" * 16: {"job": "7_2"}}}))
    acct = {"7_0": ("OUT_OF_MEMORY", "00:00:09"), "7_1": ("RUNNING", "00:00:09"), "7_2": ("COMPLETED", "0")}
    marked = slurm_index.record_dead_jobs(tmp_path, lambda ids: {}, lambda ids: acct)
    assert marked == {"a" * 16: "job OUT_OF_MEMORY, no end recorded"}
    recs = records(tmp_path)
    assert recs["a" * 16]["status"] == "failed" and recs["a" * 16]["error"] == "SLURM job OUT_OF_MEMORY, no end recorded"
    assert recs["b" * 16]["status"] == "running" and recs["c" * 16]["status"] == "done"


# ---------------------------------------------------------------- on the cluster
# One results root holds two sweeps launched back to back: vae_smoke3, the same again at once (it is
# still queued: nothing may be submitted twice), and a grid with a diverging point that shares
# vae_smoke3's teacher, synth and plain student (still queued: its new stages must wait on those
# jobs). They run while the requeue test, first in this file, trains its own teacher.

DIVERGING = ("experiment: vae_mnist\n"
             "rows:\n"
             "  - {distill.lam: 0.0}\n"        # vae_smoke3's plain student: shared, not rerun
             "  - {distill.lam: 1.0e+39}\n"    # beyond float32: L_SD is inf at the first step
             "  - {distill.lam: 0.5}\n")


@pytest.fixture(scope="module")
def launched(cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("slurm-grids")
    root, grids = base / "r", base / "grids"
    grids.mkdir()
    (grids / "slurm_one_diverges.yaml").write_text(DIVERGING)
    env = {"COLLAPSE_GRID_DIR": str(grids)}
    # this launch's training steps wait at a gate, opened once the relaunches below have looked, so its
    # teacher is still queued or running when they do (however loaded the machine)
    gate = base / "gate"
    first = launch("grid=vae_smoke3", f"results_root={root}", *TINY, env={train.STEP_GATE_ENV: str(gate)})
    try:
        assert first.returncode == 0, show(first)
        index1 = slurm_index.read_index(root)
        second = launch("grid=vae_smoke3", f"results_root={root}", *TINY)
        assert second.returncode == 0, show(second)
        index2 = slurm_index.read_index(root)
        # this root's jobs (their batch script lives under it): other tests' jobs may be queued meanwhile
        queued = {line.split("|")[0].split("_")[0] for line in squeued("%i|%j|%o")
                  if "|vae_smoke3." in line and str(root) in line}
        diverging = launch("grid=slurm_one_diverges", f"results_root={root}", *TINY, env=env)
        assert diverging.returncode == 0, show(diverging)
        index3 = slurm_index.read_index(root)
    finally:
        gate.touch()   # a failure above must not leave the jobs waiting
    return {"root": root, "env": env, "first": first, "second": second, "diverging": diverging,
            "index1": index1, "index2": index2, "index3": index3, "queued": queued}


@pytest.fixture(scope="module")
def grid_run(launched):
    return {**launched, "rows": wait_done(launch_jobs(launched["index1"]["launches"][-1]))}


@pytest.fixture(scope="module")
def diverging_run(launched):
    return {**launched, "rows": wait_done(launch_jobs(launched["index3"]["launches"][-1]))}


@pytest.mark.slurm
def test_training_job_requeued_resumes_from_its_checkpoint_with_the_same_metrics(launched, tmp_path, monkeypatch):
    """scontrol requeue (from outside) and submitit's preemption path (USR2): resume, same result.

    Requests `launched` only so that the grids run while this waits for its requeues.
    """
    root, ref_root = tmp_path / "r", tmp_path / "ref"
    # 384 steps of at least 50 ms: the job (it inherits this environment) is still training when
    # the requeues land, on a fast machine as on a loaded one; a delay does not change the numbers
    monkeypatch.setenv(train.STEP_DELAY_ENV, "0.05")
    args = ["grid=vae_smoke3", "cluster=slurm", "profile=smoke", f"results_root={root}", "data.train_size=4096",
            "data.test_size=128", "train.epochs=6", "train.checkpoint_every=8", "train.batch_size=64"]
    sweep = load_sweep(args)
    plan = planning.build(sweep)
    teacher = next(iter(plan.stages.values()))
    assert teacher.kind == "teacher"
    from collapse.stages import write_spec
    for r in (root, ref_root):
        write_spec(r, teacher)
    # the uninterrupted reference, here, meanwhile
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    ref = subprocess.Popen([sys.executable, "-m", "collapse.run", str(ref_root), teacher.key], env=env, cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = root / "logs" / f"teacher-{teacher.key}.log"
    ckpt = root / "stages" / teacher.key / "checkpoints" / "latest.json"
    job = None

    def text():
        return log.read_text() if log.exists() else ""

    def waited(what, cond):   # generous: CI machines are small and shared
        wait_for(what, cond, timeout=300, detail=lambda: f"log:\n{text()[-3000:]}")

    def step():
        try:
            return int(json.loads(ckpt.read_text())["tag"].split("-")[1])
        except (OSError, ValueError, KeyError):
            return 0

    try:
        out = io.StringIO()
        assert slurm.submit(sweep, plan, [teacher], root, out=out) == 0, out.getvalue()   # the real path
        launch_ = slurm_index.read_index(root)["launches"][-1]
        job = launch_["arrays"][0]["job"]
        waited("a first checkpoint", lambda: step() > 0)
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=20)
        waited("the requeued job to resume", lambda: text().count("resumed at") >= 1)
        resumed = step()
        waited("a checkpoint after the resume", lambda: step() > resumed)
        import submitit
        submitit.SlurmJob(folder=slurm_index.submitit_folder(root), job_id=job)._interrupt()   # SIGTERM, then USR2
        waited("the preempted job to resume", lambda: text().count("resumed at") >= 2)
        rows = wait_done(launch_jobs(launch_), timeout=180)
        assert rows[job]["State"] == "COMPLETED", rows
        assert ref.wait(timeout=180) == 0
    finally:
        if ref.poll() is None:
            ref.kill()
        if job and sys.exc_info()[0] is not None:
            subprocess.run(["scancel", job], timeout=20)
    rec, want = records(root)[teacher.key], records(ref_root)[teacher.key]
    assert rec["status"] == want["status"] == "done", (rec.get("error"), want.get("error"))
    log_text = text()
    assert log_text.count("SLURM job") == 3 and "restart 2" in log_text, log_text
    assert "Caught signal SIGUSR2" in log_text and "Requeued job" in log_text, log_text
    resumes = re.findall(r"resumed at epoch \d+ batch \d+ step (\d+)", log_text)
    assert len(resumes) == 2 and 0 < int(resumes[0]) < int(resumes[1]) < rec["metrics"]["steps"], resumes

    def strip(metrics):
        return {**metrics, "history": [{k: v for k, v in h.items() if k != "seconds"} for h in metrics["history"]]}
    assert strip(rec["metrics"]) == strip(want["metrics"])
    assert rec["artifacts"]["weights"]["sha256"] == want["artifacts"]["weights"]["sha256"]


@pytest.mark.slurm
def test_grid_runs_as_one_array_per_kind_in_dependency_order(grid_run):
    root, index, rows = grid_run["root"], grid_run["index1"], grid_run["rows"]
    first = grid_run["first"].stdout
    assert "sweep sweep-" in first and "watch: python sweeps/status.py results_root=" in first, first
    launch_ = index["launches"][-1]
    assert [(a["level"], a["kind"], a["size"]) for a in launch_["arrays"]] == [
        (0, "teacher", 1), (1, "synth", 1), (1, "eval", 1), (2, "student", 3), (3, "eval", 3), (4, "report", 1)]
    report_array = launch_["arrays"][-1]   # afterany on every other array: it runs whatever failed
    canary_job = launch_["canary"]["job"]     # level 0 and the report also wait for the launch's canary
    assert report_array["dependency"] == ("afterany:" + ":".join(a["job"] for a in launch_["arrays"][:-1])
                                          + f",afterok:{canary_job}")
    assert launch_["arrays"][0]["dependency"] == f"afterok:{canary_job}"
    for a in launch_["arrays"]:
        assert a["job"] in first
    job = {k: e["job"] for k, e in index["stages"].items()}
    recs = {k: r for k, r in records(root).items() if k in job}
    assert len(recs) == 10 and all(r["status"] == "done" for r in recs.values()), recs
    for r in recs.values():   # each ran in the job recorded for it
        assert r["slurm_job_id"] is not None and r["log"].startswith("logs/")
    assert all(r["State"] == "COMPLETED" for r in rows.values()), rows

    by_kind = {}
    for key, r in recs.items():
        by_kind.setdefault(r["kind"], []).append(r)
    students = by_kind["student"]
    assert sorted(job[s["key"]] for s in students) == [f"{launch_['arrays'][3]['job']}_{i}" for i in range(3)]
    (teacher,), (synth,) = by_kind["teacher"], by_kind["synth"]
    assert ts(rows[job[synth["key"]]]["Start"]) >= ts(rows[job[teacher["key"]]]["End"])
    for ev in by_kind["eval"]:
        model = ev["deps"]["model"]
        assert ts(rows[job[ev["key"]]]["Start"]) >= ts(rows[job[model]]["End"]), (ev["name"], rows)
        assert recs[model]["ended"] <= ev["started"]
    # the report stage wrote the report, after the last eval
    (report,) = by_kind["report"]
    assert "report/vae_smoke3.md" in report["metrics"]["files"], report
    assert report["started"] >= max(ev["ended"] for ev in by_kind["eval"])
    md = root / "report" / "vae_smoke3.md"
    assert md.is_file() and md.stat().st_mtime >= max(ev["ended"] for ev in by_kind["eval"])
    table = status_table(root, "grid=vae_smoke3")
    assert "10 stages: 10 done, 0 running, 0 pending, 0 failed, 0 missing" in table, table


@pytest.mark.slurm
def test_relaunch_while_running_submits_nothing_twice(grid_run):
    second = grid_run["second"]
    assert "nothing new to submit: all 10 stages to run are already queued or running" in second.stdout, show(second)
    i1, i2 = grid_run["index1"], grid_run["index2"]
    assert i2["stages"] == i1["stages"]
    assert i2["launches"][-1]["arrays"] == []
    # the queue right after the relaunch held this grid's jobs of the first launch, and no others
    first_jobs = set(launch_jobs(i1["launches"][-1]))
    assert grid_run["queued"] and grid_run["queued"] <= first_jobs, (grid_run["queued"], first_jobs)


@pytest.mark.slurm
def test_new_grid_sharing_queued_stages_waits_on_their_jobs(diverging_run):
    i1, i3 = diverging_run["index1"], diverging_run["index3"]
    launch_ = i3["launches"][-1]
    # only its two new students and their evals: teacher, synth, plain student are vae_smoke3's jobs
    assert [(a["level"], a["kind"], a["size"]) for a in launch_["arrays"]] == [
        (0, "student", 2), (1, "eval", 2), (2, "report", 1)]
    synth_key, synth_job = next((k, e["job"]) for k, e in i1["stages"].items() if e["kind"] == "synth")
    # teacher, synth, eval:teacher, plain student and its eval are shared with vae_smoke3: each one is
    # either still queued (skipped, waited on) or, on a fast machine, already done when this launched
    done = int(re.search(r"(\d+) already done", diverging_run["diverging"].stdout).group(1))
    assert len(launch_["skipped"]) + done == 5, (launch_["skipped"], done)
    if synth_key in launch_["skipped"]:
        assert launch_["arrays"][0]["dependency"].startswith("afterok:"), launch_
        assert synth_job in re.split("[:,]", launch_["arrays"][0]["dependency"]), launch_
    assert launch_["arrays"][1]["dependency"] == f"aftercorr:{launch_['arrays'][0]['job']}"
    if launch_["skipped"]:
        assert f"already queued or running, not resubmitted: {len(launch_['skipped'])} stages" \
            in diverging_run["diverging"].stdout


@pytest.mark.slurm
def test_failed_grid_point_others_finish_status_shows_it_relaunch_reruns_only_it(diverging_run):
    root, env, rows = diverging_run["root"], diverging_run["env"], diverging_run["rows"]
    index = diverging_run["index3"]
    launch_ = index["launches"][-1]
    mine = {k for k, e in index["stages"].items() if e["launch"] == launch_["id"]}
    recs = records(root)
    failed = [r for r in recs.values() if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["kind"] == "student" and "DivergedError" in failed[0]["error"], failed
    bad = failed[0]
    bad_eval = next(k for k in mine if index["stages"][k]["name"] == "eval:" + bad["name"])
    good = next(r for r in recs.values() if r["name"] == "student[lam=0.5,seed=0]")
    good_eval = next(k for k in mine if index["stages"][k]["name"] == "eval:" + good["name"])
    assert good["status"] == "done" and recs[good_eval]["status"] == "done"     # the others finish
    assert rows[index["stages"][bad["key"]]["job"]]["State"] == "FAILED"
    assert rows[index["stages"][bad_eval]["job"]]["State"] == "CANCELLED"    # its input failed: removed
    assert bad_eval not in recs
    table = status_table(root, "grid=slurm_one_diverges")
    line = row_of(table, bad["name"])
    assert " failed " in line and str(root / bad["log"]) in line and "DivergedError" in line, table
    assert " missing " in row_of(table, "eval:" + bad["name"]), table
    assert "10 stages: 7 done, 0 running, 0 pending, 1 failed, 1 missing, 0 cancelled, 1 partial" in table, table
    assert " partial " in row_of(table, "report[slurm_one_diverges]"), table   # it ran although an input failed
    assert "failed: student failed: DivergedError" in (root / "report" / "slurm_one_diverges.md").read_text()

    again = launch("grid=slurm_one_diverges", f"results_root={root}", *TINY, env=env)
    assert again.returncode == 0, show(again)
    index = slurm_index.read_index(root)
    relaunch = index["launches"][-1]
    assert [(a["kind"], a["size"]) for a in relaunch["arrays"]] == [("student", 1), ("eval", 1), ("report", 1)], relaunch
    report_key = next(k for k, r in recs.items() if r["kind"] == "report")
    assert {k for k, e in index["stages"].items() if e["launch"] == relaunch["id"]} == {bad["key"], bad_eval, report_key}
    rows = wait_done(launch_jobs(relaunch))
    assert rows[relaunch["arrays"][0]["job"]]["State"] == "FAILED"        # the same divergence, again
    after = records(root)
    assert after[bad["key"]]["started"] > bad["ended"]
    for key, r in recs.items():
        if key not in (bad["key"], report_key):
            assert after[key].get("ended") == r.get("ended"), r["name"]
    assert after[report_key]["status"] == "partial" and after[report_key]["started"] > recs[report_key]["ended"]


@pytest.mark.slurm
def test_sbatch_rejection_mid_sweep_cancels_what_was_submitted(cluster, tmp_path):
    root = tmp_path / "r"
    out = launch("grid=vae_smoke3", f"results_root={root}", *TINY, "cluster.stages.eval.partition=no_such_partition",
                 check=False)
    assert out.returncode == 1, show(out)
    err = out.stderr.strip().splitlines()[-1]
    assert err.startswith("error: sbatch rejected the eval group (level 1, 1 stage): ") and "partition" in err, err
    cancelled = re.search(r"cancelled the 3 jobs this launch had submitted \((\d+), (\d+), (\d+)\)", err)   # canary, teacher, synth
    assert cancelled, err
    rows = wait_done(cancelled.groups(), timeout=30)
    assert all(r["State"] == "CANCELLED" for r in rows.values()), rows
    index = slurm_index.read_index(root)
    assert index["stages"] == {} and index["launches"][-1]["cancelled"] == list(cancelled.groups())
    assert records(root) == {}


@pytest.mark.slurm
def test_two_task_job_step_forms_one_process_group(cluster):
    """ensure_distributed in a 2-task SLURM step: ranks, world size and master from the SLURM env (gloo)."""
    code = ("import os, torch; from collapse import distributed; distributed.ensure_distributed(); "
            "t = torch.tensor([distributed.global_rank() + 1.0]); torch.distributed.all_reduce(t); "
            "print('rank', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'], 'sum', t.item(), flush=True); "
            "torch.distributed.barrier(); torch.distributed.destroy_process_group()")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    out = subprocess.run(["srun", "-n", "2", "--cpus-per-task=1", "-t", "2", sys.executable, "-c", code],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = sorted(line for line in out.stdout.splitlines() if line.startswith("rank "))
    assert lines == ["rank 0 of 2 sum 3.0", "rank 1 of 2 sum 3.0"], out.stdout
