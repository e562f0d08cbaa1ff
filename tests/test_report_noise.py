"""The report's judging sentences speak only as far as the numbers carry: FID comes with a bootstrap
interval over the generated samples and KID with its spread over subsets (collapse/metrics/fid.py,
stored by the DDPM's eval), M1 against M0 and each row against M1 take a test over seeds where there
are seeds, and "collapse is visible", "better than M1", "helps" are said only where that test
(p < 0.05) or interval (excluding 0) sets the difference apart from noise; else the sentence says
"within noise" and names the interval."""
import re

import numpy as np
import pytest

from collapse.metrics import fid as metrics
from collapse.report import chains
from helpers import BEST, M1, report, write_grid


def features(rng, n: int, shift: float = 0.0) -> np.ndarray:
    return rng.gamma(1.0, 0.2, size=(n, 64)) + shift


def test_fid_of_a_draw_of_every_sample_once_is_fid():
    rng = np.random.default_rng(0)
    a, b = features(rng, 40), features(rng, 50, 0.05)
    mu, sigma = b.mean(0), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sigma)
    projected = a @ (v[:, w > 1e-12] * np.sqrt(w[w > 1e-12]))
    assert metrics._fid_to(a, projected, mu, float(np.trace(sigma))) == pytest.approx(metrics.fid(a, b), rel=1e-9)


def test_fid_bootstrap_spreads_less_with_more_samples_and_repeats_itself():
    rng = np.random.default_rng(1)
    real = features(rng, 400)
    spread = {n: metrics.fid_bootstrap(features(rng, n, 0.02), real, 60).std(ddof=1) for n in (50, 400)}
    assert 0 < spread[400] < spread[50] / 2   # ~1/sqrt(n): 2.8x fewer at 8x the samples
    fake = features(rng, 50)
    assert np.array_equal(metrics.fid_bootstrap(fake, real, 5, seed=3), metrics.fid_bootstrap(fake, real, 5, seed=3))


def test_kid_is_the_mean_over_subsets_which_agree_when_each_holds_every_sample():
    rng = np.random.default_rng(2)
    a, b = features(rng, 30), features(rng, 30, 0.1)
    small = metrics.kid_subsets(a, b, subsets=10, subset_size=1000)
    assert np.ptp(small) < 1e-12 * abs(small.mean()) and metrics.kid(a, b, 10) == pytest.approx(small.mean())
    assert metrics.kid_subsets(a, b, subsets=10, subset_size=10).std() > 0


def test_the_ddpm_eval_stores_fids_interval_and_kids_spread():
    from collapse.tasks import ddpm   # torch: only this test needs the task module
    rng = np.random.default_rng(3)
    fake, real = features(rng, 60, 0.05), features(rng, 60)
    out = ddpm.fid_kid(fake, real, 20)
    assert out["fid"] == pytest.approx(metrics.fid(fake, real)) and out["fid_bootstrap"] == 20 and out["fid_se"] > 0
    assert out["fid_ci"] == pytest.approx([out["fid"] - 1.96 * out["fid_se"], out["fid"] + 1.96 * out["fid_se"]],
                                          rel=1e-3)
    assert out["kid_subset_size"] == 60 and out["kid_std"] == pytest.approx(0, abs=1e-12)
    assert "fid_se" not in ddpm.fid_kid(fake, real, 0)


def ddpm_eval(fid: float, se: float | None = None) -> dict:
    extra = {"fid_se": se, "fid_ci": [fid - 1.96 * se, fid + 1.96 * se]} if se else {}
    return {"fid": fid, "kid": 0.01, "kid_std": 0.001, "test_loss": 0.03, "fid_samples": 64, "fid_real": 64, **extra}


def table2(tmp_path, capsys, m1: dict, m0: dict, best: dict) -> tuple[list[dict], str]:
    write_grid(tmp_path, "t", [({"distill.lam": 0.0}, m1), ({"distill.lam": 0.5}, best)], teacher=m0,
               task="ddpm", metric="fid")
    return report(tmp_path, "t", capsys, "_table2")


def verdict(md: str) -> str:
    return next(x for x in md.splitlines() if "M1's FID" in x)


def test_one_seed_a_few_fid_points_apart_is_within_noise(tmp_path, capsys):
    """The 4-step grid on 64 images: M1 525.68 against M0 521.84, each FID's bootstrap s.e. 8."""
    rows, md = table2(tmp_path, capsys, {0: ddpm_eval(525.68, 8.0)}, {0: ddpm_eval(521.84, 8.0)},
                      {0: ddpm_eval(515.0, 8.0)})
    half = 1.959963984540054 * np.hypot(8.0, 8.0)
    assert verdict(md) == (
        "M1 against M0 is within noise: M1's FID 525.68 is +3.84 against M0's 521.84 (95% interval of the "
        f"difference [{3.84 - half:+.4g}, {3.84 + half:+.4g}]; none: 1 pair (seed 0); interval: the evals' own, "
        "which contains 0), so the gap closed is not meaningful.")
    assert not any(line.startswith("Collapse is visible") for line in md.splitlines())
    assert next(r for r in rows if r["lam"] == "0.5")["gap closed %"] == "n/a"
    assert next(r for r in rows if r["lam"] == "M1 (0)")["FID 95% interval"] == \
        f"[{525.68 - 1.96 * 8:.2f}, {525.68 + 1.96 * 8:.2f}] over samples"


