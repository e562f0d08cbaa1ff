"""Manifest -> tables (csv, md) and plots (png), one set per grid, in <results_root>/report/.

Rows are grid points (seeds pooled: mean, and a 95% t-interval when there are several seeds),
M0 is the reference row, and each row is compared with M1 (the plain student, all distillation
coefficients 0). Students of one seed share that seed's teacher and synthetic set, so a row is
compared with M1 of the same seeds (paired t-test) wherever they share two or more, and by
Welch's unpaired test otherwise. Seeds that another sweep ran with the very same configuration
(e.g. vae_coeffs_key's seeds 1-2 of five vae_coeffs rows) join the row. Where
collapse/paper_values.yaml holds the paper's table for the task, the paper's value stands beside
ours, and the rank correlation, the signs against M1 and the "setting X to 0 costs" follow the table.
"""
import csv
import json
import math
import statistics
import sys
from pathlib import Path

from collapse import manifest, plan, storage

PRIMARY = {"vae": ("test_loss", "L_M(Test)", "lower"), "ddpm": ("fid", "FID", "lower"),
           "t5": ("rouge1", "ROUGE-1 %", "higher")}
ALPHA = 0.05   # two-sided level of the tests against M1, after Holm's correction
PAPER_VALUES = Path(__file__).with_name("paper_values.yaml")
SHORT = {"distill.lam": "lambda", "distill.beta": "beta", "distill.gamma": "gamma",
         "distill.encoder_mse": "encoder_mse"}
LEAF = {k.split(".")[-1]: v for k, v in SHORT.items()}   # the paper table's keys: lam -> lambda
SEED = "train.seed"
UNITS = {"vae": {   # train.reduction -> what one L_M(Test) value is
    "pixel": "nats per pixel (L_VAE / 1,024 pixels; train.reduction = pixel), the paper's per-element "
             "kind of value, though not its level (our M0 is above its M1): compare ranks, signs and %",
    "sum": "nats per image (L_VAE summed over the 1,024 pixels; train.reduction = sum); the paper's "
           "values are per pixel, so compare its ranks, signs and % figures, not its values",
    "element": "BCE averaged over pixels + KL averaged over latents (train.reduction = element), "
               "not the paper's scale"}}


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


# ---------------------------------------------------------------- rows

def replicate_of(record: dict | None) -> str | None:
    """What two grid points must share to be seeds of one row: every field that decides the
    student's, its synthetic set's and its eval's numbers, train.seed left out (None without a config)."""
    config = (record or {}).get("config")
    try:
        material = {kind: plan.key_material(kind, config) for kind in ("student", "synth", "eval")}
        material["student"]["train"].pop("seed", None)
    except (KeyError, TypeError, AttributeError):
        return None
    return json.dumps(material, sort_keys=True, default=str)


def sweep_rows(sweep: dict, by_key: dict, others: list[dict] = ()) -> tuple[list[dict], dict]:
    """One row per grid point (seeds pooled, with those of `others` that replicate it) plus the M0 reference."""
    task = sweep["config"]["task"]
    metric = PRIMARY[task][0]
    groups, replicates, teachers = {}, {}, {}
    for p in sweep["config"]["points"]:
        label = {k: v for k, v in p["label"].items() if k != SEED}
        g = groups.setdefault(tuple(sorted(label.items())), {"label": label, "values": [], "by_seed": {},
                                                             "failed": [], "evals": [], "pooled": {}})
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
    m1 = next((r for r in rows if all(not r.get(k) for k in SHORT) and "mean" in r), None)
    ref = {"m0": m0, "m0_by_seed": m0_by_seed, "m1": m1, "metric": PRIMARY[task], "task": task,
           "paper": paper_reference(task), "m0_evals": [by_key[k] for k in teachers]}
    for r in rows:
        if m1 and "mean" in r and r is not m1:
            r["vs_m1"] = compare_with_m1(r, m1, ref)
    tested = [r for r in rows if (r.get("vs_m1") or {}).get("p") is not None]
    for r, p in zip(tested, holm([r["vs_m1"]["p"] for r in tested])):
        r["vs_m1"]["p_holm"] = p
    for r in rows:
        r["paper"] = paper_value(r, ref["paper"])
    return rows, ref


