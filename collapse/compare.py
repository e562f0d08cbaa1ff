"""Two sweeps side by side: python sweeps/compare.py A B [metric=NAME].

A and B are each a results root (every grid's latest sweep there) or ROOT:NAME, NAME a grid (its latest
sweep in ROOT) or a sweep record's key (sweep-<hex>, an older launch): two roots, or two sweeps of one.
It prints
  - the stages lined up by name and key: `reused` (the same key on both sides: the same inputs and config,
    so the same output), `changed` (the same name, another key: the config keys that differ, and the
    inputs that differ), `only in A` / `only in B`;
  - per grid row (coefficients, seeds pooled; M0 too): the primary metric (the task's PRIMARY, or
    metric=NAME) on each side and B - A, paired over the seeds both have (a 95% t-interval, and the
    paired t-test's p; collapse/report/stats.py compare(), as the report holds a row against M1), and
    whether the row's teacher and synthetic set are the very same stages on both sides.
The functions below line_up() are pure functions of records; load() reads a side from disk.
"""
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from collapse import manifest, plan, stages
from collapse.config import ConfigError
from collapse.report.na import finite
from collapse.report.stats import Comparison, Runs, compare, runs
from collapse.results import _flatten

SEED = "train.seed"
SHOWN_KEYS = 6   # config keys listed per changed stage; the rest counted


class CompareError(ValueError):
    pass


@dataclass
class Side:
    spec: str                                       # as given: ROOT or ROOT:NAME
    root: Path
    sweeps: list = field(default_factory=list)      # the sweep records compared
    stages: dict = field(default_factory=dict)      # key -> record (or the stage's spec, not run yet)

    def describe(self) -> str:
        return f"{self.root} (" + ", ".join(f"{s['name']} {s['key']}" for s in self.sweeps) + ")"


# ---------------------------------------------------------------- reading a side

def load(spec: str, which: str) -> Side:
    """ROOT or ROOT:NAME as a Side; a mistake is one line naming the argument, its value and what is allowed."""
    root, name = Path(spec), None
    if not (root / "manifest").is_dir() and ":" in spec:
        head, name = spec.rsplit(":", 1)
        root = Path(head)
    if not (root / "manifest").is_dir():
        raise CompareError(f"argument {which}: value '{spec}' has no manifest/ (expected a results root, "
                           "or ROOT:GRID, or ROOT:sweep-KEY)")
    records = manifest.read_all(root)
    sweeps = select(records, name)
    if not sweeps:
        grids = sorted({r["name"] for r in records if r.get("kind") == "sweep"})
        raise CompareError(f"argument {which}: value '{spec}' names no sweep in {root}; allowed: "
                           + (", ".join(f"{root}:{g}" for g in grids) + " or a sweep key" if grids else "none launched"))
    by_key = {r["key"]: r for r in records if r.get("key")}
    side = Side(spec, root, sweeps)
    for sweep in sweeps:
        for key in sweep["config"].get("stages") or ():
            side.stages[key] = by_key.get(key) or planned(root, key)
    return side


def select(records: list[dict], name: str | None) -> list[dict]:
    """The sweeps a side compares: every grid's latest (name None), a grid's latest, or the sweep keyed `name`."""
    done = [r for r in records if r.get("kind") == "sweep" and r.get("status") == "done"
            and isinstance((r.get("config") or {}).get("points"), list)]
    if name is not None and name.startswith("sweep-"):
        return [r for r in done if r["key"] == name]
    return sorted(stages.latest_sweeps(done, name).values(), key=lambda r: r["name"])


def planned(root: Path, key: str) -> dict:
    """A stage no record describes yet: its spec (name, kind, config, deps), status 'not run'."""
    try:
        spec = stages.read_spec(root, key)
    except (OSError, ValueError):
        return {"key": key, "name": key, "kind": "?", "status": "not run", "config": None, "deps": {}}
    return {**spec, "status": "not run"}


# ---------------------------------------------------------------- stages: reused, changed, only in one

def line_up(a: dict, b: dict) -> list[dict]:
    """Each stage name of either side (key -> record): {"name", "state", "a", "b", "differs"}; a name
    a side holds twice (a teacher two grids share under one name, configured apart) pairs key by key."""
    names_a, names_b = _by_name(a), _by_name(b)
    out = []
    for name in sorted(set(names_a) | set(names_b), key=lambda n: (_rank(a, b, n), n)):
        ka, kb = names_a.get(name, []), names_b.get(name, [])
        for key in sorted(set(ka) & set(kb)):
            out.append({"name": name, "state": "reused", "a": key, "b": key, "differs": []})
        rest_a, rest_b = sorted(set(ka) - set(kb)), sorted(set(kb) - set(ka))
        for key_a, key_b in zip(rest_a, rest_b):
            out.append({"name": name, "state": "changed", "a": key_a, "b": key_b,
                        "differs": differences(a[key_a], b[key_b])})
        out += [{"name": name, "state": "only in A", "a": k, "b": None, "differs": []} for k in rest_a[len(rest_b):]]
        out += [{"name": name, "state": "only in B", "a": None, "b": k, "differs": []} for k in rest_b[len(rest_a):]]
    return out


