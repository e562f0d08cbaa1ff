"""The SLURM backend: a sweep's stage graph as a handful of job arrays with dependencies, via submitit.

    python sweeps/launch.py grid=vae_coeffs cluster=slurm      # submits everything and returns

Stages are grouped by (level, kind); a stage's level is 0 when none of its inputs is being submitted
with it, else 1 + the highest level among those inputs. Each group is ONE sbatch (a job array, or a
plain job for a group of one) whose --dependency names the groups holding its inputs:

* `aftercorr:A` when the group lines up element-wise with one group A (task i reads only task i of A:
  each student's eval waits for its own student, generation t+1 of a chain for generation t);
* else `afterok` on the tasks of the groups it reads (the whole array when it needs all of it);
* `afterok` on the jobs of earlier launches still queued or running for an input;
* nothing for inputs that are already done.

Inputs implied by other inputs (a student reads the teacher, but so does its synth) are dropped
first, so chains line up. Every job carries `--kill-on-invalid-dep=yes`: a job whose input failed is
removed instead of pending forever. The report stage (plan.ANY_OUTCOME) is the exception: it is
`afterany` on every job of the launch and on those it found queued, so it runs whatever failed.

Each task runs collapse.run.run_stage(root, key), the local executor's entry point, inside StageJob,
a submitit Checkpointable: on preemption or timeout (USR2) submitit requeues it, and the rerun
resumes from the stage's own checkpoint (stages/<key>/checkpoints/); so does a job requeued from
outside (scontrol requeue). The stage's output goes to logs/<kind>-<key>.log, as with the local executor.

<results_root>/slurm/ holds the submitit folder (submitit/: sbatch scripts, pickles, job stdout)
and jobs.json: the latest job of each stage key and one entry per launch. It is
updated under a lock after every sbatch; a relaunch checks those jobs with one squeue call and does
not submit a stage whose job is still queued or running. If sbatch rejects a group mid-launch, the
jobs this launch already submitted are cancelled (no half chain waits forever) and launch fails.
"""
import atexit
import contextlib
import getpass
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from collapse import lease, manifest

# Light imports only: collapse.status (which must answer fast) reads the index through this module,
# so torch-importing modules (storage, run, plan) are imported where they are used.
REPO = Path(__file__).resolve().parent.parent.parent
INDEX_VERSION = 1
# squeue states of a job that will still run (or is running) its stage.
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
LOCK_TIMEOUT_S = 60
LAUNCH_LEASE = "launch"   # <results_root>/leases/launch.json while a launch submits


class SubmissionError(RuntimeError):
    pass


# ---------------------------------------------------------------- what runs in a job

class StageFailed(RuntimeError):
    """Raised in a job whose stage recorded 'failed', so SLURM marks the job FAILED."""


class StageJob(submitit.helpers.Checkpointable):
    """One stage as a submitit job: run_stage(root, key), output appended to the stage's log.

    Checkpointable: on USR2 (preemption, or `time_min - signal_delay_s` elapsed) submitit calls
    checkpoint() and requeues the job. Nothing needs pickling: the training loop checkpoints to
    stages/<key>/checkpoints/ and a rerun resumes from there.
    """

    def __init__(self, root: str, key: str, name: str = "", log: str = ""):
        self.root, self.key, self.name, self.log = str(root), key, name, log

    def __call__(self) -> dict:
        from collapse.run import run_stage
        env = os.environ
        rank = int(env.get("SLURM_PROCID", "0"))
        job = env.get("SLURM_ARRAY_JOB_ID") and f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID')}"
        job = job or env.get("SLURM_JOB_ID", "?")
        log = Path(self.root) / self.log if self.log and rank == 0 else None
        print(f"[{time.strftime('%H:%M:%S')}] job {job} on {os.uname().nodename}, "
              f"restart {env.get('SLURM_RESTART_COUNT', '0')}: stage {self.name} ({self.key})"
              + (f"; its output goes to {log}" if log else ""), flush=True)
        with _output_to(log):
            print(f"[{time.strftime('%H:%M:%S')}] SLURM job {job} on {os.uname().nodename}, "
                  f"restart {env.get('SLURM_RESTART_COUNT', '0')}", flush=True)
            record = run_stage(self.root, self.key)
            while record["status"] == "held":   # another runner (a local launch) has it: wait, then take what it left
                while lease.live_holder(self.root, self.key) is not None:
                    time.sleep(lease.heartbeat_s())
                record = run_stage(self.root, self.key)   # done meanwhile: returned as is; else run (resuming)
        _leave_process_group()
        ended = record["status"] in manifest.RAN_TO_THE_END
        _exit_fast_after_job(0 if ended else 1)
        if not ended:
            raise StageFailed(f"stage {self.name} ({self.key}) {record['status']}: {record.get('error')}; "
                              f"log: {Path(self.root) / record.get('log', '')}")
        return {"key": self.key, "status": record["status"]}

    def checkpoint(self, *args, **kwargs):
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _leave_process_group() -> None:
    """Destroy the training's process group: left to interpreter teardown, gloo may abort the task.

    Only inside a submitit job process, which exits next. In a process that merely calls a StageJob
    (a test) DeepSpeed keeps its cached groups, and a later engine would find them unregistered.
    """
    if "SUBMITIT_FOLDER" not in os.environ:
        return
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    except Exception:   # never let cleanup turn a finished stage into a failed job
        pass


