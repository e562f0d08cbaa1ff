"""The report's files: csv and markdown writers and number formats, and the one-generation table of a
grid (<grid>.csv and <grid>.md) with its comparisons against M1 and the paper."""
import csv
import math
import statistics
from pathlib import Path

from collapse import storage
from collapse.report.na import NA, NO_EVAL, NO_M0, NO_M1, NOT_FINITE, ONE_SEED, Footnotes
from collapse.report.paper import sign_line, signs, spearman_lines, summary_line, zero_costs
from collapse.report.stats import ALPHA, significance_mark
from collapse.report.view import M1, Row, SweepView, Teacher


# ---------------------------------------------------------------- writers and formats

def write_csv(path: Path, header: list, rows: list) -> Path:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
    return storage.atomic_write(path, write)


def md_table(header: list, rows: list, notes: Footnotes | None = None) -> list[str]:
    """A markdown table; with `notes`, its n/a cells (collapse/report/na.py) carry their footnote's mark."""
    cell = notes.cell if notes is not None else str
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])


def write_text(path: Path, lines: list[str]) -> Path:
    return storage.atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


def fmt(v, digits=3):
    """A float to `digits` places; one too large for that (a coefficient of 1e39) in exponent form."""
    if v is None:
        return ""
    if isinstance(v, float) and not abs(v) < 1e6:
        return f"{v:.{digits}g}"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def fmt_p(p: float | None) -> str:
    return "" if p is None else f"{p:.3g}"


def fmt_paper(v: float | None) -> str:
    """4 significant digits, trailing zeros kept: as the paper prints its values (0.05630)."""
    return "" if v is None else f"{v:.{max(0, 3 - math.floor(math.log10(abs(v))))}f}" if v else "0"


def optional(line: str | None) -> list[str]:
    """A blank line and `line`, or nothing without one."""
    return ["", line] if line else []


# ---------------------------------------------------------------- the grid's table

def pooled_line(rows: list[Row]) -> str | None:
    sources = {}
    for r in rows:
        for name, seeds in r.pooled.items():
            sources.setdefault(name, set()).update(seeds)
    if not sources:
        return None
    parts = [f"{name} (seeds {', '.join(str(s) for s in sorted(seeds, key=str))})"
             for name, seeds in sorted(sources.items())]
    return ("Seeds pooled from other sweeps that ran the same rows with the very same configuration: "
            + "; ".join(parts) + ".")


def _metric_digits(rows: list[Row], m0: float | None) -> int:
    """Decimals that keep 4 significant digits of the metric's scale (0.0563 per pixel, 101.4 per image)."""
    means = [abs(v) for v in [m0] + [r.mean for r in rows] if v]
    return max(3, 3 - math.floor(math.log10(statistics.median(means)))) if means else 3


def m0_cells(m0: Teacher, metric: str, d: int) -> dict:
    return {"model": "M0 (teacher)", metric: NA(NO_M0) if m0.mean is None else fmt(m0.mean, d),
            "ci95": NA(NO_M0) if m0.mean is None else NA(ONE_SEED) if m0.ci95 is None else fmt(m0.ci95, d),
            "seeds": len(m0.by_seed) or "", "status": "reference"}


def row_cells(r: Row, view: SweepView, keys: list, d: int) -> dict:
    """One row of the grid's table: its coefficients, its value over seeds and its comparison with M1."""
    columns, metric, is_m1 = view.columns, view.metric.label, r.role == M1
    missing = NA(NOT_FINITE if r.not_finite else NO_EVAL)
    cells = {"model": "M1" if is_m1 else "student", **{columns.get(k, k): fmt(r.label.get(k)) for k in keys},
             metric: missing if r.mean is None else fmt(r.mean, d), "paper": fmt_paper(r.paper),
             "ci95": missing if r.mean is None else NA(ONE_SEED) if r.ci95 is None else fmt(r.ci95, d),
             "sign_vs_M1_ours/paper": "M1" if is_m1 else signs(r, view.paper), "seeds": r.seeds, "status": r.status}
    if not is_m1:
        cells.update(comparison_cells(r, view.m1, d, missing))
    return cells