def _by_name(side: dict) -> dict:
    names: dict = {}
    for key, r in side.items():
        names.setdefault(r.get("name") or key, []).append(key)
    return names


def _rank(a: dict, b: dict, name: str) -> float:
    kinds = [r.get("kind") for r in (*a.values(), *b.values()) if r.get("name") == name]
    return stages.kind_rank(kinds[0]) if kinds and kinds[0] in stages.KINDS else 99


def differences(ra: dict, rb: dict) -> list[str]:
    """'section.field: A -> B' for every field of the stage's key material (plan.key_material: what
    decides its output) that differs, then 'input NAME' for each input (teacher, synth, model) that is
    another stage on the other side, then the config fields outside the key that differ, by name."""
    ca = _flatten(ra.get("config") or {}, "", lists="json")
    cb = _flatten(rb.get("config") or {}, "", lists="json")
    ka, kb = _material(ra), _material(rb)
    keyed = ka is not None and kb is not None
    ma, mb = (ka, kb) if keyed else (ca, cb)
    out = [f"{k[1:]}: {_v(ma, k)} -> {_v(mb, k)}" for k in sorted(set(ma) | set(mb)) if _v(ma, k) != _v(mb, k)]
    deps_a, deps_b = ra.get("deps") or {}, rb.get("deps") or {}
    out += [f"input {d}" for d in sorted(set(deps_a) | set(deps_b)) if deps_a.get(d) != deps_b.get(d)]
    shown = {line.split(":", 1)[0] for line in out}
    rest = [k[1:] for k in sorted(set(ca) | set(cb)) if _v(ca, k) != _v(cb, k) and k[1:] not in shown]
    return out + ([f"not in the key: {', '.join(rest)}"] if keyed and rest else [])


def _material(record: dict) -> dict | None:
    """The record's key material, flattened ('.train.lr'); None where it cannot be computed."""
    try:
        return _flatten(plan.key_material(record["kind"], record["config"], record.get("fingerprints")), "", lists="json")
    except (KeyError, TypeError, AttributeError, ValueError):
        return None


def _v(config: dict, key: str) -> str:
    if key not in config:
        return "(absent)"
    return json.dumps(config[key]) if isinstance(config[key], str) else str(config[key])


# ---------------------------------------------------------------- rows: the primary metric, B - A

def rows(side: Side) -> dict:
    """{row name: {"points": [...], "label": {...}}} of a side's one-generation sweeps (seeds pooled),
    and "M0" for the teachers' evals."""
    out: dict = {}
    for sweep in side.sweeps:
        for p in sweep["config"]["points"]:
            if not isinstance(p, dict) or "eval" not in p or not isinstance(p.get("label"), dict):
                continue   # a chain's or a simulation's points: no per-row comparison
            label = {k: v for k, v in p["label"].items() if k != SEED}
            row = out.setdefault(plan.point_name(label) or "(one row)", {"points": [], "label": label, "m0": []})
            row["points"].append(p)
            out.setdefault("M0", {"points": [], "label": {}, "m0": []})["m0"].append(p)
    return out


def row_runs(row: dict, records: dict, metric: str) -> tuple[Runs, dict]:
    """(runs of the row's finished evals (stats.runs), {seed: (teacher key, synth key)})."""
    if row["m0"]:
        evals = {p.get("teacher_eval"): p for p in row["m0"]}
        roles = {k: records.get(k) for k in evals}
        inputs = {_seed(p): (p.get("teacher"), None) for p in evals.values()}
    else:
        roles = {p["eval"]: records.get(p["eval"]) for p in row["points"]}
        inputs = {_seed(p): (p.get("teacher"), ((records.get(p.get("student")) or {}).get("deps") or {}).get("synth"))
                  for p in row["points"]}
    done = [r for r in roles.values() if r and r.get("status") == "done"
            and finite((r.get("metrics") or {}).get(metric))]
    return runs(done, metric), inputs


def _seed(point: dict):
    return point["label"].get(SEED)