def seed_of(record: dict):
    """An eval record's train.seed (None without a config)."""
    return ((record.get("config") or {}).get("train") or {}).get("seed")


def on_seeds(evals: list[dict], like: list[dict]) -> list[dict]:
    """`evals` of the seeds that `like` has, when they cover all of them; else all of `evals` (M0 or M1
    of the same seeds as a row, so that a row with fewer seeds is held against the same runs)."""
    seeds = {seed_of(e) for e in like}
    same = [e for e in evals if seed_of(e) in seeds]
    return same if {seed_of(e) for e in same} == seeds else evals


def _add_point(g: dict, p: dict, by_key: dict, metric: str, teachers: dict) -> None:
    seed = p["label"].get(SEED)
    rec = by_key.get(p["eval"])
    if rec and rec["status"] == "done" and metric in (rec.get("metrics") or {}):
        g["values"].append(rec["metrics"][metric])
        g["evals"].append(rec)
        if seed is not None:
            g["by_seed"][seed] = rec["metrics"][metric]
    else:
        g["failed"].append(_why(p, by_key))
    t = by_key.get(p["teacher_eval"])
    if t and t["status"] == "done" and metric in (t.get("metrics") or {}):
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
           "values": g["values"], "by_seed": g["by_seed"], "pooled": g["pooled"]}
    if g["values"]:
        row["mean"], row["ci95"] = mean_ci(g["values"])
    row["status"] = "done" if not g["failed"] else "; ".join(g["failed"])
    return row


# ---------------------------------------------------------------- comparison with M1

def compare_with_m1(row: dict, m1: dict, ref: dict) -> dict:
    """row - M1: paired by seed over the seeds both have (2 or more: paired t-test), else Welch's
    test across seeds (2 or more a side), else the bare difference (that seed's M1 where M1 has it)."""
    shared = sorted(set(row["by_seed"]) & set(m1["by_seed"]))
    if len(shared) >= 2:
        diffs = [row["by_seed"][s] - m1["by_seed"][s] for s in shared]
        diff, ci = mean_ci(diffs)
        out = {"test": f"paired t (n={len(shared)})", "diff": diff, "ci95": ci,
               "p": paired_p([row["by_seed"][s] for s in shared], [m1["by_seed"][s] for s in shared])}
    elif len(row["values"]) >= 2 and len(m1["values"]) >= 2:
        diff, ci = welch_interval(row["values"], m1["values"])
        out = {"test": f"Welch ({len(row['values'])} vs {len(m1['values'])})", "diff": diff, "ci95": ci,
               "p": welch_p(row["values"], m1["values"])}
        shared = []
    elif shared:
        out = {"test": f"none: 1 pair (seed {shared[0]})", "ci95": None, "p": None,
               "diff": row["by_seed"][shared[0]] - m1["by_seed"][shared[0]]}
    else:
        out = {"test": "none: 1 seed, none shared", "diff": row["mean"] - m1["mean"], "ci95": None, "p": None}
    # M1 and M0 over the seeds the difference was taken on
    m1_ref = statistics.fmean(m1["by_seed"][s] for s in shared) if shared else m1["mean"]
    m0_seeds = [ref["m0_by_seed"][s] for s in shared if s in ref["m0_by_seed"]]
    m0_ref = statistics.fmean(m0_seeds) if shared and len(m0_seeds) == len(shared) else ref["m0"][0]
    out["pct"] = 100.0 * out["diff"] / abs(m1_ref) if m1_ref else None
    if m0_ref is not None and m1_ref != m0_ref:
        out["gap_closed_pct"] = 100.0 * -out["diff"] / (m1_ref - m0_ref)
    return out


def paired_p(values: list[float], reference: list[float]) -> float | None:
    """Two-sided p-value of the paired t-test (scipy.stats.ttest_rel); None when undefined."""
    from scipy import stats
    p = stats.ttest_rel(values, reference).pvalue
    return None if math.isnan(p) else float(p)


