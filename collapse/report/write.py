"""Manifest -> tables (csv, md) and plots (png, and pdf beside each), one set per grid, in <results_root>/report/.

Each sweep's task (collapse.tasks.get) says what the generic report cannot know: its primary metric
(PRIMARY), its coefficient columns (REPORT_COLUMNS), what its table's heading and unit line say
(table_notes) and its own tables and figures (write_report). A one-generation sweep gets the generic
table (collapse/report/tables.py: rows against M1 and the paper, collapse/report/rows.py) and figures
(collapse/report/plots.py), then the task's part; a chain sweep gets the chains report
(collapse/report/chains.py); a sweep of any other plan (a simulation's) is the task's alone.
Each grid's time, estimated against measured: <grid>_timing.md (collapse/report/timing.py).
Then every stage record as one table: results.csv (.parquet); last digest.txt and index.html (digest.py, page.py).
"""
import inspect
from pathlib import Path

from collapse import manifest, tasks
from collapse.report import chains
from collapse.report.digest import outcomes, write_digest
from collapse.report.metric import parse, with_metric
from collapse.report.page import write_page
from collapse.report.plots import plot_coefficients, plot_curves, plot_samples, with_pdfs
from collapse.report.rows import sweep_rows, warn_malformed, well_formed
from collapse.report.scorecard import write_scorecard
from collapse.stages import latest_sweeps
from collapse.report.tables import write_tables
from collapse.report.timing import write_timing
from collapse.results import write_table

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
        shape = sweep["config"].get("plan")
        if chains.handles(sweep):   # iterative retraining: metric against generation
            written += chains.write_chains(name, sweep, by_key, out, task.PRIMARY, root=root)
        elif shape in ONE_GENERATION:
            written += one_generation(name, sweep, by_key, others, task, root, out)
        else:   # a simulation: its report is its own
            written += task.write_report(name, sweep, by_key, [], {}, root, out)
        written += write_timing(name, sweep, by_key, out)
    written += write_table(root, out)   # every stage record as one table: results.csv (.parquet)
    written = with_pdfs(written)
    # last, from all of the above: digest.txt (how each sweep ended) and index.html (the whole report as one
    # page that opens offline): collapse/report/digest.py, collapse/report/page.py
    found = outcomes(root)
    return written + write_digest(root, found) + write_page(root, written, found, records)


def one_generation(name: str, sweep: dict, by_key: dict, others: list[dict], task, root: Path,
                   out: Path) -> list[Path]:
    """The generic table and figures of a one-generation grid, then the task's own part."""
    rows, ref = sweep_rows(sweep, by_key, others, task.PRIMARY, task.REPORT_COLUMNS)
    heading, unit = task.table_notes(sweep, by_key)
    written = write_tables(name, rows, ref, out, heading, unit)
    written += [p for p in (plot_coefficients(name, rows, ref, out),
                            plot_samples(name, rows, ref, root, out),
                            plot_curves(name, sweep, by_key, ref["columns"], out)) if p]
    return written + task.write_report(name, sweep, by_key, rows, ref, root, out)


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
        primary = (metric.spec, metric.spec, task.PRIMARY[2])
        rows, ref = sweep_rows(sweep, by_key, sweeps, primary, task.REPORT_COLUMNS)
        named = f"{name}.metric={metric.tag}"
        written += write_tables(named, rows, ref, root / "report", f" (report.metric = {metric.spec})", None)
        written += [p for p in (plot_coefficients(named, rows, ref, root / "report"),) if p]
        claims = getattr(inspect.getmodule(task.write_report), "CLAIMS", None)   # beside the task's report part
        if claims is not None:
            written += write_scorecard(named, ref["task"], claims, rows, ref, root / "report")
    return written


def task_of(sweep: dict):
    return tasks.get(sweep["config"]["task"])
