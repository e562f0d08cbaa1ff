"""The job index of a results root, <results_root>/slurm/jobs.json, and the SLURM calls that read the queue.

jobs.json holds the latest job of each stage key and one entry per launch; a launch updates it under
the launch lease (`locked`) after every sbatch, and cancel reads it under the same lease. Jobs are
checked with one squeue call and one sacct call for all of them (`squeue`, `sacct`), never one per stage.
Which stages' jobs died without recording an end is decided here too, from what those two calls said
(`dead_jobs`, pure); `record_dead_jobs` writes that into the manifest. collapse/status.py only renders.

No torch and no submitit here: status and cancel read the index through this module and must answer fast.
"""
import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

from collapse import lease, manifest, storage
from collapse.cluster import slurm_command

INDEX_VERSION = 1
# squeue states of a job that will still run (or is running) its stage.
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
# sacct states of a job that ended without finishing its stage, and of one that is running it.
TERMINAL_BAD = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED")
RUNNING = ("RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING")
QUERY_RETRY_S = 20.0   # squeue and sacct for status ask a busy SLURM again for this long, then give up
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


# ---------------------------------------------------------------- what the queue and the accounting say

def squeue(job_ids) -> dict:
    """squeue_states, or {} where SLURM is absent or stays busy (status then shows what the manifest says)."""
    try:
        return squeue_states(job_ids) if slurm_command("squeue") else {}
    except SubmissionError:
        return {}


def sacct(job_ids) -> dict:
    """{job id: (state, elapsed)}; pending array ranges expanded; a never-started array under its base id.
    {} where SLURM is absent, fails, or stays busy for QUERY_RETRY_S."""
    bases = sorted({base_id(j) for j in job_ids if j}, key=int)
    if not bases or not slurm_command("sacct"):
        return {}
    try:
        out = slurm_run(["sacct", "-X", "-P", "-n", "-j", ",".join(bases), "-o", "JobID,State,Elapsed"],
                        20, budget_s=QUERY_RETRY_S)
    except SubmissionError:
        return {}
    if out.returncode != 0 or not out.stdout:
        return {}
    from submitit.slurm.slurm import read_job_id   # slow import (submitit: 60 ms), only where sacct answered
    info = {}
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[0]:
            continue
        job, state, elapsed = parts[0], parts[1].split()[0] if parts[1] else "", parts[2]
        info[job] = (state, elapsed)
        try:
            for tup in read_job_id(job):
                if len(tup) == 3:
                    for i in range(int(tup[1]), int(tup[2]) + 1):
                        info.setdefault(f"{tup[0]}_{i}", (state, elapsed))
                elif len(tup) == 2:
                    info.setdefault(f"{tup[0]}_{tup[1]}", (state, elapsed))
        except (ValueError, IndexError):
            pass
    return info


def job_info(job: str, accounting: dict):
    """sacct's (state, elapsed) of `job`, or of its array when the task never started."""
    return accounting.get(job) or accounting.get(base_id(job))


def queued(state: tuple | None) -> bool:
    """squeue holds the job and it has not ended: it runs or will run its stage."""
    return state is not None and state[0] not in ("COMPLETED",) + TERMINAL_BAD


def silent_end(status: str | None, queue_state: tuple | None, accounted: tuple | None) -> str | None:
    """'job OUT_OF_MEMORY, no end recorded' when a stage's record says running but its job is not in the
    queue and its accounting says it is neither running nor pending (killed, timed out, out of memory)."""
    if status != "running" or queued(queue_state) or accounted is None or accounted[0] in RUNNING + ("PENDING",):
        return None
    return f"job {accounted[0]}, no end recorded"


def dead_jobs(records: dict, jobs: dict, queue: dict, accounting: dict, alive=frozenset()) -> dict[str, str]:
    """{key: why} of the stages (records by key; jobs: key -> job id) whose job ended without recording an
    end, by `silent_end`; a stage whose lease is `alive` (its runner heartbeats) is not dead."""
    dead = {}
    for key, record in records.items():
        job = jobs.get(key)
        why = silent_end(record.get("status"), queue.get(job), job_info(job, accounting)) if job else None
        if why and key not in alive:
            dead[key] = why
    return dead


def record_dead_jobs(root, squeue_fn=squeue, sacct_fn=sacct) -> dict[str, str]:
    """Record as failed the stages whose record says running but whose job ended (killed, timed out):
    the report stage calls this first, so the report shows them as failed. Returns {key: why}."""
    try:
        jobs = {k: v["job"] for k, v in read_index(root)["stages"].items() if v.get("job")}
    except Exception:   # no index (a local launch) or a damaged one: no job to ask about
        return {}
    running = {}
    for key in jobs:
        record = manifest.read(root, key)
        if record is not None and record.get("status") == "running":
            running[key] = record
    if not running:
        return {}
    ids = [jobs[k] for k in running]
    alive = {k for k in running if lease.live_holder(root, k) is not None}
    marked = dead_jobs(running, jobs, squeue_fn(ids), sacct_fn(ids), alive)
    for key, why in marked.items():
        manifest.write(root, {**running[key], "status": "failed", "error": f"SLURM {why}", "ended": manifest.now()})
    return marked
