"""The T5's part of the report (paper section 5), beside the generic table (collapse/report/), and what
the generic report asks of the task (its primary metric and coefficient columns):

- <grid>_table3.{md,csv}: Table 3, lam with ROUGE-1/2/L (%) and mean perplexity, M0 first, the paper's
  values in columns beside ours, empty generations counted; then each row against M1 article by article
  (the same held-out articles, the same seeds), a paired t-test with Holm's correction;
- <grid>_rouge_curves.png: ROUGE-1/2/L of a few validation articles against training step (Figures 6-7);
- <grid>_perplexity.png: each model's per-summary perplexities as histograms (Figure 8);
- <grid>_examples.md: M0's, M1's and the best student's summaries of the same articles (Tables 4-5).
"""
import json
import math
import statistics
from pathlib import Path

from collapse.report import stats
from collapse.report.metric import Primary
from collapse.report.na import NA, NO_EVAL, Footnotes, finite
from collapse.report.paper import paper_values
from collapse.report.plots import pyplot, save_figure
from collapse.report.scorecard import Claim, Claims, Part, write_scorecard
from collapse.report.tables import fmt, md_table, write_csv, write_text
from collapse.report.view import SweepView

PRIMARY = Primary("rouge1", "ROUGE-1 %", "higher")   # the metric of the generic table, its label, which way is better

METRICS = (("rouge1", "ROUGE-1 %"), ("rouge2", "ROUGE-2 %"), ("rougeL", "ROUGE-L %"), ("ppl_mean", "mean perplexity"))
LAM = "distill.lam"
NO_T5_INTERVAL = "one seed, and its eval carries no bootstrap interval over articles for this metric"

# Table 3's claims (collapse/report/scorecard.py), ROUGE-1 in points, one seed's rows at a time. The paper
# calls lam 0.25's perplexity, the highest, its best: a broader distribution of tokens (its section 5).
LAMS = {"M1": 0.0, "l025": 0.25, "l05": 0.5, "l2": 2.0, "l5": 5.0, "l10": 10.0}


def above_m1(row: str, lam: str) -> Part:
    return Part(f"ROUGE-1, lambda {lam} - M1, points", lambda v: v[row] - v["M1"], ">")


def others(v, row: str) -> list[float]:
    v[row]   # noqa: B018 -- a KeyError names the row missing
    return [x for k, x in v.items() if k not in ("M0", "M1", row)]


CLAIMS = Claims(
    rows={k: {"lam": lam} for k, lam in LAMS.items()},
    claims=(
        Claim("T3.1", "lambda 0.5, 2.0 and 5.0 are above M1 on ROUGE-1",
              (above_m1("l05", "0.5"), above_m1("l2", "2"), above_m1("l5", "5"))),
        Claim("T3.2", "lambda 10 is below M1 on ROUGE-1",
              (Part("ROUGE-1, lambda 10 - M1, points", lambda v: v["l10"] - v["M1"], "<"),)),
        Claim("T3.3", "lambda 0.25 has the best (highest) mean perplexity of the distilled rows",
              (Part("mean perplexity, lambda 0.25 - the highest other distilled row",
                    lambda v: v["l025"] - max(others(v, "l025")), ">", metric="ppl_mean"),)),
        Claim("T3.4", "every row, M1 included, is below M0 on ROUGE-1",
              (Part("ROUGE-1, the best row - M0, points", lambda v: max(others(v, "M1") + [v["M1"]]) - v["M0"], "<"),)),
    ))


def table_notes(view: SweepView) -> tuple[str, str | None]:
    """For the generic table: nothing after its heading, no line on units."""
    return "", None


def models(view: SweepView) -> list[dict]:
    """M0 (its evals over the seeds of every row, pooled ones too), then each row: {"name", "lam", "evals", "row"}."""
    out = [{"name": "M0 (teacher)", "lam": None, "evals": view.m0.evals, "row": None}]
    for r in view.rows:
        out.append({"name": "M1" if r is view.m1 else "student", "lam": r.label.get(LAM), "evals": r.evals, "row": r})
    return out


def _value(evals: list[dict], metric: str) -> tuple:
    """Mean over seeds (fmt'd), and its interval: a t-interval over seeds, or the one seed's bootstrap
    interval; n/a, with the reason, where there is none."""
    scored = [e for e in evals if finite(e["metrics"].get(metric))]
    if not scored:
        why = NO_EVAL if not evals else f"no finished eval has a finite {metric} (nan, inf or none recorded)"
        return NA(why), NA(why)
    mean, half = stats.mean_ci([e["metrics"][metric] for e in scored])
    if half is not None:
        return fmt(mean, 2), f"+-{half:.2f}"
    ci = scored[0]["metrics"].get(f"{metric}_ci")
    return fmt(mean, 2), f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else NA(NO_T5_INTERVAL)


def paper_rows() -> dict:
    return {float(e["lam"]): e for e in (paper_values("t5").get("table") or [])}


