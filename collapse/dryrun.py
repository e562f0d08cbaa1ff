"""`dry_run=true`: what a launch would run, and what it would cost, with nothing written or submitted.

The estimate of a stage to run: its work (training: steps x batch size; synth: items sampled;
eval: test items) times the median seconds per unit of work of the finished stages of the same
kind and task in this results root, run with the threads (and GPUs) they had; where none has
finished, a stated rate: on GPUs, the task's stated seconds on one reference GPU
(collapse/tasks/gpu_rates.py) over the GPUs the stage asks for; on CPU, a default per kind measured
on one core with the VAE. Wall time is a list schedule of those durations over the executor's
parallelism, in plan order. Then the warnings (collapse/preflight.py): a results root the nodes may
not share, a GPU-sized stage without a GPU, a stage longer than its time limit or its partition's.
"""
import math
import os
import statistics

from collapse import canary, disk, lease, manifest, preflight, tasks
from collapse.executors.slurm import sbatch_parameters
from collapse.executors.slurm_groups import make_groups
from collapse.tasks.base import Simulation
from collapse.tasks import gpu_rates

REPORT_SECONDS = 10.0   # a report stage, whatever the task


def work(kind: str, config: dict) -> float:
    """Units of work of a stage: item-steps for training, items for synth and eval; a simulation's
    own unit (its task's simulation_work)."""
    task = tasks.get(config["task"])
    if kind == "report":
        return 1
    if isinstance(task, Simulation) and kind == task.SIMULATION_KIND:
        return task.simulation_work(config)
    data, train, synth = config["data"], config["train"], config["synth"]
    full_train, full_test = task.full_sizes(data)
    n_train = data.get("train_size") or full_train
    if kind in ("synth", "synth_shard"):   # a shard: its share; the join of shards: ~nothing
        shards = synth.get("shards", 1)
        return (synth.get("size") or n_train) / (shards if kind == "synth_shard" else shards ** 2)
    if kind == "eval":
        return data.get("test_size") or full_test
    items = (synth.get("size") or n_train) if kind == "student" else n_train
    steps = train.get("steps") or train["epochs"] * math.ceil(items / train["batch_size"])
    return steps * train["batch_size"]


def rates(records: list[dict]) -> dict:
    """(kind, task) -> median seconds per unit of work of its finished stages, with their threads."""
    seen: dict = {}
    for r in records:
        if r.get("status") != "done" or r.get("kind") in (None, "sweep") or "ended" not in r:
            continue
        if (r.get("measured") or {}).get("resumed"):   # its time is only the part after the resume
            continue
        units = work(r["kind"], r["config"])
        if units > 0:
            seen.setdefault((r["kind"], r["config"]["task"]), []).append(
                ((r["ended"] - r["started"]) / units, (r.get("metrics") or {}).get("threads", 1)))
    return {k: (statistics.median(s for s, _ in v), statistics.median(t for _, t in v), len(v))
            for k, v in seen.items()}


def estimate(stages: list, records: list[dict], gpus: dict | None = None) -> dict:
    """key -> (seconds, threads, source) for each stage; gpus: key -> GPUs the stage asks for."""
    known = rates(records)
    gpus = gpus or {}
    out = {}
    for s in stages:
        units = work(s.kind, s.config)
        task = tasks.get(s.config["task"])
        rate = known.get((s.kind, s.config["task"]))
        on_gpu = task.gpu_seconds(s.kind, s.config) if gpus.get(s.key) else None
        stated = REPORT_SECONDS if s.kind == "report" else task.CPU_SECONDS_PER_UNIT.get(s.kind)
        if rate:
            out[s.key] = (rate[0] * units, rate[1], f"{rate[2]} finished {s.kind} stage(s)")
        elif on_gpu is not None:
            out[s.key] = (on_gpu / gpus[s.key], 1, gpu_rates.source(gpus[s.key]))   # stated, or rates=FILE's
        elif stated is not None:
            out[s.key] = (stated * units, 1, "default")
        else:   # no finished stage here, and the task states no rate for this kind on a CPU core
            out[s.key] = (0.0, 1, f"no estimate: no {s.kind} stage of task {s.config['task']} has finished here yet")
    return out