_exit_code: int | None = None


def _exit_fast_after_job(code: int) -> None:
    """Once submitit has written the job's result, exit without the interpreter's teardown.

    Tearing down torch and DeepSpeed takes 2-3 s, on every dependency level's critical path. By
    then the stage's files are closed and renamed into place and submitit's result is written
    (it happens before interpreter shutdown, where atexit handlers run). Only inside a submitit job
    process, never in a process that merely calls a StageJob (a test, a debugger).
    """
    global _exit_code
    if "SUBMITIT_FOLDER" not in os.environ:
        return
    if _exit_code is None:
        atexit.register(_exit_now)
    _exit_code = code


def _exit_now() -> None:
    if _exit_code is None:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_code)


@contextlib.contextmanager
def _output_to(path: Path | None):
    """Send this process's stdout and stderr (file descriptors 1 and 2) to `path`, appending."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab", buffering=0) as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


# ---------------------------------------------------------------- grouping the stage graph

@dataclass
class Group:
    """One sbatch: stages of one kind at one level, in array-task order."""
    level: int
    kind: str
    stages: list
    corr: int | None = None                      # index of the group this one lines up with (aftercorr)
    after: dict = field(default_factory=dict)    # group index -> element indices needed (afterok)
    external: list = field(default_factory=list)  # job ids of earlier launches (afterok)
    any_outcome: bool = False                    # runs whatever its inputs' outcome (afterany): plan.ANY_OUTCOME
    job_id: str | None = None                    # the array's (or the job's) id, once submitted

    def task(self, i: int) -> str:
        return self.job_id if len(self.stages) == 1 else f"{self.job_id}_{i}"

    def dependency(self, groups: list) -> str | None:
        if self.any_outcome:   # the report: after every other job, whatever their outcome
            ended = [g.job_id for g in groups if g is not self] + sorted(set(self.external))
            return "afterany:" + ":".join(ended) if ended else None
        parts = []
        if self.corr is not None:
            parts.append(f"aftercorr:{groups[self.corr].job_id}")
        ok = []
        for gi, needed in sorted(self.after.items()):
            g = groups[gi]
            ok += [g.job_id] if len(needed) == len(g.stages) else [g.task(i) for i in sorted(needed)]
        ok += sorted(set(self.external))
        if ok:
            parts.append("afterok:" + ":".join(ok))
        return ",".join(parts) or None


def make_groups(stages: list, external: dict | None = None) -> list[Group]:
    """Group `stages` (the ones to submit) into sbatch groups with their dependencies.

    external: key -> job id of stages queued or running from an earlier launch. Inputs neither in
    `stages` nor in `external` are taken as done.
    """
    from collapse.plan import ANY_OUTCOME
    external = external or {}
    by_key = {s.key: s for s in stages}
    deps_in = {s.key: list(dict.fromkeys(d for d in s.deps.values() if d in by_key)) for s in stages}

    level: dict[str, int] = {}
    ancestors: dict[str, set] = {}

    def visit(key, path=()):
        if key in level:
            return
        if key in path:
            raise SubmissionError(f"the stage graph has a cycle through {by_key[key].name}")
        for d in deps_in[key]:
            visit(d, path + (key,))
        level[key] = 1 + max((level[d] for d in deps_in[key]), default=-1)
        ancestors[key] = set().union(*({d} | ancestors[d] for d in deps_in[key])) if deps_in[key] else set()

    for s in stages:
        visit(s.key)
    # an input that another input already depends on adds nothing to the dependency
    reduced = {k: [d for d in ds if not any(d in ancestors[o] for o in ds if o != d)] for k, ds in deps_in.items()}

    kind_order = list(dict.fromkeys(s.kind for s in stages))
    buckets: dict[tuple, list] = {}
    for s in stages:
        buckets.setdefault((level[s.key], s.kind), []).append(s)
    groups: list[Group] = []
    where: dict[str, tuple] = {}    # key -> (group index, element index)
    for (lv, kind) in sorted(buckets, key=lambda lk: (lk[0], kind_order.index(lk[1]))):
        members = buckets[(lv, kind)]
        group = Group(lv, kind, members)
        inputs = [reduced[s.key] for s in members]
        homes = {where[ds[0]][0] for ds in inputs if len(ds) == 1}
        if (len(members) > 1 and all(len(ds) == 1 for ds in inputs) and len(homes) == 1
                and len({ds[0] for ds in inputs}) == len(members)
                and len(groups[next(iter(homes))].stages) == len(members)):
            group.corr = next(iter(homes))
            members.sort(key=lambda s: where[reduced[s.key][0]][1])
        else:
            for ds in inputs:
                for d in ds:
                    gi, ei = where[d]
                    group.after.setdefault(gi, set()).add(ei)
        for s in members:
            group.external += [external[d] for d in dict.fromkeys(s.deps.values()) if d in external]
        if kind in ANY_OUTCOME:
            group.any_outcome = True
            group.external = sorted({base_id(j) for j in external.values()}, key=int)
        for i, s in enumerate(members):
            where[s.key] = (len(groups), i)
        groups.append(group)
    return groups


# ---------------------------------------------------------------- the job index (<root>/slurm/jobs.json)

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
    from collapse import storage
    storage.write_json(index_path(root), index)


def job_stdout(root, job_id: str) -> Path:
    """The submitit stdout (and stderr) file of task 0 of job `job_id` ('123' or '123_4')."""
    return submitit_folder(root) / f"{job_id}_0_log.out"    # submitit's %j_%t_log.out, %A_%a for arrays


@contextlib.contextmanager
def _locked(root, timeout_s: float = LOCK_TIMEOUT_S):
    """One launch at a time per results root: relaunches see what the one before submitted.

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


