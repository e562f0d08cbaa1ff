"""The paper's own numbers beside ours: collapse/paper_values.yaml, the paper's value of each row, the
rank correlation, the signs against M1, "setting X to 0 costs" and the summary line.

A task's coefficients are its report columns (`ref["columns"]`, "distill.lam" -> "lambda"); the paper's
table names them by their last part (lam)."""
import math
from pathlib import Path

from omegaconf import OmegaConf

from collapse.report.metric import Primary
from collapse.report.na import NA, Footnotes
from collapse.report.stats import evidence, judged, mean_ci, sign, spearman

PAPER_VALUES = Path(__file__).resolve().parent.parent / "paper_values.yaml"


def paper_values(task: str) -> dict:
    """What collapse/paper_values.yaml knows of the paper's own numbers for `task` (often nothing)."""
    try:
        data = OmegaConf.to_container(OmegaConf.load(PAPER_VALUES), resolve=True)
    except Exception:   # missing, unreadable or not valid YAML: no paper values
        return {}
    return (data.get(task) or {}) if isinstance(data, dict) else {}


def paper_reference(task: str, primary: Primary) -> dict | None:
    """The paper's table for `task` (entries keyed by coefficient leaf names, e.g. lam), its M1 and
    best entries and its "setting X to 0 costs"; None when paper_values.yaml has no table for it."""
    section = paper_values(task)
    table = section.get("table") or []
    if not table:
        return None
    metric = section.get("metric") or primary.name
    coeffs = section.get("coefficients") or [k for k in table[0] if k != metric]
    entries = [({k: float(e[k]) for k in coeffs}, float(e[metric])) for e in table]
    lower = primary.lower_is_better
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


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], abs_tol=1e-9) for k in a)


def paper_value(row: dict, paper: dict | None) -> float | None:
    mine = coefficients(row, paper["coeffs"]) if paper else None
    return next((v for c, v in paper["entries"] if same(c, mine)), None) if mine else None


def row_at(rows: list[dict], coeffs: dict, names: list[str]) -> dict | None:
    return next((r for r in rows if (c := coefficients(r, names)) and same(c, coeffs)), None)


def leaf_names(columns: dict) -> dict:
    """The paper table's keys to our column names: lam -> lambda."""
    return {k.split(".")[-1]: v for k, v in columns.items()}


# ---------------------------------------------------------------- lines below the table

def spearman_lines(rows: list[dict], notes: Footnotes) -> list[str]:
    """Rank correlation of our row means with the paper's values; with mixed seed counts also on the one
    seed every row has, whose values carry no between-seed differences."""
    both = [r for r in rows if "mean" in r and r["paper"] is not None]
    if len(both) < 3:
        return [f"Spearman rank correlation with the paper: not computed ({len(both)} rows in both, 3 needed)."]
    lines = [_spearman("our row means", [r["mean"] for r in both], [r["paper"] for r in both], notes)]
    common = sorted(set.intersection(*(set(r["by_seed"]) for r in both)), key=str)
    if common and len({r["seeds"] for r in both}) > 1:
        seed = common[0]
        lines.append(_spearman(f"seed {seed} alone (the seed every row has)",
                               [r["by_seed"][seed] for r in both], [r["paper"] for r in both], notes))
    return lines


def _spearman(what: str, ours: list[float], paper: list[float], notes: Footnotes) -> str:
    result = spearman(ours, paper)
    if result is None:
        side = "ours" if len(set(ours)) < 2 else "the paper's"
        mark = notes.mark(f"every row has the same value ({side}), so a rank correlation is undefined")
        return f"Spearman rank correlation with the paper's values, {what}: rho = {mark} (n = {len(ours)} rows in both)."
    return (f"Spearman rank correlation with the paper's values, {what}: rho = {result.statistic:.3f} "
            f"(n = {len(ours)} rows in both, two-sided p = {result.pvalue:.3g}; scipy.stats.spearmanr, ties averaged).")


def sign_line(rows: list[dict], ref: dict) -> str | None:
    pairs = [(sign(r["vs_m1"]["diff"]), paper_sign(r, ref)) for r in rows
             if r.get("vs_m1") and paper_sign(r, ref)]
    if not pairs:
        return None
    agree = sum(o == p for o, p in pairs)
    return (f"Sign of the change against M1 (column sign_vs_M1_ours/paper; '-' = lower {ref['metric'].label} than M1): "
            f"ours and the paper's agree on {agree} of {len(pairs)} rows.")


def signs(row: dict, ref: dict) -> str:
    """The row's sign against M1, and the paper's beside it where the paper has the row: '- / -'."""
    ours = sign((row.get("vs_m1") or {}).get("diff"))
    return f"{ours} / {paper}" if ours and (paper := paper_sign(row, ref)) else ours


def paper_sign(row: dict, ref: dict) -> str:
    paper = ref["paper"]
    if row.get("paper") is None or not paper or paper["m1"] is None:
        return ""
    return sign(row["paper"] - paper["m1"])


