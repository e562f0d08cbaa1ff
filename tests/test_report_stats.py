"""Statistics in the one-generation report, checked on hand-written manifests against scipy.

Rows pool their seeds (mean, 95% Student-t interval). Each row is compared with M1: paired by seed
(scipy.stats.ttest_rel) when they share 2 or more seeds, since a seed's students share its teacher
and synthetic set; by Welch's test (unequal variances) when they do not; a lone seed is not tested.
p-values are Holm-adjusted over the rows tested and marked '*' below 0.05. Seeds that another sweep
ran with the very same configuration are pooled into a row; the unit follows train.reduction.
"""
import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from collapse import manifest, plan
from collapse.config import REPO, load_yaml, to_dict
from collapse.experiment import from_dict
from collapse.report import paper, stats as report_stats
from collapse.reporting import write_reports
from collapse.tasks import vae_report
from helpers import M1_COEFFS, TEACHER, read_report, row_of, write_sweep  # noqa: F401

M1 = M1_COEFFS
ROWS = {   # (lam, beta, gamma) -> {seed: L_M(Test)}: M1, a clear gain, a wash, a lone seed, a loss, unpaired
    M1: {0: 110.0, 1: 111.5, 2: 109.0, 3: 112.0, 4: 110.5},
    (1.0, 0.0, 0.0): {0: 100.0, 1: 101.0, 2: 99.5, 3: 100.5, 4: 101.5},
    (0.0, 1.0, 0.0): {0: 110.5, 1: 109.5, 2: 112.5, 3: 110.0, 4: 111.0},
    (0.0, 0.0, 1.0): {0: 104.0},
    (1.0, 1.0, 1.0): {0: 113.0, 1: 114.0, 2: 112.5, 3: 115.0, 4: 113.2},
    (2.0, 0.0, 0.0): {5: 106.0, 6: 108.5, 7: 105.0},    # seeds M1 does not have: Welch
}
@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_sweep(root, "stats", ROWS)
    return read_report(root, "stats")


def test_rows_pool_their_seeds(table):
    rows, _ = table
    for coeffs, by_seed in ROWS.items():
        r, values = row_of(rows, coeffs), list(by_seed.values())
        assert int(r["seeds"]) == len(values)
        assert float(r["L_M(Test)"]) == pytest.approx(np.mean(values), abs=5e-4)
        if len(values) >= 2:
            half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
            assert float(r["ci95"]) == pytest.approx(half, abs=5e-4)
    m1 = row_of(rows, M1)
    assert m1["model"] == "M1" and m1["p_vs_M1"] == m1["test_vs_M1"] == m1["sig_vs_M1"] == ""
    assert rows[0]["model"] == "M0 (teacher)" and rows[0]["seeds"] == "8"


def test_rows_sharing_seeds_with_m1_take_the_paired_test(table):
    rows, _ = table
    m1 = ROWS[M1]
    for coeffs in [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (1.0, 1.0, 1.0)]:
        r = row_of(rows, coeffs)
        seeds = sorted(ROWS[coeffs])
        a, b = np.array([ROWS[coeffs][s] for s in seeds]), np.array([m1[s] for s in seeds])
        d = a - b
        # independently: t = mean(d) / (sd(d) / sqrt(n)), two-sided, n - 1 degrees of freedom
        se = d.std(ddof=1) / math.sqrt(len(d))
        p_hand = 2 * stats.t.sf(abs(d.mean() / se), len(d) - 1)
        assert r["test_vs_M1"] == f"paired t (n={len(d)})"
        assert float(r["p_vs_M1"]) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=5e-3)
        assert float(r["p_vs_M1"]) == pytest.approx(p_hand, rel=5e-3)
        assert float(r["diff_vs_M1"]) == pytest.approx(d.mean(), abs=5e-4)
        assert float(r["diff_ci95"]) == pytest.approx(stats.t.ppf(0.975, len(d) - 1) * se, abs=5e-4)
        assert float(r["change_vs_M1_%"]) == pytest.approx(100 * d.mean() / b.mean(), abs=5e-3)
        m0 = np.mean([TEACHER[s] for s in seeds])
        assert float(r["gap_closed_%"]) == pytest.approx(100 * -d.mean() / (b.mean() - m0), abs=0.05)