# ---------------------------------------------------------------- talking to SLURM

def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SubmissionError(f"`{' '.join(cmd[:3])} ...` did not answer in {timeout:.0f}s") from None
    except OSError as e:
        raise SubmissionError(f"cannot run {cmd[0]}: {e}") from None


def base_id(job_id: str) -> str:
    return str(job_id).split("_")[0]


def squeue_states(job_ids) -> dict[str, tuple]:
    """{job id ('123' or '123_4'): (state, elapsed, reason, name)} of those of `job_ids` the controller holds.

    One squeue call, array tasks one per line; jobs that ended long ago are simply absent.
    """
    bases = sorted({base_id(j) for j in job_ids if j}, key=int)
    if not bases:
        return {}
    out = _run(["squeue", "-h", "-r", "-j", ",".join(bases), "-o", "%i|%T|%M|%r|%j"])
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


def cancel(job_ids) -> str | None:
    """scancel the jobs (arrays whole); None, or why it failed."""
    ids = sorted({base_id(j) for j in job_ids if j})
    if not ids:
        return None
    try:
        out = _run(["scancel", *ids])
    except SubmissionError as e:
        return str(e)
    return None if out.returncode == 0 else (out.stderr.strip() or f"scancel exited {out.returncode}")


def sbatch_parameters(res, job_name: str, dependency: str | None) -> dict:
    """submitit SlurmExecutor parameters for one group from its SlurmResources."""
    tasks = res.tasks_per_node or max(1, res.gpus_per_node)
    params = {"job_name": job_name, "time": res.time_min, "nodes": res.nodes, "ntasks_per_node": tasks,
              "cpus_per_task": res.cpus_per_task, "signal_delay_s": res.signal_delay_s,
              "array_parallelism": res.array_parallelism, "stderr_to_stdout": True,
              "setup": [f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}",
                        f"export OMP_NUM_THREADS={res.cpus_per_task} MKL_NUM_THREADS={res.cpus_per_task}",
                        "unset RANK LOCAL_RANK WORLD_SIZE MASTER_ADDR MASTER_PORT", *res.setup]}
    for name in ("partition", "account", "qos", "constraint"):
        if getattr(res, name):
            params[name] = getattr(res, name)
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb:
        params["mem"] = f"{max(1, round(res.mem_gb * 1024))}M"
    extra = {str(k).lstrip("-").replace("_", "-"): v for k, v in res.sbatch.items() if v is not False}
    extra["kill-on-invalid-dep"] = "yes"
    params["additional_parameters"] = extra
    if dependency:
        params["dependency"] = dependency
    return params


