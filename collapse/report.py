"""Manifest -> tables (csv, md) and plots (png), one set per grid, in <results_root>/report/.

Rows are grid points (seeds pooled: mean, and a 95% t-interval when there are several seeds),
M0 is the reference row, and each row shows its change against M1 (the plain student, all
distillation coefficients 0) and the share of the M1 -> M0 gap it closes.
"""
import csv
import math
import statistics
import sys
from pathlib import Path

from collapse import manifest, storage

PRIMARY = {"vae": ("test_loss", "L_M(Test)", "lower")}
ALPHA = 0.05   # significance level of the Welch t-tests against M1
PAPER_VALUES = Path(__file__).with_name("paper_values.yaml")
SHORT = {"distill.lam": "lambda", "distill.beta": "beta", "distill.gamma": "gamma"}


def latest_sweeps(records: list[dict]) -> dict:
    sweeps = {}
    for r in records:
        if r.get("kind") == "sweep" and r.get("status") == "done":
            if r["name"] not in sweeps or r.get("ended", 0) >= sweeps[r["name"]].get("ended", 0):
                sweeps[r["name"]] = r
    return sweeps


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of a 95% Student-t interval (None with one value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None
    from scipy import stats
    return m, stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def sweep_rows(sweep: dict, by_key: dict) -> tuple[list[dict], dict]:
    """One row per grid point (seeds pooled) plus the M0 reference row."""
    task = sweep["config"]["task"]
    metric = PRIMARY[task][0]
    groups: dict = {}
    teacher_values = {}
    for p in sweep["config"]["points"]:
        label = {k: v for k, v in p["label"].items() if k != "train.seed"}
        g = groups.setdefault(tuple(sorted(label.items())), {"label": label, "values": [], "failed": [], "evals": []})
        rec = by_key.get(p["eval"])
        if rec and rec["status"] == "done" and metric in (rec.get("metrics") or {}):
            g["values"].append(rec["metrics"][metric])
            g["evals"].append(rec)
        else:
            g["failed"].append(_why(p, by_key))
        t = by_key.get(p["teacher_eval"])
        if t and t["status"] == "done" and metric in (t.get("metrics") or {}):
            teacher_values[p["teacher_eval"]] = t["metrics"][metric]
    rows = []
    for g in groups.values():
        row = {**g["label"], "seeds": len(g["values"]), "evals": g["evals"], "values": g["values"]}
        if g["values"]:
            row["mean"], row["ci95"] = mean_ci(g["values"])
        row["status"] = "done" if not g["failed"] else "; ".join(g["failed"])
        rows.append(row)
    m0 = mean_ci(list(teacher_values.values())) if teacher_values else (None, None)
    m1 = next((r for r in rows if all(not r.get(k) for k in SHORT) and "mean" in r), None)
    for r in rows:
        if m1 and "mean" in r:
            r["change_pct"] = 100.0 * (r["mean"] - m1["mean"]) / abs(m1["mean"])
            if m0[0] is not None and m1["mean"] != m0[0]:
                r["gap_closed_pct"] = 100.0 * (m1["mean"] - r["mean"]) / (m1["mean"] - m0[0])
            if r is not m1:
                r["p_welch"] = welch_p(r["values"], m1["values"])
    return rows, {"m0": m0, "m1": m1, "metric": PRIMARY[task], "task": task}


def welch_p(values: list[float], reference: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances) across seeds; None below 2 seeds a side."""
    if len(values) < 2 or len(reference) < 2:
        return None
    from scipy import stats
    p = stats.ttest_ind(values, reference, equal_var=False).pvalue
    return None if math.isnan(p) else float(p)


def significance_mark(p: float | None) -> str:
    return "*" if p is not None and p < ALPHA else ""


def paper_values(task: str) -> dict:
    """What collapse/paper_values.yaml knows of the paper's own numbers for `task` (often nothing)."""
    from collapse.config import load_yaml
    try:
        return load_yaml(PAPER_VALUES, "paper values").get(task) or {}
    except (OSError, ValueError):
        return {}


def summary_line(rows: list[dict], ref: dict) -> str | None:
    """Best distilled row against M1, with the paper's own figure beside ours where it has one."""
    m1, (_, label, direction) = ref["m1"], ref["metric"]
    distilled = [r for r in rows if r is not m1 and "mean" in r]
    if not m1 or not distilled or not m1["mean"]:
        return None
    lower = direction == "lower"
    best = min(distilled, key=lambda r: r["mean"] if lower else -r["mean"])
    ours = 100.0 * ((m1["mean"] - best["mean"]) if lower else (best["mean"] - m1["mean"])) / abs(m1["mean"])
    name = ", ".join(f"{SHORT[k]}={best[k]:g}" for k in SHORT if k in best) or "best distilled"
    p = best.get("p_welch")
    test = (f"Welch p = {p:.3g}, {'significant' if p < ALPHA else 'not significant'} at alpha = {ALPHA}"
            if p is not None else "no test: fewer than 2 seeds")
    line = f"Best distilled student ({name}): {abs(ours):.1f}% {'better' if ours >= 0 else 'worse'} {label} than M1 ({test})"
    paper = paper_values(ref.get("task", "")).get("best_distilled_vs_M1_improvement_pct")
    if paper is not None:
        line += f"; the paper reports {paper:.1f}% (ours - paper = {ours - paper:+.1f} points)"
    return line + "."


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


def _fmt_p(p: float | None) -> str:
    return "" if p is None else f"{p:.3g}"


def _fmt(v, digits=3):
    if v is None:
        return ""
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


ROW_FIELDS = ("seeds", "evals", "values", "mean", "ci95", "status", "change_pct", "gap_closed_pct", "p_welch")


def _column_order(key: str):
    return (list(SHORT).index(key) if key in SHORT else len(SHORT), key)


def write_tables(name: str, rows: list[dict], ref: dict, out: Path) -> list[Path]:
    keys = sorted({k for r in rows for k in r if k not in ROW_FIELDS}, key=_column_order)
    metric = ref["metric"][1]
    header = ["model"] + [SHORT.get(k, k) for k in keys] + [metric, "ci95", "change_vs_M1_%", "gap_closed_%",
                                                            "p_welch_vs_M1", "sig_vs_M1", "seeds", "status"]
    table = []
    m0, m0_ci = ref["m0"]
    table.append(["M0 (teacher)"] + [""] * len(keys) + [_fmt(m0), _fmt(m0_ci), "", "", "", "", "", "reference"])
    for r in rows:
        table.append(["M1" if r is ref["m1"] else "student"] + [_fmt(r.get(k)) for k in keys] + [_fmt(r.get("mean")), _fmt(r.get("ci95")),
                     _fmt(r.get("change_pct"), 2), _fmt(r.get("gap_closed_pct"), 1),
                     _fmt_p(r.get("p_welch")), significance_mark(r.get("p_welch")), r["seeds"], r["status"]])
    csv_path = write_csv(out / f"{name}.csv", header, table)
    md = [f"# {name}", "", f"{metric} on the real test set ({ref['metric'][2]} is better). "
          "Change and gap are against M1, the plain student (all coefficients 0); "
          "gap closed = (M1 - row) / (M1 - M0). Mean +- ci95 is a 95% Student-t interval across seeds.",
          "", f"Significance: Welch's two-sided t-test (unequal variances; scipy.stats.ttest_ind, equal_var=False) "
          f"of each row's per-seed values against M1's; sig_vs_M1 '*' marks p < alpha = {ALPHA} "
          "(not corrected for multiple comparisons). Rows with fewer than 2 seeds, or M1 with fewer than 2, are not tested.",
          *(["", summary] if (summary := summary_line(rows, ref)) else []), "", *md_table(header, table)]
    return [csv_path, write_text(out / f"{name}.md", md)]


# ---------------------------------------------------------------- writers shared with report_chains

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


def plot_coefficients(name: str, rows: list[dict], ref: dict, out: Path) -> Path | None:
    """Figures 1-2: the metric against each coefficient, the others held at 0."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    def alone(r, c):  # a point that moves only coefficient c
        return all(not r.get(o) for o in SHORT if o != c)
    coeffs = [k for k in SHORT if any(r.get(k) and alone(r, k) for r in rows)]
    if not coeffs:
        return None
    fig, axes = plt.subplots(1, len(coeffs), figsize=(4 * len(coeffs), 3.2), squeeze=False)
    for ax, c in zip(axes[0], coeffs):
        pts = sorted((r[c], r["mean"], r.get("ci95") or 0.0) for r in rows if "mean" in r and alone(r, c))
        if pts:
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label="student")
        if ref["m0"][0] is not None:
            ax.axhline(ref["m0"][0], color="k", ls="--", lw=1, label="M0 (teacher)")
        ax.set_xlabel(SHORT[c])
        ax.set_ylabel(ref["metric"][1])
        ax.legend(fontsize=8)
    fig.suptitle(f"{name}: {ref['metric'][1]} against each coefficient (others 0)")
    fig.tight_layout()
    path = out / f"{name}_coefficients.png"
    storage.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def plot_samples(name: str, rows: list[dict], ref: dict, root: Path, out: Path) -> Path | None:
    """Figure 3: samples of M1 beside the best distilled student."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt
    m1 = ref["m1"]
    lower = ref["metric"][2] == "lower"
    distilled = [r for r in rows if r is not m1 and "mean" in r and r["evals"]]
    if not m1 or not m1["evals"] or not distilled:
        return None
    best = min(distilled, key=lambda r: r["mean"] if lower else -r["mean"])
    images = [(r["evals"][0].get("artifacts") or {}).get("samples", {}).get("path") for r in (m1, best)]
    if not all(images) or not all((root / p).is_file() for p in images):
        return None   # an eval recorded without its sample grid (an older version), or the file is gone
    panels = [("M1 (plain student)", m1),
              ("best distilled: " + ", ".join(f"{SHORT[k]}={best[k]:g}" for k in SHORT if k in best), best)]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    for ax, (title, r) in zip(axes, panels):
        ax.imshow(mpimg.imread(root / r["evals"][0]["artifacts"]["samples"]["path"]), cmap="gray")
        ax.set_title(f"{title}\n{ref['metric'][1]} {r['mean']:.2f}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    path = out / f"{name}_samples.png"
    storage.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def write_reports(root) -> list[Path]:
    root = Path(root)
    records = manifest.read_all(root)
    by_key = {r["key"]: r for r in records}
    out = root / "report"
    written = []
    from collapse import report_chains
    for name, sweep in sorted(latest_sweeps(records).items()):
        if not isinstance(sweep.get("config"), dict) or not isinstance(sweep["config"].get("points"), list):
            print(f"warning: report: sweep record {sweep.get('key')} ({name}) is malformed (no config.points); "
                  "skipped", file=sys.stderr)
            continue
        if report_chains.handles(sweep):   # iterative retraining: metric against generation
            written += report_chains.write(name, sweep, by_key, root, out)
            continue
        rows, ref = sweep_rows(sweep, by_key)
        written += write_tables(name, rows, ref, out)
        written += [p for p in (plot_coefficients(name, rows, ref, out),
                                plot_samples(name, rows, ref, root, out)) if p]
    return written
