"""Reports of chain sweeps (iterative retraining, collapse/generations.py; plan "chains"), in
<results_root>/report/: the metric against generation, one panel per data policy (and any other swept
key), one line per distillation mode, the band spanning the seeds (min to max); a table of the final
generation with distillation's effect inside each policy (paired by seed, which pairs chains that share
a teacher), the sentence answering "does distillation still help?", a long csv of every generation, and
a strip of samples across generations (<grid>_samples_by_generation.png: one row per data policy and
distillation mode, one column per generation, each cell the picture that generation's eval wrote).

The helpers (labels, panels, number format) serve the chains of a simulated task too (its own report).
"""
import statistics
from pathlib import Path

from collapse.report.na import NA, ONE_SEED, Footnotes, finite
from collapse.report.plots import pyplot, read_image, save_figure
from collapse.report.stats import mean_ci
from collapse.report.tables import md_table, write_csv, write_text
from collapse.report.view import SweepView

DISTILL = "generations.distill"
POLICY = "generations.data"
SEED = "train.seed"
SHORT = {POLICY: "data", DISTILL: "distill", "generations.mix_ratio": "mix_ratio",
         "generations.subsample_size": "subsample"}


def handles(sweep: dict) -> bool:
    return sweep["config"].get("plan") == "chains"


# ---------------------------------------------------------------- helpers

def fmt_value(v, digits=3) -> str:
    """Fixed decimals; significant digits for values below 0.01 or from 1e5 up."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}" if v and (abs(v) < 1e-2 or abs(v) >= 1e5) else f"{v:.{digits}f}"
    return str(v)


def title(label: dict) -> str:
    return ", ".join(f"{SHORT.get(k, k.split('.')[-1])}={v}" for k, v in label.items()) or "all"


def split_label(label: dict, line_key: str) -> tuple[tuple, object]:
    """(panel, line) of a grid point: the line is `line_key`'s value, the panel the other keys but seed."""
    panel = tuple((k, v) for k, v in label.items() if k not in (line_key, SEED))
    return panel, label.get(line_key)


# ---------------------------------------------------------------- modality chains

def chain_runs(sweep: dict, by_key: dict, metric: str) -> dict:
    """{(panel, distill): {"seeds": {seed: [metric per generation, None where missing]}, "failed": [...]}}."""
    groups: dict = {}
    for p in sweep["config"]["points"]:
        panel, mode = split_label(p["label"], DISTILL)
        g = groups.setdefault((panel, mode or "none"), {"seeds": {}, "failed": []})
        values = []
        for t, key in enumerate(p["evals"]):
            rec = by_key.get(key)
            value = ((rec or {}).get("metrics") or {}).get(metric)
            if rec and rec.get("status") == "done" and finite(value):
                values.append(value)
            else:
                values.append(None)
                why = f"{metric} = {value}, not finite" if rec and rec.get("status") == "done" else \
                    rec.get("status", "?") if rec else "missing"
                g["failed"].append(f"seed {p['label'].get(SEED)} gen {t}: {why}")
        g["seeds"][p["label"].get(SEED, 0)] = values
    return groups


def _stats(values: list) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"n": 0}
    mean, ci = mean_ci(vals)
    return {"n": len(vals), "mean": mean, "ci95": ci, "min": min(vals), "max": max(vals)}


def _paired(a: dict, b: dict, t: int, average: bool = False) -> dict:
    """Mean and 95% CI over the seeds both have of b - a at generation t, or (average) of the
    mean difference over generations 1..t."""
    diffs = []
    for seed in sorted(set(a) & set(b)):
        gens = range(1, t + 1) if average else [t]
        pairs = [(a[seed][u], b[seed][u]) for u in gens if u < len(a[seed]) and u < len(b[seed])]
        if pairs and len(pairs) == len(gens) and all(x is not None and y is not None for x, y in pairs):
            diffs.append(statistics.fmean(y - x for x, y in pairs))
    if not diffs:
        return {"n": 0}
    mean, ci = mean_ci(diffs)
    return {"n": len(diffs), "mean": mean, "ci95": ci}