def zero_costs(rows: list[dict], ref: dict) -> tuple[str, list[str], list[list]]:
    """The paper's "setting X to 0 costs" beside ours: the best row with one coefficient set to 0,
    % worse than the best row (from row means, as the paper's single runs; and per seed where paired).
    (intro line, header, rows: coefficient, paper's % (a number or None), ours, ours per seed, note)."""
    paper, lower = ref["paper"], ref["metric"].lower_is_better
    leaf = leaf_names(ref["columns"])
    best = paper["best"]
    best_name = ", ".join(f"{leaf.get(k, k)}={v:g}" for k, v in best.items())
    ours_best = row_at(rows, best, paper["coeffs"])
    intro = (f"Setting one coefficient of the paper's best row ({best_name}) to 0 costs, in % of that row's "
             f"{ref['metric'].label} (positive = worse):")
    header = ["set to 0", "paper %", "ours % (row means)", "ours % per seed (mean +- 95% CI)", "note"]
    table = []
    for name, value in best.items():
        if not value:
            continue
        zero = {**best, name: 0.0}
        paper_pct = paper["zero_costs"].get(name)
        if paper_pct is None:   # not quoted: computed from the paper's table
            zero_v = next((v for c, v in paper["entries"] if same(c, zero)), None)
            best_v = next(v for c, v in paper["entries"] if same(c, best))
            paper_pct = None if zero_v is None else _cost(zero_v, best_v, lower)
        ours_zero = row_at(rows, zero, paper["coeffs"])
        ours, per_seed, note = _ours_cost(ours_best, ours_zero, f"our row {best_name}",
                                          f"our row with {leaf.get(name, name)}=0", lower, ref["metric"].label)
        table.append([leaf.get(name, name), paper_pct, ours, per_seed, note])
    return intro, header, table


def _ours_cost(best: dict | None, zero: dict | None, best_name: str, zero_name: str, lower: bool,
               label: str) -> tuple:
    """(ours % from row means, ours per seed, note): a row the grid does not have is a note; a row
    without a finished seed, or a best row at 0 (no % of it), reads n/a with the reason."""
    for row, what in ((best, best_name), (zero, zero_name)):
        if row is None:
            return "", "", f"{what} is not in this grid"
        if "mean" not in row:
            missing = NA(f"{what} has no finished seed with a finite value yet")
            return missing, missing, ""
    cost = _cost(zero["mean"], best["mean"], lower)
    if cost is None:
        zero_best = NA(f"{best_name}'s {label} is 0, so a % of it is undefined")
        return zero_best, zero_best, ""
    return f"{cost:.2f}", _per_seed_cost(zero, best, lower), ""


def _cost(zero: float, best: float, lower: bool) -> float | None:
    """% worse than the best row; None where the best row's value is 0 (a smoke run's ROUGE): no % of it."""
    if not best:
        return None
    return 100.0 * (zero - best) / abs(best) * (1 if lower else -1)


def _per_seed_cost(zero: dict, best: dict, lower: bool) -> str:
    shared = sorted(set(zero["by_seed"]) & set(best["by_seed"]))
    costs = [c for c in (_cost(zero["by_seed"][s], best["by_seed"][s], lower) for s in shared) if c is not None]
    if len(costs) < 2:
        return NA("fewer than 2 seeds that both rows have (with the best row's value not 0): no interval over seeds")
    mean, ci = mean_ci(costs)
    return f"{mean:.2f} +- {ci:.2f} (n={len(costs)})"


def summary_line(rows: list[dict], ref: dict) -> str | None:
    """Best distilled row against M1, with the paper's own figure beside ours where it has one."""
    m1, metric, columns = ref["m1"], ref["metric"], ref["columns"]
    distilled = [r for r in rows if r.get("vs_m1") and r["vs_m1"]["pct"] is not None]
    if not m1 or not distilled:
        return None
    lower = metric.lower_is_better
    best = min(distilled, key=lambda r: r["vs_m1"]["pct"] if lower else -r["vs_m1"]["pct"])
    cmp = best["vs_m1"]
    ours = -cmp["pct"] if lower else cmp["pct"]
    name = ", ".join(f"{columns[k]}={best[k]:g}" for k in columns if k in best) or "best distilled"
    line = f"Best distilled student ({name}): {_judged_words(cmp, lower, metric.label)}"
    section = paper_values(ref.get("task", ""))
    paper = section.get("best_distilled_vs_M1_improvement_pct")
    if paper is not None and section.get("metric", metric.name) == metric.name:   # the same metric
        line += f"; the paper reports {paper:.1f}% (ours - paper = {ours - paper:+.1f} points)"
    return line + "."


def _judged_words(cmp: dict, lower: bool, label: str) -> str:
    """'3.2% better L than M1 (interval; test ...)' only where the test (or, untested, the interval) says
    the difference is more than noise; else the direction alone, said to be within noise."""
    verdict, size = judged(cmp), f"{abs(cmp['pct']):.1f}%"
    direction = "lower" if cmp["diff"] < 0 else "higher" if cmp["diff"] > 0 else "different"
    if verdict in ("up", "down"):
        better = "better" if (verdict == "down") == lower else "worse"
        return f"{size} {better} {label} than M1 ({evidence(cmp)})"
    if verdict == "noise":
        return f"{size} {direction} {label} than M1, within noise ({evidence(cmp)})"
    return f"{size} {direction} {label} than M1, not judged ({cmp['test']}: {cmp['untested']})"
