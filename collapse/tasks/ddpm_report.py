"""The DDPM's part of the report (paper section 4.2): Table 2 and Figure 5, beside the generic table
(collapse/report/), and what the generic report asks of the task: its primary metric, its coefficient
columns and the data set named in the headings.

Table 2: one row per model (M0, then M1 and the students by lam; encoder_mse 0.5 is the paper's
"0.5 + MSE" row) with our L_M(Test), FID and KID (means over seeds) and the paper's L_M(Test) and
FID beside them, the gap closed (FID(M1) - FID(row)) / (FID(M1) - FID(M0)) in % (ours and the
paper's), and the sample counts behind FID/KID. Figure 4 (L_M(Test) against step) is the generic
report's curves plot; Figure 5 puts the sample grids of M0, M1 and the best student (lowest FID) side by side.
"""
import statistics
from pathlib import Path

from collapse.report import stats
from collapse.report.metric import Primary
from collapse.report.na import NA, NO_EVAL, NO_M0, NOT_FINITE, Footnotes, finite
from collapse.report.paper import paper_values
from collapse.report.plots import pyplot, read_image, save_figure
from collapse.report.scorecard import Claim, Claims, Part, pct, write_scorecard
from collapse.report.tables import md_table, optional, write_csv, write_text
from collapse.report.view import Row, SweepView

PRIMARY = Primary("fid", "FID", "lower")   # the metric of the generic table, its label, which way is better

# dataset -> what the report's heading calls it
DATASETS = {"mnist": "MNIST 32x32, the offline stand-in for CelebA 64x64",
            "celeba": "CelebA 64x64 (aligned, centre-cropped)"}
METRICS = (("test_loss", "L_M(Test)"), ("fid", "FID"), ("kid", "KID"))

# Table 2's claims (collapse/report/scorecard.py), on FID (the table's metric) one seed's rows at a time.
DISTILLED = {"l1": 1.0, "l075": 0.75, "l05": 0.5, "l025": 0.25}
GAP_TOLERANCE = 25.0   # percentage points around the paper's 68.8%


def distilled(v) -> list[float]:
    """The lam rows a seed has (not "+ MSE"); at least lam 0.5."""
    v["l05"]   # noqa: B018 -- a KeyError names the row missing
    return [v[k] for k in DISTILLED if k in v]


CLAIMS = Claims(
    rows={"M1": {"lam": 0.0, "encoder_mse": 0.0}, "l05mse": {"lam": 0.5, "encoder_mse": 0.5},
          **{k: {"lam": lam, "encoder_mse": 0.0} for k, lam in DISTILLED.items()}},
    claims=(
        Claim("T2.1", "every distilled row's FID is below M1's",
              (Part("the worst distilled row's FID vs M1, % of M1", lambda v: pct(max(distilled(v)), v["M1"]), "<"),)),
        Claim("T2.2", "lambda = 0.5 has the best FID",
              (Part("lambda 0.5 vs the best other lambda row, %",
                    lambda v: pct(v["l05"], min(x for k, x in v.items() if k in DISTILLED and k != "l05")), "<"),)),
        Claim("T2.3", f"lambda = 0.5 closes the paper's share of the M1-M0 FID gap (68.8%), +- {GAP_TOLERANCE:g} points",
              (Part("gap closed at lambda 0.5, %", lambda v: 100 * (v["M1"] - v["l05"]) / (v["M1"] - v["M0"]), "near",
                    tolerance=GAP_TOLERANCE),)),
        Claim("T2.4", '"+ MSE" is no better than lambda = 0.5',
              (Part("lambda 0.5 + MSE vs lambda 0.5, %", lambda v: pct(v["l05mse"], v["l05"]), ">"),)),
    ))


def table_notes(view: SweepView) -> tuple[str, str | None]:
    """For the generic table: its heading's ending (the data set), and no line on units."""
    return data_note(view.sweep, view.by_key), None


def data_note(sweep: dict, by_key: dict) -> str:
    """' on <dataset>' for the grid's headings ('' when no record says)."""
    for p in sweep["config"]["points"]:
        config = (by_key.get(p.get("teacher")) or {}).get("config") or {}
        dataset = (config.get("data") or {}).get("dataset")
        if dataset:
            return f" on {DATASETS.get(dataset, dataset)}"
    return ""


