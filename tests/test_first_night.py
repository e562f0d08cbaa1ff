"""The first night on a cluster: jobs run the code they were launched with (collapse/snapshot.py), a
canary fails a sweep whose nodes cannot run it (collapse/canary.py), a busy scheduler is asked again
(slurm_index.with_retries), and the local SLURM schedules GPU requests (slurm/start.sh).

The sweeps are the toy modality of tests/toy_task.py (each stage a second or two), launched from a copy
of the checkout, which the tests then edit while stages wait.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
sys.path.insert(0, str(REPO))

from collapse import lease, snapshot  # noqa: E402
from collapse import slurm_index  # noqa: E402
from collapse.slurm_index import SubmissionError, TransientSlurmError, with_retries  # noqa: E402

from helpers import TOY_ENV, wait_for  # noqa: E402
BROKEN = 'raise ImportError("collapse/train.py was edited after the launch")\n'


def checkout(tmp_path: Path) -> Path:
    """A copy of the project's code to launch from and then edit (never the real checkout)."""
    copy = tmp_path / "checkout"
    for part in snapshot.PARTS:
        shutil.copytree(REPO / part, copy / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return copy


def env(**extra) -> dict:
    # tests/ for toy_task only: the project's code comes from the copy (sweeps/launch.py puts it first)
    return {**os.environ, **TOY_ENV, "PYTHONPATH": str(TESTS), **extra}


def launch(copy: Path, *args, environ=None, wait=True, timeout=300):
    cmd = [sys.executable, str(copy / "sweeps" / "launch.py"), "grid=toy_lambda", "train.threads=1", *args]
    if not wait:   # its output in copy/../launch.out
        with open(copy.parent / "launch.out", "w") as f:
            return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=environ or env(), cwd=copy)
    return subprocess.run(cmd, capture_output=True, text=True, env=environ or env(), cwd=copy, timeout=timeout)


def show(out) -> str:
    return f"exit {out.returncode}\n--- stdout\n{out.stdout}\n--- stderr\n{(out.stderr or '')[-3000:]}"


def teacher_key(monkeypatch, root: Path, *args) -> str:
    for k, v in TOY_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.syspath_prepend(str(TESTS))
    from collapse import plan as planning
    from collapse.grid import load_sweep
    sweep = load_sweep(["grid=toy_lambda", "train.threads=1", f"results_root={root}", *args])
    return next(s.key for s in planning.build(sweep).stages.values() if s.kind == "teacher")


def records(root: Path) -> dict:
    out = {}
    for p in (root / "manifest").glob("*.json"):
        r = json.loads(p.read_text())
        if r.get("kind") != "sweep":
            out[r["name"]] = r
    return out


# ---------------------------------------------------------------- the snapshot, no cluster

def test_snapshot_is_content_addressed_read_only_and_checked_before_import(tmp_path):
    copy = checkout(tmp_path)
    root = tmp_path / "r"
    first = snapshot.take(root, copy)
    assert first.path == root / "code" / first.hash and first.hash == snapshot.tree_hash(copy)
    assert snapshot.take(root, copy) == first                       # the same code: one snapshot
    mode = (first.path / "collapse" / "train.py").stat().st_mode
    assert not mode & 0o222 and not (first.path / "collapse").stat().st_mode & 0o222   # written read-only
    check = first.verify_command(sys.executable)
    assert subprocess.run(check, capture_output=True).returncode == 0

    (copy / "collapse" / "train.py").write_text(BROKEN)              # an edit: a second snapshot
    second = snapshot.take(root, copy)
    assert second.hash != first.hash and "edited after the launch" in (second.path / "collapse" / "train.py").read_text()
    assert "edited" not in (first.path / "collapse" / "train.py").read_text()

    victim = first.path / "collapse" / "train.py"                    # someone writes into the first one
    os.chmod(victim.parent, 0o755)
    os.chmod(victim, 0o644)
    victim.write_text(victim.read_text() + "\n# not the launched code\n")
    out = subprocess.run(check, capture_output=True, text=True)
    assert out.returncode == snapshot.CHANGED_EXIT, out
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"error: code snapshot {first.path} changed since its launch") and first.hash in line, line
    _restore(copy, first)                    # the launched code again: its snapshot is found changed
    with pytest.raises(snapshot.SnapshotError, match="does not hold the code it is named for"):
        snapshot.take(root, copy)


