"""Cancelling a sweep's SLURM jobs: exactly those of one results root, from its job index.

    python sweeps/cancel.py results_root=DIR                          # every queued or running job of DIR
    python sweeps/cancel.py results_root=DIR grid=NAME                # the stages of NAME's latest sweep
    python sweeps/cancel.py results_root=DIR 'student[lam=0.5*' ...   # stages named so (fnmatch, or exact)

Jobs come from <results_root>/slurm/jobs.json, never from a user or job-name pattern, and are checked
against squeue (id and job name) first. A whole array goes in one scancel when every one of its queued
tasks is selected, else task by task (JOB_TASK). Stages that read a cancelled stage go with it (their
jobs would be removed anyway: --kill-on-invalid-dep). Once the jobs have left the queue, every cancelled
stage that is not done is recorded "cancelled" in the manifest: status shows it so, and the next launch
plans it again and resumes it from its checkpoint, which is kept.
"""
import fnmatch
import sys
import time
import uuid
from pathlib import Path

from collapse import lease, manifest, slurm_index, stages
from collapse.cluster import slurm_command
from collapse.slurm_index import SubmissionError, base_id
from collapse.status import launched_root, read_records

GONE_TIMEOUT_S = 60     # scancel's SIGTERM, then SIGKILL after the cluster's KillWait (30 s by default)


class CancelError(RuntimeError):
    pass


def record_cancelled(root, key: str, why: str) -> str:
    """Record stage `key` cancelled unless it is done; return its status afterwards ('done' or 'cancelled')."""
    root = Path(root)
    record = manifest.read(root, key)
    if record is not None and record["status"] == "done":
        return "done"
    if record is None or record["status"] == "unreadable":
        spec = stages.read_spec(root, key)
        record = {k: spec[k] for k in ("kind", "key", "name", "deps", "config")}
        record["log"] = str(stages.log_path(root, spec).relative_to(root))
    manifest.write(root, {**record, "status": "cancelled", "error": why, "ended": manifest.now()})
    return "cancelled"


# ---------------------------------------------------------------- choosing the stages

def select(root: Path, index: dict, grid: str | None, patterns: list[str]) -> dict:
    """{key: index entry} of the stages asked for; CancelError on an unknown grid or a pattern matching nothing."""
    entries = index["stages"]
    if grid is not None:
        sweep = stages.latest_sweeps(read_records(root), grid).get(grid)
        if sweep is None:
            names = sorted({r["name"] for r in read_records(root) if r.get("kind") == "sweep"})
            raise CancelError(f"key 'grid': value '{grid}' is not allowed; expected a grid launched in {root} "
                              f"(one of: {', '.join(names) or 'none'})")
        keys = sweep.get("config", {}).get("stages", [])
        entries = {k: entries[k] for k in keys if k in entries}
    if not patterns:
        return dict(entries)
    chosen = {}
    for pattern in patterns:
        hits = {k: e for k, e in entries.items()
                if e.get("name") == pattern or fnmatch.fnmatchcase(e.get("name", ""), pattern)}
        if not hits:
            raise CancelError(f"stage pattern '{pattern}' matches no stage submitted from {root}"
                              + (f" for grid {grid}" if grid else "") + " (see python sweeps/status.py "
                              f"results_root={root})")
        chosen.update(hits)
    return chosen


def with_dependents(root: Path, keys: set, active: set) -> set:
    """`keys` and the queued stages (of `active`) that read them, directly or not."""
    reads = {}
    for key in active:
        try:
            spec = stages.read_spec(root, key)
            # a report runs whatever its inputs' outcome: cancelling a student leaves it queued
            reads[key] = () if spec["kind"] in stages.ANY_OUTCOME else spec["deps"].values()
        except (OSError, ValueError, KeyError):
            reads[key] = ()
    return stages.downstream(keys, reads)


