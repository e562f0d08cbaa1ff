"""A report never fails on degenerate metrics: a value of 0 divided by, a column without spread, nan or
inf in a record, one seed, a grid point without an eval yet, M1 or M0 missing. Each such cell reads n/a
(the csv) or n/a with a footnote mark (the markdown), the footnote says why in words, and nothing warns
(scipy's ConstantInputWarning and precision-loss warnings included: they are errors here)."""
import csv
import hashlib
import json
import re
import warnings

import pytest

from collapse import manifest
from collapse.config import to_dict
from collapse.experiment import from_dict
from collapse.reporting import write_reports
from helpers import BEST, M1, MISSING, key, report, write_grid  # noqa: F401

LAM0 = {**BEST, "distill.lam": 0.0}
OTHER = {"distill.lam": 1.0, "distill.beta": 1.0, "distill.gamma": 1.0}
def row(rows: list[dict], coeffs: dict) -> dict:
    return next(r for r in rows if r["model"] != "M0 (teacher)" and
                (float(r["lambda"]), float(r["beta"]), float(r["gamma"])) == tuple(coeffs.values()))


def footnote(md: str, line_start: str, column: int) -> str:
    """The reason the footnote gives for the n/a in `column` of the markdown line starting `line_start`."""
    line = next(x for x in md.splitlines() if x.startswith(line_start))
    mark = line.split(" | ")[column].strip(" |")
    assert re.fullmatch(r"n/a[⁰¹²³⁴⁵⁶⁷⁸⁹]+", mark), (mark, line)
    return next(x for x in md.splitlines() if x.startswith(mark + ": "))[len(mark) + 2:]


def column(md: str, name: str) -> int:
    header = next(x for x in md.splitlines() if x.startswith("| model |")).split(" | ")
    return header.index(name)


def test_a_zero_m1_reads_n_a_for_its_percentages(tmp_path, capsys):
    write_grid(tmp_path, "z", [(M1, {0: 0.0, 1: 0.0}), (BEST, {0: 0.0, 1: 0.0}), (LAM0, {0: 0.01, 1: 0.02})],
               teacher={0: 0.0, 1: 0.0})
    rows, md = report(tmp_path, "z", capsys)
    assert row(rows, LAM0)["change_vs_M1_%"] == row(rows, BEST)["change_vs_M1_%"] == "n/a"
    assert footnote(md, "| student | 0.000 |", column(md, "change_vs_M1_%")) == \
        "M1's value is 0, so a change in % of it is undefined."
    assert footnote(md, "| student | 0.000 |", column(md, "gap_closed_%")) == \
        "M1's value equals M0's: there is no gap to close."
    cost = footnote(md, "| lambda |", 2)   # the "set to 0 costs" of a best row at 0
    assert cost == "our row lambda=0.5, beta=1, gamma=1's L_M(Test) is 0, so a % of it is undefined."


def test_a_constant_column_has_no_rank_correlation_and_no_test(tmp_path, capsys):
    same = {0: 0.06, 1: 0.06, 2: 0.06}
    write_grid(tmp_path, "c", [(M1, same), (BEST, same), (LAM0, same), (OTHER, same)], teacher=same)
    rows, md = report(tmp_path, "c", capsys)
    spearman = next(x for x in md.splitlines() if x.startswith("Spearman"))
    mark = re.search(r"rho = (n/a[⁰¹²³⁴⁵⁶⁷⁸⁹]+) \(n = 4 rows in both\)", spearman).group(1)
    assert f"{mark}: every row has the same value (ours), so a rank correlation is undefined." in md
    assert row(rows, BEST)["p_vs_M1"] == row(rows, BEST)["sig_vs_M1"] == "n/a"
    assert footnote(md, "| student | 0.500 |", column(md, "p_vs_M1")) == \
        "every seed's difference is the same: no spread, so the paired t-test is undefined."
    assert "not judged" in next(x for x in md.splitlines() if x.startswith("Best distilled student"))


def test_nan_and_inf_in_records_are_left_out_with_the_reason(tmp_path, capsys):
    write_grid(tmp_path, "n", [(M1, {0: 0.063, 1: 0.062, 2: 0.064}), (BEST, {0: 0.057, 1: float("nan"), 2: 0.058}),
                               (LAM0, {0: float("inf"), 1: float("-inf")})],
               teacher={0: 0.052, 1: float("nan"), 2: 0.053})
    rows, md = report(tmp_path, "n", capsys)
    best, lam0 = row(rows, BEST), row(rows, LAM0)
    assert best["seeds"] == "2" and float(best["L_M(Test)"]) == pytest.approx(0.0575)
    assert "seed 1: the eval recorded test_loss = nan (not a finite number)" in best["status"]
    assert lam0["L_M(Test)"] == lam0["ci95"] == lam0["diff_vs_M1"] == "n/a" and lam0["seeds"] == "0"
    assert footnote(md, "| student | 0.000 | 1.000 |", column(md, "L_M(Test)")) == \
        "the eval recorded a value that is not a finite number (nan or inf); that seed is left out."
    assert rows[0]["seeds"] == "2"   # M0 without its nan seed