def welch_p(values: list[float], reference: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances) across seeds; None below 2 seeds a side."""
    if len(values) < 2 or len(reference) < 2:
        return None
    from scipy import stats
    p = stats.ttest_ind(values, reference, equal_var=False).pvalue
    return None if math.isnan(p) else float(p)


def welch_interval(values: list[float], reference: list[float]) -> tuple[float, float]:
    """Difference of means and the half-width of its 95% interval (Welch-Satterthwaite degrees of freedom)."""
    from scipy import stats
    va, vb = statistics.variance(values) / len(values), statistics.variance(reference) / len(reference)
    diff = statistics.fmean(values) - statistics.fmean(reference)
    if va + vb == 0:
        return diff, 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(values) - 1) + vb ** 2 / (len(reference) - 1))
    return diff, stats.t.ppf(0.975, df) * math.sqrt(va + vb)


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error rate), in the order given."""
    adjusted, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(sorted(range(len(ps)), key=ps.__getitem__)):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def significance_mark(p: float | None) -> str:
    return "*" if p is not None and p < ALPHA else ""


def _sign(x: float | None) -> str:
    return "" if x is None else "-" if x < 0 else "+" if x > 0 else "0"


# ---------------------------------------------------------------- the paper's numbers

def paper_values(task: str) -> dict:
    """What collapse/paper_values.yaml knows of the paper's own numbers for `task` (often nothing)."""
    from collapse.config import load_yaml
    try:
        return load_yaml(PAPER_VALUES, "paper values").get(task) or {}
    except (OSError, ValueError):
        return {}


def paper_reference(task: str) -> dict | None:
    """The paper's table for `task` (entries keyed by coefficient leaf names, e.g. lam), its M1 and
    best entries and its "setting X to 0 costs"; None when paper_values.yaml has no table for it."""
    section = paper_values(task)
    table = section.get("table") or []
    if not table:
        return None
    metric = section.get("metric") or PRIMARY[task][0]
    coeffs = section.get("coefficients") or [k for k in table[0] if k != metric]
    entries = [({k: float(e[k]) for k in coeffs}, float(e[metric])) for e in table]
    lower = PRIMARY[task][2] == "lower"
    return {"coeffs": coeffs, "entries": entries,
            "m1": next((v for c, v in entries if not any(c.values())), None),
            "best": (min if lower else max)(entries, key=lambda e: e[1])[0],
            "zero_costs": section.get("zero_costs_pct") or {}}


def coefficients(row: dict, names: list[str]) -> dict | None:
    """The row's value of each paper coefficient (lam -> its distill.lam label, or its config's
    distill.lam when the grid does not sweep it); None when one is unknown."""
    config = (row["evals"][0].get("config") or {}) if row["evals"] else {}
    out = {}
    for name in names:
        value = next((v for k, v in row["label"].items() if k.split(".")[-1] == name),
                     (config.get("distill") or {}).get(name))
        if not isinstance(value, (int, float)):
            return None
        out[name] = float(value)
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], abs_tol=1e-9) for k in a)


def paper_value(row: dict, paper: dict | None) -> float | None:
    mine = coefficients(row, paper["coeffs"]) if paper else None
    return next((v for c, v in paper["entries"] if _same(c, mine)), None) if mine else None


def row_at(rows: list[dict], coeffs: dict, names: list[str]) -> dict | None:
    return next((r for r in rows if (c := coefficients(r, names)) and _same(c, coeffs)), None)


def spearman_lines(rows: list[dict]) -> list[str]:
    """Rank correlation of our row means with the paper's values; with mixed seed counts also on the one
    seed every row has, whose values carry no between-seed differences."""
    both = [r for r in rows if "mean" in r and r["paper"] is not None]
    if len(both) < 3:
        return [f"Spearman rank correlation with the paper: not computed ({len(both)} rows in both, 3 needed)."]
    lines = [_spearman("our row means", [r["mean"] for r in both], [r["paper"] for r in both])]
    common = sorted(set.intersection(*(set(r["by_seed"]) for r in both)), key=str)
    if common and len({r["seeds"] for r in both}) > 1:
        seed = common[0]
        lines.append(_spearman(f"seed {seed} alone (the seed every row has)",
                               [r["by_seed"][seed] for r in both], [r["paper"] for r in both]))
    return lines


