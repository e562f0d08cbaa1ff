"""Reports of chain sweeps (iterative retraining, collapse/generations.py), in <results_root>/report/.

Modality chains (plan "chains"): the metric against generation, one panel per data policy (and any
other swept key), one line per distillation mode, the band spanning the seeds (min to max); a table
of the final generation with distillation's effect inside each policy (paired by seed, which pairs
chains that share a teacher), the sentence answering "does distillation still help?", and a long
csv of every generation.

Gaussian toy model (plan "gaussian"): measured E[sigma_t^2] (mean over chains, with q05-q95 and
q25-q75 bands) over its closed form, per policy; the z-score of measured against closed form; a
table of the final generation.
"""
import statistics
from pathlib import Path

from collapse.report import PRIMARY, mean_ci, md_table, pyplot, save_figure, write_csv, write_text

DISTILL = "generations.distill"
POLICY = "generations.data"
SEED = "train.seed"
SHORT = {POLICY: "data", DISTILL: "distill", "generations.mix_ratio": "mix_ratio",
         "generations.subsample_size": "subsample", "gaussian.estimator": "estimator"}


def handles(sweep: dict) -> bool:
    return sweep["config"].get("plan") in ("chains", "gaussian")


def write(name: str, sweep: dict, by_key: dict, root: Path, out: Path) -> list[Path]:
    if sweep["config"]["plan"] == "gaussian":
        return write_gaussian(name, sweep, by_key, out)
    return write_chains(name, sweep, by_key, out)


# ---------------------------------------------------------------- helpers

def _fmt(v, digits=3) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}" if v and (abs(v) < 1e-2 or abs(v) >= 1e5) else f"{v:.{digits}f}"
    return str(v)


def _title(label: dict) -> str:
    return ", ".join(f"{SHORT.get(k, k.split('.')[-1])}={v}" for k, v in label.items()) or "all"


def _split(label: dict, line_key: str) -> tuple[tuple, object]:
    """(panel, line) of a grid point: the line is `line_key`'s value, the panel the other keys but seed."""
    panel = tuple((k, v) for k, v in label.items() if k not in (line_key, SEED))
    return panel, label.get(line_key)


# ---------------------------------------------------------------- modality chains

def chain_runs(sweep: dict, by_key: dict) -> tuple[dict, str]:
    """{(panel, distill): {"seeds": {seed: [metric per generation, None where missing]}, "failed": [...]}}."""
    metric = PRIMARY[sweep["config"]["task"]][0]
    groups: dict = {}
    for p in sweep["config"]["points"]:
        panel, mode = _split(p["label"], DISTILL)
        g = groups.setdefault((panel, mode or "none"), {"seeds": {}, "failed": []})
        values = []
        for t, key in enumerate(p["evals"]):
            rec = by_key.get(key)
            if rec and rec.get("status") == "done":
                values.append(rec["metrics"][metric])
            else:
                values.append(None)
                g["failed"].append(f"seed {p['label'].get(SEED)} gen {t}: "
                                   + (rec.get("status", "?") if rec else "missing"))
        g["seeds"][p["label"].get(SEED, 0)] = values
    return groups, metric


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
            mode, t, _fmt(at_t.get("mean")), _fmt(at_t.get("ci95")), _fmt(at_t.get("min")), _fmt(at_t.get("max")),
            _fmt(m0.get("mean")), _fmt(change, 2), _fmt(eff.get("mean")), _fmt(eff.get("ci95")), _fmt(eff_pct, 2),
            _fmt(mean_eff.get("mean")), at_t["n"], status])
        if mode != "none" and eff["n"] and t >= 1:
            answers.append(_answer(_title(dict(panel)), mode, eff, mean_eff, eff_pct, t, metric_label, direction))
    return header, rows, answers