def row_name(row: Row) -> str:
    lam, mse = row.label.get("distill.lam", 0.0), row.label.get("distill.encoder_mse", 0.0)
    if not lam and not mse:
        return "M1"
    return f"{lam:g}" + (f" + MSE ({mse:g})" if mse else "")


def means(evals: list[dict]) -> dict:
    """Mean of each metric over the eval records (seeds) that have it as a finite number."""
    out = {}
    for metric, _ in METRICS:
        values = [e["metrics"][metric] for e in evals if finite((e.get("metrics") or {}).get(metric))]
        if values:
            out[metric] = statistics.fmean(values)
    return out


def gap_closed(fid_row: float | None, fid_m1: float | None, fid_m0: float | None) -> float | None:
    """None when M1 is not worse than M0: then there is no gap to close."""
    if None in (fid_row, fid_m1, fid_m0) or fid_m1 <= fid_m0:
        return None
    return 100.0 * (fid_m1 - fid_row) / (fid_m1 - fid_m0)


def collapse_test(m1_evals: list[dict], m0_evals: list[dict]) -> tuple[stats.Comparison | None, str]:
    """FID(M1) - FID(M0) (stats.compare: paired over seeds, or one eval's bootstrap interval against the
    other's) and its verdict: 'up' (collapse beyond noise), 'down', 'noise', 'unknown' or 'missing'."""
    m1, m0 = stats.runs(m1_evals, "fid"), stats.runs(m0_evals, "fid")
    if not m1.values or not m0.values:
        return None, "missing"
    c = stats.compare(m1, m0)
    return c, stats.judged(c)


NO_GAP = {   # the verdict on M1 against M0 -> why no row's gap closed is shown
    "down": "M1's FID is below M0's beyond noise: there is no gap to close",
    "noise": "M1's FID against M0's is within noise (the sentence above the table names the interval): "
             "there is no gap to close beyond noise",
    "unknown": "M1 against M0 has neither a test over seeds nor an interval (one seed, evals without FID's "
               "bootstrap): no gap is established",
    "missing": "M0 or M1 has no finished eval with a finite FID yet"}


def verdict_line(c: stats.Comparison | None, verdict: str, fid_m1: float | None, fid_m0: float | None) -> str:
    """Whether collapse shows: said only as far as M1 - M0's test (or interval) carries."""
    if verdict == "missing":
        return "M0 or M1 has no finite FID yet: no gap closed."
    said = f"M1's FID {fid_m1:.2f} is {c.diff:+.2f} against M0's {fid_m0:.2f}"
    if verdict == "up":
        return f"Collapse is visible: {said} ({stats.evidence(c)})."
    if verdict == "down":
        return f"No collapse to mitigate: {said} ({stats.evidence(c)}), so the gap closed is not meaningful."
    if verdict == "noise":
        return f"M1 against M0 is within noise: {said} ({stats.evidence(c)}), so the gap closed is not meaningful."
    return f"Not judged: {said}, with {c.untested}; the gap closed is not meaningful."


def table2(view: SweepView) -> tuple[list[str], list[list], dict]:
    """(header, cells, what the text needs): Table 2 with the paper's values beside ours. A row's gap
    closed is taken against M0 and M1 of that row's seeds."""
    paper = paper_values("ddpm")
    paper_rows = paper.get("table") or []
    paper_m0, paper_m1 = paper.get("m0") or {}, next((e for e in paper_rows if not e["lam"] and not e["encoder_mse"]), {})

    def paper_row(r):
        return next((e for e in paper_rows if abs(e["lam"] - r.label.get("distill.lam", 0.0)) < 1e-9
                     and abs(e["encoder_mse"] - r.label.get("distill.encoder_mse", 0.0)) < 1e-9), {})

    m0_evals = view.m0.evals
    m0 = means(m0_evals)
    students = [(r, means(r.evals), paper_row(r)) for r in view.rows]
    m1 = next((ours for r, ours, _ in students if row_name(r) == "M1"), {})
    m1_evals = next((r.evals for r in view.rows if row_name(r) == "M1"), [])
    check, verdict = collapse_test(m1_evals, m0_evals)

    def gap(r, ours, missing):
        if verdict != "up":
            return NA(NO_GAP[verdict])
        if "fid" not in ours:
            return missing
        same_m1, same_m0 = means(stats.on_seeds(m1_evals, r.evals)), means(stats.on_seeds(m0_evals, r.evals))
        closed = gap_closed(ours.get("fid"), same_m1.get("fid"), same_m0.get("fid"))
        return NA(SEEDS_NO_GAP) if closed is None else _f(closed, 1)

    header = ["model", "lam", "L_M(Test)", "paper L_M(Test)", "FID", "paper FID", "KID", "gap closed %",
              "paper gap closed %", "FID/KID images (ours vs real)", "FID 95% interval", "KID std over subsets",
              "seeds", "status"]
    cells = [model_cells("M0 (teacher)", "", m0_evals, m0, paper_m0, NA(NO_M0), "100 (reference)",
                         "100 (reference)") + [len(m0_evals), "reference"]]
    for r, ours, theirs in students:
        name, missing = row_name(r), NA(NOT_FINITE if r.not_finite else NO_EVAL)
        is_m1 = name == "M1"
        paper_gap = _f(gap_closed(theirs.get("fid"), paper_m1.get("fid"), paper_m0.get("fid")), 1)
        cells.append(model_cells("M1" if is_m1 else "student", "M1 (0)" if is_m1 else name, r.evals, ours, theirs,
                                 missing, "0 (reference)" if is_m1 else gap(r, ours, missing),
                                 "0 (reference)" if is_m1 else paper_gap) + [r.seeds, r.status])
    return header, cells, {"m0": m0, "m1": m1, "students": students, "m0_evals": m0_evals,
                           "collapse": (check, verdict)}