def generation_table(groups: dict, t: int, panel_keys: list, metric_label: str, direction: str):
    """(header, rows, answers) at generation t, distillation's effect taken against `none` in the same panel."""
    header = [SHORT.get(k, k) for k in panel_keys] + [
        "distill", "generation", metric_label, "ci95", "min", "max", "M0 (gen 0)", "change_vs_M0_%",
        "distill_effect", "distill_effect_ci95", "distill_effect_%", f"mean_effect_gens_1..{t}", "seeds", "status"]
    rows, answers = [], []
    for (panel, mode), g in groups.items():
        at_t = _stats([v[t] if len(v) > t else None for v in g["seeds"].values()])
        m0 = _stats([v[0] for v in g["seeds"].values()])
        base = groups.get((panel, "none"))
        eff = mean_eff = {"n": 0}
        if mode != "none" and base:
            eff, mean_eff = _paired(base["seeds"], g["seeds"], t), _paired(base["seeds"], g["seeds"], t, True)
        change = 100.0 * (at_t["mean"] - m0["mean"]) / abs(m0["mean"]) if at_t["n"] and m0["n"] and m0["mean"] else None
        base_t = _stats([v[t] if len(v) > t else None for v in base["seeds"].values()]) if base else {"n": 0}
        eff_pct = 100.0 * eff["mean"] / abs(base_t["mean"]) if eff["n"] and base_t["n"] and base_t["mean"] else None
        missing = [f for f in g["failed"] if int(f.rsplit("gen ", 1)[1].split(":")[0]) <= t]
        status = "done" if not missing else f"{len(missing)} missing: " + "; ".join(missing[:3])
        rows.append([v for _, v in panel] + [
            mode, t, fmt_value(at_t.get("mean")), _interval(at_t), fmt_value(at_t.get("min")),
            fmt_value(at_t.get("max")), fmt_value(m0.get("mean")), fmt_value(change, 2), fmt_value(eff.get("mean")),
            _interval(eff), fmt_value(eff_pct, 2), fmt_value(mean_eff.get("mean")), at_t["n"], status])
        if mode != "none" and eff["n"] and t >= 1:
            answers.append(_answer(title(dict(panel)), mode, eff, mean_eff, eff_pct, t, metric_label, direction))
    return header, rows, answers


def _interval(s: dict):
    """A 95% interval's half-width; n/a with one seed (blank with none: the status says why)."""
    return NA(ONE_SEED) if s["n"] == 1 else fmt_value(s.get("ci95"))


def write_chains(view: SweepView) -> list[Path]:
    """The chain sweep's tables and figures, in view.out, on view.metric (the sweep's view has no rows:
    the chains are read from its records)."""
    name, out = view.name, view.out
    metric, metric_label, direction = view.metric
    groups = chain_runs(view.sweep, view.by_key, metric)
    G = max(len(v) for g in groups.values() for v in g["seeds"].values()) - 1
    panels = list(dict.fromkeys(panel for panel, _ in groups))
    modes = list(dict.fromkeys(mode for _, mode in groups))
    panel_keys = list(dict.fromkeys(k for panel in panels for k, _ in panel))

    # every generation, long format
    long_rows = []
    for (panel, mode), g in groups.items():
        for t in range(G + 1):
            s = _stats([v[t] for v in g["seeds"].values()])
            long_rows.append([v for _, v in panel] + [mode, t, fmt_value(s.get("mean"), 4), fmt_value(s.get("ci95"), 4),
                                                      fmt_value(s.get("min"), 4), fmt_value(s.get("max"), 4), s["n"]])
    long_header = [SHORT.get(k, k) for k in panel_keys] + ["distill", "generation", metric_label, "ci95",
                                                           "min", "max", "seeds"]
    written = [write_csv(out / f"{name}_by_generation.csv", long_header, long_rows)]

    # the final generation; when the sweep is unfinished, also the last generation every chain has reached
    reached = [t for t in range(G + 1) if all(len(v) > t and v[t] is not None
                                              for g in groups.values() for v in g["seeds"].values())]
    T = max(reached) if reached else 0
    header, table, answers = generation_table(groups, G, panel_keys, metric_label, direction)
    written.append(write_csv(out / f"{name}.csv", header, table))
    md = [f"# {name}: iterative retraining, {G} generations after the teacher", "",
          f"{metric_label} on the real test set ({direction} is better) of generation {G}, seeds pooled "
          "(mean, 95% t-interval, min and max over seeds). Generation 0 is the teacher M0. "
          "distill_effect = distilled minus `none` in the same policy, paired by seed "
          "(the same teacher), with its 95% t-interval; mean_effect averages that difference over "
          f"generations 1..t. Every generation: {name}_by_generation.csv and {name}_by_generation.png.", ""]
    notes = Footnotes()
    md += md_table(header, table, notes) + notes.lines()
    if 1 <= T < G:
        header_t, table_t, answers_t = generation_table(groups, T, panel_keys, metric_label, direction)
        md += ["", f"## Generation {T}, the last that every chain has reached (the sweep is unfinished)", ""]
        md += md_table(header_t, table_t, notes) + notes.lines()
        answers = answers or answers_t
    if answers:
        md += ["", "## Does distillation still help?", ""] + [f"- {a}" for a in answers]
    written.append(write_text(out / f"{name}.md", md))
    written.append(plot_chains(name, groups, panels, modes, G, metric_label, out))
    strip = plot_sample_strip(name, sample_cells(view.sweep, view.by_key, view.root), out)
    return written + ([strip] if strip else [])