def list_schedule(stages: list, seconds: dict, slots: int) -> float:
    """Wall seconds to run `stages` (in plan order, each after its deps among them) on `slots` workers."""
    finish: dict = {}
    free = [0.0] * max(1, slots)
    for s in stages:
        ready = max((finish[d] for d in s.deps.values() if d in finish), default=0.0)
        i = min(range(len(free)), key=lambda j: max(free[j], ready))
        start = max(free[i], ready)
        finish[s.key] = free[i] = start + seconds[s.key]
    return max(finish.values(), default=0.0)


def state(root, stage, done: set, redo: set) -> str:
    if stage.key in done:
        return "done"
    holder = lease.live_holder(root, stage.key) if root.exists() else None
    if holder is not None:
        return f"running ({holder.who})"
    return "redo" if stage.key in redo else "to run"


def describe(sweep, plan, todo: list, root, backend: str, out, redo: set = frozenset(), canary: bool = True,
             limits: list[str] = ()) -> None:
    """Print the plan, the submissions SLURM would get (with the time limits set from measured rates,
    `limits`: collapse/limits.py), and the estimate."""
    def say(line=""):
        print(line, file=out)

    names = {s.key: s.name for s in plan.stages.values()}
    done = {s.key for s in plan.stages.values()} - {s.key for s in todo}
    states = {s.key: state(root, s, done, redo) for s in plan.stages.values()}
    to_run = [s for s in todo if states[s.key] in ("to run", "redo")]
    say(f"dry run of grid {sweep.grid} into {root} on {backend} (configs/cluster/{sweep.cluster}.yaml): "
        "nothing is written or submitted")
    say(f"{len(plan.stages)} stages: {len(done)} done, {len(todo) - len(to_run)} running elsewhere, "
        f"{len(to_run)} to run" + (f" ({len(redo)} of them redone)" if redo else ""))
    say()
    say(f"{'kind':11s} {'name':44s} {'key':16s} {'state':12s} after")
    for s in plan.stages.values():
        after = ", ".join(names.get(d, d) for d in dict.fromkeys(s.deps.values())) or "-"
        say(f"{s.kind:11s} {s.name:44s} {s.key:16s} {states[s.key]:12s} {after}")
    cluster = sweep.base.cluster
    if backend == "slurm" and to_run:
        say()
        describe_slurm(to_run, cluster, say, canary)
        if limits:
            say("time limits from measured rates (time_from=measured):")
            for line in limits:
                say(f"  {line}")
    gpus = stage_gpus(to_run, cluster, backend)
    costs = estimate(to_run, manifest.read_all(root) if root.exists() else [], gpus)
    say()
    if to_run:
        say_estimate(to_run, costs, gpus, cluster, backend, say)
    else:
        say("estimate: nothing to run")
    for line in disk.summary(to_run, root):   # what the stages to run will write under results_root, per kind
        say(line)
    notes = preflight.warnings(sweep, to_run, root, backend, {k: v[0] for k, v in costs.items()})
    say()
    say(f"warnings: {len(notes)}" if notes else "warnings: none")
    for note in notes:
        say(f"  - {note}")


def stage_gpus(stages: list, cluster, backend: str) -> dict:
    """key -> GPUs a stage gets: on SLURM what it asks for (nodes x gpus_per_node); locally the GPUs here."""
    if backend == "slurm":
        return {s.key: cluster.resources(s.kind).gpus_per_node * cluster.resources(s.kind).nodes for s in stages}
    here = preflight.local_gpus()
    return {s.key: min(here, 1) for s in stages}   # the local executor gives a stage one device