def _spearman(what: str, ours: list[float], paper: list[float]) -> str:
    from scipy import stats
    result = stats.spearmanr(ours, paper)
    if math.isnan(result.statistic):
        return f"Spearman rank correlation with the paper, {what}: undefined (n = {len(ours)}; one side has no spread)."
    return (f"Spearman rank correlation with the paper's values, {what}: rho = {result.statistic:.3f} "
            f"(n = {len(ours)} rows in both, two-sided p = {result.pvalue:.3g}; scipy.stats.spearmanr, ties averaged).")


def sign_line(rows: list[dict], ref: dict) -> str | None:
    pairs = [(_sign(r["vs_m1"]["diff"]), _paper_sign(r, ref)) for r in rows
             if r.get("vs_m1") and _paper_sign(r, ref)]
    if not pairs:
        return None
    agree = sum(o == p for o, p in pairs)
    return (f"Sign of the change against M1 (column sign_vs_M1_ours/paper; '-' = lower {ref['metric'][1]} than M1): "
            f"ours and the paper's agree on {agree} of {len(pairs)} rows.")


def _signs(row: dict, ref: dict) -> str:
    ours = _sign((row.get("vs_m1") or {}).get("diff"))
    return f"{ours} / {paper}" if ours and (paper := _paper_sign(row, ref)) else ours


def _paper_sign(row: dict, ref: dict) -> str:
    paper = ref["paper"]
    if row.get("paper") is None or not paper or paper["m1"] is None:
        return ""
    return _sign(row["paper"] - paper["m1"])


def zero_cost_lines(rows: list[dict], ref: dict) -> list[str]:
    """The paper's "setting X to 0 costs" beside ours: the best row with one coefficient set to 0,
    % worse than the best row (from row means, as the paper's single runs; and per seed where paired)."""
    paper, lower = ref["paper"], ref["metric"][2] == "lower"
    best = paper["best"]
    best_name = ", ".join(f"{LEAF.get(k, k)}={v:g}" for k, v in best.items())
    ours_best = row_at(rows, best, paper["coeffs"])
    lines = [f"Setting one coefficient of the paper's best row ({best_name}) to 0 costs, in % of that row's "
             f"{ref['metric'][1]} (positive = worse):", "",
             *md_table(["set to 0", "paper %", "ours % (row means)", "ours % per seed (mean +- 95% CI)", "note"], [])]
    for name, value in best.items():
        if not value:
            continue
        zero = {**best, name: 0.0}
        paper_pct = paper["zero_costs"].get(name)
        if paper_pct is None:   # not quoted: computed from the paper's table
            zero_v = next((v for c, v in paper["entries"] if _same(c, zero)), None)
            best_v = next(v for c, v in paper["entries"] if _same(c, best))
            paper_pct = None if zero_v is None else _cost(zero_v, best_v, lower)
        ours_zero = row_at(rows, zero, paper["coeffs"])
        ours = per_seed = ""
        if ours_best is None or "mean" not in ours_best:
            note = f"our row {best_name} {_missing(ours_best)}"
        elif ours_zero is None or "mean" not in ours_zero:
            note = f"our row with {LEAF.get(name, name)}=0 {_missing(ours_zero)}"
        else:
            note = ""
            ours = f"{_cost(ours_zero['mean'], ours_best['mean'], lower):.2f}"
            per_seed = _per_seed_cost(ours_zero, ours_best, lower)
        lines.append(f"| {LEAF.get(name, name)} | {_fmt(paper_pct, 2)} | {ours} | {per_seed} | {note} |")
    return lines


def _missing(row: dict | None) -> str:
    return "is not in this grid" if row is None else "has no finished seed yet"


def _cost(zero: float, best: float, lower: bool) -> float:
    return 100.0 * (zero - best) / abs(best) * (1 if lower else -1)


def _per_seed_cost(zero: dict, best: dict, lower: bool) -> str:
    shared = sorted(set(zero["by_seed"]) & set(best["by_seed"]))
    if len(shared) < 2:
        return ""
    mean, ci = mean_ci([_cost(zero["by_seed"][s], best["by_seed"][s], lower) for s in shared])
    return f"{mean:.2f} +- {ci:.2f} (n={len(shared)})"


