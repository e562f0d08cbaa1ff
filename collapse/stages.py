"""What every backend knows of a stage, one copy of each rule: its kinds, its outcomes, its folder, log
and spec, what lies downstream of it, and the latest sweep of a grid.

Used by both executors, the runner, status, cancel and the dry run. No torch, and neither config, plan
nor run: status and cancel import this module and must answer fast.

A stage lives in <results_root>/stages/<key>/ (its spec, stage.json, written at plan time, and what it
makes), logs to <results_root>/logs/<kind>-<key>.log and records its run in manifest/<key>.json.
"""
import re
import sys
from pathlib import Path

from collapse import storage

# The core's stage kinds, in dependency order: pretrain only for a task that asks for it (tasks/base.py,
# Pretrains). A task may add a kind of its own (a simulation that is one stage per grid point): it comes
# after the trained models and before the evals.
KINDS = ("pretrain", "teacher", "synth_shard", "synth", "student", "generation", "eval", "report")
TASK_KINDS_AFTER = "generation"     # where a task's own kind goes in KINDS' order
# Kinds that run once their inputs have ended, whatever the outcome (a report shows the failures too);
# every other stage runs only when all its inputs are done.
ANY_OUTCOME = {"report"}

# A recorded run that ended as it should: its process exits 0 and its job succeeds. Only `done` counts
# as done; `partial` is a report written while some input was not done (the next launch redoes it).
# A record's status is one of: running, done, failed, cancelled (stopped; the next launch resumes it),
# partial; `unreadable` when manifest.read cannot make sense of it.
RAN_TO_THE_END = ("done", "partial")

# A key names a file in manifest/ and a folder in stages/: never a path out of the results root.
SAFE_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")


def kind_rank(kind: str) -> float:
    """Where `kind` sorts among stage kinds: KINDS' order, a task's own kind right after generation."""
    if kind in KINDS:
        return KINDS.index(kind)
    return KINDS.index(TASK_KINDS_AFTER) + 0.5


def is_safe_key(key) -> bool:
    return isinstance(key, str) and SAFE_KEY.match(key) is not None


# ---------------------------------------------------------------- its folder, log and spec

def stage_dir(root, key: str) -> Path:
    if not is_safe_key(key):
        raise ValueError(f"stage key {key!r} is not allowed: it would name a path outside {root}/stages")
    return Path(root) / "stages" / key


def log_path(root, stage) -> Path:
    """The stage's log; `stage`: its spec, or a record (anything with 'kind' and 'key')."""
    return Path(root) / "logs" / f"{stage['kind']}-{stage['key']}.log"


def write_spec(root, stage, redo_of: dict | None = None) -> None:
    """The stage's spec for its runner; `redo_of`: the done record a `redo=` launch replaces."""
    spec = stage.spec()
    if redo_of is not None:
        spec["redo_of"] = {"started": redo_of["started"], "ended": redo_of.get("ended")}
    storage.write_json(stage_dir(root, stage.key) / "stage.json", spec)


def read_spec(root, key: str) -> dict:
    return storage.read_json(stage_dir(root, key) / "stage.json")


# ---------------------------------------------------------------- the graph

def reachable(keys, edges: dict) -> set:
    """`keys` and every key reached from them along `edges` (key -> the keys it points to)."""
    found = set(keys)
    frontier = list(found)
    while frontier:
        for nxt in edges.get(frontier.pop(), ()):
            if nxt not in found:
                found.add(nxt)
                frontier.append(nxt)
    return found


def downstream(keys, reads: dict) -> set:
    """`keys` and every stage of `reads` that reads one of them, directly or not.

    reads: key -> the keys of the stages it reads (a plan's stages: their deps; the stages a launch
    submits; the queued jobs of a results root). A stage absent from `reads` passes nothing on."""
    readers: dict = {}
    for key, deps in reads.items():
        for dep in set(deps):
            readers.setdefault(dep, []).append(key)
    return reachable(keys, readers)


def upstream(keys, reads: dict) -> set:
    """`keys` and every stage they read, directly or not (`reads` as for downstream)."""
    return reachable(keys, reads)


def latest_sweeps(records: list[dict], grid: str | None = None) -> dict:
    """{grid name: its latest sweep record} among `records` (the manifest's), of `grid` alone when given.

    A launch writes its sweep record (plan.sweep_record): the grid's stages and points as planned."""
    sweeps = {}
    for r in records:
        if r.get("kind") == "sweep" and r.get("status") == "done" and (grid is None or r.get("name") == grid):
            if r["name"] not in sweeps or r.get("ended", 0) >= sweeps[r["name"]].get("ended", 0):
                sweeps[r["name"]] = r
    return sweeps


def well_formed(sweep: dict) -> bool:
    return isinstance(sweep.get("config"), dict) and isinstance(sweep["config"].get("points"), list)


def warn_malformed(name: str, sweep: dict) -> None:
    print(f"warning: report: sweep record {sweep.get('key')} ({name}) is malformed (no config.points); "
          "skipped", file=sys.stderr)
