"""Manifest -> tables (csv, md) and plots (png, and pdf beside each), one set per grid, in <results_root>/report/.

Each sweep's task (collapse.tasks.get) says what the generic report cannot know: its primary metric
(PRIMARY), its coefficient columns (REPORT_COLUMNS), what its table's heading and unit line say
(table_notes) and its own tables and figures (write_report). A one-generation sweep gets the generic
table (collapse/report/tables.py: rows against M1 and the paper, built below) and figures
(collapse/report/plots.py), then the task's part; a chain sweep gets the chains report
(collapse/report/chains.py); a sweep of any other plan (a simulation's) is the task's alone.
Each grid's time, estimated against measured: <grid>_timing.md (collapse/report/timing.py).
Then every stage record as one table: results.csv (.parquet); last digest.txt and index.html (digest.py, page.py).

What every part of a grid's report reads is one SweepView (collapse/report/view.py), built here once
from the manifest (sweep_view): its rows, one per grid point, seeds pooled (mean, and a 95% t-interval
when there are several seeds), with seeds of the same configuration that other sweeps ran; M0 is the
reference and each row is compared with M1 (the plain student, every distillation coefficient 0).

Above collapse/tasks and collapse/plan (it asks each sweep's task, and pools seeds by the key material of
collapse/plan.py); collapse/report/ below holds what the tasks' report parts use.
"""
import inspect
import json
import sys
from dataclasses import replace
from pathlib import Path

from collapse import manifest, plan, tasks
from collapse.report import chains
from collapse.report.digest import outcomes, write_digest
from collapse.report.metric import Primary, parse, primary_of, with_metric
from collapse.report.na import finite
from collapse.report.page import write_page
from collapse.report.paper import paper_reference, paper_value
from collapse.report.plots import plot_coefficients, plot_curves, plot_samples, with_pdfs
from collapse.report.scorecard import write_scorecard
from collapse.report.stats import Runs, compare_with_m1, holm, mean_ci, sampling_se
from collapse.report.tables import write_tables
from collapse.report.timing import write_timing
from collapse.report.view import M1, STUDENT, Row, SweepView, Teacher
from collapse.results import write_table
from collapse.stages import latest_sweeps, warn_malformed, well_formed

SEED = "train.seed"


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


def sweep_view(name: str, sweep: dict, by_key: dict, others: list[dict], metric: Primary, columns: dict,
               root: Path) -> SweepView:
    """A one-generation grid as its report reads it, on `metric`: one row per grid point (seeds pooled, with
    those of `others` that replicate it), each against M1; M0; the paper's table. columns: the task's
    distillation coefficients ("distill.lam" -> "lambda"), all 0 in M1."""
    task = sweep["config"]["task"]
    groups, teachers = _groups(sweep, by_key, others, metric.name)
    plain = next((g for g in groups if all(not g["label"].get(k) for k in columns)), None)
    rows = [_row(g, M1 if g is plain else STUDENT) for g in groups]
    m0 = Teacher(*(mean_ci([v for _, v in teachers.values()]) if teachers else (None, None)),
                 by_seed={seed: v for seed, v in teachers.values() if seed is not None},
                 evals=tuple(by_key[k] for k in teachers))
    m1 = next((r for r in rows if r.role == M1 and r.mean is not None), None)   # the plain student, where finished
    compared = [compare_with_m1(r.runs, m1.runs, m1.mean, m0.mean, m0.by_seed)
                if m1 and r.mean is not None and r is not m1 else None for r in rows]
    tested = [i for i, c in enumerate(compared) if c and c.p is not None]
    for i, p_holm in zip(tested, holm([compared[i].p for i in tested])):
        compared[i] = replace(compared[i], p_holm=p_holm)
    paper = paper_reference(task, metric)
    rows = tuple(replace(r, vs_m1=c, paper=paper_value(r, paper)) for r, c in zip(rows, compared))
    return SweepView(name, task, sweep, by_key, root, root / "report", metric, columns, rows, m0, paper)