def test_rows_sharing_no_seed_with_m1_take_welch(table):
    rows, md = table
    r, values, m1 = row_of(rows, (2.0, 0.0, 0.0)), list(ROWS[(2.0, 0.0, 0.0)].values()), list(ROWS[M1].values())
    result = stats.ttest_ind(values, m1, equal_var=False)
    low, high = result.confidence_interval(0.95)
    assert r["test_vs_M1"] == "Welch (3 vs 5)"
    assert float(r["p_vs_M1"]) == pytest.approx(result.pvalue, rel=5e-3)
    assert float(r["diff_vs_M1"]) == pytest.approx(np.mean(values) - np.mean(m1), abs=5e-4)
    assert float(r["diff_ci95"]) == pytest.approx((high - low) / 2, abs=5e-4)
    assert "paired t-test (scipy.stats.ttest_rel)" in md and "equal_var=False" in md


def test_a_lone_seed_is_compared_with_m1_of_its_seed_and_not_tested(table):
    rows, _ = table
    r = row_of(rows, (0.0, 0.0, 1.0))
    assert r["test_vs_M1"] == "none: 1 pair (seed 0)"
    assert float(r["diff_vs_M1"]) == pytest.approx(104.0 - 110.0, abs=5e-4)
    # one seed: no interval or test over seeds, and these evals carry no sampling interval of their own
    assert r["p_vs_M1"] == r["p_holm"] == r["sig_vs_M1"] == r["diff_ci95"] == r["ci95"] == "n/a"


def test_holm_adjusts_over_the_rows_tested(table):
    rows, md = table
    tested = [row_of(rows, c) for c in ROWS if c != M1 and len(ROWS[c]) >= 2]
    ps = np.array([float(r["p_vs_M1"]) for r in tested])
    order = np.argsort(ps)   # Holm by hand: sorted p times (m - rank), running maximum, capped at 1
    adjusted = np.minimum(1, np.maximum.accumulate(ps[order] * (len(ps) - np.arange(len(ps)))))
    expected = np.empty_like(ps)
    expected[order] = adjusted
    for r, p in zip(tested, expected):
        assert float(r["p_holm"]) == pytest.approx(p, rel=5e-3)
        assert r["sig_vs_M1"] == ("*" if p < 0.05 else "")
    marks = {c: row_of(rows, c)["sig_vs_M1"] for c in [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (1.0, 1.0, 1.0)]}
    assert marks == {(1.0, 0.0, 0.0): "*", (0.0, 1.0, 0.0): "", (1.0, 1.0, 1.0): "*"}
    assert "two-sided at alpha = 0.05" in md and "Holm's step-down correction over the 4 rows tested" in md
    assert report_stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_pairing_finds_a_consistent_gain_that_welch_misses(tmp_path):
    # the seeds differ a lot from one another (teacher, synthetic set), the row is 1 below M1 in each
    m1 = {0: 100.0, 1: 120.0, 2: 90.0, 3: 110.0, 4: 130.0}
    row = {s: v - 1.0 + 0.05 * (-1) ** s for s, v in m1.items()}
    write_sweep(tmp_path, "pairs", {M1: m1, (1.0, 0.0, 0.0): row})
    rows, _ = read_report(tmp_path, "pairs")
    r = row_of(rows, (1.0, 0.0, 0.0))
    seeds = sorted(m1)
    paired = stats.ttest_rel([row[s] for s in seeds], [m1[s] for s in seeds]).pvalue
    welch = report_stats.welch_p(list(row.values()), list(m1.values()))
    assert r["test_vs_M1"] == "paired t (n=5)" and float(r["p_vs_M1"]) == pytest.approx(paired, rel=5e-3)
    assert paired < 1e-4 and welch > 0.5 and r["sig_vs_M1"] == "*"


def test_summary_names_the_test_and_puts_the_paper_beside_us(table):
    _, md = table
    m1, best = ROWS[M1], ROWS[(1.0, 0.0, 0.0)]
    ours = 100 * (np.mean(list(m1.values())) - np.mean(list(best.values()))) / np.mean(list(m1.values()))
    p = stats.ttest_rel(list(best.values()), list(m1.values())).pvalue
    line = next(l for l in md.splitlines() if l.startswith("Best distilled student"))
    assert "(lambda=1, beta=0, gamma=0)" in line and f"{ours:.1f}% better L_M(Test) than M1" in line
    assert f"paired t (n=5): p = {p:.3g}, Holm-adjusted p = " in line and "significant at alpha = 0.05" in line
    assert f"the paper reports 9.6% (ours - paper = {ours - 9.6:+.1f} points)" in line