def comparison_cells(r: Row, m1: Row | None, d: int, missing: NA) -> dict:
    """The row against M1; n/a, with the reason, where a number is undefined."""
    names = ("diff_vs_M1", "diff_ci95", "change_vs_M1_%", "test_vs_M1", "p_vs_M1", "p_holm", "sig_vs_M1",
             "gap_closed_%")
    if r.mean is None or m1 is None:
        return dict.fromkeys(names, missing if r.mean is None else NA(NO_M1))
    c = r.vs_m1
    untested = NA(c.untested)
    return {"diff_vs_M1": fmt(c.diff, d), "diff_ci95": untested if c.ci95 is None else fmt(c.ci95, d),
            "change_vs_M1_%": NA(c.why["pct"]) if c.pct is None else fmt(c.pct, 2),
            "test_vs_M1": c.test, "p_vs_M1": untested if c.p is None else fmt_p(c.p),
            "p_holm": untested if c.p is None else fmt_p(c.p_holm),
            "sig_vs_M1": untested if c.p is None else significance_mark(c.p_holm),
            "gap_closed_%": NA(c.why["gap_closed_pct"]) if c.gap_closed_pct is None else fmt(c.gap_closed_pct, 1)}


def write_tables(view: SweepView, heading: str = "", unit: str | None = None) -> list[Path]:
    """<name>.csv and <name>.md. heading: what follows the name in the title (the task's, e.g. the data
    set); unit: the task's line on what one value is (None: no such line)."""
    name, rows, columns = view.name, view.rows, view.columns
    order = list(columns)
    keys = sorted({k for r in rows for k in r.label},
                  key=lambda k: (order.index(k) if k in columns else len(order), k))
    metric, paper, d = view.metric.label, view.paper, _metric_digits(rows, view.m0.mean)
    header = (["model"] + [columns.get(k, k) for k in keys] + [metric, "ci95"] + (["paper"] if paper else [])
              + ["diff_vs_M1", "diff_ci95", "change_vs_M1_%"] + (["sign_vs_M1_ours/paper"] if paper else [])
              + ["test_vs_M1", "p_vs_M1", "p_holm", "sig_vs_M1", "gap_closed_%", "seeds", "status"])
    cells = [m0_cells(view.m0, metric, d)] + [row_cells(r, view, keys, d) for r in rows]
    table = [[row.get(h, "") for h in header] for row in cells]
    csv_path = write_csv(view.out / f"{name}.csv", header, table)
    n_tested = sum(1 for r in rows if r.vs_m1 and r.vs_m1.p is not None)
    notes = Footnotes()
    md = [f"# {name}{heading}", "",
          f"{metric} on the real test set ({view.metric.better} is better); mean +- ci95 is a 95% Student-t interval "
          "across seeds.", *optional(unit), *optional(pooled_line(rows)), "",
          "Against M1, the plain student (all coefficients 0): diff_vs_M1 = row - M1 with its 95% t-interval and "
          "change_vs_M1_% = diff / M1. Students of one seed share that seed's teacher and synthetic set, so a row "
          "that shares 2 or more seeds with M1 is compared with M1 of the same seeds: the mean of the per-seed "
          "differences and a paired t-test (scipy.stats.ttest_rel). A row that shares fewer takes Welch's "
          "unpaired t-test (as scipy.stats.ttest_ind, equal_var=False; difference of means, Welch-Satterthwaite "
          "interval) when both sides have 2 or more seeds. Otherwise (one seed) the row shows its difference "
          "from M1 of the same seed (or from M1's mean when M1 lacks it) and is not tested; its diff_ci95 is "
          "then the two evals' own sampling intervals combined (1.96 x the root of their summed squared standard "
          "errors; e.g. FID's bootstrap over the generated samples) where both evals have one, else n/a. "
          "test_vs_M1 names each row's test. "
          f"Tests are two-sided at alpha = {ALPHA}; p_vs_M1 is unadjusted, p_holm is Holm's step-down "
          f"correction over the {n_tested} rows tested, and sig_vs_M1 '*' marks p_holm < {ALPHA}. "
          "gap_closed_% = (M1 - row) / (M1 - M0) on the same seeds.",
          *optional(summary_line(view)), "", *md_table(header, table, notes), *notes.lines()]
    if paper:
        paragraphs = ["paper: the paper's value of the row with the same coefficients (blank: not in the paper).",
                      *spearman_lines(rows, notes), sign_line(view)]
        intro, zero_header, zero_table = zero_costs(view)
        md += ["", "## Against the paper's table", *[x for p in paragraphs for x in optional(p)], "", intro, "",
               *md_table(zero_header, [[c[0], fmt(c[1], 2), *c[2:]] for c in zero_table], notes), *notes.lines()]
    return [csv_path, write_text(view.out / f"{name}.md", md)]
