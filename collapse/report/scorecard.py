"""The paper's claims as checks, judged on every report: <grid>_scorecard.md and .csv.

A task states its claims as data (`Claims`: named rows, and per claim the parts that must all hold),
each part a statistic of one seed's row values (`Part.stat`), e.g. the best row's change against M1 in %.
The statistic is taken per seed on the rows of that seed (so it is paired with M1 and M0 of the same
seed), and the paper's value is the same statistic of the paper's rows (collapse/paper_values.yaml).
Each part is tested over seeds: a one-sample t-test of the per-seed statistic against its bound
(`<` or `>` a bound; `near`: within +- tolerance of the paper's value, two one-sided tests when our
mean is inside), with Holm's correction over every part of the table. A part holds where our mean lies
on the paper's side and its Holm p < 0.05, fails where it lies on the other side with Holm p < 0.05,
and is within noise otherwise; with one seed there is no test (n/a), and `direction` still says on
which side our value lies. A claim holds when all its parts hold and fails when one fails."""
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from collapse.report.na import NA, Footnotes, finite, no_spread
from collapse.report.paper import coefficients, paper_values, same
from collapse.report.stats import ALPHA, holm, mean_ci, seed_of, spearman
from collapse.report.tables import fmt_p, md_table, write_csv, write_text
from collapse.report.view import SweepView

Values = Mapping[str, float]   # one seed's value of each named row ("M0", "M1", the task's names)
ONE_SEED_TEST = "one seed: no test over seeds (direction says on which side our value lies)"
SAME_STAT = "every seed gives the same value: no spread, so the t-test is undefined"
PAPER_M0 = "the paper gives M0's value only in a figure"
ABSENT = NA("the grid lacks a row this claim needs")   # a csv cell: its claim verdict


@dataclass(frozen=True)
class Part:
    """One statistic of a claim and the side of `bound` the paper puts it on."""
    text: str                              # what the statistic is, e.g. "best row vs M1, % of M1"
    stat: Callable[[Values], float]        # one seed's row values (of `metric`) -> the statistic
    holds: str                             # "<" or ">" bound, or "near": within +- tolerance of the paper's
    bound: float = 0.0
    tolerance: float = 0.0
    metric: str | None = None              # a recorded metric; None: the table's (the report's metric)


@dataclass(frozen=True)
class Claim:
    name: str        # F1
    text: str        # the claim in words
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class Claims:
    """A paper table's claims: its rows by name (coefficient leaf names -> value) and the checks."""
    rows: Mapping[str, Mapping[str, float]]
    claims: tuple[Claim, ...]


def pct(a: float, b: float) -> float:
    """a against b, in % of b."""
    return 100.0 * (a / b - 1.0)


def kept(v: Values, row: str, best: str = "best") -> float:
    """The share of the best row's gain over M1 that `row` keeps: (row - M1) / (best - M1)."""
    return (v[row] - v["M1"]) / (v[best] - v["M1"])


# ---------------------------------------------------------------- values

def per_seed(view: SweepView, claims: Claims, metric: str) -> dict:
    """{seed: {row name: value of `metric`}} from the rows' and M0's eval records."""
    names = sorted({k for c in claims.rows.values() for k in c})
    out: dict = {}
    for row in view.rows:
        mine = coefficients(row, names)
        name = next((n for n, c in claims.rows.items() if mine and same(dict(c), mine)), None)
        for rec in row.evals if name else []:
            value = (rec.get("metrics") or {}).get(metric)
            if finite(value):
                out.setdefault(seed_of(rec), {})[name] = float(value)
    for rec in view.m0.evals:
        value = (rec.get("metrics") or {}).get(metric)
        if finite(value):
            out.setdefault(seed_of(rec), {})["M0"] = float(value)
    return out


def paper_rows(task: str, claims: Claims, metric: str) -> dict:
    """{row name: the paper's value of `metric`} from collapse/paper_values.yaml (M0 where it is given)."""
    section = paper_values(task)
    out = {}
    for entry in section.get("table") or []:
        for name, coeffs in claims.rows.items():
            if all(float(entry.get(k, 0.0)) == float(v) for k, v in coeffs.items()) and finite(entry.get(metric)):
                out[name] = float(entry[metric])
    if finite((section.get("m0") or {}).get(metric)):
        out["M0"] = float(section["m0"][metric])
    return out