def _groups(sweep: dict, by_key: dict, others: list[dict], metric: str) -> tuple[list[dict], dict]:
    """The grid points by label (train.seed left out), each with its seeds' values of `metric`, and every
    finished teacher eval: {key: (seed, value)}."""
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
    return list(groups.values()), teachers


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


def _row(g: dict, role: str) -> Row:
    mean, ci95 = mean_ci(g["values"]) if g["values"] else (None, None)
    runs = Runs(tuple(g["values"]), g["by_seed"], tuple(g["ses"]), g["se_by_seed"])
    return Row(g["label"], role, runs, tuple(g["evals"]), "done" if not g["failed"] else "; ".join(g["failed"]),
               g.get("not_finite", False), g["pooled"], mean, ci95)


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


ONE_GENERATION = (None, "one_generation")   # plan shapes of the generic table


def write_reports(root, metric: str | None = None) -> list[Path]:
    """Every grid's report; with `metric` (report.metric, collapse/report/metric.py) each one-generation
    grid's generic table, figures and scorecard on that metric, as <grid>.metric=<tag>.*, and nothing else."""
    root = Path(root)
    records = manifest.read_all(root)
    if metric is not None:
        return with_pdfs(on_metric(root, records, parse(metric)))
    by_key = {r["key"]: r for r in records}
    out = root / "report"
    written = []
    sweeps = [r for r in records if r.get("kind") == "sweep" and r.get("status") == "done" and well_formed(r)]
    others = sorted(sweeps, key=lambda r: r.get("ended", 0))   # seeds of the same rows, pooled
    for name, sweep in sorted(latest_sweeps(records).items()):
        if not well_formed(sweep):
            warn_malformed(name, sweep)
            continue
        task = task_of(sweep)
        view = SweepView(name, sweep["config"]["task"], sweep, by_key, root, out, primary_of(task))   # no rows
        if chains.handles(sweep):   # iterative retraining: metric against generation
            written += chains.write_chains(view)
        elif sweep["config"].get("plan") in ONE_GENERATION:
            written += one_generation(name, sweep, by_key, others, task, root)
        else:   # a simulation: its report is its own
            written += task.write_report(view)
        written += write_timing(name, sweep, by_key, out)
    written += write_table(root, out)   # every stage record as one table: results.csv (.parquet)
    written = with_pdfs(written)
    # last, from all of the above: digest.txt (how each sweep ended) and index.html (the whole report as one
    # page that opens offline): collapse/report/digest.py, collapse/report/page.py
    found = outcomes(root)
    return written + write_digest(root, found) + write_page(root, written, found, records)


def one_generation(name: str, sweep: dict, by_key: dict, others: list[dict], task, root: Path) -> list[Path]:
    """The generic table and figures of a one-generation grid, then the task's own part."""
    view = sweep_view(name, sweep, by_key, others, primary_of(task), task.REPORT_COLUMNS, root)
    written = write_tables(view, *task.table_notes(view))
    written += [p for p in (plot_coefficients(view), plot_samples(view), plot_curves(view)) if p]
    return written + task.write_report(view)


def on_metric(root: Path, records: list[dict], metric) -> list[Path]:
    records = with_metric(records, metric)
    by_key = {r["key"]: r for r in records}
    sweeps = sorted((r for r in records if r.get("kind") == "sweep" and r.get("status") == "done" and well_formed(r)),
                    key=lambda r: r.get("ended", 0))
    written = []
    for name, sweep in sorted(latest_sweeps(records).items()):
        if not well_formed(sweep) or chains.handles(sweep) or sweep["config"].get("plan") not in ONE_GENERATION:
            continue
        task = task_of(sweep)
        primary = Primary(metric.spec, metric.spec, primary_of(task).better)
        view = sweep_view(f"{name}.metric={metric.tag}", sweep, by_key, sweeps, primary, task.REPORT_COLUMNS, root)
        written += write_tables(view, f" (report.metric = {metric.spec})", None)
        written += [p for p in (plot_coefficients(view),) if p]
        claims = getattr(inspect.getmodule(task.write_report), "CLAIMS", None)   # beside the task's report part
        if claims is not None:
            written += write_scorecard(view, claims)
    return written


def task_of(sweep: dict):
    return tasks.get(sweep["config"]["task"])