def say_estimate(to_run: list, costs: dict, gpus: dict, cluster, backend: str, say) -> None:
    seconds = {k: v[0] for k, v in costs.items()}
    sources = sorted({f"{s.kind}: {costs[s.key][2]}" for s in to_run})
    unknown = sum(costs[s.key][2].startswith("no estimate") for s in to_run)
    if unknown == len(to_run):
        say(f"estimate: none for any of the {len(to_run)} stages to run")
        say("  why: " + "; ".join(sources))
        return
    if unknown:
        say(f"estimate: none for {unknown} of the {len(to_run)} stages to run (below: the rest only)")
    if backend == "slurm":
        gpu_hours = sum(seconds[k] * gpus[k] for k in seconds) / 3600
        core_hours = sum(seconds[k] * costs[k][1] for k in seconds if not gpus[k]) / 3600
        slots = min(cluster.array_parallelism, len(to_run))
        hours = (f"{gpu_hours:.3g} GPU-hours" + (f" and {core_hours:.3g} core-hours" if core_hours >= 0.05 else "")
                 if gpu_hours else f"{core_hours:.3g} core-hours")
        say(f"estimate: {hours}; wall {duration(list_schedule(to_run, seconds, slots))} with up to {slots} jobs "
            "at once (queue waits not included)")
    else:
        slots = cluster.max_parallel or os.cpu_count() or 1
        say(f"estimate: {sum(seconds[k] * costs[k][1] for k in seconds) / 3600:.3g} core-hours; "
            f"wall {duration(list_schedule(to_run, seconds, slots))} at {slots} stages at once")
    say("  from: " + "; ".join(sources) + (" (default: the task's CPU_SECONDS_PER_UNIT, one CPU core)"
                                           if any("default" in x for x in sources) else "")
        + (" (stated: the task's gpu_seconds, collapse/tasks/gpu_rates.py)" if any("stated" in x for x in sources)
           else "")
        + (" (measured: the rates file bench/gpu_check.sh wrote, given as rates=FILE)"
           if any("measured rate" in x for x in sources) else ""))
    by_kind: dict = {}
    for s in to_run:
        by_kind.setdefault(s.kind, []).append(seconds[s.key])
    say("  per stage: " + "; ".join(f"{kind} {duration(max(v))}" + (f" (x{len(v)})" if len(v) > 1 else "")
                                    for kind, v in by_kind.items() if max(v) > 0))


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def describe_slurm(to_run: list, cluster, say, with_canary: bool = True) -> None:
    groups = make_groups(to_run)
    for i, g in enumerate(groups):
        g.job_id = f"<job {i + 1}>"
    say(f"{len(groups) + with_canary} sbatch calls (one job array per stage kind and dependency level"
        + (", and the canary first" if with_canary else "") + "):")
    if with_canary:
        kind, res = canary.heaviest(sorted({s.kind for s in to_run}), cluster.resources)
        params = sbatch_parameters(canary.canary_resources(res), "collapse-canary", None)
        say(f"  <canary> on the {kind} resources, {canary.TIME_MIN} min: "
            + " ".join(f"--{k.replace('_', '-')}={params[k]}" for k in ("time", "gpus_per_node", "partition")
                       if k in params) + mail(params)
            + "; imports, GPUs, data paths, results_root; level 0 and the report wait for it (canary=false: none)")
    for i, g in enumerate(groups):
        res = cluster.resources(g.kind)
        dependency = g.dependency(groups, "<canary>" if with_canary else None)
        params = sbatch_parameters(res, f"collapse-{g.kind}", dependency)
        shown = {k: params[k] for k in ("time", "nodes", "ntasks_per_node", "cpus_per_task", "gpus_per_node",
                                        "mem", "partition", "account", "qos", "constraint", "dependency")
                 if k in params}
        say(f"  <job {i + 1}> {g.kind} x{len(g.stages)} (level {g.level}): "
            + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in shown.items()) + mail(params))


def mail(params: dict) -> str:
    """' --mail-type=FAIL --mail-user=me@lab.org': the job's mail options (notify=, or cluster.sbatch)."""
    extra = params.get("additional_parameters") or {}
    return "".join(f" --{k}={extra[k]}" for k in ("mail-type", "mail-user") if k in extra)