def write_table3(name: str, entries: list[dict], out: Path) -> list[Path]:
    paper = paper_rows()
    header = ["model", "lambda"]
    for _, label in METRICS:
        header += [label, f"{label} ci", f"paper {label}"]
    header += ["empty generations", "distinct summaries", "seeds"]
    table = []
    for e in entries:
        cells = [e["name"], "" if e["lam"] is None else f"{e['lam']:g}"]
        theirs = paper.get(float(e["lam"])) if e["lam"] is not None else None
        for metric, _ in METRICS:
            mean, ci = _value(e["evals"], metric)
            cells += [mean, ci, "" if theirs is None else f"{theirs[metric]:g}"]
        empty = [ev["metrics"].get("empty_generations", 0) for ev in e["evals"]]
        articles = [ev["metrics"].get("articles", 0) for ev in e["evals"]]
        distinct = [ev["metrics"].get("distinct_summaries") for ev in e["evals"]]
        cells += [f"{sum(empty)} of {sum(articles)}" if e["evals"] else "",
                  f"{sum(distinct)} of {sum(articles)}" if e["evals"] and None not in distinct else "", len(e["evals"])]
        table.append(cells)
    csv_path = write_csv(out / f"{name}_table3.csv", header, table)
    paired = article_lines(entries)
    notes = Footnotes()
    md = [f"# {name}: Table 3 (T5 summarization)", "",
          "ROUGE F1 (rouge-score, Porter stemming) of greedy summaries of the held-out articles against the human "
          "ones, in percent; ci: a 95% t-interval across seeds, or with one seed the bootstrap 95% interval over "
          "articles. Mean perplexity: per token, of each generated summary, under the eval's GPT-2 (a stand-in "
          "trained on the training summaries where no GPT-2 weights are available; see the eval records' ppl_model). "
          "Empty generations score 0 ROUGE and have no perplexity; they are counted here. Distinct summaries: how "
          "many different summaries the model wrote for its articles (a collapsing model writes one for many). "
          "paper: Table 3 of the "
          "paper (CNN/DailyMail, t5-small, one run each; it gives M0's ROUGE only in Figures 6-7). Rows with "
          "different seeds (column seeds) differ by the seeds' spread too: the table below holds each row against "
          "M1 of the same seeds.", "",
          *md_table(header, table, notes), *notes.lines(), *paired]
    return [csv_path, write_text(out / f"{name}_table3.md", md)]


def article_diffs(evals: list[dict], m1_evals: list[dict], column: int) -> list[float]:
    """row - M1 on each held-out article, for every seed both have scored on the same articles."""
    m1 = {stats.seed_of(e): e["metrics"].get("rouge_per_article") for e in m1_evals}
    diffs = []
    for e in evals:
        ours, theirs = e["metrics"].get("rouge_per_article"), m1.get(stats.seed_of(e))
        if ours and theirs and len(ours) == len(theirs):
            diffs += [a[column] - b[column] for a, b in zip(ours, theirs)]
    return diffs


def paired_test(diffs: list[float]) -> tuple[float, float, float, float]:
    """Mean difference, its 95% t-interval and the two-sided p of a paired t-test (differences given)."""
    from scipy.stats import t as student_t   # heavy: only the report's numbers need scipy
    mean = statistics.fmean(diffs)
    sem = statistics.stdev(diffs) / math.sqrt(len(diffs))
    if sem == 0:
        return mean, mean, mean, 1.0 if mean == 0 else 0.0
    half = student_t.ppf(0.975, len(diffs) - 1) * sem
    return mean, mean - half, mean + half, float(2 * student_t.sf(abs(mean / sem), len(diffs) - 1))


def article_lines(entries: list[dict]) -> list[str]:
    """Each model against M1 on the same articles: with one seed, a row's bootstrap interval is wide
    (articles differ far more than models do); the paired differences cancel what the articles share."""
    m1 = next((e for e in entries if e["name"] == "M1"), None)
    if m1 is None:
        return []
    tests = []
    for e in entries:
        if e is m1:
            continue
        cells = []
        for column in (0, 1, 2):   # ROUGE-1, ROUGE-2, ROUGE-L
            diffs = article_diffs(e["evals"], m1["evals"], column)
            cells.append(paired_test(diffs) if len(diffs) > 1 else None)
            pairs = len(diffs)   # the same articles for every column
        if any(cells):
            label = e["name"] if e["lam"] is None else f"{e['name']} (lambda {e['lam']:g})"
            tests.append((label, pairs, cells))
    if not tests:
        return []
    ps = [c[3] for _, _, cells in tests for c in cells if c]
    adjusted = iter(stats.holm(ps))
    table = []
    for label, n, cells in tests:
        row = [label, n]
        for c in cells:
            if c:
                p_holm = next(adjusted)
                row += [f"{c[0]:+.2f} [{c[1]:+.2f}, {c[2]:+.2f}]", f"{p_holm:.2g}{stats.significance_mark(p_holm)}"]
            else:
                row += ["", ""]
        table.append(row)
    header = ["model", "article pairs", "ROUGE-1 vs M1", "p_holm", "ROUGE-2 vs M1", "p_holm", "ROUGE-L vs M1", "p_holm"]
    return ["", "## Against M1, article by article", "",
            "Each model's ROUGE (%) minus M1's on the same held-out article and seed, pooled over the seeds "
            "both have: mean difference [95% t-interval], and a paired t-test (two-sided) over those "
            "article pairs, with Holm's correction over every test in this table ('*': p_holm < 0.05). "
            "The pairs of one seed share that seed's training runs: the test says whether the difference "
            "holds across articles for these runs, not across retraining (that spread is Table 3's ci "
            "when there are several seeds).", "",
            *md_table(header, table)]