# ---------------------------------------------------------------- text

def summary_line(rows: list[dict], ref: dict) -> str | None:
    """Best distilled row against M1, with the paper's own figure beside ours where it has one."""
    m1, (_, label, direction) = ref["m1"], ref["metric"]
    distilled = [r for r in rows if r.get("vs_m1") and r["vs_m1"]["pct"] is not None]
    if not m1 or not distilled:
        return None
    lower = direction == "lower"
    best = min(distilled, key=lambda r: r["vs_m1"]["pct"] if lower else -r["vs_m1"]["pct"])
    cmp = best["vs_m1"]
    ours = -cmp["pct"] if lower else cmp["pct"]
    name = ", ".join(f"{SHORT[k]}={best[k]:g}" for k in SHORT if k in best) or "best distilled"
    if cmp["p"] is not None:
        verdict = "significant" if cmp["p_holm"] < ALPHA else "not significant"
        test = f"{cmp['test']}: p = {cmp['p']:.3g}, Holm-adjusted p = {cmp['p_holm']:.3g}, {verdict} at alpha = {ALPHA}"
    else:
        test = "no test: fewer than 2 seeds"
    better = "better" if ours >= 0 else "worse"
    line = f"Best distilled student ({name}): {abs(ours):.1f}% {better} {label} than M1 ({test})"
    section = paper_values(ref.get("task", ""))
    paper = section.get("best_distilled_vs_M1_improvement_pct")
    if paper is not None and section.get("metric", ref["metric"][0]) == ref["metric"][0]:   # the same metric
        line += f"; the paper reports {paper:.1f}% (ours - paper = {ours - paper:+.1f} points)"
    return line + "."


def unit_line(sweep: dict, by_key: dict) -> str | None:
    """What one value is, from the train.reduction of the sweep's stage records (known before any eval ends)."""
    units = UNITS.get(sweep["config"]["task"])
    records = [by_key.get(p.get(role)) for p in sweep["config"]["points"] for role in ("eval", "student", "teacher")]
    default = plan.ADDED_LATER[("train", "reduction")]   # records older than the field
    reductions = sorted({(rec["config"].get("train") or {}).get("reduction", default)
                         for rec in records if rec and isinstance(rec.get("config"), dict)})
    if not units or not reductions:
        return None
    if len(reductions) > 1:
        return f"Unit: rows mix train.reduction = {', '.join(reductions)}; their values are not comparable."
    return f"Unit: {units.get(reductions[0], f'train.reduction = {reductions[0]}')}."


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


def _metric_digits(rows: list[dict], m0: float | None) -> int:
    """Decimals that keep 4 significant digits of the metric's scale (0.0563 per pixel, 101.4 per image)."""
    means = [abs(v) for v in [m0] + [r.get("mean") for r in rows] if v]
    return max(3, 3 - math.floor(math.log10(statistics.median(means)))) if means else 3


def _column_order(key: str):
    return (list(SHORT).index(key) if key in SHORT else len(SHORT), key)