def _answer(where, mode, eff, mean_eff, eff_pct, G, metric_label, direction) -> str:
    """One sentence: the paired effect at generation G, its average over 1..G, and a verdict."""
    better = (lambda x: x < 0) if direction == "lower" else (lambda x: x > 0)
    m, ci = eff["mean"], eff["ci95"]
    interval = f"the 95% interval [{m - ci:+.3g}, {m + ci:+.3g}]" if ci else ""
    if ci is None:
        verdict = "not judged: one seed, no interval"
    elif not ci:
        verdict = "not judged: every seed's difference is the same, so the interval has no width"
    elif abs(m) > ci:
        verdict = f"{'helps' if better(m) else 'hurts'} ({interval} excludes 0)"
    else:
        verdict = f"within noise ({interval} contains 0)"
    pct = f" ({eff_pct:+.2f}%)" if eff_pct is not None else ""
    ci_s = f" +- {ci:.3g}" if ci is not None else ""
    avg = f"; averaged over generations 1..{G}: {mean_eff['mean']:+.3g}" if mean_eff["n"] else ""
    return (f"{where}: distilling from `{mode}` changes generation {G}'s {metric_label} by "
            f"{m:+.3g}{ci_s}{pct} over {eff['n']} paired seeds{avg} -> {verdict}.")


def plot_chains(name, groups, panels, modes, G, metric_label, out) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False, sharey=True)
    colors = {m: f"C{i}" for i, m in enumerate(modes)}
    for ax, panel in zip(axes[0], panels):
        for mode in modes:
            g = groups.get((panel, mode))
            if not g:
                continue
            ts, mean, lo, hi = [], [], [], []
            for t in range(G + 1):
                s = _stats([v[t] if len(v) > t else None for v in g["seeds"].values()])
                if s["n"]:
                    ts.append(t), mean.append(s["mean"]), lo.append(s["min"]), hi.append(s["max"])
            label = "no distillation" if mode == "none" else f"distilled from {mode}"
            n = len(g["seeds"])
            ax.plot(ts, mean, marker="o", ms=3, color=colors[mode], label=f"{label} ({n} seed{'s' if n != 1 else ''})")
            ax.fill_between(ts, lo, hi, color=colors[mode], alpha=0.2, lw=0)
        ax.set_title(title(dict(panel)), fontsize=9)
        ax.set_xlabel("generation (0 = teacher M0)"), ax.set_xticks(range(G + 1))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric_label)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{name}: {metric_label} against generation (line: mean over seeds, band: min-max)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out / f"{name}_by_generation.png")


# ---------------------------------------------------------------- samples across generations

def sample_cells(sweep: dict, by_key: dict, root: Path) -> list[tuple[str, list]]:
    """[(row label, [picture path or None per generation])], one row per (panel, distillation mode),
    from the lowest seed whose chain has the most pictures; the picture is the eval's `samples` artifact."""
    rows: dict = {}
    for p in sorted(sweep["config"]["points"], key=lambda p: str(p["label"].get(SEED, 0))):
        panel, mode = split_label(p["label"], DISTILL)
        cells = []
        for key in p["evals"]:
            entry = ((by_key.get(key) or {}).get("artifacts") or {}).get("samples") or {}
            path = Path(root) / entry["path"] if entry.get("path") else None
            cells.append(path if path is not None and path.is_file() else None)
        label = f"{title(dict(panel))}\n{'no distillation' if (mode or 'none') == 'none' else f'distilled from {mode}'}"
        if sum(c is not None for c in cells) > sum(c is not None for c in rows.get(label, [])):
            rows[label] = cells
    return list(rows.items())


def plot_sample_strip(name: str, cells: list[tuple[str, list]], out: Path) -> Path | None:
    """The strip: rows as sample_cells gives them, column t generation t (0: the teacher M0)."""
    if not any(c is not None for _, row in cells for c in row):
        return None   # a task whose evals write no picture (text), or evals recorded without one
    plt = pyplot()
    columns = max(len(row) for _, row in cells)
    fig, axes = plt.subplots(len(cells), columns, figsize=(1.5 * columns + 1.6, 1.55 * len(cells) + 0.5),
                             squeeze=False)
    for r, (label, row) in enumerate(cells):
        for t in range(columns):
            ax = axes[r][t]
            ax.set_xticks([]), ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if t < len(row) and row[t] is not None:
                ax.imshow(read_image(row[t]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=7, color="0.5")
            if r == 0:
                ax.set_title("M0 (gen 0)" if t == 0 else f"gen {t}", fontsize=8)
            if t == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"{name}: samples across generations (one seed; each the picture its eval wrote)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out / f"{name}_samples_by_generation.png")