SEEDS_NO_GAP = "M1's FID is not above M0's on this row's seeds: no gap to close"
NO_FID_INTERVAL = ("one seed, and its eval carries no FID interval (it predates eval.fid_bootstrap, "
                   "or that is 0)")
NO_KID_SPREAD = ("every KID subset holds every sample (1,000 images or fewer a side), so the subsets "
                 "do not vary")


def model_cells(model: str, lam: str, evals: list[dict], ours: dict, theirs: dict, missing: NA, gap, paper_gap) -> list:
    """A model's cells of Table 2 up to its seeds: ours beside the paper's, the gap closed, FID's interval
    and KID's spread; `missing`: what a number it lacks reads."""
    def value(metric, text):
        return text(ours[metric]) if metric in ours else missing
    counts = ", ".join(sorted({f"{e['metrics'].get('fid_samples')} vs {e['metrics'].get('fid_real')}"
                               for e in evals if e.get("metrics")}))
    return [model, lam, value("test_loss", _g), _g(theirs.get("test_loss")), value("fid", lambda v: _f(v, 2)),
            _f(theirs.get("fid"), 2), value("kid", lambda v: _f(v, 4)), gap, paper_gap, counts,
            fid_interval(evals, missing), kid_spread(evals, missing)]


def fid_interval(evals: list[dict], missing: NA):
    """A 95% t-interval over seeds, or with one seed its eval's own (centred on FID, from the bootstrap)."""
    fids = [e["metrics"]["fid"] for e in evals if finite(e["metrics"].get("fid"))]
    if len(fids) >= 2:
        mean, half = stats.mean_ci(fids)
        return f"[{mean - half:.2f}, {mean + half:.2f}] over {len(fids)} seeds"
    ci = evals[0]["metrics"].get("fid_ci") if fids else None
    if not fids:
        return missing
    return f"[{ci[0]:.2f}, {ci[1]:.2f}] over samples" if ci else NA(NO_FID_INTERVAL)


def kid_spread(evals: list[dict], missing: NA):
    """The standard deviation of KID over clean-fid's subsets (mean over seeds)."""
    spreads = [e["metrics"]["kid_std"] for e in evals if finite(e["metrics"].get("kid_std"))]
    if not evals:
        return missing
    if not spreads:
        return NA("the evals predate KID's spread over subsets")
    return _f(statistics.fmean(spreads), 4) if any(spreads) else NA(NO_KID_SPREAD)


def _f(v, digits):
    return "" if v is None else f"{v:.{digits}f}"   # "": the paper has no such value


def _g(v):
    """4 significant digits: the paper's L_M(Test) is ~9e-4, ours on the stand-in ~0.03."""
    return "" if v is None else f"{v:.4g}"