def training_record(by_key: dict, eval_record: dict) -> dict | None:
    return by_key.get((eval_record.get("deps") or {}).get("model"))


def plot_rouge_curves(name: str, entries: list[dict], by_key: dict, out: Path) -> Path | None:
    curves = []
    for e in entries:
        for ev in e["evals"][:1]:   # the first seed's run
            history = [h for h in ((training_record(by_key, ev) or {}).get("metrics") or {}).get("history", [])
                       if "rouge1" in h]
            if history:
                label = "M0" if e["lam"] is None else "M1" if e["name"] == "M1" else f"lambda={e['lam']:g}"
                curves.append((label, history))
    if not curves:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (metric, label) in zip(axes, METRICS[:3]):
        for name_, history in curves:
            style = ({"color": "0.45", "ls": "--"} if name_ == "M0" else {"color": "k", "lw": 2} if name_ == "M1"
                     else {"lw": 1})
            ax.plot([h["step"] for h in history], [h[metric] for h in history], marker=".", label=name_, **style)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{name}: ROUGE of validation summaries during training (Figures 6-7)")
    fig.tight_layout()
    return save_figure(fig, out / f"{name}_rouge_curves.png")


def plot_perplexity(name: str, entries: list[dict], out: Path) -> Path | None:
    panels = []
    for e in entries:
        values = [v for ev in e["evals"][:1] for v in ev["metrics"].get("perplexities") or [] if v is not None]
        if values:
            label = "M0" if e["lam"] is None else "M1" if e["name"] == "M1" else f"lambda={e['lam']:g}"
            empty = e["evals"][0]["metrics"].get("empty_generations", 0)
            panels.append((f"{label} (median {statistics.median(values):.1f}, empty {empty})", values))
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 1.6 * len(panels)), sharex=True, squeeze=False)
    upper = max(max(v) for _, v in panels)
    for ax, (label, values) in zip(axes[:, 0], panels):
        ax.hist(values, bins=40, range=(0, upper))
        ax.set_title(label, fontsize=8)
    axes[-1, 0].set_xlabel("perplexity per token of a generated summary")
    fig.tight_layout()
    return save_figure(fig, out / f"{name}_perplexity.png")


def write_examples(name: str, entries: list[dict], root: Path, out: Path) -> Path | None:
    """M0, M1 and the best student (highest mean ROUGE-1) on the same articles."""
    students = [e for e in entries if e["name"] == "student" and e["row"] and e["row"].mean is not None]
    chosen = [e for e in entries if e["lam"] is None or e["name"] == "M1"]
    if students:
        chosen.append(max(students, key=lambda e: e["row"].mean))
    shown = []
    for e in chosen:
        path = ((e["evals"][0].get("artifacts") or {}).get("examples") or {}).get("path") if e["evals"] else None
        if path and (root / path).is_file():
            label = "M0" if e["lam"] is None else "M1" if e["name"] == "M1" else f"best student (lambda={e['lam']:g})"
            shown.append((label, json.loads((root / path).read_text())))
    if not shown:
        return None
    md = [f"# {name}: the same articles summarised by M0, M1 and the best student (Tables 4-5)", ""]
    for i, item in enumerate(shown[0][1]):
        md += [f"## Article {i}", "", "> " + item["article"][:800].replace("\n", " ") + " ...", "",
               f"- **human:** {item['reference']}"]
        md += [f"- **{label}:** {items[i]['summary'] or '(empty)'}" for label, items in shown if i < len(items)]
        md.append("")
    return write_text(out / f"{name}_examples.md", md)


def write_report(view: SweepView) -> list[Path]:
    """Table 3, the ROUGE curves, the perplexity histograms, the examples and the claims (<name>_scorecard.*)."""
    name, out, entries = view.name, view.out, models(view)
    written = write_table3(name, entries, out)
    written += [p for p in (plot_rouge_curves(name, entries, view.by_key, out), plot_perplexity(name, entries, out),
                            write_examples(name, entries, view.root, out)) if p]
    return written + write_scorecard(view, CLAIMS)