def test_one_seed_grids_show_no_marks(tmp_path):
    write_sweep(tmp_path, "stats", {c: dict(list(v.items())[:1]) for c, v in ROWS.items()})
    rows, md = read_report(tmp_path, "stats")
    m1 = row_of(rows, M1)
    assert m1["p_vs_M1"] == m1["sig_vs_M1"] == m1["diff_ci95"] == ""   # M1 is the reference
    assert all(r["p_vs_M1"] == r["sig_vs_M1"] == r["diff_ci95"] == "n/a" for r in rows[1:] if r is not m1)
    summary = next(l for l in md.splitlines() if l.startswith("Best distilled student"))
    assert "not judged (none: 1 pair (seed 0): one seed" in summary and "better" not in summary


def test_seeds_of_the_same_configuration_are_pooled_from_other_sweeps(tmp_path):
    a, b, c = (0.5, 1.0, 1.0), (1.0, 1.0, 1.0), (0.5, 0.0, 1.0)
    # the whole table with seed 0; the key rows with seeds 0-2; the same row under another config
    write_sweep(tmp_path, "table", {a: {0: 100.0}, b: {0: 101.0}, c: {0: 103.0}, M1: {0: 104.0}}, ended=2.0)
    write_sweep(tmp_path, "key", {a: {0: 100.0, 1: 99.0, 2: 101.5}, M1: {0: 104.0, 1: 102.0, 2: 105.5}})
    write_sweep(tmp_path, "short", {c: {1: 150.0, 2: 151.0}}, overrides={"train.epochs": 5})
    rows, md = read_report(tmp_path, "table")
    assert {r["model"] + str(r["lambda"]) + r["beta"]: r["seeds"] for r in rows[1:]} == {
        "student0.5001.000": "3", "student1.0001.000": "1", "student0.5000.000": "1", "M10.0000.000": "3"}
    assert row_of(rows, a)["test_vs_M1"] == "paired t (n=3)"
    assert float(row_of(rows, c)["L_M(Test)"]) == 103.0     # the 5-epoch seeds stay out
    assert "Seeds pooled from other sweeps that ran the same rows with the very same configuration: " \
           "key (seeds 1, 2)." in md and "short" not in md
    key_rows, key_md = read_report(tmp_path, "key")
    assert [r["seeds"] for r in key_rows] == ["3", "3", "3"] and "Seeds pooled" not in key_md


@pytest.mark.parametrize("reduction, unit", [("pixel", "nats per pixel"), ("sum", "nats per image")])
def test_the_unit_follows_train_reduction(tmp_path, reduction, unit):
    scale = 1 / 1900 if reduction == "pixel" else 1.0   # ~0.058 per pixel
    rows = {c: {s: v * scale for s, v in by_seed.items()} for c, by_seed in ROWS.items()}
    write_sweep(tmp_path, "u", rows, teacher={s: v * scale for s, v in TEACHER.items()},
                overrides={"train.reduction": reduction})
    table, md = read_report(tmp_path, "u")
    assert f"Unit: {unit}" in md
    if reduction == "pixel":   # 4 significant digits on the paper's scale
        assert len(row_of(table, M1)["L_M(Test)"].split(".")[1]) == 5



def test_records_older_than_train_reduction_read_as_the_stage_key_reads_them():
    assert vae_report.OLDER_REDUCTION == plan.key_rules("vae")[1][("train", "reduction")]

def test_paper_values_hold_the_papers_numbers():
    vae = paper.paper_values("vae")
    assert vae["best_distilled_vs_M1_improvement_pct"] == 9.6 and vae["metric"] == "test_loss"
    assert vae["zero_costs_pct"] == {"lam": 0.12, "beta": 12.91, "gamma": 4.83}
    # Table 1's rows are the grid's rows, in order; the last is M1
    grid = load_yaml(REPO / "sweeps" / "grids" / "vae_coeffs.yaml", "grid")["rows"]
    assert [(e["lam"], e["beta"], e["gamma"]) for e in vae["table"]] == \
           [(r["distill.lam"], r["distill.beta"], r["distill.gamma"]) for r in grid]
    assert vae["table"][-1] == {"lam": 0.0, "beta": 0.0, "gamma": 0.0, "test_loss": 0.06228}
    # the quoted costs follow from the table: best row 0.05630, its lam/beta/gamma = 0 rows
    value = {(e["lam"], e["beta"], e["gamma"]): e["test_loss"] for e in vae["table"]}
    best = value[(0.5, 1.0, 1.0)]
    for name, zero in {"lam": (0.0, 1.0, 1.0), "beta": (0.5, 0.0, 1.0), "gamma": (0.5, 1.0, 0.0)}.items():
        assert 100 * (value[zero] - best) / best == pytest.approx(vae["zero_costs_pct"][name], abs=0.01)
    assert 100 * (value[(0.0, 0.0, 0.0)] - best) / value[(0.0, 0.0, 0.0)] == pytest.approx(9.6, abs=0.05)
    ddpm = paper.paper_values("ddpm")   # Table 2: the quoted 68.8% is the FID gap closed at lam 0.5, 18.6% its gain
    fid = {(e["lam"], e["encoder_mse"]): e["fid"] for e in ddpm["table"]}
    m1, best = fid[(0.0, 0.0)], fid[(0.5, 0.0)]
    assert 100 * (m1 - best) / (m1 - ddpm["m0"]["fid"]) == pytest.approx(ddpm["gap_closed_pct"], abs=0.05)
    assert 100 * (m1 - best) / m1 == pytest.approx(ddpm["best_distilled_vs_M1_improvement_pct"], abs=0.05)
    assert paper.paper_values("gaussian") == {}