def write_tables(name: str, sweep: dict, by_key: dict, rows: list[dict], ref: dict, out: Path) -> list[Path]:
    keys = sorted({k for r in rows for k in r["label"]}, key=_column_order)
    metric, paper, d = ref["metric"][1], ref["paper"], _metric_digits(rows, ref["m0"][0])
    header = (["model"] + [SHORT.get(k, k) for k in keys] + [metric, "ci95"] + (["paper"] if paper else [])
              + ["diff_vs_M1", "diff_ci95", "change_vs_M1_%"] + (["sign_vs_M1_ours/paper"] if paper else [])
              + ["test_vs_M1", "p_vs_M1", "p_holm", "sig_vs_M1", "gap_closed_%", "seeds", "status"])
    m0, m0_ci = ref["m0"]
    cells = [{"model": "M0 (teacher)", metric: _fmt(m0, d), "ci95": _fmt(m0_ci, d),
              "seeds": len(ref["m0_by_seed"]) or "", "status": "reference"}]
    for r in rows:
        c = r.get("vs_m1") or {}
        cells.append({"model": "M1" if r is ref["m1"] else "student",
                      **{SHORT.get(k, k): _fmt(r.get(k)) for k in keys},
                      metric: _fmt(r.get("mean"), d), "ci95": _fmt(r.get("ci95"), d), "paper": _fmt_paper(r["paper"]),
                      "diff_vs_M1": _fmt(c.get("diff"), d), "diff_ci95": _fmt(c.get("ci95"), d),
                      "change_vs_M1_%": _fmt(c.get("pct"), 2),
                      "sign_vs_M1_ours/paper": "M1" if r is ref["m1"] else _signs(r, ref),
                      "test_vs_M1": c.get("test", ""), "p_vs_M1": _fmt_p(c.get("p")), "p_holm": _fmt_p(c.get("p_holm")),
                      "sig_vs_M1": significance_mark(c.get("p_holm")), "gap_closed_%": _fmt(c.get("gap_closed_pct"), 1),
                      "seeds": r["seeds"], "status": r["status"]})
    table = [[row.get(h, "") for h in header] for row in cells]
    csv_path = write_csv(out / f"{name}.csv", header, table)
    n_tested = sum(1 for r in rows if (r.get("vs_m1") or {}).get("p") is not None)
    from collapse import report_images
    md = [f"# {name}{report_images.data_note(sweep, by_key)}", "",
          f"{metric} on the real test set ({ref['metric'][2]} is better); mean +- ci95 is a 95% Student-t interval "
          "across seeds.", *_optional(unit_line(sweep, by_key)), *_optional(pooled_line(rows)), "",
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
        md += ["", "## Against the paper's table", *[x for p in paragraphs for x in _optional(p)],
               "", *zero_cost_lines(rows, ref)]
    return [csv_path, write_text(out / f"{name}.md", md)]


def _optional(line: str | None) -> list[str]:
    return ["", line] if line else []


def _fmt_paper(v: float | None) -> str:
    """4 significant digits, trailing zeros kept: as the paper prints its values (0.05630)."""
    return "" if v is None else f"{v:.{max(0, 3 - math.floor(math.log10(abs(v))))}f}" if v else "0"


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


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on a cluster node)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path) -> Path:
    """Write `fig` to `path` as PNG (atomically) and free it."""
    storage.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    pyplot().close(fig)
    return path


def coefficient_sweeps(rows: list[dict]) -> list[tuple]:
    """Per coefficient, the largest set of rows that moves it alone, the others held at one setting
    (0 in a one-at-a-time grid, the best row's values in the paper's Table 1): (c, held, rows)."""
    found = []
    for c in SHORT:
        groups: dict = {}
        for r in rows:
            if "mean" in r and c in r:
                held = tuple((o, r.get(o, 0.0)) for o in SHORT if o != c and o in r)
                groups.setdefault(held, []).append(r)
        held, members = max(groups.items(), key=lambda kv: len({r[c] for r in kv[1]}), default=((), []))
        if len({r[c] for r in members}) >= 2:
            found.append((c, held, members))
    return found


