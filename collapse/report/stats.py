"""The report's statistics: means with t-intervals, the tests of a row against M1 (paired by seed, else
Welch's), Holm's correction, significance marks and Spearman's rank correlation. scipy is imported by
the functions that need it, so that a task module (which imports its report part) does not load it."""
import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from collapse.report.na import NO_M0, finite, no_spread

ALPHA = 0.05   # two-sided level of the tests against M1, after Holm's correction


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of a 95% Student-t interval (None with one value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None
    from scipy import stats   # heavy: only the report's numbers need scipy
    return m, stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def paired_p(values: list[float], reference: list[float]) -> float | None:
    """Two-sided p-value of the paired t-test (scipy.stats.ttest_rel); None when the differences have no
    spread (the test is undefined; checked first, so scipy does not warn)."""
    if no_spread([a - b for a, b in zip(values, reference)]):
        return None
    from scipy import stats   # heavy: only the report's numbers need scipy
    p = stats.ttest_rel(values, reference).pvalue
    return None if math.isnan(p) else float(p)


def welch(values: list[float], reference: list[float]) -> tuple[float, float, float | None]:
    """Welch's t-test (unequal variances) of values - reference, computed as scipy.stats.ttest_ind
    (equal_var=False) does: the difference of means, the half-width of its 95% interval
    (Welch-Satterthwaite degrees of freedom) and the two-sided p (None when neither side has spread).
    Needs 2 or more values a side."""
    from scipy import stats   # heavy: only the report's numbers need scipy
    va, vb = statistics.variance(values) / len(values), statistics.variance(reference) / len(reference)
    diff = statistics.fmean(values) - statistics.fmean(reference)
    if va + vb == 0:
        return diff, 0.0, None
    df = (va + vb) ** 2 / (va ** 2 / (len(values) - 1) + vb ** 2 / (len(reference) - 1))
    se = math.sqrt(va + vb)
    return diff, stats.t.ppf(0.975, df) * se, float(2 * stats.t.sf(abs(diff) / se, df))


def welch_p(values: list[float], reference: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test across seeds; None below 2 seeds a side or without spread."""
    return welch(values, reference)[2] if len(values) >= 2 and len(reference) >= 2 else None


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
    """scipy.stats.spearmanr of a and b (ties averaged): its .statistic (rho) and .pvalue; None when a side
    has every value the same (the correlation is undefined; checked first, so scipy does not warn)."""
    if len(set(a)) < 2 or len(set(b)) < 2:
        return None
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


# ---------------------------------------------------------------- one model against another

Z95 = 1.959963984540054   # the normal 97.5% quantile: a 95% interval from two standard errors
ONE_VALUE = ("one seed (or one seed shared): no test over seeds, and the evals carry no sampling "
             "interval of their own, so no interval either")
ONE_VALUE_TESTED = "one seed (or one seed shared): no test over seeds (the interval is each eval's own)"
SAME_DIFFERENCE = "every seed's difference is the same: no spread, so the paired t-test is undefined"
NO_SPREAD = "neither side varies over its seeds: no spread, so Welch's t-test is undefined"


def sampling_se(metrics: dict, metric: str) -> float | None:
    """The standard error of one eval's value from its own sampling: <metric>_se (FID: a bootstrap over
    the generated samples), else from its 95% interval <metric>_ci (ROUGE: a bootstrap over articles)."""
    se, ci = metrics.get(f"{metric}_se"), metrics.get(f"{metric}_ci")
    if finite(se):
        return float(se)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(finite(c) for c in ci):
        return (ci[1] - ci[0]) / (2 * Z95)
    return None


@dataclass(frozen=True)
class Runs:
    """A model's finished runs of one metric, as compare() reads them."""
    values: tuple[float, ...] = ()                              # one per finished eval
    by_seed: Mapping[Any, float] = field(default_factory=dict)  # the same, by train.seed (evals without one left out)
    ses: tuple[float | None, ...] = ()                          # each one's own sampling standard error (sampling_se)
    se_by_seed: Mapping[Any, float | None] = field(default_factory=dict)


def runs(evals: list[dict], metric: str) -> Runs:
    """A model's finished runs of `metric` from its eval records."""
    scored = [e for e in evals if finite((e.get("metrics") or {}).get(metric))]
    return Runs(tuple(e["metrics"][metric] for e in scored),
                {seed_of(e): e["metrics"][metric] for e in scored if seed_of(e) is not None},
                tuple(sampling_se(e["metrics"], metric) for e in scored),
                {seed_of(e): sampling_se(e["metrics"], metric) for e in scored if seed_of(e) is not None})


@dataclass(frozen=True)
class Comparison:
    """a - b for two models' runs of one metric, as compare() finds it; compare_with_m1 adds pct and
    gap_closed_pct, and the report p_holm (Holm over the rows it tests)."""
    test: str                    # the test taken: "paired t (n=3)", "Welch (3 vs 5)", "none: 1 pair (seed 0)", ...
    diff: float                  # a - b: the mean of the paired differences, else the difference of the means
    ci95: float | None           # the half-width of its 95% interval (None: no interval)
    p: float | None              # the test's two-sided p (None: untested)
    shared: tuple = ()           # the seeds the difference was taken on (none for Welch's test)
    untested: str | None = None  # why p is None
    pct: float | None = None             # diff in % of M1
    gap_closed_pct: float | None = None  # -diff in % of M1 - M0
    p_holm: float | None = None          # p, Holm-adjusted (set only where p is)
    why: Mapping[str, str] = field(default_factory=dict)   # "pct" / "gap_closed_pct" -> why it is None


def compare(a: Runs, b: Runs) -> Comparison:
    """a - b for two models' runs: paired by seed over the seeds both have (2 or more: a paired t-test),
    else Welch's test across seeds (2 or more a side), else one value against one (that seed's, where
    both have it), its 95% interval from each eval's own sampling interval where both have one."""
    shared = tuple(sorted(set(a.by_seed) & set(b.by_seed), key=str))
    if len(shared) >= 2:
        xs, ys = [a.by_seed[s] for s in shared], [b.by_seed[s] for s in shared]
        diff, ci = mean_ci([x - y for x, y in zip(xs, ys)])
        p = paired_p(xs, ys)
        return Comparison(f"paired t (n={len(shared)})", diff, ci, p, shared,
                          None if p is not None else SAME_DIFFERENCE)
    if len(a.values) >= 2 and len(b.values) >= 2:
        diff, ci, p = welch(a.values, b.values)
        return Comparison(f"Welch ({len(a.values)} vs {len(b.values)})", diff, ci, p, (),
                          None if p is not None else NO_SPREAD)
    if shared:
        seed = shared[0]
        test, diff = f"none: 1 pair (seed {seed})", a.by_seed[seed] - b.by_seed[seed]
        ses = (a.se_by_seed.get(seed), b.se_by_seed.get(seed))
    else:
        test, diff = "none: 1 seed, none shared", statistics.fmean(a.values) - statistics.fmean(b.values)
        ses = tuple(x.ses[0] if len(x.ses) == 1 else None for x in (a, b))
    ci = Z95 * math.hypot(*ses) if None not in ses else None
    if ci is not None:
        test += "; interval: the evals' own"
    return Comparison(test, diff, ci, None, shared, ONE_VALUE_TESTED if ci else ONE_VALUE)


def judged(c: Comparison) -> str:
    """'up' or 'down' where a - b is more than noise (its test's p, Holm-adjusted where it was, below
    ALPHA; untested, its 95% interval excludes 0), 'noise' where it is not, 'unknown' with neither."""
    p = c.p_holm if c.p_holm is not None else c.p
    if p is not None:
        clear = p < ALPHA
    elif c.ci95:
        clear = abs(c.diff) > c.ci95
    else:
        return "unknown"
    return ("up" if c.diff > 0 else "down") if clear else "noise"


def evidence(c: Comparison) -> str:
    """The difference's 95% interval, its test and what they say, in words: '95% interval of the
    difference [-1.2, +0.4]; paired t (n=3): p = 0.31, not significant at alpha = 0.05' (4 significant
    digits); untested, whether the interval contains 0."""
    if c.ci95 is None:
        return f"{c.test}: no interval"
    lo, hi = c.diff - c.ci95, c.diff + c.ci95
    text = f"95% interval of the difference [{lo:+.4g}, {hi:+.4g}]; {c.test}"
    clear = judged(c) in ("up", "down")
    if c.p is None:
        return text + (", which excludes 0" if clear else ", which contains 0")
    text += f": p = {c.p:.3g}" + (f", Holm-adjusted p = {c.p_holm:.3g}" if c.p_holm is not None else "")
    return text + f", {'' if clear else 'not '}significant at alpha = {ALPHA}"


def compare_with_m1(row: Runs, m1: Runs, m1_mean: float, m0_mean: float | None, m0_by_seed: Mapping) -> Comparison:
    """row - M1 (compare()), with the change in % of M1 and the gap to M0 closed, each over the seeds the
    difference was taken on; `why` says why either is None."""
    c = compare(row, m1)
    m1_ref = statistics.fmean(m1.by_seed[s] for s in c.shared) if c.shared else m1_mean
    m0_seeds = [m0_by_seed[s] for s in c.shared if s in m0_by_seed]
    m0_ref = statistics.fmean(m0_seeds) if c.shared and len(m0_seeds) == len(c.shared) else m0_mean
    pct = 100.0 * c.diff / abs(m1_ref) if m1_ref else None
    why = {} if pct is not None else {"pct": "M1's value is 0, so a change in % of it is undefined"}
    gap_closed = None
    if m0_ref is None:
        why["gap_closed_pct"] = NO_M0
    elif m1_ref == m0_ref:
        why["gap_closed_pct"] = "M1's value equals M0's: there is no gap to close"
    else:
        gap_closed = 100.0 * -c.diff / (m1_ref - m0_ref)
    return replace(c, pct=pct, gap_closed_pct=gap_closed, why=why)