def test_the_gap_closed_holds_a_row_against_m0_and_m1_of_its_own_seeds():
    from collapse.report.view import M1, STUDENT, Row, SweepView, Teacher
    from collapse.tasks import ddpm_report

    def scored(seed, fid):
        return {"config": {"train": {"seed": seed}},
                "metrics": {"fid": fid, "kid": 0.1, "test_loss": 1.0, "fid_samples": 10, "fid_real": 10}}

    def row(lam, evals, role=STUDENT):
        label = {"distill.lam": lam, "distill.encoder_mse": 0.0}
        return Row(label, role, report_stats.runs(evals, "fid"), tuple(evals))

    m0 = Teacher(evals=(scored(0, 100.0), scored(1, 120.0), scored(2, 140.0)))
    m1 = row(0.0, [scored(0, 200.0), scored(1, 260.0), scored(2, 300.0)], M1)
    lone, unmatched = row(0.25, [scored(0, 150.0)]), row(0.5, [scored(7, 150.0)])
    view = SweepView("g", "ddpm", {}, {}, Path("."), Path("."), ddpm_report.PRIMARY, rows=(m1, lone, unmatched), m0=m0)
    header, cells, _ = ddpm_report.table2(view)
    column = header.index("gap closed %")
    assert cells[0][header.index("FID")] == "120.00"   # M0 over all its seeds
    assert [c[header.index("seeds")] for c in cells] == [3, 3, 1, 1]
    # seed 0 alone: (200 - 150) / (200 - 100); the seed means would give (253.3 - 150) / (253.3 - 120) = 77.5
    assert cells[2][column] == "50.0"
    assert cells[3][column] == "77.5"   # a seed M0 and M1 lack: their means over every seed
    assert report_stats.on_seeds(m1.evals, lone.evals) == list(m1.evals[:1])


def test_compare_with_m1_gives_a_comparison_holding_the_paired_t_test_of_three_seeds():
    from dataclasses import replace
    m1, m0 = {0: 11.0, 1: 13.0, 2: 12.5}, {0: 9.0, 1: 9.5, 2: 10.0}
    row = {0: 10.0, 1: 11.9, 2: 11.6}   # M1 - 1.0, - 1.1, - 0.9
    c = report_stats.compare_with_m1(report_stats.Runs(tuple(row.values()), row),
                                     report_stats.Runs(tuple(m1.values()), m1), np.mean(list(m1.values())),
                                     np.mean(list(m0.values())), m0)
    differences = np.array([row[s] - m1[s] for s in (0, 1, 2)])
    se = differences.std(ddof=1) / math.sqrt(3)
    assert isinstance(c, report_stats.Comparison)
    assert c.test == "paired t (n=3)" and c.shared == (0, 1, 2) and c.untested is None
    assert c.diff == pytest.approx(-1.0) and c.ci95 == pytest.approx(stats.t.ppf(0.975, 2) * se)
    assert c.p == pytest.approx(2 * stats.t.sf(abs(differences.mean()) / se, 2))
    assert c.pct == pytest.approx(-100 / np.mean([11.0, 13.0, 12.5]))
    assert c.gap_closed_pct == pytest.approx(100 / (np.mean([11.0, 13.0, 12.5]) - 9.5)) and c.why == {}
    assert c.p < 0.05 and report_stats.judged(c) == "down"
    adjusted = replace(c, p_holm=0.2)   # Holm's p, where set, decides
    assert report_stats.judged(adjusted) == "noise" and "Holm-adjusted p = 0.2, not significant" in \
        report_stats.evidence(adjusted)
