"""The SLURM backend: submitting a sweep's stage graph as job arrays with dependencies, via submitit.

    python sweeps/launch.py grid=vae_coeffs cluster=slurm      # submits everything and returns

The stages to run are grouped into one sbatch per level and kind (slurm_groups.py: aftercorr,
afterok, afterany for the report); each task runs one stage inside StageJob (slurm_job.py). Every job
carries `--kill-on-invalid-dep=yes`: a job whose input failed is removed instead of pending forever.

<results_root>/slurm/ holds the submitit folder (submitit/: sbatch scripts, pickles, job stdout)
and jobs.json (collapse/slurm_index.py): the latest job of each stage key and one entry per launch. It is
updated under the launch lease after every sbatch; a relaunch checks those jobs with one squeue call and
does not submit a stage whose job is still queued or running. If sbatch rejects a group mid-launch, the
jobs this launch already submitted are cancelled (no half chain waits forever) and launch fails.
"""
import dataclasses
import getpass
import os
import shlex
import sys
import time
from pathlib import Path

import submitit

from collapse import canary, lease, stages
from collapse.executors.base import Launched
from collapse.executors.slurm_groups import make_groups
from collapse.slurm_index import (SubmissionError, TransientSlurmError, base_id, cancel, is_active, locked,
                                            read_index, squeue_states, submitit_folder, transient, with_retries,
                                            write_index)
from collapse.executors.slurm_job import StageJob   # queued jobs pickled before slurm_job.py name slurm.StageJob
from collapse.plan import path_fields, sweep_record
from collapse.snapshot import CHANGED_EXIT, Snapshot, job_env

REPO = Path(__file__).resolve().parent.parent.parent


