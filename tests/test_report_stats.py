"""Statistics in the one-generation report, checked on a hand-written manifest against scipy.

Rows pool their seeds (mean, 95% Student-t interval); each row is compared with M1 by Welch's
two-sided t-test across seeds and marked '*' when p < 0.05; the summary line puts the paper's own
headline figure (collapse/paper_values.yaml) beside ours.
"""
import csv
import math

import numpy as np
import pytest
from scipy import stats

from collapse import manifest, report

SEEDS = [0, 1, 2, 3, 4]
ROWS = {   # (lam, beta, gamma) -> per-seed L_M(Test): M1, a clear gain, a wash, a lone seed, a loss
    (0.0, 0.0, 0.0): [110.0, 111.5, 109.0, 112.0, 110.5],
    (1.0, 0.0, 0.0): [100.0, 101.0, 99.5, 100.5, 101.5],
    (0.0, 1.0, 0.0): [110.5, 109.5, 112.5, 110.0, 111.0],
    (0.0, 0.0, 1.0): [104.0],
    (1.0, 1.0, 1.0): [113.0, 114.5, 112.0, 115.0, 113.5],
}
TEACHER = [95.0, 96.0, 94.5, 95.5, 96.5]


def write_manifest(root) -> None:
    points = []
    for (lam, beta, gamma), values in ROWS.items():
        for seed, value in zip(SEEDS, values):
            tag = f"{int(lam)}{int(beta)}{int(gamma)}{seed}"
            ev, st, te = f"eval{tag:0>12}", f"stud{tag:0>12}", f"teval{seed:0>11}"
            manifest.write(root, {"kind": "eval", "key": ev, "name": f"eval:{tag}", "status": "done",
                                  "metrics": {"test_loss": value}, "artifacts": {}})
            manifest.write(root, {"kind": "student", "key": st, "name": f"student:{tag}", "status": "done"})
            manifest.write(root, {"kind": "eval", "key": te, "name": f"eval:teacher{seed}", "status": "done",
                                  "metrics": {"test_loss": TEACHER[seed]}, "artifacts": {}})
            points.append({"label": {"distill.lam": lam, "distill.beta": beta, "distill.gamma": gamma,
                                     "train.seed": seed},
                           "student": st, "eval": ev, "teacher": f"teach{seed:0>11}", "teacher_eval": te})
    for seed in SEEDS:
        manifest.write(root, {"kind": "teacher", "key": f"teach{seed:0>11}", "name": "t", "status": "done"})
    manifest.write(root, {"kind": "sweep", "key": "sweep-000000000stats", "name": "stats", "status": "done",
                          "ended": 1.0, "config": {"grid": "stats", "task": "vae", "points": points}})


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_manifest(root)
    report.write_reports(root)
    with open(root / "report" / "stats.csv") as f:
        rows = list(csv.DictReader(f))
    return rows, (root / "report" / "stats.md").read_text()


def row_of(rows, lam, beta, gamma):
    return next(r for r in rows if r["model"] != "M0 (teacher)" and
                (float(r["lambda"]), float(r["beta"]), float(r["gamma"])) == (lam, beta, gamma))


def test_welch_marks_match_scipy(table):
    rows, _ = table
    m1 = ROWS[(0.0, 0.0, 0.0)]
    marked = {}
    for coeffs, values in ROWS.items():
        r = row_of(rows, *coeffs)
        assert int(r["seeds"]) == len(values)
        assert float(r["L_M(Test)"]) == pytest.approx(np.mean(values), abs=5e-4)
        if len(values) >= 2:
            half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
            assert float(r["ci95"]) == pytest.approx(half, abs=5e-4)
        if coeffs == (0.0, 0.0, 0.0):
            assert r["model"] == "M1" and r["p_welch_vs_M1"] == "" and r["sig_vs_M1"] == ""
            continue
        if len(values) < 2:   # a lone seed is not tested
            assert r["p_welch_vs_M1"] == "" and r["sig_vs_M1"] == ""
            continue
        p = stats.ttest_ind(values, m1, equal_var=False).pvalue
        assert float(r["p_welch_vs_M1"]) == pytest.approx(p, rel=5e-3)
        assert r["sig_vs_M1"] == ("*" if p < 0.05 else "")
        marked[coeffs] = r["sig_vs_M1"]
    # the table is not trivially all-marked or all-unmarked
    assert marked == {(1.0, 0.0, 0.0): "*", (0.0, 1.0, 0.0): "", (1.0, 1.0, 1.0): "*"}


def test_report_states_the_test_and_puts_the_paper_beside_us(table):
    rows, md = table
    assert "Welch's two-sided t-test" in md and "alpha = 0.05" in md and "equal_var=False" in md
    m1 = np.mean(ROWS[(0.0, 0.0, 0.0)])
    best = ROWS[(1.0, 0.0, 0.0)]
    ours = 100 * (m1 - np.mean(best)) / m1
    p = stats.ttest_ind(best, ROWS[(0.0, 0.0, 0.0)], equal_var=False).pvalue
    line = next(l for l in md.splitlines() if l.startswith("Best distilled student"))
    assert "(lambda=1, beta=0, gamma=0)" in line and f"{ours:.1f}% better L_M(Test) than M1" in line
    assert f"Welch p = {p:.3g}, significant at alpha = 0.05" in line
    assert f"the paper reports 9.6% (ours - paper = {ours - 9.6:+.1f} points)" in line


def test_paper_values_hold_only_the_known_headlines():
    assert report.paper_values("vae") == {"metric": "test_loss", "best_distilled_vs_M1_improvement_pct": 9.6}
    assert report.paper_values("ddpm")["best_distilled_vs_M1_improvement_pct"] == 68.8
    assert report.paper_values("gaussian") == {}


def test_one_seed_grids_show_no_marks(tmp_path):
    root = tmp_path / "r"
    global ROWS
    saved = ROWS
    try:
        ROWS = {k: v[:1] for k, v in saved.items()}
        write_manifest(root)
    finally:
        ROWS = saved
    report.write_reports(root)
    with open(root / "report" / "stats.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(r["p_welch_vs_M1"] == "" and r["sig_vs_M1"] == "" for r in rows)
