"""The report's statistics: means with t-intervals, the tests of a row against M1 (paired by seed, else
Welch's), Holm's correction, significance marks and Spearman's rank correlation. scipy is imported by
the functions that need it, so that a task module (which imports its report part) does not load it."""
import math
import statistics

ALPHA = 0.05   # two-sided level of the tests against M1, after Holm's correction


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of a 95% Student-t interval (None with one value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None
    from scipy import stats   # heavy: only the report's numbers need scipy
    return m, stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def paired_p(values: list[float], reference: list[float]) -> float | None:
    """Two-sided p-value of the paired t-test (scipy.stats.ttest_rel); None when undefined."""
    from scipy import stats   # heavy: only the report's numbers need scipy
    p = stats.ttest_rel(values, reference).pvalue
    return None if math.isnan(p) else float(p)


def welch_p(values: list[float], reference: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances) across seeds; None below 2 seeds a side."""
    if len(values) < 2 or len(reference) < 2:
        return None
    from scipy import stats   # heavy: only the report's numbers need scipy
    p = stats.ttest_ind(values, reference, equal_var=False).pvalue
    return None if math.isnan(p) else float(p)


def welch_interval(values: list[float], reference: list[float]) -> tuple[float, float]:
    """Difference of means and the half-width of its 95% interval (Welch-Satterthwaite degrees of freedom)."""
    from scipy import stats   # heavy: only the report's numbers need scipy
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


def sign(x: float | None) -> str:
    return "" if x is None else "-" if x < 0 else "+" if x > 0 else "0"


def spearman(a: list[float], b: list[float]):
    """scipy.stats.spearmanr of a and b (ties averaged): its .statistic (rho, nan without spread) and .pvalue."""
    from scipy import stats   # heavy: only the report's numbers need scipy
    return stats.spearmanr(a, b)


# ---------------------------------------------------------------- seeds

def seed_of(record: dict):
    """An eval record's train.seed (None without a config)."""
    return ((record.get("config") or {}).get("train") or {}).get("seed")


def on_seeds(evals: list[dict], like: list[dict]) -> list[dict]:
    """`evals` of the seeds that `like` has, when they cover all of them; else all of `evals` (M0 or M1
    of the same seeds as a row, so that a row with fewer seeds is held against the same runs)."""
    seeds = {seed_of(e) for e in like}
    same = [e for e in evals if seed_of(e) in seeds]
    return same if {seed_of(e) for e in same} == seeds else evals


# ---------------------------------------------------------------- a row against M1

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
