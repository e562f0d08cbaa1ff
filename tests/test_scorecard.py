"""The paper's claims judged by every report (collapse/report/scorecard.py): per-seed rows built to hold
each table's claims, and rows built to break one, through the real report path (write_reports on a
hand-written manifest); report.metric scores a grid on another recorded metric or a weighted sum."""
import csv

import numpy as np
import pytest

from collapse.config import ConfigError
from collapse.report.metric import parse
from collapse.report.paper import paper_values
from collapse.tasks import ddpm_report, t5_report, vae_claims
import helpers
from helpers import report, write_grid

SEEDS = (0, 1, 2)


def noisy(value: float, rng, rel: float = 2e-4) -> float:
    return value * (1 + rel * rng.standard_normal())


def paper_table(task: str, claims, metrics: tuple[str, ...]) -> dict:
    """row name -> {metric: the paper's value}, from collapse/paper_values.yaml."""
    out = {}
    for entry in paper_values(task)["table"]:
        for name, coeffs in claims.rows.items():
            if all(float(entry[k]) == v for k, v in coeffs.items()):
                out[name] = {m: float(entry[m]) for m in metrics}
    return out


def grid(tmp_path, capsys, task, claims, values: dict, m0: dict, seeds=SEEDS, rel=2e-4, drop=()):
    """A sweep of `task` whose rows are `values` (row name -> {metric: value}) with per-seed noise; the
    scorecard's csv rows by (claim, part)."""
    rng = np.random.default_rng(0)
    rows = [({f"distill.{k}": v for k, v in claims.rows[name].items()},
             {s: {m: noisy(x, rng, rel) for m, x in metrics.items()} for s in seeds})
            for name, metrics in values.items() if name not in drop]
    write_grid(tmp_path, "g", rows, {s: {m: noisy(x, rng, rel) for m, x in m0.items()} for s in seeds}, task=task)
    report(tmp_path, "g", capsys, "_scorecard")
    with open(tmp_path / "report" / "g_scorecard.csv") as f:
        return list(csv.DictReader(f)), (tmp_path / "report" / "g_scorecard.md").read_text()


def verdicts(cells) -> dict:
    return {c["claim"]: c["claim verdict"] for c in cells}


VAE_PAPER = {k: v for k, v in paper_table("vae", vae_claims.CLAIMS, ("test_loss",)).items()}


def test_table1_rows_as_the_papers_hold_every_claim(tmp_path, capsys):
    cells, md = grid(tmp_path, capsys, "vae", vae_claims.CLAIMS, VAE_PAPER, {"test_loss": 0.05})
    assert len(VAE_PAPER) == 16
    assert set(verdicts(cells).values()) == {"holds"}, verdicts(cells)
    assert len(verdicts(cells)) == 6 + 14
    f1 = next(c for c in cells if c["claim"] == "F1")
    assert float(f1["paper"]) == pytest.approx(100 * (0.05630 / 0.06228 - 1), abs=1e-3)
    assert float(f1["ours"]) == pytest.approx(float(f1["paper"]), abs=0.1) and f1["seeds"] == "3"
    assert "Claims: 20 of 20 hold" in md and "Spearman of the row means" in md


def test_table1_with_beta_0_below_m1_fails_f2_and_its_kept_fraction(tmp_path, capsys):
    values = {**VAE_PAPER, "b0": {"test_loss": 0.0600}}
    got = verdicts(grid(tmp_path, capsys, "vae", vae_claims.CLAIMS, values, {"test_loss": 0.05})[0])
    assert got["F2"] == "fails" and got["kept beta 0"] == "fails"
    assert got["F1"] == got["F5"] == got["kept lambda 1"] == "holds"


def test_table1_within_noise_when_the_effect_is_below_the_seeds_spread(tmp_path, capsys):
    values = {**VAE_PAPER, "b05": {"test_loss": 0.05631}}   # beta 0.5 = beta 1 to 0.02%, noise 1%
    cells, _ = grid(tmp_path, capsys, "vae", vae_claims.CLAIMS, values, {"test_loss": 0.05}, rel=1e-2)
    assert verdicts(cells)["F6"] == "within noise"


def test_one_seed_has_no_verdict_but_a_direction_and_a_missing_row_names_itself(tmp_path, capsys):
    cells, md = grid(tmp_path, capsys, "vae", vae_claims.CLAIMS, VAE_PAPER, {"test_loss": 0.05}, seeds=(0,),
                     drop=("g2", "l075"))
    f2 = next(c for c in cells if c["claim"] == "F2")
    assert f2["verdict"] == "n/a" and f2["direction"] == "paper's way" and f2["p"] == ""
    assert "one seed: no test over seeds" in md
    assert "claims with every part on the paper's side: F1, F2, F3, F4, F5, F6, kept lambda 1, kept lambda 0.25," in md
    kept = next(c for c in cells if c["claim"] == "kept lambda 0.75")
    assert kept["ours"] == "n/a" and kept["verdict"] == "n/a" and kept["claim verdict"] == "n/a"
    assert "Not judged, the grid lacks a row they need: kept lambda 0.75, kept gamma 2.\n" in md
    assert "| kept lambda 0.75 |" not in md and "| kept lambda 0.25 |" in md