def _restore(copy: Path, snap) -> None:
    (copy / "collapse" / "train.py").write_text((REPO / "collapse" / "train.py").read_text())
    assert snapshot.tree_hash(copy) == snap.hash


def test_dirty_checkout_keeps_its_diff_beside_the_snapshot(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True, timeout=120)
    clean = snapshot.take(tmp_path / "r", clone)
    assert clean.commit and clean.dirty is False and not (clean.path / snapshot.DIFF).exists()
    (clone / "collapse" / "train.py").write_text((clone / "collapse" / "train.py").read_text() + "# tuned\n")
    dirty = snapshot.take(tmp_path / "r", clone)
    assert dirty.dirty is True and dirty.commit == clean.commit
    assert "+# tuned" in (dirty.path / snapshot.DIFF).read_text()


# ---------------------------------------------------------------- the local executor

def test_local_launch_runs_the_code_it_was_launched_with(tmp_path, monkeypatch):
    copy, root = checkout(tmp_path), tmp_path / "r"
    key = teacher_key(monkeypatch, root, "cluster=local")
    held = lease.acquire(root, key)          # the teacher waits, so every stage starts after the edit
    proc = launch(copy, "cluster=local", f"results_root={root}", wait=False)
    output = tmp_path / "launch.out"
    try:
        wait_for("the launch to wait on the held teacher", lambda: "waiting for it" in output.read_text(),
                 timeout=120, detail=output.read_text)
        (copy / "collapse" / "train.py").write_text(BROKEN)
    finally:
        held.release()
    proc.wait(timeout=300)
    out = output.read_text()
    assert proc.returncode == 0, out
    recs = records(root)
    assert len(recs) == 8 and {r["status"] for r in recs.values()} == {"done"}, {n: r.get("error") for n, r in recs.items()}
    (launched,) = [line for line in out.splitlines() if line.startswith("code ")]
    digest = launched.split()[1]
    assert {r["code"] for r in recs.values()} == {digest}, launched

    # the relaunch after a second edit: a new snapshot, and it says the done stages came from the old one
    (copy / "collapse" / "train.py").write_text((REPO / "collapse" / "train.py").read_text() + "# second edit\n")
    again = launch(copy, "cluster=local", f"results_root={root}", "redo=report")
    assert again.returncode == 0, show(again)
    (line,) = [x for x in again.stdout.splitlines() if x.startswith("code ")]
    new = line.split()[1]
    assert new != digest and f"7 done stages came from older code ({digest} x 7)" in line, line
    assert records(root)["report[toy_lambda]"]["code"] == new
    table = subprocess.run([sys.executable, str(REPO / "sweeps" / "status.py"), f"results_root={root}"],
                           capture_output=True, text=True, timeout=60, env=env(PYTHONPATH=str(REPO)))
    assert f"code: {digest} (no git) for 7 stages; {new} (no git) for 1 stage" in table.stdout, table.stdout


# ---------------------------------------------------------------- retries, no cluster

def test_retries_ask_a_busy_scheduler_again_then_say_one_line():
    calls = []

    def busy_twice():
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise TransientSlurmError("Socket timed out on send/recv operation")
        return "ok"
    assert with_retries(busy_twice, "sbatch", budget_s=30) == "ok" and len(calls) == 3
    assert 0.9 < calls[1] - calls[0] < 2 and 1.9 < calls[2] - calls[1] < 3.5      # backoff 1 s, then 2 s

    def never():
        raise TransientSlurmError("Unable to contact slurm controller (connect failure)")
    with pytest.raises(SubmissionError) as e:
        with_retries(never, "squeue", budget_s=2.5)
    assert str(e.value).startswith("squeue: SLURM answered 'Unable to contact slurm controller (connect failure)' 2 times")

    def broken():
        raise ValueError("not transient")
    with pytest.raises(ValueError):          # anything else is not retried
        with_retries(broken, "sbatch", budget_s=30)
    assert slurm_index.transient("sbatch: error: Batch job submission failed: Resource temporarily unavailable")
    assert not slurm_index.transient("sbatch: error: invalid partition specified: nope")


