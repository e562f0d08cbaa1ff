"""The report's files: csv and markdown writers and number formats, and the one-generation table of a
grid (<grid>.csv and <grid>.md) with its comparisons against M1 and the paper."""
import csv
import math
import statistics
from pathlib import Path

from collapse import storage
from collapse.report.paper import sign_line, signs, spearman_lines, summary_line, zero_costs
from collapse.report.stats import ALPHA, significance_mark


# ---------------------------------------------------------------- writers and formats

def write_csv(path: Path, header: list, rows: list) -> Path:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
    return storage.atomic_write(path, write)


def md_table(header: list, rows: list) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def write_text(path: Path, lines: list[str]) -> Path:
    return storage.atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


def fmt(v, digits=3):
    if v is None:
        return ""
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

def pooled_line(rows: list[dict]) -> str | None:
    sources = {}
    for r in rows:
        for name, seeds in r["pooled"].items():
            sources.setdefault(name, set()).update(seeds)
    if not sources:
        return None
    parts = [f"{name} (seeds {', '.join(str(s) for s in sorted(seeds, key=str))})"
             for name, seeds in sorted(sources.items())]
    return ("Seeds pooled from other sweeps that ran the same rows with the very same configuration: "
            + "; ".join(parts) + ".")


def _metric_digits(rows: list[dict], m0: float | None) -> int:
    """Decimals that keep 4 significant digits of the metric's scale (0.0563 per pixel, 101.4 per image)."""
    means = [abs(v) for v in [m0] + [r.get("mean") for r in rows] if v]
    return max(3, 3 - math.floor(math.log10(statistics.median(means)))) if means else 3


def write_tables(name: str, rows: list[dict], ref: dict, out: Path, heading: str = "",
                 unit: str | None = None) -> list[Path]:
    """<name>.csv and <name>.md. heading: what follows the name in the title (the task's, e.g. the data
    set); unit: the task's line on what one value is (None: no such line)."""
    columns = ref["columns"]
    order = list(columns)
    keys = sorted({k for r in rows for k in r["label"]},
                  key=lambda k: (order.index(k) if k in columns else len(order), k))
    metric, paper, d = ref["metric"][1], ref["paper"], _metric_digits(rows, ref["m0"][0])
    header = (["model"] + [columns.get(k, k) for k in keys] + [metric, "ci95"] + (["paper"] if paper else [])
              + ["diff_vs_M1", "diff_ci95", "change_vs_M1_%"] + (["sign_vs_M1_ours/paper"] if paper else [])
              + ["test_vs_M1", "p_vs_M1", "p_holm", "sig_vs_M1", "gap_closed_%", "seeds", "status"])
    m0, m0_ci = ref["m0"]
    cells = [{"model": "M0 (teacher)", metric: fmt(m0, d), "ci95": fmt(m0_ci, d),
              "seeds": len(ref["m0_by_seed"]) or "", "status": "reference"}]
    for r in rows:
        c = r.get("vs_m1") or {}
        cells.append({"model": "M1" if r is ref["m1"] else "student",
                      **{columns.get(k, k): fmt(r.get(k)) for k in keys},
                      metric: fmt(r.get("mean"), d), "ci95": fmt(r.get("ci95"), d), "paper": fmt_paper(r["paper"]),
                      "diff_vs_M1": fmt(c.get("diff"), d), "diff_ci95": fmt(c.get("ci95"), d),
                      "change_vs_M1_%": fmt(c.get("pct"), 2),
                      "sign_vs_M1_ours/paper": "M1" if r is ref["m1"] else signs(r, ref),
                      "test_vs_M1": c.get("test", ""), "p_vs_M1": fmt_p(c.get("p")), "p_holm": fmt_p(c.get("p_holm")),
                      "sig_vs_M1": significance_mark(c.get("p_holm")), "gap_closed_%": fmt(c.get("gap_closed_pct"), 1),
                      "seeds": r["seeds"], "status": r["status"]})
    table = [[row.get(h, "") for h in header] for row in cells]
    csv_path = write_csv(out / f"{name}.csv", header, table)
    n_tested = sum(1 for r in rows if (r.get("vs_m1") or {}).get("p") is not None)
    md = [f"# {name}{heading}", "",
          f"{metric} on the real test set ({ref['metric'][2]} is better); mean +- ci95 is a 95% Student-t interval "
          "across seeds.", *optional(unit), *optional(pooled_line(rows)), "",
          "Against M1, the plain student (all coefficients 0): diff_vs_M1 = row - M1 with its 95% t-interval and "
          "change_vs_M1_% = diff / M1. Students of one seed share that seed's teacher and synthetic set, so a row "
          "that shares 2 or more seeds with M1 is compared with M1 of the same seeds: the mean of the per-seed "
          "differences and a paired t-test (scipy.stats.ttest_rel). A row that shares fewer takes Welch's "
          "unpaired t-test (scipy.stats.ttest_ind, equal_var=False; difference of means, Welch-Satterthwaite "
          "interval) when both sides have 2 or more seeds. Otherwise (one seed) the row shows its difference "
          "from M1 of the same seed (or from M1's mean when M1 lacks it) and is not tested. test_vs_M1 names "
          "each row's test. "
          f"Tests are two-sided at alpha = {ALPHA}; p_vs_M1 is unadjusted, p_holm is Holm's step-down "
          f"correction over the {n_tested} rows tested, and sig_vs_M1 '*' marks p_holm < {ALPHA}. "
          "gap_closed_% = (M1 - row) / (M1 - M0) on the same seeds.",
          *(["", summary] if (summary := summary_line(rows, ref)) else []), "", *md_table(header, table)]
    if paper:
        paragraphs = ["paper: the paper's value of the row with the same coefficients (blank: not in the paper).",
                      *spearman_lines(rows), sign_line(rows, ref)]
        intro, zero_header, zero_table = zero_costs(rows, ref)
        md += ["", "## Against the paper's table", *[x for p in paragraphs for x in optional(p)],
               "", intro, "", *md_table(zero_header, [[c[0], fmt(c[1], 2), *c[2:]] for c in zero_table])]
    return [csv_path, write_text(out / f"{name}.md", md)]