def write_chains(name: str, sweep: dict, by_key: dict, out: Path) -> list[Path]:
    task = sweep["config"]["task"]
    _, metric_label, direction = PRIMARY[task]
    groups, _ = chain_runs(sweep, by_key)
    G = max(len(v) for g in groups.values() for v in g["seeds"].values()) - 1
    panels = list(dict.fromkeys(panel for panel, _ in groups))
    modes = list(dict.fromkeys(mode for _, mode in groups))
    panel_keys = list(dict.fromkeys(k for panel in panels for k, _ in panel))

    # every generation, long format
    long_rows = []
    for (panel, mode), g in groups.items():
        for t in range(G + 1):
            s = _stats([v[t] for v in g["seeds"].values()])
            long_rows.append([v for _, v in panel] + [mode, t, _fmt(s.get("mean"), 4), _fmt(s.get("ci95"), 4),
                                                      _fmt(s.get("min"), 4), _fmt(s.get("max"), 4), s["n"]])
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
    md += md_table(header, table)
    if 1 <= T < G:
        header_t, table_t, answers_t = generation_table(groups, T, panel_keys, metric_label, direction)
        md += ["", f"## Generation {T}, the last that every chain has reached (the sweep is unfinished)", ""]
        md += md_table(header_t, table_t)
        answers = answers or answers_t
    if answers:
        md += ["", "## Does distillation still help?", ""] + [f"- {a}" for a in answers]
    written.append(write_text(out / f"{name}.md", md))
    written.append(plot_chains(name, groups, panels, modes, G, metric_label, out))
    return written