def plot_coefficients(name: str, rows: list[dict], ref: dict, out: Path) -> Path | None:
    """Figures 1-2: the metric against each coefficient, the others held fixed."""
    plt = pyplot()
    sweeps = coefficient_sweeps(rows)
    if not sweeps:
        return None
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4 * len(sweeps), 3.4), squeeze=False)
    for ax, (c, held, members) in zip(axes[0], sweeps):
        xs, ys, es = zip(*sorted((r[c], r["mean"], r.get("ci95") or 0.0) for r in members))
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label="student")
        if ref["m0"][0] is not None:
            ax.axhline(ref["m0"][0], color="k", ls="--", lw=1, label="M0 (teacher)")
        if ref["m1"] and "mean" in ref["m1"]:
            ax.axhline(ref["m1"]["mean"], color="r", ls=":", lw=1, label="M1")
        ax.set_xlabel(SHORT[c])
        ax.set_ylabel(ref["metric"][1])
        ax.set_title(", ".join(f"{SHORT[o]}={v:g}" for o, v in held) or "others 0", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(f"{name}: {ref['metric'][1]} against each coefficient, the others held")
    fig.tight_layout()
    path = out / f"{name}_coefficients.png"
    return save_figure(fig, path)


def plot_samples(name: str, rows: list[dict], ref: dict, root: Path, out: Path) -> Path | None:
    """Figure 3: samples of M1 beside the best distilled student."""
    import matplotlib.image as mpimg
    plt = pyplot()
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
    return save_figure(fig, path)


def curve_models(sweep: dict, by_key: dict) -> list[tuple[str, dict]]:
    """(legend label, training record) of each model of a one-generation grid that has a history:
    the teachers M0 (one per seed), then the students; M1 is the student without distillation."""
    several_seeds = len({p["label"].get(SEED) for p in sweep["config"]["points"]}) > 1
    teachers, students = {}, []
    for p in sweep["config"]["points"]:
        seed = f" seed={p['label'].get(SEED)}" if several_seeds else ""
        teachers.setdefault(p.get("teacher"), "M0" + seed)
        coeffs = {k: v for k, v in p["label"].items() if k != SEED}
        distilled = [f"{SHORT.get(k, k)}={v:g}" for k, v in coeffs.items() if k in SHORT and v]
        others = [f"{k}={v}" for k, v in coeffs.items() if k not in SHORT]
        students.append((p.get("student"), ", ".join(distilled or ["M1"]) + "".join(f" {o}" for o in others) + seed))
    return [(label, by_key[key]) for key, label in [*teachers.items(), *students]
            if key in by_key and (by_key[key].get("metrics") or {}).get("history")]


def plot_curves(name: str, sweep: dict, by_key: dict, out: Path) -> Path | None:
    """Test loss against step for each model of a grid, from the training records' metrics.history."""
    models = curve_models(sweep, by_key)
    if not models:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, record in models:
        history = [h for h in record["metrics"]["history"] if "step" in h and "test_loss" in h]
        style = ({"color": "0.45", "ls": "--"} if label.startswith("M0") else
                 {"color": "k", "lw": 2} if label.startswith("M1") else {"lw": 1})
        ax.plot([h["step"] for h in history], [h["test_loss"] for h in history], marker=".", label=label, **style)
    ax.set_xlabel("step")
    ax.set_ylabel("L_M(Test)")
    ax.legend(fontsize=6, ncol=2 if len(models) > 8 else 1)
    ax.set_title(f"{name}: test loss during training")
    fig.tight_layout()
    path = out / f"{name}_curves.png"
    return save_figure(fig, path)


def write_reports(root) -> list[Path]:
    root = Path(root)
    records = manifest.read_all(root)
    by_key = {r["key"]: r for r in records}
    out = root / "report"
    written = []
    from collapse import report_chains, report_text
    sweeps = [r for r in records if r.get("kind") == "sweep" and r.get("status") == "done" and _well_formed(r)]
    for name, sweep in sorted(latest_sweeps(records).items()):
        if not _well_formed(sweep):
            print(f"warning: report: sweep record {sweep.get('key')} ({name}) is malformed (no config.points); "
                  "skipped", file=sys.stderr)
            continue
        if report_chains.handles(sweep):   # iterative retraining: metric against generation
            written += report_chains.write(name, sweep, by_key, root, out)
            continue
        rows, ref = sweep_rows(sweep, by_key, sorted(sweeps, key=lambda r: r.get("ended", 0)))
        written += write_tables(name, sweep, by_key, rows, ref, out)
        if report_text.handles(ref):   # summarization: Table 3, ROUGE curves, perplexity histograms, examples
            written += report_text.write(name, sweep, rows, ref, by_key, root, out)
        written += [p for p in (plot_coefficients(name, rows, ref, out),
                                plot_samples(name, rows, ref, root, out),
                                plot_curves(name, sweep, by_key, out)) if p]
        from collapse import report_images
        if report_images.handles(sweep):   # DDPM: Table 2 (L_M(Test), FID, KID, the paper's) and Figure 5
            written += report_images.write(name, sweep, by_key, rows, ref, root, out)
    from collapse.results import write_table
    written += write_table(root, out)   # every stage record as one table: results.csv (.parquet)
    return written


def _well_formed(sweep: dict) -> bool:
    return isinstance(sweep.get("config"), dict) and isinstance(sweep["config"].get("points"), list)
