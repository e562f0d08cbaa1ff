"""Integration tests against a real SLURM cluster.

Needs a cluster that answers ``sinfo``: the local one from ``bash slurm/start.sh``
or a user's own.  Skipped otherwise.  Every wait is bounded.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

JOB_TIMEOUT_S = 30.0  # per job/group of jobs; a trivial job takes ~1 s locally
TERMINAL = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY",
    "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
}


def _run(*args: str, timeout: float = 15.0) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster() -> None:
    """Skip the module unless a SLURM cluster answers."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip("no SLURM cluster: sinfo/sbatch not on PATH (start one with `bash slurm/start.sh`)")
    try:
        _run("sinfo", "-h", timeout=5)  # a down controller takes ~9 s to report it
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"no SLURM cluster: sinfo does not answer ({exc}); start one with `bash slurm/start.sh`")
    try:
        _run("sacct", "-n", "-X", "-S", "now-1minute", timeout=10)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"SLURM cluster has no working accounting (sacct: {exc})")


def sbatch(tmp_path: Path, *args: str) -> str:
    out = _run(
        "sbatch", "--parsable", "--ntasks=1", "--cpus-per-task=1", "--time=1",
        f"--chdir={tmp_path}", f"--output={tmp_path}/slurm-%A_%a.out", *args,
    )
    return out.strip().split(";")[0]


def sacct_rows(job_id: str) -> list[dict[str, str]]:
    fields = ["JobID", "State", "ExitCode", "Start", "End"]
    out = _run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", ",".join(fields))
    rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
    for row in rows:
        row["State"] = row["State"].split()[0]  # "CANCELLED by 0" -> "CANCELLED"
    return rows


def wait_terminal(job_id: str, n_rows: int = 1, timeout: float = JOB_TIMEOUT_S,
                  settled=lambda row: True) -> list[dict[str, str]]:
    """Poll sacct until ``n_rows`` records of the job are in a terminal state and ``settled``: the
    accounting database may show a job's end state a moment before its exit code (FAILED, 0:0)."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, str]] = []
    while time.monotonic() < deadline:
        rows = sacct_rows(job_id)
        if len(rows) == n_rows and all(r["State"] in TERMINAL and settled(r) for r in rows):
            return rows
        time.sleep(0.25)
    subprocess.run(["scancel", job_id], capture_output=True, timeout=10)
    pytest.fail(f"job {job_id} not finished after {timeout:.0f}s; sacct says {rows}")


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_wrap_job_completes(tmp_path: Path) -> None:
    job = sbatch(tmp_path, "--wrap", "echo hello > out.txt")
    rows = wait_terminal(job)
    assert rows[0]["State"] == "COMPLETED", rows
    assert rows[0]["ExitCode"] == "0:0"
    assert (tmp_path / "out.txt").read_text().strip() == "hello"


def test_failing_job_is_failed(tmp_path: Path) -> None:
    job = sbatch(tmp_path, "--wrap", "exit 3")
    rows = wait_terminal(job, settled=lambda row: row["ExitCode"] != "0:0")
    assert rows[0]["State"] == "FAILED", rows
    assert rows[0]["ExitCode"] == "3:0"


def test_array_job(tmp_path: Path) -> None:
    job = sbatch(tmp_path, "--array=0-3", "--wrap", 'echo "$SLURM_ARRAY_TASK_ID" > task_$SLURM_ARRAY_TASK_ID.txt')
    rows = wait_terminal(job, n_rows=4)
    assert sorted(r["JobID"] for r in rows) == [f"{job}_{i}" for i in range(4)]
    assert all(r["State"] == "COMPLETED" for r in rows), rows
    for i in range(4):
        assert (tmp_path / f"task_{i}.txt").read_text().strip() == str(i)


def test_afterok_dependency_runs_after_parent(tmp_path: Path) -> None:
    parent = sbatch(tmp_path, "--wrap", "sleep 2; date +%s.%N > parent_end.txt")
    child = sbatch(
        tmp_path, f"--dependency=afterok:{parent}", "--kill-on-invalid-dep=yes",
        "--wrap", "date +%s.%N > child_start.txt",
    )
    (p,) = wait_terminal(parent)
    (c,) = wait_terminal(child)
    assert p["State"] == "COMPLETED" and c["State"] == "COMPLETED", (p, c)
    # sacct times have 1 s resolution; the job's own clocks are finer.
    assert ts(c["Start"]) >= ts(p["End"]), (p, c)
    parent_end = float((tmp_path / "parent_end.txt").read_text())
    child_start = float((tmp_path / "child_start.txt").read_text())
    assert child_start > parent_end


def test_submitit_roundtrip(tmp_path: Path) -> None:
    submitit = pytest.importorskip("submitit")
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    assert executor.cluster == "slurm"
    executor.update_parameters(timeout_min=1, cpus_per_task=1)
    job = executor.submit(sum, [1, 2, 3])
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.25)
    if not job.done():
        job.cancel()
        pytest.fail(f"submitit job {job.job_id} not done after {JOB_TIMEOUT_S:.0f}s")
    assert job.result() == 6