def synth_line(sweep: dict, by_key: dict) -> str | None:
    """How D_M0 was drawn: size, sampler and steps, from a student's synth dependency."""
    for p in sweep["config"]["points"]:
        synth = by_key.get(((by_key.get(p.get("student")) or {}).get("deps") or {}).get("synth"))
        if synth and synth.get("status") == "done":
            s = synth["config"]["synth"]
            steps = s.get("steps") or (synth["config"]["diffusion"]["timesteps"] if s["sampler"] == "ddpm" else 50)
            return (f"D_M0: {synth['metrics']['n']} images sampled from M0's best weights by {s['sampler']} "
                    f"with {steps} steps.")
    return None


def write_report(view: SweepView) -> list[Path]:
    """Table 2 (<name>_table2.{csv,md}), Figure 5 (<name>_figure5.png) and the claims (<name>_scorecard.*)."""
    name, sweep, by_key, out = view.name, view.sweep, view.by_key, view.out
    header, cells, parts = table2(view)
    verdict = verdict_line(*parts["collapse"], parts["m1"].get("fid"), parts["m0"].get("fid"))
    notes = Footnotes()
    md = [f"# {name}: Table 2{data_note(sweep, by_key)}", "",
          "L_M(Test): mean SmoothL1 of the predicted noise on the real hold-out (fixed t and noise). FID and KID: "
          "Inception-v3 pool features (clean-fid's resizing) of the model's samples against as many real hold-out "
          "images; KID is unbiased at small counts, FID is not (it falls as the count grows), so compare FIDs only at "
          "equal counts, and with the paper's (5,000 images of CelebA) only in direction. gap closed % = "
          "(FID(M1) - FID(row)) / (FID(M1) - FID(M0)); the paper's is computed the same way from its Table 2 "
          "(68.8% at lam = 0.5), with FID(M1) and FID(M0) of the row's own seeds where they have them. Values are "
          "means over seeds (column seeds); rows with different seeds differ by the seeds' spread too.", "",
          "FID 95% interval: a t-interval over seeds; with one seed, FID +- 1.96 standard errors of a bootstrap "
          "over the generated samples (eval.fid_bootstrap redraws against the fixed real statistics; a redraw "
          "repeats samples, so its spread overstates FID's and the interval is wide). KID std over subsets: "
          "the spread of KID over clean-fid's 100 random subsets of up to 1,000 images. M1 against M0: a paired "
          "t-test over the seeds both have (Welch's where they share fewer than 2 but each has 2 or more), else "
          "with one seed the two bootstrap intervals combined; collapse "
          "is called visible only where that test (p < 0.05) or interval (excluding 0) sets FID(M1) above "
          "FID(M0), and the gap closed is shown only then.", "",
          verdict,
          *optional(synth_line(sweep, by_key)), "", *md_table(header, cells, notes), *notes.lines(), "",
          f"Figure 4 (L_M(Test) against step): {name}_curves.png. Figure 5 (samples of M0, M1 and the best "
          f"student): {name}_figure5.png."]
    written = [write_csv(out / f"{name}_table2.csv", header, cells),
               write_text(out / f"{name}_table2.md", md)]
    figure = plot_figure5(view, parts)
    written += write_scorecard(view, CLAIMS)
    return written + ([figure] if figure else [])


def plot_figure5(view: SweepView, parts: dict) -> Path | None:
    """Figure 5: the sample grids of M0, M1 and the student with the lowest FID, side by side."""
    distilled = [(r, ours) for r, ours, _ in parts["students"] if row_name(r) != "M1" and "fid" in ours and r.evals]
    m1 = next((r for r, _, _ in parts["students"] if row_name(r) == "M1" and r.evals), None)
    m0 = parts["m0_evals"]
    if not m0 or m1 is None or not distilled:
        return None
    best, best_metrics = min(distilled, key=lambda rm: rm[1]["fid"])
    panels = [("M0 (teacher)", m0[0], parts["m0"]), ("M1 (plain student)", m1.evals[0], parts["m1"]),
              (f"best student: lam {row_name(best)}", best.evals[0], best_metrics)]
    paths = [view.root / ((e.get("artifacts") or {}).get("samples") or {}).get("path", "") for _, e, _ in panels]
    if not all(p.is_file() for p in paths):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.5))
    for ax, (title, _, metrics), path in zip(axes, panels, paths):
        ax.imshow(read_image(path), cmap="gray")
        ax.set_title(f"{title}\nFID {metrics.get('fid', float('nan')):.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{view.name}: samples{data_note(view.sweep, view.by_key)}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))   # leave the suptitle its own band above the panel titles
    return save_figure(fig, view.out / f"{view.name}_figure5.png")
