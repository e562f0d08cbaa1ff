"""The paper's own numbers beside ours: collapse/paper_values.yaml, the paper's value of each row, the
rank correlation, the signs against M1, "setting X to 0 costs" and the summary line.

A task's coefficients are its report columns (`SweepView.columns`, "distill.lam" -> "lambda"); the paper's
table names them by their last part (lam)."""
from pathlib import Path

from omegaconf import OmegaConf

from collapse.report.metric import Primary
from collapse.report.na import NA, Footnotes
from collapse.report.stats import Comparison, evidence, judged, mean_ci, sign, spearman
from collapse.report.view import PaperTable, PaperValue, Row, SweepView, same

PAPER_VALUES = Path(__file__).resolve().parent.parent / "paper_values.yaml"


def paper_values(task: str) -> dict:
    """What collapse/paper_values.yaml knows of the paper's own numbers for `task` (often nothing)."""
    try:
        data = OmegaConf.to_container(OmegaConf.load(PAPER_VALUES), resolve=True)
    except Exception:   # missing, unreadable or not valid YAML: no paper values
        return {}
    return (data.get(task) or {}) if isinstance(data, dict) else {}


def paper_reference(task: str, primary: Primary) -> PaperTable | None:
    """The paper's table for `task`; None when paper_values.yaml has none for it."""
    section = paper_values(task)
    table = section.get("table") or []
    if not table:
        return None
    metric = section.get("metric") or primary.name
    coeffs = section.get("coefficients") or [k for k in table[0] if k != metric]
    entries = tuple(PaperValue({k: float(e[k]) for k in coeffs}, float(e[metric])) for e in table)
    best = (min if primary.lower_is_better else max)(entries, key=lambda e: e.value)
    m1 = next((e.value for e in entries if not any(e.coefficients.values())), None)
    return PaperTable(tuple(coeffs), entries, m1, best.coefficients, section.get("zero_costs_pct") or {})


def coefficients(row: Row, names: list[str]) -> dict | None:
    """The row's value of each paper coefficient (lam -> its distill.lam label, or its config's
    distill.lam when the grid does not sweep it); None when one is unknown."""
    config = (row.evals[0].get("config") or {}) if row.evals else {}
    out = {}
    for name in names:
        value = next((v for k, v in row.label.items() if k.split(".")[-1] == name),
                     (config.get("distill") or {}).get(name))
        if not isinstance(value, (int, float)):
            return None
        out[name] = float(value)
    return out


def paper_value(row: Row, paper: PaperTable | None) -> float | None:
    mine = coefficients(row, paper.coefficients) if paper else None
    return paper.value_at(mine) if mine else None


def row_at(rows: list[Row], coeffs: dict, names: list[str]) -> Row | None:
    return next((r for r in rows if (c := coefficients(r, names)) and same(c, coeffs)), None)


def leaf_names(columns: dict) -> dict:
    """The paper table's keys to our column names: lam -> lambda."""
    return {k.split(".")[-1]: v for k, v in columns.items()}


# ---------------------------------------------------------------- lines below the table

def spearman_lines(rows: list[Row], notes: Footnotes) -> list[str]:
    """Rank correlation of our row means with the paper's values; with mixed seed counts also on the one
    seed every row has, whose values carry no between-seed differences."""
    both = [r for r in rows if r.mean is not None and r.paper is not None]
    if len(both) < 3:
        return [f"Spearman rank correlation with the paper: not computed ({len(both)} rows in both, 3 needed)."]
    lines = [_spearman("our row means", [r.mean for r in both], [r.paper for r in both], notes)]
    common = sorted(set.intersection(*(set(r.runs.by_seed) for r in both)), key=str)
    if common and len({r.seeds for r in both}) > 1:
        seed = common[0]
        lines.append(_spearman(f"seed {seed} alone (the seed every row has)",
                               [r.runs.by_seed[seed] for r in both], [r.paper for r in both], notes))
    return lines


def _spearman(what: str, ours: list[float], paper: list[float], notes: Footnotes) -> str:
    result = spearman(ours, paper)
    if result is None:
        side = "ours" if len(set(ours)) < 2 else "the paper's"
        mark = notes.mark(f"every row has the same value ({side}), so a rank correlation is undefined")
        return f"Spearman rank correlation with the paper's values, {what}: rho = {mark} (n = {len(ours)} rows in both)."
    return (f"Spearman rank correlation with the paper's values, {what}: rho = {result.statistic:.3f} "
            f"(n = {len(ours)} rows in both, two-sided p = {result.pvalue:.3g}; scipy.stats.spearmanr, ties averaged).")


def sign_line(view: SweepView) -> str | None:
    pairs = [(sign(r.vs_m1.diff), paper_sign(r, view.paper)) for r in view.rows
             if r.vs_m1 and paper_sign(r, view.paper)]
    if not pairs:
        return None
    agree = sum(o == p for o, p in pairs)
    return (f"Sign of the change against M1 (column sign_vs_M1_ours/paper; '-' = lower {view.metric.label} than M1): "
            f"ours and the paper's agree on {agree} of {len(pairs)} rows.")


def signs(row: Row, paper: PaperTable | None) -> str:
    """The row's sign against M1, and the paper's beside it where the paper has the row: '- / -'."""
    ours = sign(row.vs_m1.diff if row.vs_m1 else None)
    return f"{ours} / {theirs}" if ours and (theirs := paper_sign(row, paper)) else ours