def row_differences(a: Side, b: Side, metric: str) -> list[dict]:
    """One entry per row on either side: each side's runs, B - A (stats.compare: paired over shared
    seeds), and whether the teacher and the synthetic set are the same stages for the seeds both ran."""
    rows_a, rows_b = rows(a), rows(b)
    out = []
    for name in sorted(set(rows_a) | set(rows_b), key=lambda n: (n != "M0", n)):
        entry = {"row": name, "a": None, "b": None, "diff": None, "teacher": "", "synth": ""}
        if name in rows_a:
            entry["a"], inputs_a = row_runs(rows_a[name], a.stages, metric)
        if name in rows_b:
            entry["b"], inputs_b = row_runs(rows_b[name], b.stages, metric)
        if entry["a"] is not None and entry["b"] is not None:
            if entry["a"].values and entry["b"].values:
                entry["diff"] = compare(entry["b"], entry["a"])
            both = sorted(set(inputs_a) & set(inputs_b), key=str)
            entry["teacher"] = _same([inputs_a[s][0] for s in both], [inputs_b[s][0] for s in both])
            if name != "M0":
                entry["synth"] = _same([inputs_a[s][1] for s in both], [inputs_b[s][1] for s in both])
        out.append(entry)
    return out


def _same(keys_a: list, keys_b: list) -> str:
    if not keys_a or None in keys_a or None in keys_b:
        return "?"
    same = sum(x == y for x, y in zip(keys_a, keys_b))
    return "shared" if same == len(keys_a) else "different" if same == 0 else f"shared for {same} of {len(keys_a)} seeds"


# ---------------------------------------------------------------- the printout

def report(a: Side, b: Side, primary: tuple | None) -> list[str]:
    """The lines compare.py prints."""
    lined = line_up(a.stages, b.stages)
    counts = {s: sum(x["state"] == s for x in lined) for s in ("reused", "changed", "only in A", "only in B")}
    lines = [f"A: {a.describe()}", f"B: {b.describe()}",
             "stages: " + ", ".join(f"{n} {s}" for s, n in counts.items()), ""]
    width = max((len(x["name"]) for x in lined), default=0)
    for x in lined:
        keys = x["a"] if x["state"] == "reused" else f"{x['a'] or '-'} -> {x['b'] or '-'}"
        lines.append(f"{x['state']:<9}  {x['name']:<{width}}  {keys}")
        shown = x["differs"][:SHOWN_KEYS]
        if shown:
            more = len(x["differs"]) - len(shown)
            lines.append(" " * 11 + "differs: " + "; ".join(shown) + (f"; and {more} more" if more > 0 else ""))
    lines.append("")
    if primary is None:
        return lines + ["rows: the sides' tasks differ (or neither has one-generation rows): no per-row differences"]
    metric, label, better = primary
    lines.append(f"rows: {label} ({metric}, {better} is better), seeds pooled; B - A paired over the seeds both have")
    for e in row_differences(a, b, metric):
        lines.append(f"  {e['row']}: A {_mean(e['a'])}; B {_mean(e['b'])}; B - A {_diff(e['diff'])}"
                     + (f"; teacher {e['teacher']}" if e["teacher"] else "") + (f", synthetic set {e['synth']}" if e["synth"] else ""))
    return lines


def _mean(r: Runs | None) -> str:
    if r is None:
        return "no such row"
    if not r.values:
        return "no finished eval"
    n = len(r.values)
    return f"{sum(r.values) / n:.6g} ({n} seed{'s' if n != 1 else ''})"


def _diff(c: Comparison | None) -> str:
    if c is None:
        return "n/a"
    text = f"{c.diff:+.4g}"
    if c.ci95 is not None:
        text += f" +- {c.ci95:.3g} (95%, {c.test}" + (f", p = {c.p:.3g})" if c.p is not None else ")")
    else:
        text += f" ({c.test})"
    return text


def primary_of(a: Side, b: Side, metric: str | None) -> tuple | None:
    """The task's (metric, label, direction) when both sides' sweeps are of one task; metric=NAME over it."""
    found = {s["config"].get("task") for s in (*a.sweeps, *b.sweeps)}
    if len(found) != 1:
        return None
    from collapse import tasks   # heavy: a task module imports torch; only its PRIMARY is read
    task = tasks.get(found.pop())
    primary = tuple(getattr(task, "PRIMARY", ()) or ())
    if metric is not None:
        return (metric, metric, primary[2] if len(primary) == 3 else "lower")
    return primary if len(primary) == 3 else None


USAGE = "A B [metric=NAME]   (A, B: a results root, or ROOT:GRID, or ROOT:sweep-KEY)"


def main(argv: list[str]) -> int:
    sides = [a for a in argv if "=" not in a]
    keys = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = sorted(set(keys) - {"metric"})
    if unknown or len(sides) != 2:
        print(f"error: expected {USAGE}, got {argv}" + (f" (unknown key '{unknown[0]}'; allowed: metric)" if unknown else ""),
              file=sys.stderr)
        return 2
    try:
        a, b = load(sides[0], "A"), load(sides[1], "B")
        primary = primary_of(a, b, keys.get("metric"))
    except (ValueError, ConfigError) as e:   # CompareError; an unknown task (tasks.get)
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(report(a, b, primary)))
    return 0
