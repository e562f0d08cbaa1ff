"""SLURM time limits from measured rates: `cluster.stages.<kind>.time_from=measured` (or `cluster.time_from`).

Such a kind's time_min becomes time_factor (default 1.5) x the longest estimate among its stages to run,
rounded up to a minute, capped at its partition's limit (sinfo; preflight.partition_limits). The estimate
must come from measurements: finished stages of the same kind and task in this results root (a relaunch,
or a pilot run into the same root), or a rates file measured on the GPU (`rates=FILE`, bench/gpu_check.sh).
A stated or default rate is a guess, not a measurement: that is an error naming the kind, before anything
is submitted. A limit is never below the stage's USR2 warning (signal_delay_s) plus a minute.
"""
import dataclasses
import math
import re

from collapse.config import ConfigError

# collapse/dryrun.py estimate()'s sources that are measurements: "3 finished student stage(s)", "measured rate on ..."
MEASURED_SOURCE = re.compile(r"\d+ finished |measured rate ")


def is_measured(source: str) -> bool:
    return MEASURED_SOURCE.match(source) is not None


def resolve(sweep, to_run: list, costs: dict, partitions: dict):
    """(sweep with the measured time limits set, one line per kind set). costs: dryrun.estimate()'s;
    partitions: {partition name or None (the default): limit in minutes or None}."""
    cluster = sweep.base.cluster
    stages = {kind: dict(over) for kind, over in cluster.stages.items()}
    lines = []
    for kind in dict.fromkeys(s.kind for s in to_run if s.kind != "report"):   # a report: seconds, not measured
        res = cluster.resources(kind)
        if res.time_from != "measured":
            continue
        where = f"cluster.stages.{kind}.time_from" if (cluster.stages.get(kind) or {}).get("time_from") \
            else "cluster.time_from"
        of_kind = [costs[s.key] for s in to_run if s.kind == kind]
        guessed = sorted({source for _, _, source in of_kind if not is_measured(source)})
        if guessed:
            raise ConfigError(f"{where}=measured: no measured rate for the {kind} stages ("
                              f"{'; '.join(guessed)}); allowed: given (time_min as set), or measured once a {kind} "
                              "stage of this task has finished in this results_root or with rates=FILE "
                              "(bench/gpu_check.sh)")
        longest = max(seconds for seconds, _, _ in of_kind)
        minutes = max(math.ceil(res.time_factor * longest / 60), math.ceil(res.signal_delay_s / 60) + 1)
        cap = partitions.get(res.partition) if res.partition in partitions else partitions.get(None)
        capped = cap is not None and minutes > cap
        if capped:
            minutes = math.floor(cap)
        stages[kind] = {**stages.get(kind, {}), "time_min": minutes}
        lines.append(f"{kind}: --time={minutes} min = {res.time_factor:g} x {longest / 60:.1f} min "
                     f"(the longest of {len(of_kind)}; {'; '.join(sorted({src for _, _, src in of_kind}))})"
                     + (f", capped at partition {res.partition or '(default)'}'s limit: it relies on requeue"
                        if capped else ""))
    if not lines:
        return sweep, []
    base = dataclasses.replace(sweep.base, cluster=dataclasses.replace(cluster, stages=stages))
    return dataclasses.replace(sweep, base=base), lines