def _executor(root, res, job_name: str, dependency: str | None, max_requeues: int = 3):
    ex = submitit.SlurmExecutor(folder=submitit_folder(root), max_num_timeout=max_requeues)
    ex._throttling = 0    # one sbatch per group: nothing to throttle
    ex.update_parameters(**sbatch_parameters(res, job_name, dependency))
    return ex


def _sbatch_error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    lines = [t for t in text if "error" in t.lower()] or text or [type(e).__name__]
    return lines[-1].strip().removeprefix("sbatch: error: ")


# ---------------------------------------------------------------- submit

def submit(sweep, plan, todo: list, root, out=sys.stdout) -> int:
    """Submit the not-done stages `todo` of `plan` and a report job; return at once (0: submitted)."""
    from collapse.plan import sweep_record
    from collapse.run import log_path
    root = Path(root)
    cluster = sweep.base.cluster
    sweep_key = sweep_record(sweep, plan)["key"]
    watch = f"python sweeps/status.py results_root={root} grid={sweep.grid}"

    def say(msg=""):
        print(msg, file=out, flush=True)

    if not todo:
        say("nothing to run: every stage is done, the report too (python sweeps/report.py writes it again)")
        return 0
    started = time.monotonic()
    try:
        with _locked(root):
            return _submit_locked(sweep, plan, todo, root, cluster, sweep_key, watch, say, log_path, started)
    except SubmissionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _held_by_leases(todo: list, root, running: dict) -> dict:
    """Stages of `todo` a live runner holds (collapse/lease.py) that the index does not show queued:
    a SLURM job's is added to `running` (dependents wait on it); a local runner's is returned."""
    local = {}
    for s in todo:
        holder = None if s.key in running else lease.live_holder(root, s.key)
        if holder is not None and holder.job:
            running[s.key] = holder.job
        elif holder is not None:
            local[s.key] = holder
    return local


def _with_dependents(todo: list, keys: set, running: dict) -> set:
    """`keys` and the stages of `todo` that read them, directly or not (those already queued aside)."""
    keys = set(keys)
    grew = True
    while grew:
        grew = False
        for s in todo:
            if s.key not in keys and s.key not in running and any(d in keys for d in s.deps.values()):
                keys.add(s.key)
                grew = True
    return keys