# ---------------------------------------------------------------- the real local SLURM

def slurm_answers() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no SLURM cluster: sinfo/sbatch not on PATH (start one with `bash slurm/start.sh`)"
    out = subprocess.run(["sacct", "-n", "-X", "-S", "now-1minute"], capture_output=True, text=True, timeout=20)
    return None if out.returncode == 0 else f"no SLURM accounting: {out.stderr.strip()[:200]}"


@pytest.fixture
def cluster():
    why = slurm_answers()
    if why:
        pytest.skip(why)


def sacct(job_ids) -> dict:
    ids = ",".join(sorted({str(j).split("_")[0] for j in job_ids}))
    out = subprocess.run(["sacct", "-X", "-P", "-n", "-j", ids, "-o", "JobID,State,AllocTRES,Start"],
                         capture_output=True, text=True, timeout=20).stdout
    return {p[0]: {"state": p[1].split()[0] if p[1] else "", "tres": p[2], "start": p[3]}
            for p in (line.split("|") for line in out.splitlines()) if len(p) == 4}


ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


def launch_jobs(root: Path) -> list[str]:
    la = slurm_index.read_index(root)["launches"][-1]
    return [a["job"] for a in la["arrays"]] + ([la["canary"]["job"]] if la.get("canary") else [])


def wait_ended(jobs, timeout=300):
    rows = {}

    def ended():
        nonlocal rows
        rows = sacct(jobs)
        return set(jobs) <= {j.split("_")[0] for j in rows} and all(r["state"] in ENDED for r in rows.values())
    try:
        wait_for(f"jobs {jobs} to end", ended, timeout=timeout, poll=1, detail=lambda: str(rows))
    finally:
        if not ended():
            subprocess.run(["scancel", *jobs], timeout=20)
    return rows


@pytest.mark.slurm
def test_slurm_jobs_run_the_code_they_were_launched_with(cluster, tmp_path):
    copy, root = checkout(tmp_path), tmp_path / "r"
    out = launch(copy, "cluster=slurm", f"results_root={root}")
    assert out.returncode == 0, show(out)
    teacher = slurm_index.read_index(root)["launches"][-1]["arrays"][0]
    assert teacher["kind"] == "teacher"
    subprocess.run(["scontrol", "hold", teacher["job"]], check=True, timeout=20)   # (it also waits on the canary)
    try:
        (copy / "collapse" / "train.py").write_text(BROKEN)   # every stage's job starts after this
    finally:
        subprocess.run(["scontrol", "release", teacher["job"]], check=True, timeout=20)
    rows = wait_ended(launch_jobs(root))
    assert all(r["state"] == "COMPLETED" for r in rows.values()), rows
    recs = records(root)
    digest = next(x for x in out.stdout.splitlines() if x.startswith("code ")).split()[1]
    assert len(recs) == 8 and {r["status"] for r in recs.values()} == {"done"}
    assert {r["code"] for r in recs.values()} == {digest}
    launch_ = slurm_index.read_index(root)["launches"][-1]
    assert launch_["code"] == digest and slurm_index.read_canary(root, launch_["id"])["status"] == "done"
    script = next((root / "slurm" / "submitit").glob("*_submission.sh")).read_text()
    assert f"cd {root / 'code' / digest}" in script and "--chdir" in script and str(copy) not in script.split(
        "#SBATCH --output")[0].replace(str(root), "")


