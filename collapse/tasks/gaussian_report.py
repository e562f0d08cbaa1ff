"""The Gaussian toy model's part of the report (plan "gaussian", collapse/tasks/gaussian.py), in
<results_root>/report/: measured E[sigma_t^2] (mean over chains, with q05-q95 and q25-q75 bands) over its
closed form, per policy; the z-score of measured against closed form; a table of the final generation
and a long csv of every generation. The toy model has no generic table: this is its whole report.
"""
from pathlib import Path

from collapse.report.chains import POLICY, SEED, fmt_value, split_label, title
from collapse.report.chains import SHORT as CHAIN_COLUMNS
from collapse.report.metric import Primary
from collapse.report.plots import pyplot, save_figure
from collapse.report.tables import md_table, write_csv, write_text
from collapse.report.view import SweepView

# What the report states of every task. The toy model's metric is the variance of each generation's
# fit; collapse is its fall towards 0, so higher (up to the real data's sigma0^2) is better.
PRIMARY = Primary("sigma2_mean", "E[sigma2_t] measured", "higher")
SHORT = {**CHAIN_COLUMNS, "gaussian.estimator": "estimator"}   # swept key -> column


def write_report(view: SweepView) -> list[Path]:
    """The whole report of a gaussian sweep (the view has no rows: a simulation has no generic table)."""
    return write_gaussian(view.name, view.sweep, view.by_key, view.out)


def write_gaussian(name: str, sweep: dict, by_key: dict, out: Path) -> list[Path]:
    points = sweep["config"]["points"]
    several_seeds = len({p["label"].get(SEED) for p in points}) > 1
    runs = []   # (panel, policy, record if done else None, record)
    for p in points:
        rec = by_key.get(p["gaussian"])
        panel, policy = split_label(p["label"], POLICY)
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
            m["generation"][-1], m["train_size"][-1], fmt_value(m["sigma2_closed_form"][-1], 4),
            fmt_value(m["sigma2_mean"][-1], 4), fmt_value(se, 3), fmt_value(z, 2), fmt_value(m["sigma2_q50"][-1], 4),
            fmt_value(m["sigma2_q05"][-1], 4), fmt_value(m["sigma2_q95"][-1], 4), m["chains"],
            fmt_value(m["simulate_seconds"], 3), fmt_value(round(rec["ended"] - rec["started"], 2), 2), "done"])
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
        ax.set_title(title({POLICY: policy, **dict(p)}), fontsize=8)
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