def statistic(part: Part, values: Values):
    """part.stat of `values`, or NA naming the row it needs and lacks."""
    try:
        return float(part.stat(values))
    except KeyError as e:
        return NA(PAPER_M0 if e.args[0] == "M0" else f"no value of row {e.args[0]}")
    except ZeroDivisionError:
        return NA("a division by 0 (two rows it divides by are equal)")
    except ValueError:
        return NA("too few rows for this statistic")


# ---------------------------------------------------------------- judging

def bounds(part: Part, paper) -> tuple[float, float] | None:
    """The interval the paper puts the statistic in: (lo, hi), open at an infinite end."""
    inf = float("inf")
    if part.holds == "<":
        return -inf, part.bound
    if part.holds == ">":
        return part.bound, inf
    return (paper - part.tolerance, paper + part.tolerance) if finite(paper) else None


def test(xs: list[float], lo: float, hi: float) -> tuple[bool, float | None]:
    """(our mean lies in [lo, hi], the p of that side: inside, the larger one-sided p against each finite
    end; outside, the two-sided p against the end it is beyond). None: fewer than 2 values, or no spread."""
    m = statistics.fmean(xs)
    inside = lo <= m <= hi
    if len(xs) < 2 or no_spread(xs):
        return inside, None
    from scipy import stats   # heavy: only the report's numbers need scipy
    if not inside:
        return False, float(stats.ttest_1samp(xs, lo if m < lo else hi).pvalue)
    ps = [stats.ttest_1samp(xs, end, alternative=side).pvalue
          for end, side in ((lo, "greater"), (hi, "less")) if finite(end)]
    return True, float(max(ps))


def judge(claims: Claims, seeds: dict, paper: dict) -> list[dict]:
    """One entry per part: claim, part, paper, ours (mean, ci95, n), p, p_holm, direction, verdict."""
    out = []
    for claim in claims.claims:
        for part in claim.parts:
            metric_seeds = seeds[part.metric]
            xs = {s: statistic(part, v) for s, v in sorted(metric_seeds.items(), key=lambda kv: str(kv[0]))}
            good = [x for x in xs.values() if not isinstance(x, NA)]
            entry = {"claim": claim, "part": part, "paper": statistic(part, paper[part.metric]), "n": len(good)}
            side = bounds(part, entry["paper"])
            if not good:
                entry["verdict"] = next(iter(xs.values()), NA("no finished eval of any row yet"))
            elif side is None:
                entry["verdict"] = NA("the paper's value is unknown, so there is no band around it")
            else:
                entry["mean"], entry["ci95"] = mean_ci(good)
                entry["inside"], entry["p"] = test(good, *side)
                if entry["p"] is None:
                    entry["verdict"] = NA(ONE_SEED_TEST if len(good) < 2 else SAME_STAT)
            out.append(entry)
    tested = [e for e in out if e.get("p") is not None]
    for e, p in zip(tested, holm([e["p"] for e in tested])):
        e["p_holm"] = p
        e["verdict"] = ("holds" if e["inside"] else "fails") if p < ALPHA else "within noise"
    return out


def claim_verdict(parts: list[dict]):
    verdicts = [e["verdict"] for e in parts]
    if "fails" in verdicts:
        return "fails"
    na = next((v for v in verdicts if isinstance(v, NA)), None)
    if na is not None:
        return na
    return "holds" if all(v == "holds" for v in verdicts) else "within noise"


# ---------------------------------------------------------------- the files

def fmt_num(v) -> str:
    return v if isinstance(v, NA) else f"{v:+.4g}" if finite(v) else ""


def direction(e: dict) -> str:
    if "inside" not in e:
        return ""
    return "paper's way" if e["inside"] else "against"


def scorecard_cells(entries: list[dict]) -> tuple[list[str], list[list]]:
    header = ["claim", "part", "paper", "ours", "95% interval", "seeds", "p", "Holm p", "direction", "verdict",
              "claim verdict"]
    cells = []
    for e in entries:
        ci = e.get("ci95")
        ours = fmt_num(e["mean"]) if "mean" in e else e["verdict"]   # no value: the verdict's reason
        cells.append([e["claim"].name, e["part"].text, fmt_num(e["paper"]), ours,
                      f"+-{ci:.3g}" if ci is not None else "", e["n"], fmt_p(e.get("p")), fmt_p(e.get("p_holm")),
                      direction(e), e["verdict"],
                      claim_verdict([x for x in entries if x["claim"] is e["claim"]])])
    return header, cells