@pytest.mark.slurm
def test_a_gpu_request_on_a_node_without_gpus_fails_the_sweep_at_its_canary(cluster, tmp_path):
    copy, root = checkout(tmp_path), tmp_path / "r"
    out = launch(copy, "cluster=slurm", f"results_root={root}", "cluster.stages.teacher.gpus_per_node=1")
    assert out.returncode == 0, show(out)
    launch_ = slurm_index.read_index(root)["launches"][-1]
    job = launch_["canary"]["job"]
    assert launch_["canary"]["kind"] == "teacher"
    rows = wait_ended(launch_jobs(root), timeout=240)
    assert rows[job]["state"] == "FAILED" and "gres/gpu=1" in rows[job]["tres"], rows   # scheduled on a GPU
    assert all(r["state"] == "CANCELLED" for j, r in rows.items() if j != job), rows    # nothing else ran
    assert records(root) == {}
    rec = slurm_index.read_canary(root, launch_["id"])
    assert rec["status"] == "failed" and "asked for 1 GPU(s) per node and sees 0" in rec["error"], rec
    assert rec["seconds"] < 120
    table = subprocess.run([sys.executable, str(REPO / "sweeps" / "status.py"), f"results_root={root}"],
                           capture_output=True, text=True, timeout=60, env=env(PYTHONPATH=str(REPO))).stdout
    (line,) = [x for x in table.splitlines() if x.startswith("canary ")]
    assert "failed" in line and "canary failed: the job asked for 1 GPU(s) per node and sees 0" in line, table
    assert str(slurm_index.job_stdout(root, job)) in line, table


def stand_in_sbatch(tmp_path: Path, succeed: str, real_args: str = "") -> Path:
    """A folder with an `sbatch` that answers as a busy slurmctld unless `succeed` (a bash test on $n, the
    call's number) holds, then runs the real sbatch (with `real_args` first); each call is counted in calls.txt."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = shutil.which("sbatch")
    (bin_dir / "sbatch").write_text(f"""#!/usr/bin/env bash
n=$(( $(cat {bin_dir}/calls.txt 2>/dev/null || echo 0) + 1 )); echo $n > {bin_dir}/calls.txt
if {succeed}; then exec {real} {real_args} "$@"; fi
echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2
exit 1
""")
    (bin_dir / "sbatch").chmod(0o755)
    return bin_dir


@pytest.mark.slurm
def test_sbatch_failing_twice_does_not_fail_the_launch(cluster, tmp_path):
    copy, root = checkout(tmp_path), tmp_path / "r"
    bin_dir = stand_in_sbatch(tmp_path, '(( n > 2 ))')
    environ = env(PATH=f"{bin_dir}:{os.environ['PATH']}")
    out = launch(copy, "cluster=slurm", f"results_root={root}", environ=environ)
    assert out.returncode == 0, show(out)
    launch_ = slurm_index.read_index(root)["launches"][-1]
    assert len(launch_["arrays"]) == 6 and launch_.get("canary")
    assert int((bin_dir / "calls.txt").read_text()) == 2 + 7     # two busy answers, then 7 sbatch calls
    rows = wait_ended(launch_jobs(root))
    assert all(r["state"] == "COMPLETED" for r in rows.values()), rows


@pytest.mark.slurm
def test_sbatch_never_answering_cancels_what_was_submitted_and_records_nothing(cluster, tmp_path):
    copy, root = checkout(tmp_path), tmp_path / "r"
    # the canary goes in, then never again; it is held, so that it is still queued when the launch cancels it
    # (a canary takes 4 s: on a fast node it could end before the retries run out)
    bin_dir = stand_in_sbatch(tmp_path, '(( n == 1 ))', real_args="--hold")
    environ = env(PATH=f"{bin_dir}:{os.environ['PATH']}", COLLAPSE_SLURM_RETRY_S="4")
    started = time.monotonic()
    out = launch(copy, "cluster=slurm", f"results_root={root}", environ=environ)
    assert out.returncode == 1 and time.monotonic() - started < 60, show(out)
    (err,) = [x for x in out.stderr.strip().splitlines() if x.startswith("error:")]
    assert err.startswith("error: sbatch rejected the teacher group (level 0, 1 stage): sbatch of toy_lambda.teacher: "
                          "SLURM answered 'Batch job submission failed: Socket timed out on send/recv operation' 3 times"), err
    index = slurm_index.read_index(root)
    (cancelled,) = index["launches"][-1]["cancelled"]
    assert f"cancelled the 1 jobs this launch had submitted ({cancelled})" in err
    assert index["stages"] == {} and records(root) == {}
    wait_for("the canary to be cancelled", lambda: sacct([cancelled]).get(cancelled, {}).get("state") == "CANCELLED",
             timeout=60, poll=1, detail=lambda: str(sacct([cancelled])))