def code_setup(code: Snapshot | None) -> list[str]:
    """The job script's first lines: check the launch's code snapshot, then import only from it (and run
    there: the job's working directory is first on sys.path). No snapshot (a test's direct submit): this
    checkout."""
    if code is None:
        return [f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    rest = job_env(code, dict(os.environ))["PYTHONPATH"]
    return [" ".join(shlex.quote(a) for a in code.verify_command(sys.executable)) + f" || exit {CHANGED_EXIT}",
            f"cd {shlex.quote(str(code.path))}", f"export PYTHONPATH={shlex.quote(rest)}"]


def sbatch_parameters(res, job_name: str, dependency: str | None, code: Snapshot | None = None) -> dict:
    """submitit SlurmExecutor parameters for one group from its SlurmResources."""
    tasks = res.tasks_per_node or max(1, res.gpus_per_node)
    params = {"job_name": job_name, "time": res.time_min, "nodes": res.nodes, "ntasks_per_node": tasks,
              "cpus_per_task": res.cpus_per_task, "signal_delay_s": res.signal_delay_s,
              "array_parallelism": res.array_parallelism, "stderr_to_stdout": True,
              "setup": [*code_setup(code),
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
    if code is not None:
        extra["chdir"] = str(code.path)
    params["additional_parameters"] = extra
    if dependency:
        params["dependency"] = dependency
    return params


def with_mail(cluster, address: str):
    """notify=ADDRESS: `cluster` with SLURM mail to ADDRESS: --mail-type=FAIL on every stage's job (the canary's
    too) and END,FAIL on the report's, whose end is the sweep's (it waits for every other job). Mail types
    already set in cluster.sbatch (or a kind's) are kept, these added; notify's address replaces a mail-user."""
    stages = {kind: dict(over) for kind, over in cluster.stages.items()}
    for over in (v for k, v in stages.items() if k != "report" and v.get("sbatch")):
        over["sbatch"] = _mail(over["sbatch"], address, ("FAIL",))
    report = stages.setdefault("report", {})
    report["sbatch"] = _mail({**_named(cluster.sbatch), **_named(report.get("sbatch") or {})}, address, ("END", "FAIL"))
    return dataclasses.replace(cluster, sbatch=_mail(cluster.sbatch, address, ("FAIL",)), stages=stages)


def notifying(sweep, address: str):
    """The sweep with with_mail applied to its cluster config."""
    base = dataclasses.replace(sweep.base, cluster=with_mail(sweep.base.cluster, address))
    return dataclasses.replace(sweep, base=base)


def _named(sbatch: dict) -> dict:
    return {str(k).lstrip("-").replace("_", "-"): v for k, v in sbatch.items()}   # as sbatch_parameters names them


def _mail(sbatch: dict, address: str, types: tuple) -> dict:
    sbatch = _named(sbatch)
    have = [t.strip().upper() for t in str(sbatch.get("mail-type") or "").split(",") if t.strip()]
    kept = [t for t in have if t != "NONE"]
    return {**sbatch, "mail-user": address, "mail-type": ",".join(dict.fromkeys([*kept, *types]))}


def _executor(root, res, job_name: str, dependency: str | None, code: Snapshot | None = None, max_requeues: int = 3):
    ex = submitit.SlurmExecutor(folder=submitit_folder(root), max_num_timeout=max_requeues)
    ex._throttling = 0    # one sbatch per group: nothing to throttle
    ex.update_parameters(**sbatch_parameters(res, job_name, dependency, code))
    return ex


def sbatch(root, res, job_name: str, dependency: str | None, code: Snapshot | None, calls: list) -> list:
    """One sbatch of the callables `calls` (a job array when several), retried while slurmctld is busy."""
    def attempt():
        ex = _executor(root, res, job_name, dependency, code)
        try:
            with ex.batch():
                jobs = [ex.submit(c) for c in calls]
        except Exception as e:
            if transient(str(e)):
                raise TransientSlurmError(_sbatch_error(e)) from None
            raise
        return jobs
    return with_retries(attempt, f"sbatch of {job_name}")


def _sbatch_error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    lines = [t for t in text if "error" in t.lower()] or text or [type(e).__name__]
    return lines[-1].strip().removeprefix("sbatch: error: ")


# ---------------------------------------------------------------- submit

@dataclasses.dataclass(frozen=True)
class SubmitOptions:
    """How a launch's jobs run: importing `code` (the launch's snapshot; None, as in a test's direct submit:
    this checkout), the first level after a canary job unless canary=False; `sweep_key`, the sweep record
    the launch wrote (None: the plan's, computed here)."""
    code: Snapshot | None = None
    canary: bool = True
    sweep_key: str | None = None


@dataclasses.dataclass(frozen=True)
class Submission:
    """One launch's submission: the not-done stages `todo` of the sweep whose key is `sweep_key`, submitted
    under `root` with `options`, its messages to `out`, begun at `started` (time.monotonic())."""
    sweep: object
    sweep_key: str
    todo: list
    root: Path
    options: SubmitOptions
    out: object
    started: float

    @property
    def cluster(self):
        return self.sweep.base.cluster

    @property
    def watch(self) -> str:
        return f"python sweeps/status.py results_root={self.root} grid={self.sweep.grid}"

    def job_name(self, kind: str) -> str:
        return f"{self.sweep.grid}.{kind}"

    def say(self, msg: str = "") -> None:
        print(msg, file=self.out, flush=True)


def execute(launched: Launched) -> int:
    """The launch's stages as SLURM jobs (collapse/executors/base.py): submitted, not waited for."""
    options = SubmitOptions(launched.code, canary=launched.canary, sweep_key=launched.sweep_key)
    return submit(launched.sweep, launched.plan, launched.todo, launched.root, options, out=launched.out)


def submit(sweep, plan, todo: list, root, options: SubmitOptions = SubmitOptions(), out=sys.stdout) -> int:
    """Submit the not-done stages `todo` of `plan` and a report job, their jobs importing `options.code`, the
    first level after a canary job (unless options.canary is False); return at once (0: submitted)."""
    root = Path(root)
    sweep_key = options.sweep_key or sweep_record(sweep, plan)["key"]
    if not todo:
        print("nothing to run: every stage is done, the report too (python sweeps/report.py writes it again)",
              file=out, flush=True)
        return 0
    submission = Submission(sweep, sweep_key, todo, root, options, out, started=time.monotonic())
    try:
        with locked(root):
            return _submit_locked(submission)
    except SubmissionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _submit_locked(sub: Submission) -> int:
    """The submission under the launch lease: split `todo` by who runs it, submit what is new, record the
    launch in the job index and say what it submitted."""
    index = read_index(sub.root)
    split = _split_todo(sub, index)
    launch = _launch_entry(sub, split)
    if split.blocked:
        _say_held_locally(sub, split)
    if not split.fresh:
        return _nothing_new(sub, split, index, launch)
    groups = make_groups(split.fresh, split.running)
    submitted = _submit_jobs(sub, split.fresh, groups, index, launch)
    index["launches"].append(launch)
    write_index(sub.root, index)
    _say_submitted(sub, split, groups, launch, sbatch_calls=len(submitted))
    return 0


@dataclasses.dataclass(frozen=True)
class Split:
    """A launch's stages to run, split by who runs them."""
    running: dict   # key -> job id: queued or running in SLURM already (or its job holds the lease)
    local: dict     # key -> lease holder: a local runner is running it
    blocked: set    # those of `local` and what reads them (those already queued aside): SLURM cannot wait on them
    fresh: list     # the rest, to submit now


def _split_todo(sub: Submission, index: dict) -> Split:
    entries = {s.key: index["stages"][s.key] for s in sub.todo if s.key in index["stages"]}
    known = {k: e["job"] for k, e in entries.items()}
    states = squeue_states(list(known.values()))     # the one squeue call
    running = {k: j for k, j in known.items() if is_active(j, states, entries[k].get("job_name"))}
    local = _held_by_leases(sub.todo, sub.root, running)
    blocked = stages.downstream(local, {s.key: s.deps.values() for s in sub.todo if s.key not in running})
    fresh = [s for s in sub.todo if s.key not in running and s.key not in blocked]
    return Split(running, local, blocked, fresh)


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


def _launch_entry(sub: Submission, split: Split) -> dict:
    """This launch's entry in the job index; the arrays are added as they are submitted."""
    code = sub.options.code
    return {"id": f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}", "sweep": sub.sweep_key,
            "grid": sub.sweep.grid, "user": getpass.getuser(), "submitted": round(time.time(), 3), "arrays": [],
            "skipped": sorted(split.running), "held_locally": sorted(split.blocked),
            "code": code.hash if code else None}


def _say_held_locally(sub: Submission, split: Split) -> None:
    names = "; ".join(f"{s.name} ({s.key}) held by {split.local[s.key]}" for s in sub.todo if s.key in split.local)
    n = len(split.local)
    sub.say(f"not submitted: {n} stage{'s' if n > 1 else ''} running under a local launch, which "
            f"SLURM cannot wait on ({names}), and {len(split.blocked) - n} stages that depend on them; "
            f"launch again when they have finished")


def _nothing_new(sub: Submission, split: Split, index: dict, launch: dict) -> int:
    """Record a launch with nothing to submit: each stage is queued, running or waits on a local runner."""
    if split.running:
        sub.say(f"nothing new to submit: all {len(sub.todo) - len(split.blocked)} stages to run are already queued "
                f"or running (jobs {_job_ids(split.running)})")
    index["launches"].append(launch)
    write_index(sub.root, index)
    sub.say(f"watch: {sub.watch}" if split.running else "nothing submitted")
    return 0


def _job_ids(running: dict) -> str:
    return ", ".join(sorted({base_id(j) for j in running.values()}, key=int))


def _submit_jobs(sub: Submission, fresh: list, groups: list, index: dict, launch: dict) -> list[str]:
    """Submit the canary (unless options.canary is False), then each group after its dependencies, writing the
    index after every sbatch; return the job ids. If one fails, cancel the jobs this launch submitted, put
    the index back as it was (the launch's entry says what was cancelled) and raise SubmissionError."""
    previous = {k: dict(v) for k, v in index["stages"].items()}
    submitted: list[str] = []
    current = canary_job = None
    try:
        if sub.options.canary:
            canary_job, kind = _submit_canary(sub, fresh, launch["id"])
            submitted.append(canary_job)
            launch["canary"] = {"job": canary_job, "kind": kind,
                                "record": str(canary.record_path(sub.root, launch["id"]).relative_to(sub.root))}
        for current in groups:
            dependency = current.dependency(groups, canary_job)
            submitted.append(_submit_group(sub, current, dependency))
            _record_group(sub, current, dependency, index, launch)
    except BaseException as e:
        cancel_error = "not run"
        try:
            cancel_error = cancel(submitted)
        finally:
            index["stages"] = previous
            launch["cancelled"] = submitted
            launch["error"] = _sbatch_error(e)
            index["launches"].append(launch)
            write_index(sub.root, index)
        if not isinstance(e, Exception):
            raise
        raise _rejected(e, current, submitted, cancel_error) from None
    return submitted


def _submit_canary(sub: Submission, fresh: list, launch_id: str) -> tuple[str, str]:
    """Submit the launch's canary on the heaviest kind's resources: (its job id, that kind)."""
    kind, res = canary.heaviest(sorted({s.kind for s in fresh}), sub.cluster.resources)
    job = canary.Canary(str(sub.root), launch_id, res.gpus_per_node, canary.sweep_paths(fresh, path_fields),
                        sorted({s.config["task"] for s in fresh}))
    jobs = sbatch(sub.root, canary.canary_resources(res), sub.job_name("canary"), None, sub.options.code, [job])
    return base_id(jobs[0].job_id), kind


def _submit_group(sub: Submission, group, dependency: str | None) -> str:
    """One sbatch of the group's stages (a job array when several); return its job id."""
    calls = [StageJob(str(sub.root), s.key, s.name, str(stages.log_path(sub.root, s.spec()).relative_to(sub.root)))
             for s in group.stages]
    jobs = sbatch(sub.root, sub.cluster.resources(group.kind), sub.job_name(group.kind), dependency,
                  sub.options.code, calls)
    group.job_id = base_id(jobs[0].job_id)
    return group.job_id


def _record_group(sub: Submission, group, dependency: str | None, index: dict, launch: dict) -> None:
    """The group's stages and its array into the index (each stage's earlier jobs kept, the last ten), written."""
    now = round(time.time(), 3)
    for i, s in enumerate(group.stages):
        entry = {"job": group.task(i), "job_name": sub.job_name(group.kind), "kind": s.kind, "name": s.name,
                 "level": group.level, "launch": launch["id"], "submitted": now}
        old = index["stages"].get(s.key)
        if old:
            entry["previous"] = (old.get("previous") or [])[-9:] + [old["job"]]
        index["stages"][s.key] = entry
    launch["arrays"].append({"job": group.job_id, "kind": group.kind, "level": group.level,
                             "size": len(group.stages), "dependency": dependency})
    write_index(sub.root, {**index, "launches": index["launches"] + [launch]})


def _rejected(e: BaseException, group, submitted: list, cancel_error: str | None) -> SubmissionError:
    """What to say when sbatch rejected `group` (None: the canary) and the cancel of `submitted` went as it did."""
    if group is None:
        what = "the canary job"
    else:
        n = len(group.stages)
        what = f"the {group.kind} group (level {group.level}, {n} stage{'s' if n > 1 else ''})"
    if cancel_error:
        return SubmissionError(
            f"sbatch rejected {what}: {_sbatch_error(e)}; cancelling the {len(submitted)} jobs this launch had "
            f"submitted ({', '.join(submitted)}) failed ({cancel_error}): scancel them yourself")
    return SubmissionError(
        f"sbatch rejected {what}: {_sbatch_error(e)}; cancelled the {len(submitted)} jobs this launch had "
        f"submitted ({', '.join(submitted) or 'none'}); nothing of it is left queued")


def _say_submitted(sub: Submission, split: Split, groups: list, launch: dict, sbatch_calls: int) -> None:
    sub.say(f"submitted {len(split.fresh)} stages of sweep {sub.sweep_key}: {len(groups)} job arrays (one per level "
            f"and stage kind), {sbatch_calls} sbatch calls in {time.monotonic() - sub.started:.1f}s:")
    if "canary" in launch:
        kind = launch["canary"]["kind"]
        sub.say(f"  canary    {kind:<10} job   {launch['canary']['job']:<8}    1 check   on the {kind} "
                f"resources; level 0 and the report wait for it (canary=false: none)")
    for g, array in zip(groups, launch["arrays"]):
        what = "array" if len(g.stages) > 1 else "job  "
        dep = array["dependency"] or "-"
        sub.say(f"  level {g.level}  {g.kind:<10} {what} {g.job_id:<8} {len(g.stages):>4} stage"
                f"{'s' if len(g.stages) > 1 else ' '}  after {dep}")
    if split.running:
        sub.say(f"already queued or running, not resubmitted: {len(split.running)} stages "
                f"(jobs {_job_ids(split.running)})")
    sub.say(f"stage logs: {sub.root / 'logs'}/<kind>-<key>.log; job output: {submitit_folder(sub.root)}")
    sub.say(f"watch: {sub.watch}")