def _answer(where, mode, eff, mean_eff, eff_pct, G, metric_label, direction) -> str:
    """One sentence: the paired effect at generation G, its average over 1..G, and a verdict."""
    better = (lambda x: x < 0) if direction == "lower" else (lambda x: x > 0)
    m, ci = eff["mean"], eff["ci95"]
    if ci is None:
        verdict = "one seed, no interval"
    elif better(m) and abs(m) > ci:
        verdict = "helps (the 95% interval excludes 0)"
    elif not better(m) and abs(m) > ci:
        verdict = "hurts (the 95% interval excludes 0)"
    else:
        verdict = "no clear effect (the 95% interval includes 0)"
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
            ax.plot(ts, mean, marker="o", ms=3, color=colors[mode], label=f"{label} ({len(g['seeds'])} seeds)")
            ax.fill_between(ts, lo, hi, color=colors[mode], alpha=0.2, lw=0)
        ax.set_title(_title(dict(panel)), fontsize=9)
        ax.set_xlabel("generation (0 = teacher M0)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric_label)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{name}: {metric_label} against generation (line: mean over seeds, band: min-max)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out / f"{name}_by_generation.png")


# ---------------------------------------------------------------- the Gaussian toy model

def write_gaussian(name: str, sweep: dict, by_key: dict, out: Path) -> list[Path]:
    points = sweep["config"]["points"]
    several_seeds = len({p["label"].get(SEED) for p in points}) > 1
    runs = []   # (panel, policy, record if done else None, record)
    for p in points:
        rec = by_key.get(p["gaussian"])
        panel, policy = _split(p["label"], POLICY)
        if several_seeds:
            panel += ((SEED, p["label"].get(SEED)),)
        runs.append((panel, policy, rec if rec and rec.get("status") == "done" else None, rec))
    keys = ["data"] + [SHORT.get(k, k) for k in dict.fromkeys(k for panel, *_ in runs for k, _ in panel)]
    final = ["G", "train_size_G", "closed_form_E[sigma2_G]", "measured_mean", "se", "z", "median", "q05", "q95",
             "chains", "simulate_s", "stage_s", "status"]
    table, long_rows = [], []
    for panel, policy, rec, raw in runs:
        ids = [policy] + [v for _, v in panel]
        if rec is None:
            table.append(ids + [""] * (len(final) - 1) + [raw.get("status", "missing") if raw else "missing"])
            continue
        m = rec["metrics"]
        se = m["sigma2_se"][-1] if m["sigma2_se"] else None
        z = (m["sigma2_mean"][-1] - m["sigma2_closed_form"][-1]) / se if se else None
        table.append(ids + [
            m["generation"][-1], m["train_size"][-1], _fmt(m["sigma2_closed_form"][-1], 4),
            _fmt(m["sigma2_mean"][-1], 4), _fmt(se, 3), _fmt(z, 2), _fmt(m["sigma2_q50"][-1], 4),
            _fmt(m["sigma2_q05"][-1], 4), _fmt(m["sigma2_q95"][-1], 4), m["chains"], _fmt(m["simulate_seconds"], 3),
            _fmt(round(rec["ended"] - rec["started"], 2), 2), "done"])
        for t in m["generation"]:
            long_rows.append(ids + [
                t, m["train_size"][t], m["sigma2_closed_form"][t], m["sigma2_mean"][t],
                m["sigma2_se"][t] if m["sigma2_se"] else "", m["sigma2_q05"][t], m["sigma2_q25"][t],
                m["sigma2_q50"][t], m["sigma2_q75"][t], m["sigma2_q95"][t]])
    long_header = keys + ["generation", "train_size", "closed_form", "measured_mean", "se",
                          "q05", "q25", "q50", "q75", "q95"]
    written = [write_csv(out / f"{name}.csv", keys + final, table),
               write_csv(out / f"{name}_by_generation.csv", long_header, long_rows)]
    md = [f"# {name}: Gaussian toy model, measured against closed form", "",
          "sigma2_t = trace(Sigma_t)/d of generation t's fit (generation 0: the fit to the real data). "
          "Measured: mean over chains, its standard error, quantiles; closed form: "
          "collapse.gaussian.expected_sigma2; z = (measured - closed form) / se at the final generation. "
          f"Every generation: {name}_by_generation.csv and {name}_by_generation.png.", ""]
    md += md_table(keys + final, table)
    written.append(write_text(out / f"{name}.md", md))
    if any(rec for _, _, rec, _ in runs):
        written.append(plot_gaussian(name, runs, out))
    return written


def plot_gaussian(name: str, runs: list, out: Path) -> Path:
    """One panel per (other swept keys) x policy: bands over chains, measured mean, closed form."""
    plt = pyplot()
    panels = list(dict.fromkeys(panel for panel, *_ in runs))
    policies = list(dict.fromkeys(policy for _, policy, *_ in runs))
    fig, axes = plt.subplots(len(panels), len(policies), figsize=(3.4 * len(policies), 2.9 * len(panels)),
                             squeeze=False, sharex=True, sharey=True)
    for p, policy, rec, _ in runs:
        if rec is None:
            continue
        ax, m = axes[panels.index(p)][policies.index(policy)], rec["metrics"]
        t = m["generation"]
        ax.fill_between(t, m["sigma2_q05"], m["sigma2_q95"], color="C0", alpha=0.15, lw=0, label="q05-q95")
        ax.fill_between(t, m["sigma2_q25"], m["sigma2_q75"], color="C0", alpha=0.3, lw=0, label="q25-q75")
        ax.plot(t, m["sigma2_q50"], color="C0", lw=0.8, ls=":", label="median")
        ax.plot(t, m["sigma2_mean"], color="C3", lw=1.8, label="measured mean")
        ax.plot(t, m["sigma2_closed_form"], color="k", lw=1.0, ls="--", label="closed form E[sigma2_t]")
        if m["sigma2_se"]:
            z = max(abs(a - b) / s for a, b, s in zip(m["sigma2_mean"], m["sigma2_closed_form"], m["sigma2_se"]) if s)
            ax.text(0.03, 0.04, f"max |z| = {z:.1f} ({m['chains']} chains)", transform=ax.transAxes, fontsize=7)
        ax.set_title(_title({POLICY: policy, **dict(p)}), fontsize=8)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    for ax in axes[-1]:
        ax.set_xlabel("generation t")
    for row in axes:
        row[0].set_ylabel("sigma2_t")
    axes[0][0].legend(fontsize=6, loc="lower left", bbox_to_anchor=(0, 0.1))
    fig.suptitle(f"{name}: measured sigma_t^2 (mean, bands over chains) over its closed form E[sigma_t^2]; "
                 "z = (mean - closed) / se", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out / f"{name}_by_generation.png")