def summary(entries: list[dict]) -> str:
    claims = list({id(e["claim"]): e["claim"] for e in entries}.values())
    verdicts = [claim_verdict([e for e in entries if e["claim"] is c]) for c in claims]
    ways = [e for e in entries if "inside" in e]
    count = {v: sum(1 for x in verdicts if x == v) for v in ("holds", "fails", "within noise")}
    sided = [c.name for c in claims if all(e.get("inside") for e in entries if e["claim"] is c)]
    return (f"Claims: {count['holds']} of {len(claims)} hold, {count['fails']} fail, {count['within noise']} within "
            f"noise, {len(claims) - sum(count.values())} n/a. Parts on the paper's side: "
            f"{sum(1 for e in ways if e['inside'])} of {len(ways)} with a value; claims with every part on the "
            f"paper's side: {', '.join(sided) or 'none'}.")


def spearman_line(seeds: dict, paper: dict) -> str:
    """Spearman of our row means (over seeds) against the paper's values, rows both have: a second figure."""
    names = sorted({n for v in seeds.values() for n in v} & set(paper) - {"M0"})
    means = [statistics.fmean([v[n] for v in seeds.values() if n in v]) for n in names]
    rho = spearman(means, [paper[n] for n in names]) if len(names) >= 3 else None
    if rho is None:
        return "Spearman of the row means against the paper's values: n/a (fewer than 3 rows, or no spread)."
    return (f"Spearman of the row means against the paper's values, {len(names)} rows: "
            f"{rho.statistic:+.2f} (p {rho.pvalue:.2g}); a second figure, the claims above are the measure.")


def absent_line(entries: list[dict], cells: list[list]) -> list[str]:
    """The claims that need a row no seed of the grid has: one line for the markdown, their table rows
    marked ABSENT (the csv keeps them)."""
    names = []
    for e, c in zip(entries, cells):
        if not e["n"] and isinstance(e["verdict"], NA) and e["verdict"].reason.startswith("no value of row"):
            c[-1] = ABSENT if all(not x["n"] for x in entries if x["claim"] is e["claim"]) else c[-1]
            names += [e["claim"].name] if c[-1] is ABSENT and e["claim"].name not in names else []
    return ["", f"Not judged, the grid lacks a row they need: {', '.join(names)}."] if names else []


def write_scorecard(view: SweepView, claims: Claims, metric: str | None = None) -> list[Path]:
    """<name>_scorecard.csv and .md: every claim of `claims` judged on the sweep's rows (the report's
    metric, view.metric.name, unless `metric`)."""
    name, task, table_metric = view.name, view.task, metric or view.metric.name
    used = {p.metric for c in claims.claims for p in c.parts}
    seeds = {m: per_seed(view, claims, m or table_metric) for m in used}
    paper = {m: paper_rows(task, claims, m or paper_values(task).get("metric") or table_metric) for m in used}
    entries = judge(claims, seeds, paper)
    header, cells = scorecard_cells(entries)
    notes = Footnotes()
    md = [f"# {name}: the paper's claims", "",
          f"Metric: {table_metric}. Each part's statistic is taken per seed (rows paired with M1 and M0 of the same "
          f"seed), tested over seeds against its bound (one-sample t; `near`: two one-sided tests), Holm over the "
          f"table's {sum(1 for e in entries if 'p' in e and e['p'] is not None)} tested parts; holds / fails: "
          f"Holm p < {ALPHA} on the paper's side / the other; within noise otherwise.", "",
          summary(entries), "", spearman_line(seeds[None] if None in seeds else next(iter(seeds.values())),
                                               paper[None] if None in paper else next(iter(paper.values()))),
          *absent_line(entries, cells), "", *md_table(header, [c for c in cells if c[-1] is not ABSENT], notes),
          *notes.lines()]
    return [write_csv(view.out / f"{name}_scorecard.csv", header, cells),
            write_text(view.out / f"{name}_scorecard.md", md)]