def _submit_locked(sweep, plan, todo, root, cluster, sweep_key, watch, say, log_path, started) -> int:
    index = read_index(root)
    entries = {s.key: index["stages"][s.key] for s in todo if s.key in index["stages"]}
    known = {k: e["job"] for k, e in entries.items()}
    states = squeue_states(list(known.values()))     # the one squeue call
    running = {k: j for k, j in known.items() if is_active(j, states, entries[k].get("job_name"))}
    local = _held_by_leases(todo, root, running)
    blocked = _with_dependents(todo, set(local), running)
    fresh = [s for s in todo if s.key not in running and s.key not in blocked]
    launch_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    launch = {"id": launch_id, "sweep": sweep_key, "grid": sweep.grid, "user": getpass.getuser(),
              "submitted": round(time.time(), 3), "arrays": [], "skipped": sorted(running),
              "held_locally": sorted(blocked)}
    if blocked:
        names = "; ".join(f"{s.name} ({s.key}) held by {local[s.key]}" for s in todo if s.key in local)
        say(f"not submitted: {len(local)} stage{'s' if len(local) > 1 else ''} running under a local launch, which "
            f"SLURM cannot wait on ({names}), and {len(blocked) - len(local)} stages that depend on them; "
            f"launch again when they have finished")
    if not fresh and not running:
        index["launches"].append(launch)
        write_index(root, index)
        say("nothing submitted")
        return 0

    if not fresh:
        say(f"nothing new to submit: all {len(todo) - len(blocked)} stages to run are already queued or running "
            f"(jobs {', '.join(sorted({base_id(j) for j in running.values()}, key=int))})")
        index["launches"].append(launch)
        write_index(root, index)
        say(f"watch: {watch}")
        return 0

    groups = make_groups(fresh, running)
    previous = {k: dict(v) for k, v in index["stages"].items()}
    submitted: list[str] = []
    sbatch_calls = 0
    current = None
    try:
        for current in groups:
            res = cluster.resources(current.kind)
            dependency = current.dependency(groups)
            job_name = f"{sweep.grid}.{current.kind}"
            ex = _executor(root, res, job_name, dependency)
            with ex.batch():
                jobs = [ex.submit(StageJob(str(root), s.key, s.name,
                                           str(log_path(root, s.spec()).relative_to(root))))
                        for s in current.stages]
            sbatch_calls += 1
            current.job_id = base_id(jobs[0].job_id)
            submitted.append(current.job_id)
            now = round(time.time(), 3)
            for i, s in enumerate(current.stages):
                entry = {"job": current.task(i), "job_name": job_name, "kind": s.kind, "name": s.name,
                         "level": current.level, "launch": launch_id, "submitted": now}
                old = index["stages"].get(s.key)
                if old:
                    entry["previous"] = (old.get("previous") or [])[-9:] + [old["job"]]
                index["stages"][s.key] = entry
            launch["arrays"].append({"job": current.job_id, "kind": current.kind, "level": current.level,
                                     "size": len(current.stages), "dependency": dependency})
            write_index(root, {**index, "launches": index["launches"] + [launch]})
    except BaseException as e:
        cancel_error = "not run"
        try:
            cancel_error = cancel(submitted)
        finally:
            index["stages"] = previous
            launch["cancelled"] = submitted
            launch["error"] = _sbatch_error(e)
            index["launches"].append(launch)
            write_index(root, index)
        if not isinstance(e, Exception):
            raise
        n = len(current.stages)
        what = f"the {current.kind} group (level {current.level}, {n} stage{'s' if n > 1 else ''})"
        if cancel_error:
            raise SubmissionError(
                f"sbatch rejected {what}: {_sbatch_error(e)}; cancelling the {len(submitted)} jobs this launch had "
                f"submitted ({', '.join(submitted)}) failed ({cancel_error}): scancel them yourself") from None
        raise SubmissionError(
            f"sbatch rejected {what}: {_sbatch_error(e)}; cancelled the {len(submitted)} jobs this launch had "
            f"submitted ({', '.join(submitted) or 'none'}); nothing of it is left queued") from None

    index["launches"].append(launch)
    write_index(root, index)

    say(f"submitted {len(fresh)} stages of sweep {sweep_key}: {len(groups)} job arrays (one per level and "
        f"stage kind), {sbatch_calls} sbatch calls in {time.monotonic() - started:.1f}s:")
    for g in groups:
        what = "array" if len(g.stages) > 1 else "job  "
        dep = g.dependency(groups) or "-"
        say(f"  level {g.level}  {g.kind:<10} {what} {g.job_id:<8} {len(g.stages):>4} stage"
            f"{'s' if len(g.stages) > 1 else ' '}  after {dep}")
    if running:
        say(f"already queued or running, not resubmitted: {len(running)} stages "
            f"(jobs {', '.join(sorted({base_id(j) for j in running.values()}, key=int))})")
    say(f"stage logs: {root / 'logs'}/<kind>-<key>.log; job output: {submitit_folder(root)}")
    say(f"watch: {watch}")
    return 0