def scancel_ids(jobs: set, states: dict) -> list[str]:
    """The ids to scancel for `jobs` ('123' or '123_4'): an array whole when all its queued tasks are in
    `jobs`, else its tasks one by one."""
    ids = []
    for base in sorted({base_id(j) for j in jobs}, key=int):
        queued = {j for j in states if base_id(j) == base}
        mine = {j for j in jobs if base_id(j) == base}
        ids += [base] if queued <= mine else sorted(mine, key=lambda j: int(j.split("_")[1]))
    return ids


# ---------------------------------------------------------------- cancelling

def cancel(root, grid: str | None = None, patterns: list[str] = (), out=sys.stdout) -> dict:
    """Cancel the selected stages' jobs; return {key: 'cancelled' | 'done'} of the stages whose job was queued."""
    root = Path(root)
    if not slurm_command("squeue") or not slurm_command("scancel"):
        raise CancelError("SLURM's squeue and scancel are not usable here (not installed, or COLLAPSE_SLURM=off): "
                          "cancel from a machine of the cluster the sweep was submitted to")
    with slurm_index.locked(root):     # no launch submits while the index is read and its jobs cancelled
        index = slurm_index.read_index(root)
        chosen = select(root, index, grid, list(patterns))
        entries = index["stages"]
        states = slurm_index.squeue_states([e["job"] for e in entries.values()])
        active = {k for k, e in entries.items() if slurm_index.is_active(e["job"], states, e.get("job_name"))}
        keys = with_dependents(root, set(chosen) & active, active)
        jobs = {entries[k]["job"] for k in keys}
        if not jobs:
            print(f"nothing to cancel: none of the {len(chosen)} stages selected in {root} has a queued or "
                  f"running job", file=out, flush=True)
            return {}
        ids = scancel_ids(jobs, states)
        failed = slurm_index.scancel(ids)
        if failed:
            raise SubmissionError(f"scancel {' '.join(ids)} failed: {failed}")
        _wait_gone(jobs)
        why = f"cancelled by sweeps/cancel.py (scancel {' '.join(ids)})"
        result = {}
        for key in sorted(keys, key=lambda k: entries[k].get("name", k)):
            result[key] = record_cancelled(root, key, why)
            _clear_lease(root, key, entries[key]["job"])
    for key, state in result.items():
        e = entries[key]
        print(f"  {state:<9}  {e['job']:<10} {e.get('name', key)}", file=out)
    n = sum(s == "cancelled" for s in result.values())
    print(f"cancelled {n} stages of {root} (scancel {' '.join(ids)}); {len(result) - n} finished first. "
          f"Relaunch the sweep to resume them from their checkpoints", file=out, flush=True)
    return result


def _wait_gone(jobs: set, timeout_s: float = GONE_TIMEOUT_S) -> None:
    """Until no job of `jobs` is queued or running: a stage killed mid-write must not overwrite its record."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = slurm_index.squeue_states(jobs)
        left = sorted(j for j in jobs if any(st[0] in slurm_index.ACTIVE and (s == j or base_id(s) == j)
                                              for s, st in states.items()))
        if not left:
            return
        if time.monotonic() > deadline:
            raise SubmissionError(f"jobs {', '.join(left)} still in the queue {timeout_s:.0f}s after scancel; "
                                  "nothing recorded: run this again")
        time.sleep(0.5)


def _clear_lease(root: Path, key: str, job: str) -> None:
    """Remove the lease its cancelled job left (it was SIGKILLed): on another node it would look alive
    until stale, and a relaunch would wait on a job that is gone."""
    holder = lease.read(root, key)
    if holder is not None and holder.job == job:
        lease._remove_dead(lease.path(root, key), holder.token, uuid.uuid4().hex)


def main(argv: list[str]) -> int:
    options = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if a.startswith(("results_root=", "grid="))}
    patterns = [a for a in argv if not a.startswith(("results_root=", "grid="))]
    if not options.get("results_root"):
        print(f"error: expected results_root=DIR [grid=NAME] [STAGE-NAME-PATTERN ...], got "
              f"{' '.join(argv) or 'nothing'}", file=sys.stderr)
        return 2
    root = launched_root(options["results_root"])
    if root is None:
        return 2
    try:
        cancel(root, options.get("grid"), patterns)
    except CancelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SubmissionError as e:    # squeue or the index lock
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