DDPM = {**paper_table("ddpm", ddpm_report.CLAIMS, ("fid",))}


def test_table2_rows_as_the_papers_hold_and_a_worse_lambda_05_fails(tmp_path, capsys):
    m0 = paper_values("ddpm")["m0"]
    assert set(verdicts(grid(tmp_path / "a", capsys, "ddpm", ddpm_report.CLAIMS, DDPM, {"fid": m0["fid"]})[0])
               .values()) == {"holds"}
    worse = {**DDPM, "l05": {"fid": 56.0}}   # above lambda 1 and "+ MSE", gap closed 24%
    got = verdicts(grid(tmp_path / "b", capsys, "ddpm", ddpm_report.CLAIMS, worse, {"fid": m0["fid"]})[0])
    assert got["T2.1"] == "holds" and got["T2.2"] == got["T2.3"] == got["T2.4"] == "fails"


T5 = paper_table("t5", t5_report.CLAIMS, ("rouge1", "ppl_mean"))


def test_table3_rows_as_the_papers_hold_and_lambda_10_above_m1_fails(tmp_path, capsys, monkeypatch):
    from collapse.experiment import from_dict   # the stand-in's data set: no CNN/DailyMail folder needed
    monkeypatch.setattr(helpers, "from_dict", lambda d: from_dict({**d, "data": {"dataset": "aclsum"}}))
    m0 = {"rouge1": 43.0, "ppl_mean": 30.0}   # the paper draws M0 above every student
    cells, md = grid(tmp_path / "a", capsys, "t5", t5_report.CLAIMS, T5, m0, rel=1e-6)
    assert set(verdicts(cells).values()) == {"holds"}, verdicts(cells)
    assert next(c for c in cells if c["claim"] == "T3.4")["paper"] == "n/a" and "only in a figure" in md
    high = {**T5, "l10": {"rouge1": 41.40, "ppl_mean": 31.4995}}
    got = verdicts(grid(tmp_path / "b", capsys, "t5", t5_report.CLAIMS, high, m0, rel=1e-6)[0])
    assert got["T3.2"] == "fails" and got["T3.1"] == got["T3.3"] == "holds"


def test_report_metric_scores_a_grid_on_a_weighted_sum_of_recorded_parts(tmp_path, capsys):
    """Rows whose test_loss says nothing (all equal) but whose reconstruction holds Table 1's claims."""
    from collapse.reporting import write_reports
    rng = np.random.default_rng(1)
    rows = [({f"distill.{k}": v for k, v in vae_claims.CLAIMS.rows[n].items()},
             {s: {"test_loss": 0.07, "test_recon": noisy(x["test_loss"] - 0.01, rng), "test_kl": 0.1} for s in SEEDS})
            for n, x in VAE_PAPER.items()]
    write_grid(tmp_path, "g", rows, {s: {"test_loss": 0.07, "test_recon": 0.04, "test_kl": 0.1} for s in SEEDS})
    written = write_reports(tmp_path, "test_recon+0.1*test_kl")
    assert tmp_path / "report" / "g.metric=test_recon+0.1xtest_kl_scorecard.csv" in written
    with open(tmp_path / "report" / "g.metric=test_recon+0.1xtest_kl_scorecard.csv") as f:
        cells = list(csv.DictReader(f))
    assert set(verdicts(cells).values()) == {"holds"}
    f1 = next(c for c in cells if c["claim"] == "F1")
    assert float(f1["ours"]) == pytest.approx(100 * (0.0563 / 0.06228 - 1), abs=0.1)   # -1 +1: recon + 0.01
    write_reports(tmp_path)
    with open(tmp_path / "report" / "g_scorecard.csv") as f:   # the task's own metric: every row equal
        assert "holds" not in {c["claim verdict"] for c in csv.DictReader(f)}


@pytest.mark.parametrize("spec", ["test_recon+", "0.1*", "2**test_kl", "a-b"])
def test_a_bad_report_metric_is_a_one_line_error(spec):
    with pytest.raises(ConfigError) as e:
        parse(spec)
    assert "\n" not in str(e.value) and "'report.metric'" in str(e.value) and "test_recon+0.1*test_kl" in str(e.value)
