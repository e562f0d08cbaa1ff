"""A one-generation sweep's rows: one per grid point, seeds pooled (mean, and a 95% t-interval when there
are several seeds), with seeds of the same configuration that other sweeps ran; M0 is the reference
and each row is compared with M1 (the plain student, every distillation coefficient 0)."""
import json
import sys

from collapse import plan
from collapse.report.paper import paper_reference, paper_value
from collapse.report.na import finite
from collapse.report.stats import compare_with_m1, holm, mean_ci, sampling_se

SEED = "train.seed"


def well_formed(sweep: dict) -> bool:
    return isinstance(sweep.get("config"), dict) and isinstance(sweep["config"].get("points"), list)


def warn_malformed(name: str, sweep: dict) -> None:
    print(f"warning: report: sweep record {sweep.get('key')} ({name}) is malformed (no config.points); "
          "skipped", file=sys.stderr)


def replicate_of(record: dict | None) -> str | None:
    """What two grid points must share to be seeds of one row: every field that decides the
    student's, its synthetic set's and its eval's numbers, train.seed left out (None without a config)."""
    config, prints = (record or {}).get("config"), (record or {}).get("fingerprints")
    try:   # paths by content, as in the stage key: copies of one data set at two paths are one replicate
        material = {kind: plan.key_material(kind, config, prints) for kind in ("student", "synth", "eval")}
        material["student"]["train"].pop("seed", None)
    except (KeyError, TypeError, AttributeError):
        return None
    return json.dumps(material, sort_keys=True, default=str)


def sweep_rows(sweep: dict, by_key: dict, others: list[dict], primary: tuple[str, str, str],
               columns: dict) -> tuple[list[dict], dict]:
    """One row per grid point (seeds pooled, with those of `others` that replicate it) plus the M0
    reference. primary: the task's (metric, label, "lower"/"higher"); columns: its distillation
    coefficients ("distill.lam" -> "lambda"), all 0 in M1."""
    task = sweep["config"]["task"]
    metric = primary[0]
    groups, replicates, teachers = {}, {}, {}
    for p in sweep["config"]["points"]:
        label = {k: v for k, v in p["label"].items() if k != SEED}
        g = groups.setdefault(tuple(sorted(label.items())), {"label": label, "values": [], "by_seed": {}, "ses": [],
                                                             "se_by_seed": {}, "failed": [], "evals": [],
                                                             "pooled": {}})
        _add_point(g, p, by_key, metric, teachers)
        fingerprint = replicate_of(by_key.get(p.get("eval")) or by_key.get(p.get("student")))
        if fingerprint:
            replicates.setdefault(fingerprint, g)
    for g, p, source in pooled_points(sweep, others, replicates, by_key):
        _add_point(g, p, by_key, metric, teachers)
        g["pooled"].setdefault(source, []).append(p["label"].get(SEED))
    rows = [_row(g) for g in groups.values()]
    m0_by_seed = {seed: v for seed, v in teachers.values() if seed is not None}
    m0 = mean_ci([v for _, v in teachers.values()]) if teachers else (None, None)
    plain = next((r for r in rows if all(not r.get(k) for k in columns)), None)
    m1 = plain if plain and "mean" in plain else None   # the plain student, where it has a finished eval
    ref = {"m0": m0, "m0_by_seed": m0_by_seed, "m1": m1, "m1_row": plain, "metric": tuple(primary), "task": task,
           "columns": columns, "paper": paper_reference(task, primary), "m0_evals": [by_key[k] for k in teachers]}
    for r in rows:
        if m1 and "mean" in r and r is not m1:
            r["vs_m1"] = compare_with_m1(r, m1, ref)
    tested = [r for r in rows if (r.get("vs_m1") or {}).get("p") is not None]
    for r, p in zip(tested, holm([r["vs_m1"]["p"] for r in tested])):
        r["vs_m1"]["p_holm"] = p
    for r in rows:
        r["paper"] = paper_value(r, ref["paper"])
    return rows, ref


def _add_point(g: dict, p: dict, by_key: dict, metric: str, teachers: dict) -> None:
    seed = p["label"].get(SEED)
    rec = by_key.get(p["eval"])
    value = ((rec or {}).get("metrics") or {}).get(metric)
    if rec and rec["status"] == "done" and finite(value):
        g["values"].append(value)
        g["ses"].append(sampling_se(rec["metrics"], metric))
        g["evals"].append(rec)
        if seed is not None:
            g["by_seed"][seed] = value
            g["se_by_seed"][seed] = g["ses"][-1]
    elif rec and rec["status"] == "done" and value is not None:
        g["not_finite"] = True
        g["failed"].append(f"seed {seed}: the eval recorded {metric} = {value} (not a finite number)")
    else:
        g["failed"].append(_why(p, by_key))
    t = by_key.get(p["teacher_eval"])
    if t and t["status"] == "done" and finite((t.get("metrics") or {}).get(metric)):
        teachers[p["teacher_eval"]] = (seed, t["metrics"][metric])


def pooled_points(sweep: dict, others: list[dict], replicates: dict, by_key: dict):
    """(row group, point, sweep name) for each finished point of another one-generation sweep that
    repeats a row of this one with the very same configuration under a seed the row lacks."""
    seeds = {id(g): set(g["by_seed"]) | {None} for g in replicates.values()}
    for other in others:
        cfg = other.get("config") or {}
        if other is sweep or cfg.get("task") != sweep["config"]["task"] or cfg.get("plan") not in (None, "one_generation"):
            continue
        for p in cfg.get("points") or []:
            rec = by_key.get(p.get("eval"))
            g = replicates.get(replicate_of(rec)) if rec and rec.get("status") == "done" else None
            if g is not None and p["label"].get(SEED) not in seeds[id(g)]:
                seeds[id(g)].add(p["label"].get(SEED))
                yield g, p, other["name"]


def _row(g: dict) -> dict:
    row = {**g["label"], "label": g["label"], "seeds": len(g["values"]), "evals": g["evals"],
           "values": g["values"], "by_seed": g["by_seed"], "ses": g["ses"], "se_by_seed": g["se_by_seed"],
           "pooled": g["pooled"], "not_finite": g.get("not_finite", False)}
    if g["values"]:
        row["mean"], row["ci95"] = mean_ci(g["values"])
    row["status"] = "done" if not g["failed"] else "; ".join(g["failed"])
    return row


def _why(point, by_key) -> str:
    """The first stage on the point's path that is not done: the cause, not the dependents it blocked."""
    for role in ("teacher", "student", "eval"):
        if role not in point:
            continue
        rec = by_key.get(point[role])
        if rec is None:
            return f"not run yet: {role} missing"
        if rec["status"] == "running":
            return f"running: {role} (log {rec.get('log')})"
        if rec["status"] != "done":
            return f"failed: {role} {rec['status']}: {rec.get('error', '')} (log {rec.get('log')})"
    return "not run yet: eval missing"