def paper_sign(row: Row, paper: PaperTable | None) -> str:
    if row.paper is None or not paper or paper.m1 is None:
        return ""
    return sign(row.paper - paper.m1)


def zero_costs(view: SweepView) -> tuple[str, list[str], list[list]]:
    """The paper's "setting X to 0 costs" beside ours: the best row with one coefficient set to 0,
    % worse than the best row (from row means, as the paper's single runs; and per seed where paired).
    (intro line, header, rows: coefficient, paper's % (a number or None), ours, ours per seed, note)."""
    rows, paper, lower = view.rows, view.paper, view.metric.lower_is_better
    leaf = leaf_names(view.columns)
    best = paper.best
    best_name = ", ".join(f"{leaf.get(k, k)}={v:g}" for k, v in best.items())
    ours_best = row_at(rows, best, paper.coefficients)
    intro = (f"Setting one coefficient of the paper's best row ({best_name}) to 0 costs, in % of that row's "
             f"{view.metric.label} (positive = worse):")
    header = ["set to 0", "paper %", "ours % (row means)", "ours % per seed (mean +- 95% CI)", "note"]
    table = []
    for name, value in best.items():
        if not value:
            continue
        zero = {**best, name: 0.0}
        paper_pct = paper.zero_costs.get(name)
        if paper_pct is None:   # not quoted: computed from the paper's table
            zero_v, best_v = paper.value_at(zero), paper.value_at(best)
            paper_pct = None if zero_v is None else _cost(zero_v, best_v, lower)
        ours_zero = row_at(rows, zero, paper.coefficients)
        ours, per_seed, note = _ours_cost(ours_best, ours_zero, f"our row {best_name}",
                                          f"our row with {leaf.get(name, name)}=0", lower, view.metric.label)
        table.append([leaf.get(name, name), paper_pct, ours, per_seed, note])
    return intro, header, table


def _ours_cost(best: Row | None, zero: Row | None, best_name: str, zero_name: str, lower: bool,
               label: str) -> tuple:
    """(ours % from row means, ours per seed, note): a row the grid does not have is a note; a row
    without a finished seed, or a best row at 0 (no % of it), reads n/a with the reason."""
    for row, what in ((best, best_name), (zero, zero_name)):
        if row is None:
            return "", "", f"{what} is not in this grid"
        if row.mean is None:
            missing = NA(f"{what} has no finished seed with a finite value yet")
            return missing, missing, ""
    cost = _cost(zero.mean, best.mean, lower)
    if cost is None:
        zero_best = NA(f"{best_name}'s {label} is 0, so a % of it is undefined")
        return zero_best, zero_best, ""
    return f"{cost:.2f}", _per_seed_cost(zero, best, lower), ""


def _cost(zero: float, best: float, lower: bool) -> float | None:
    """% worse than the best row; None where the best row's value is 0 (a smoke run's ROUGE): no % of it."""
    if not best:
        return None
    return 100.0 * (zero - best) / abs(best) * (1 if lower else -1)


def _per_seed_cost(zero: Row, best: Row, lower: bool) -> str:
    zero_v, best_v = zero.runs.by_seed, best.runs.by_seed
    shared = sorted(set(zero_v) & set(best_v))
    costs = [c for c in (_cost(zero_v[s], best_v[s], lower) for s in shared) if c is not None]
    if len(costs) < 2:
        return NA("fewer than 2 seeds that both rows have (with the best row's value not 0): no interval over seeds")
    mean, ci = mean_ci(costs)
    return f"{mean:.2f} +- {ci:.2f} (n={len(costs)})"


def summary_line(view: SweepView) -> str | None:
    """Best distilled row against M1, with the paper's own figure beside ours where it has one."""
    m1, metric, columns = view.m1, view.metric, view.columns
    distilled = [r for r in view.rows if r.vs_m1 and r.vs_m1.pct is not None]
    if not m1 or not distilled:
        return None
    lower = metric.lower_is_better
    best = min(distilled, key=lambda r: r.vs_m1.pct if lower else -r.vs_m1.pct)
    cmp = best.vs_m1
    ours = -cmp.pct if lower else cmp.pct
    name = ", ".join(f"{columns[k]}={best.label[k]:g}" for k in columns if k in best.label) or "best distilled"
    line = f"Best distilled student ({name}): {_judged_words(cmp, lower, metric.label)}"
    section = paper_values(view.task)
    paper = section.get("best_distilled_vs_M1_improvement_pct")
    if paper is not None and section.get("metric", metric.name) == metric.name:   # the same metric
        line += f"; the paper reports {paper:.1f}% (ours - paper = {ours - paper:+.1f} points)"
    return line + "."


def _judged_words(cmp: Comparison, lower: bool, label: str) -> str:
    """'3.2% better L than M1 (interval; test ...)' only where the test (or, untested, the interval) says
    the difference is more than noise; else the direction alone, said to be within noise."""
    verdict, size = judged(cmp), f"{abs(cmp.pct):.1f}%"
    direction = "lower" if cmp.diff < 0 else "higher" if cmp.diff > 0 else "different"
    if verdict in ("up", "down"):
        better = "better" if (verdict == "down") == lower else "worse"
        return f"{size} {better} {label} than M1 ({evidence(cmp)})"
    if verdict == "noise":
        return f"{size} {direction} {label} than M1, within noise ({evidence(cmp)})"
    return f"{size} {direction} {label} than M1, not judged ({cmp.test}: {cmp.untested})"