def test_one_seed_has_no_interval_and_no_test(tmp_path, capsys):
    write_grid(tmp_path, "s", [(M1, {0: 0.063}), (BEST, {0: 0.057}), (LAM0, {0: 0.058})], teacher={0: 0.052})
    rows, md = report(tmp_path, "s", capsys)
    assert rows[0]["ci95"] == row(rows, BEST)["ci95"] == row(rows, BEST)["diff_ci95"] == "n/a"
    assert footnote(md, "| M0 (teacher) |", column(md, "ci95")) == \
        "one seed: no spread over seeds, so no interval over seeds."
    assert footnote(md, "| student | 0.500 |", column(md, "diff_ci95")).startswith(
        "one seed (or one seed shared): no test over seeds, and the evals carry no sampling interval")
    per_seed = next(x for x in md.splitlines() if x.startswith("| lambda |")).split(" | ")[3]
    assert per_seed.startswith("n/a")   # the "set to 0 costs" per seed needs 2 seeds


def test_missing_rows_m1_and_m0_read_n_a(tmp_path, capsys):
    write_grid(tmp_path, "m", [(M1, {0: MISSING, 1: MISSING}), (BEST, {0: 0.057, 1: 0.058}),
                               (LAM0, {0: 0.059, 1: MISSING}), (OTHER, {0: MISSING, 1: MISSING})],
               teacher={0: MISSING, 1: MISSING})
    rows, md = report(tmp_path, "m", capsys)
    m1, other = row(rows, M1), row(rows, OTHER)
    assert m1["model"] == "M1" and m1["L_M(Test)"] == "n/a" and other["L_M(Test)"] == "n/a"
    assert "not run yet: eval missing" in other["status"]
    assert footnote(md, "| student | 1.000 |", column(md, "L_M(Test)")).startswith("no finished eval yet")
    assert row(rows, BEST)["diff_vs_M1"] == "n/a"
    assert footnote(md, "| student | 0.500 |", column(md, "diff_vs_M1")) == \
        "M1 has no finished eval with a finite value yet, so there is nothing to compare with."
    assert rows[0]["L_M(Test)"] == "n/a"
    assert footnote(md, "| M0 (teacher) |", column(md, "L_M(Test)")) == "M0 has no finished eval with a finite value yet."
    assert row(rows, LAM0)["seeds"] == "1"


def test_m0_missing_leaves_no_gap_closed(tmp_path, capsys):
    write_grid(tmp_path, "g", [(M1, {0: 0.063, 1: 0.062, 2: 0.064}), (BEST, {0: 0.057, 1: 0.0565, 2: 0.058})],
               teacher={0: MISSING, 1: MISSING, 2: MISSING})
    rows, md = report(tmp_path, "g", capsys)
    assert row(rows, BEST)["gap_closed_%"] == "n/a" and row(rows, BEST)["p_vs_M1"] != "n/a"
    assert footnote(md, "| student | 0.500 |", column(md, "gap_closed_%")) == \
        "M0 has no finished eval with a finite value yet."


def ddpm_metrics(fid: float, **extra) -> dict:
    return {"fid": fid, "kid": 0.01, "test_loss": 0.03, "fid_samples": 64, "fid_real": 64, **extra}


def test_table2_reads_n_a_for_what_its_evals_lack(tmp_path, capsys):
    """Table 2: M0's eval has nan FID, an old eval carries no FID interval, every KID subset holds every
    sample (no spread), a row has no eval yet."""
    rows = [({"distill.lam": 0.0}, {0: ddpm_metrics(525.0, kid_std=0.0)}),
            ({"distill.lam": 0.5}, {0: ddpm_metrics(500.0)}),
            ({"distill.lam": 1.0}, {0: MISSING})]
    write_grid(tmp_path, "d", rows, teacher={0: ddpm_metrics(float("nan"))}, task="ddpm", metric="fid")
    table, md = report(tmp_path, "d", capsys, "_table2")
    by_lam = {r["lam"]: r for r in table}
    assert by_lam[""]["FID"] == "n/a" and by_lam["M1 (0)"]["FID"] == "525.00"
    assert by_lam["0.5"]["gap closed %"] == by_lam["1"]["FID"] == "n/a"
    assert "M0 or M1 has no finite FID yet: no gap closed." in md
    line = "| M1 | M1 (0) |"
    header = next(x for x in md.splitlines() if x.startswith("| model |")).split(" | ")
    assert footnote(md, line, header.index("KID std over subsets")).startswith("every KID subset holds every sample")
    assert footnote(md, line, header.index("FID 95% interval")).startswith(
        "one seed, and its eval carries no FID interval")
    assert footnote(md, "| M0 (teacher) |", header.index("FID")) == "M0 has no finished eval with a finite value yet."
