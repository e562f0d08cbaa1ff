"""The job index of a results root, <results_root>/slurm/jobs.json, and the SLURM calls that read the queue.

jobs.json holds the latest job of each stage key and one entry per launch; a launch updates it under
the launch lease (`locked`) after every sbatch, and cancel reads it under the same lease. Jobs are
checked with one squeue call for all of them (`squeue_states`), never one per stage.

No torch and no submitit here: status and cancel read the index through this module and must answer fast.
"""
import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

from collapse import lease, storage

INDEX_VERSION = 1
# squeue states of a job that will still run (or is running) its stage.
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
LOCK_TIMEOUT_S = 60
LAUNCH_LEASE = "launch"   # <results_root>/leases/launch.json while a launch submits (or cancel cancels)


class SubmissionError(RuntimeError):
    pass


class TransientSlurmError(RuntimeError):
    """SLURM said it is busy or restarting: worth asking again (with_retries)."""


# What SLURM's commands print while slurmctld is busy, restarting or failing over.
TRANSIENT = ("socket timed out", "unable to contact slurm controller", "resource temporarily unavailable",
             "unexpected message received", "slurm_receive_msg", "connection refused", "zero bytes were transmitted",
             "slurmctld is busy", "try again later")
RETRY_ENV = "COLLAPSE_SLURM_RETRY_S"   # how long to keep asking a busy SLURM (default RETRY_S)
RETRY_S = 300.0


def transient(text: str) -> bool:
    return any(t in text.lower() for t in TRANSIENT)


def with_retries(attempt, what: str, budget_s: float | None = None):
    """attempt() until it returns, again after 1, 2, 4 ... 30 s while it raises TransientSlurmError, for at
    most budget_s ($COLLAPSE_SLURM_RETRY_S, else RETRY_S) seconds; then one line (SubmissionError)."""
    budget = float(os.environ.get(RETRY_ENV) or RETRY_S) if budget_s is None else budget_s
    start, delay, tries = time.monotonic(), 1.0, 0
    while True:
        tries += 1
        try:
            return attempt()
        except TransientSlurmError as e:
            waited = time.monotonic() - start
            if waited + delay > budget:
                raise SubmissionError(f"{what}: SLURM answered '{e}' {tries} time{'s' if tries > 1 else ''} over "
                                      f"{waited:.0f}s (slurmctld busy or down; {RETRY_ENV} sets how long to "
                                      f"keep asking)") from None
            time.sleep(delay)
            delay = min(30.0, delay * 2)


# ---------------------------------------------------------------- <root>/slurm/

def slurm_dir(root) -> Path:
    return Path(root) / "slurm"


def submitit_folder(root) -> Path:
    return slurm_dir(root) / "submitit"


def index_path(root) -> Path:
    return slurm_dir(root) / "jobs.json"


def read_index(root) -> dict:
    try:
        with open(index_path(root)) as f:
            index = json.load(f)
    except FileNotFoundError:
        index = {}
    except ValueError as e:
        raise SubmissionError(f"{index_path(root)} is not valid JSON ({e}); move it away to start afresh")
    index.setdefault("version", INDEX_VERSION)
    for name, empty in (("stages", {}), ("launches", [])):
        index.setdefault(name, empty)
    return index


def write_index(root, index: dict) -> None:
    storage.write_json(index_path(root), index)


def canary_record(root, launch: str) -> Path:
    """What a launch's canary job (collapse/canary.py) found: <root>/slurm/canary/<launch>.json."""
    return slurm_dir(root) / "canary" / f"{launch}.json"


def read_canary(root, launch: str) -> dict | None:
    try:
        with open(canary_record(root, launch)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def job_stdout(root, job_id: str) -> Path:
    """The submitit stdout (and stderr) file of task 0 of job `job_id` ('123' or '123_4')."""
    return submitit_folder(root) / f"{job_id}_0_log.out"    # submitit's %j_%t_log.out, %A_%a for arrays


@contextlib.contextmanager
def locked(root, timeout_s: float = LOCK_TIMEOUT_S):
    """One launch (or cancel) at a time per results root: relaunches see what the one before submitted.

    A lease (collapse/lease.py: link() or O_EXCL, a heartbeat, taken over when its holder died), not
    flock: Lustre mounted without flock and many NFS set-ups refuse or fake flock."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            held = lease.acquire(root, LAUNCH_LEASE)
            break
        except lease.Held as e:
            if time.monotonic() > deadline:
                raise SubmissionError(f"another launch has held {lease.path(root, LAUNCH_LEASE)} for "
                                      f"{timeout_s:.0f}s ({e.holder}); wait for it, or remove the file if "
                                      "that launch is gone") from None
            time.sleep(0.2)
        except OSError as e:
            raise SubmissionError(f"cannot take the launch lock: {e.strerror or e}") from None
    try:
        yield
    finally:
        held.release()


# ---------------------------------------------------------------- the queue

def _run_once(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TransientSlurmError(f"`{' '.join(cmd[:3])} ...` did not answer in {timeout:.0f}s") from None
    except OSError as e:
        raise SubmissionError(f"cannot run {cmd[0]}: {e}") from None
    if out.returncode != 0 and transient(out.stderr + out.stdout):
        raise TransientSlurmError((out.stderr.strip() or out.stdout.strip()).splitlines()[-1])
    return out


def slurm_run(cmd: list[str], timeout: float = 30, budget_s: float | None = None) -> subprocess.CompletedProcess:
    """Run a SLURM command (squeue, sacct, scancel), asking again while SLURM is busy (with_retries)."""
    return with_retries(lambda: _run_once(cmd, timeout), cmd[0], budget_s)


def base_id(job_id: str) -> str:
    return str(job_id).split("_")[0]


def squeue_states(job_ids) -> dict[str, tuple]:
    """{job id ('123' or '123_4'): (state, elapsed, reason, name)} of those of `job_ids` the controller holds.

    One squeue call, array tasks one per line; jobs that ended long ago are simply absent.
    """
    bases = sorted({base_id(j) for j in job_ids if j}, key=int)
    if not bases:
        return {}
    out = slurm_run(["squeue", "-h", "-r", "-j", ",".join(bases), "-o", "%i|%T|%M|%r|%j"])
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:     # none of them is known any more
            return {}
        raise SubmissionError(f"squeue failed: {out.stderr.strip() or out.stdout.strip()}")
    states = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|", 4)
        if len(parts) == 5:
            states[parts[0]] = tuple(parts[1:])
    return states


def is_active(job_id: str, states: dict, name: str | None = None) -> bool:
    """The job is queued or running (and, given its name, is that job: ids restart on a fresh cluster)."""
    st = states.get(job_id)
    return st is not None and st[0] in ACTIVE and (name is None or st[3] == name)


def scancel(ids: list[str]) -> str | None:
    """scancel exactly `ids` ('123': the whole array, '123_4': one task); None, or why it failed."""
    if not ids:
        return None
    try:
        out = slurm_run(["scancel", *ids])
    except SubmissionError as e:
        return str(e)
    return None if out.returncode == 0 else (out.stderr.strip() or f"scancel exited {out.returncode}")


def cancel(job_ids) -> str | None:
    """scancel the jobs (arrays whole); None, or why it failed."""
    return scancel(sorted({base_id(j) for j in job_ids if j}))