def test_one_seed_far_outside_the_bootstrap_interval_is_collapse(tmp_path, capsys):
    rows, md = table2(tmp_path, capsys, {0: ddpm_eval(90.0, 1.0)}, {0: ddpm_eval(60.0, 1.0)},
                      {0: ddpm_eval(75.0, 1.0)})
    assert verdict(md).startswith("Collapse is visible: M1's FID 90.00 is +30.00 against M0's 60.00 (95% interval "
                                  "of the difference [+27.23, +32.77]; none: 1 pair (seed 0)")
    assert verdict(md).endswith("which excludes 0).")
    assert next(r for r in rows if r["lam"] == "0.5")["gap closed %"] == "50.0"


def test_seeds_take_a_paired_test(tmp_path, capsys):
    m0 = {0: ddpm_eval(60.0), 1: ddpm_eval(70.0), 2: ddpm_eval(65.0)}
    consistent = {0: ddpm_eval(80.0), 1: ddpm_eval(91.0), 2: ddpm_eval(84.5)}   # +20, +21, +19.5
    _, md = table2(tmp_path / "a", capsys, consistent, m0, consistent)
    assert verdict(md).startswith("Collapse is visible: M1's FID 85.17 is +20.17 against M0's 65.00 (95% interval "
                                  "of the difference [+18.27, +22.06]; paired t (n=3): p = ")
    assert verdict(md).endswith(", significant at alpha = 0.05).")
    wobbly = {0: ddpm_eval(62.0), 1: ddpm_eval(68.0), 2: ddpm_eval(66.5)}   # +2, -2, +1.5
    _, md = table2(tmp_path / "b", capsys, wobbly, m0, wobbly)
    assert verdict(md).startswith("M1 against M0 is within noise: M1's FID 65.50 is +0.50 against M0's 65.00 "
                                  "(95% interval of the difference [")
    assert "paired t (n=3): p = " in verdict(md) and "not significant at alpha = 0.05" in verdict(md)


def test_old_evals_without_an_interval_are_not_judged(tmp_path, capsys):
    _, md = table2(tmp_path, capsys, {0: ddpm_eval(525.68)}, {0: ddpm_eval(521.84)}, {0: ddpm_eval(515.0)})
    assert verdict(md).startswith("Not judged: M1's FID 525.68 is +3.84 against M0's 521.84, with one seed")


def summary(md: str) -> str:
    return next(x for x in md.splitlines() if x.startswith("Best distilled student"))


def test_the_best_row_is_better_than_m1_only_beyond_noise(tmp_path, capsys):
    m1 = {0: 0.0630, 1: 0.0620, 2: 0.0640, 3: 0.0625, 4: 0.0635}
    tiny = {0: 0.0629, 1: 0.0622, 2: 0.0637, 3: 0.0626, 4: 0.0633}    # -0.1, +0.2, -0.3, +0.1, -0.2 (x 1e-3): mean -0.1%
    write_grid(tmp_path / "a", "n", [(M1, m1), (BEST, tiny)], teacher=dict.fromkeys(m1, 0.052))
    _, md = report(tmp_path / "a", "n", capsys)
    line = summary(md)
    assert re.search(r"\): 0\.1% lower L_M\(Test\) than M1, within noise \(95% interval of the difference "
                     r"\[-0\.000\d+, \+0\.000\d+\]; paired t \(n=5\): p = [\d.]+, Holm-adjusted p = [\d.]+, "
                     r"not significant at alpha = 0\.05\)", line), line
    assert "better" not in line
    clear = {s: v - 0.005 for s, v in tiny.items()}
    write_grid(tmp_path / "b", "n", [(M1, m1), (BEST, clear)], teacher=dict.fromkeys(m1, 0.052))
    _, md = report(tmp_path / "b", "n", capsys)
    assert re.search(r"\): 8\.0% better L_M\(Test\) than M1 \(95% interval of the difference \[-0\.00\d+, -0\.00\d+\]; "
                     r"paired t \(n=5\): p = [\de.-]+, Holm-adjusted p = [\de.-]+, significant at alpha = 0\.05\)",
                     summary(md)), summary(md)


def test_a_lone_seed_row_takes_the_evals_own_intervals(tmp_path, capsys):
    """One seed of DDPM evals with FID's bootstrap: the generic table's diff_ci95 combines the two."""
    write_grid(tmp_path, "o", [({"distill.lam": 0.0}, {0: ddpm_eval(100.0, 3.0)}),
                               ({"distill.lam": 0.5}, {0: ddpm_eval(95.0, 4.0)})],
               teacher={0: ddpm_eval(80.0, 3.0)}, task="ddpm", metric="fid")
    rows, md = report(tmp_path, "o", capsys)
    student = next(r for r in rows if r["model"] == "student")
    assert float(student["diff_ci95"]) == pytest.approx(1.959963984540054 * 5.0, abs=1e-3)
    assert student["test_vs_M1"] == "none: 1 pair (seed 0); interval: the evals' own" and student["p_vs_M1"] == "n/a"
    assert "5.0% lower FID than M1, within noise (95% interval of the difference [-14.8, +4.8]" in summary(md)


def test_chains_say_within_noise_and_name_the_interval():
    eff = {"n": 3, "mean": -0.2, "ci95": 0.5}
    line = chains._answer("all", "teacher", eff, {"n": 0}, None, 5, "L", "lower")
    assert line.endswith("-> within noise (the 95% interval [-0.7, +0.3] contains 0).")
    line = chains._answer("all", "teacher", {**eff, "mean": -2.0}, {"n": 0}, None, 5, "L", "lower")
    assert line.endswith("-> helps (the 95% interval [-2.5, -1.5] excludes 0).")
