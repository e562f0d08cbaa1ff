"""Stopping a sweep: sweeps/cancel.py on SLURM (collapse/cancel.py) and SIGINT/SIGTERM to a local launch
(collapse/executors/local.py). Both leave the stopped stages recorded "cancelled", and a relaunch resumes
them from their checkpoints to the same numbers as a run never stopped.

One tiny grid (teacher, synth, one student, two evals; 8 steps per training stage, a checkpoint every 2)
is run once uninterrupted, locally, as the reference. Threads are fixed to 1 everywhere: the thread count
changes the last digits.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from collapse import cancel, lease  # noqa: E402
from collapse.executors import local  # noqa: E402
from helpers import (TINY_VAE, cluster, held, launch, launch_jobs, records, show, squeued,  # noqa: E402,F401
                     status_table, wait_done, wait_for)
from collapse import slurm_index  # noqa: E402

GRID = "experiment: vae_mnist\nrows:\n  - {distill.lam: 0.5}\n"
CHECKPOINT_EVERY = 2
ARGS = ["grid=cancel_one", *TINY_VAE, "train.threads=1", "train.batch_size=32",
        f"train.checkpoint_every={CHECKPOINT_EVERY}"]


@pytest.fixture(scope="module")
def grid_env(tmp_path_factory):
    grids = tmp_path_factory.mktemp("grids")
    (grids / "cancel_one.yaml").write_text(GRID)
    return {"COLLAPSE_GRID_DIR": str(grids), "OMP_NUM_THREADS": "1"}


ONE_WORKER_WITH_SLURM = True   # the SLURM test below reads the same module fixture (tests/conftest.py)


@pytest.fixture(scope="module")
def reference(grid_env, tmp_path_factory):
    """{stage name: metrics} of the grid run locally, never stopped."""
    root = tmp_path_factory.mktemp("reference") / "r"
    out = launch(*ARGS, "cluster=local", f"results_root={root}", env=grid_env, timeout=600)
    assert out.returncode == 0, show(out)
    return by_name(root)


def by_name(root) -> dict:
    return {r["name"]: strip(r.get("metrics")) for r in records(root).values() if r["status"] == "done"}


def strip(value):
    """Metrics without wall times."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k != "seconds" and not k.endswith("_seconds")}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def cancel_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "sweeps" / "cancel.py"), *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def stage_processes(root) -> list[int]:
    """Pids of `python -m collapse.run ROOT ...` processes of this results root, and of its warm server and the
    stages forked from it (collapse/executors/warm.py), whose command line names the server and ROOT."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if {b"collapse.run", b"collapse.executors.warm"} & set(argv) and str(root).encode() in argv:
                pids.append(int(entry))
    return pids


# ---------------------------------------------------------------- no cluster needed

def test_array_cancelled_whole_or_task_by_task():
    queued = {"5_0": 1, "5_1": 1, "5_2": 1, "7": 1, "9_1": 1}
    assert cancel.scancel_ids({"5_0", "5_2", "7", "9_1"}, queued) == ["5_0", "5_2", "7", "9"]
    assert cancel.scancel_ids({"5_0", "5_1", "5_2"}, queued) == ["5"]


def test_bad_input_is_one_error_line_exit_2(tmp_path):
    (tmp_path / "manifest").mkdir()
    (tmp_path / "slurm").mkdir()
    (tmp_path / "manifest" / "sweep-x.json").write_text(json.dumps(
        {"version": 1, "kind": "sweep", "key": "sweep-x", "name": "g", "status": "done", "ended": 1,
         "config": {"stages": ["a" * 16]}}))
    (tmp_path / "slurm" / "jobs.json").write_text(json.dumps(
        {"version": 1, "stages": {"a" * 16: {"job": "7_0", "name": "student[lam=0.5,seed=0]"}}}))
    for args, message in [
        ([], "error: expected results_root=DIR"),
        ([f"results_root={tmp_path / 'nothing'}"], "expected a results root with a manifest/ folder"),
        ([f"results_root={tmp_path}", "grid=nope"], "error: key 'grid': value 'nope' is not allowed; expected "
                                                    "a grid launched in"),
        ([f"results_root={tmp_path}", "teacher*"], "error: stage pattern 'teacher*' matches no stage"),
    ]:
        out = cancel_cli(*args)
        assert out.returncode == 2 and out.stdout == "", (args, out)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, out.stderr)
    # an exact name with brackets selects its stage (fnmatch alone would read [..] as a character class)
    index = slurm_index.read_index(tmp_path)
    assert list(cancel.select(tmp_path, index, "g", ["student[lam=0.5,seed=0]"])) == ["a" * 16]
    assert list(cancel.select(tmp_path, index, None, ["student[lam=0.5*"])) == ["a" * 16]


# ---------------------------------------------------------------- a local launch stopped by a signal

def test_sigint_to_local_launch_stops_every_stage_and_relaunch_resumes(grid_env, reference, tmp_path):
    root = tmp_path / "r"
    # the teacher holds just after its first checkpoint until it is stopped
    env = {**os.environ, "PYTHONPATH": str(REPO), **grid_env, **held(tmp_path / "never", CHECKPOINT_EVERY)}
    proc = subprocess.Popen([sys.executable, str(REPO / "sweeps" / "launch.py"), *ARGS, "cluster=local",
                             f"results_root={root}"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ckpt = wait_for("a first checkpoint", lambda: list(root.glob("stages/*/checkpoints/latest.json"))
                        or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        key = ckpt[0].parent.parent.name
        holder = wait_for("the stage's lease", lambda: lease.read(root, key))
        assert holder.pid in stage_processes(root)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        wait_for("the stage processes to end", lambda: not stage_processes(root), timeout=60)
        gone = time.monotonic() - sent
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    print(f"SIGINT: stage processes gone after {gone:.2f}s, the launch exited after {took:.2f}s")
    assert gone < local.STOP_GRACE_S + 5, "the stage did not end on SIGINT, nor on SIGKILL"
    assert proc.returncode == 130, f"{out}\n{err[-3000:]}"
    assert stage_processes(root) == [], "stage processes left behind"
    with pytest.raises(ProcessLookupError):
        os.kill(holder.pid, 0)
    last = err.strip().splitlines()[-1]
    assert last.startswith("cancelled (SIGINT): stopped 1 running stages (") and "Resume from their " \
        "checkpoints: python sweeps/launch.py grid=cancel_one" in last, err[-3000:]
    rec = records(root)[key]
    assert rec["status"] == "cancelled" and "SIGINT" in rec["error"], rec
    assert lease.live_holder(root, key) is None
    assert root.joinpath("stages", key, "checkpoints", "latest.json").exists()   # kept, to resume from
    row = next(line for line in status_table(root).splitlines() if line.startswith(rec["name"] + " "))
    assert " cancelled " in row, row

    again = launch(*ARGS, "cluster=local", f"results_root={root}", env=grid_env, timeout=600)
    assert again.returncode == 0, show(again)
    log = (root / rec["log"]).read_text()
    assert "resumed at" in log and "cancelled: SIGINT to the launch" in log, log[-3000:]
    assert by_name(root) == reference


def test_sigterm_to_local_launch_exits_143(grid_env, tmp_path):
    root = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": str(REPO), **grid_env, **held(tmp_path / "never")}
    proc = subprocess.Popen([sys.executable, str(REPO / "sweeps" / "launch.py"), *ARGS, "cluster=local",
                             f"results_root={root}"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for("a stage process", lambda: stage_processes(root) or proc.poll() is not None)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 143, err[-3000:]
    assert stage_processes(root) == []
    assert "cancelled (SIGTERM): stopped 1 running stages" in err, err[-3000:]
    assert [r["status"] for r in records(root).values()] == ["cancelled"]


# ---------------------------------------------------------------- on the cluster

@pytest.mark.slurm
def test_cancel_one_sweep_mid_run_leaves_the_other_and_relaunch_finishes_identically(
        cluster, grid_env, reference, tmp_path):  # noqa: F811
    first, second = tmp_path / "first", tmp_path / "second"
    # the first sweep's teacher job holds just after its first checkpoint until it is cancelled
    holding = held(tmp_path / "never", CHECKPOINT_EVERY)
    out = launch(*ARGS, "cluster=slurm", f"results_root={first}", env={**grid_env, **holding})
    assert out.returncode == 0, show(out)
    out = launch(*ARGS, "cluster=slurm", f"results_root={second}", env=grid_env)
    assert out.returncode == 0, show(out)
    jobs1 = launch_jobs(slurm_index.read_index(first)["launches"][-1])
    jobs2 = launch_jobs(slurm_index.read_index(second)["launches"][-1])
    try:
        wait_for("the first sweep's teacher to checkpoint", lambda: list(first.glob("stages/*/checkpoints/latest.json")))
        started = time.monotonic()
        out = cancel_cli(f"results_root={first}")
        took = time.monotonic() - started
        assert out.returncode == 0, show(out)
        print(f"cancel took {took:.2f}s\n{out.stdout}")
        assert "cancelled " in out.stdout and "Relaunch the sweep" in out.stdout, out.stdout
        assert not squeued() & set(jobs1), (jobs1, squeued())
        rows = wait_done(jobs2)
        assert all(r["State"] == "COMPLETED" for r in rows.values()), rows
    finally:
        subprocess.run(["scancel", *jobs1], timeout=20)
    assert by_name(second) == reference     # untouched, and the same numbers

    recs = records(first)
    unfinished = [r for r in recs.values() if r["status"] != "done"]
    assert unfinished and all(r["status"] == "cancelled" for r in unfinished), recs
    table = status_table(first)
    head = table.splitlines()[0]
    assert "0 running, 0 pending, 0 failed, 0 missing" in head and f"{len(unfinished)} cancelled" in head, table
    assert len(recs) == 6      # stages never started are recorded too (the report stage too)
    teacher = next(r for r in recs.values() if r["kind"] == "teacher")
    assert teacher["status"] == "cancelled" and lease.live_holder(first, teacher["key"]) is None, teacher

    out = launch(*ARGS, "cluster=slurm", f"results_root={first}", env=grid_env)
    assert out.returncode == 0, show(out)
    relaunch = slurm_index.read_index(first)["launches"][-1]
    assert sum(a["size"] for a in relaunch["arrays"]) == len(unfinished), relaunch
    rows = wait_done(launch_jobs(relaunch))
    assert all(r["State"] == "COMPLETED" for r in rows.values()), rows
    assert "resumed at" in (first / teacher["log"]).read_text()
    assert by_name(first) == reference
