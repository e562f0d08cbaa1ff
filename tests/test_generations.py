"""Iterative retraining across generations: data policies, the chain plan, the Gaussian stage, reports.

Pure checks run in milliseconds; two end-to-end launches (a tiny VAE chain, G=3, and the Gaussian
grid with few chains) go through sweeps/launch.py on the local executor in real subprocesses.
"""
import csv
import io

import numpy as np
import pytest
import torch

from collapse import generations, manifest, plan
from collapse.gaussian import POLICIES, GaussianConfig, expected_sigma2, train_sizes
from collapse.generations import REAL, sources, training_set
from collapse.grid import load_sweep
from collapse.report import chains
from collapse.report.view import SweepView
from collapse.tasks.vae_report import PRIMARY as VAE_PRIMARY
from helpers import launch

N = 10


def toy_data(t_max: int, n: int = N):
    """Real items are 1000 + i, generation g's items are 100 * g + i: every item names its source."""
    real = 1000 + torch.arange(n)
    synthetic = {g: 100 * g + torch.arange(n) for g in range(t_max + 1)}
    return real, synthetic


def origin(items: torch.Tensor) -> list[int]:
    return [REAL if v >= 1000 else int(v) // 100 for v in items.tolist()]


def counts(source: torch.Tensor) -> dict:
    return dict(zip(*[x.tolist() for x in torch.unique(source, return_counts=True)]))


# ---------------------------------------------------------------- data policies, exactly

@pytest.mark.parametrize("t", [0, 1, 3])
def test_replace_mix_accumulate_sizes_and_sources(t):
    real, synthetic = toy_data(t)

    items, source = training_set("replace", real, synthetic, t)
    assert counts(source) == {t: N} and origin(items) == source.tolist()
    assert torch.equal(items, synthetic[t])

    for ratio, m in ((0.0, 0), (0.3, 3), (0.29, 2), (0.5, 5), (1.0, 10)):
        items, source = training_set("mix", real, synthetic, t, mix_ratio=ratio)
        assert counts(source) == ({REAL: N, t: m} if m else {REAL: N})
        assert torch.equal(items[:N], real) and torch.equal(items[N:], synthetic[t][:m])  # all real + first m
    assert generations.mix_count(100, 0.29) == 29  # float rounding, as collapse.gaussian

    items, source = training_set("accumulate", real, synthetic, t)
    assert counts(source) == {REAL: N, **{g: N for g in range(t + 1)}}
    assert origin(items) == source.tolist() and len(set(items.tolist())) == N * (t + 2)


def test_accumulate_subsample_is_a_fresh_uniform_subset_of_the_pool():
    real, synthetic = toy_data(4)
    for t in range(5):
        items, source = training_set("accumulate_subsample", real, synthetic, t, seed=7)
        assert len(items) == N and len(set(items.tolist())) == N       # default size n, no repeats
        assert set(origin(items)) <= {REAL, *range(t + 1)} and origin(items) == source.tolist()
        again, _ = training_set("accumulate_subsample", real, synthetic, t, seed=7)
        assert torch.equal(items, again)                                # a function of (seed, t)
    a, _ = training_set("accumulate_subsample", real, synthetic, 4, seed=7)
    b, _ = training_set("accumulate_subsample", real, synthetic, 4, seed=8)
    assert not torch.equal(a, b)
    items, source = training_set("accumulate_subsample", real, synthetic, 1, subsample_size=25)
    assert len(items) == 25
    items, source = training_set("accumulate_subsample", real, synthetic, 1, subsample_size=1000)
    assert counts(source) == {REAL: N, 0: N, 1: N}                      # capped at the pool
    # uniform over the pool: each source's share of 2000 draws is near 1/(t+2)
    shares = torch.cat([training_set("accumulate_subsample", real, synthetic, 3, seed=s)[1] for s in range(400)])
    assert all(abs(c / len(shares) - 0.2) < 0.03 for c in counts(shares).values())


def test_sizes_agree_with_the_gaussian_model_and_missing_inputs_are_named():
    for policy in POLICIES:
        cfg = GaussianConfig(n=N, generations=4, policy=policy, mix_ratio=0.3)
        real, synthetic = toy_data(3)
        sizes = [len(training_set(policy, real, synthetic, t, mix_ratio=0.3)[0]) for t in range(4)]
        assert [N] + sizes == train_sizes(cfg).tolist(), policy
    assert sources("replace", 4) == [4] and sources("mix", 4) == [4]
    assert sources("accumulate", 2) == [0, 1, 2] == sources("accumulate_subsample", 2)
    real, synthetic = toy_data(1)
    with pytest.raises(ValueError, match=r"needs the samples of generations \[0, 1, 2\]; missing \[2\]"):
        training_set("accumulate", real, synthetic, 2)


# ---------------------------------------------------------------- the chain plan

@pytest.fixture
def grids(tmp_path, monkeypatch):
    """A private grid folder (COLLAPSE_GRID_DIR) for grids only the tests use."""
    folder = tmp_path / "grids"
    folder.mkdir()
    monkeypatch.setenv("COLLAPSE_GRID_DIR", str(folder))

    def add(name, text):
        (folder / f"{name}.yaml").write_text(text)
        return str(folder)
    return add


def kinds(p):
    out = {}
    for s in p.stages.values():
        out.setdefault(s.kind, []).append(s)
    return out


def test_vae_generations_grid_plan_shares_teachers_and_prefixes():
    p = plan.build(load_sweep(["grid=vae_generations", "cluster=local"]))
    k = kinds(p)
    assert p.shape == "chains" and len(p.points) == 12                   # 2 policies x 2 distill x 3 seeds
    assert len(k["teacher"]) == 3 and len(k["synth"]) == 3               # one per seed, shared by 4 chains
    assert len(k["generation"]) == 120 and len(k["eval"]) == 123
    # the same teachers as the one-generation grids: keys do not see generations or distill.*
    one = plan.build(load_sweep(["grid=vae_smoke3", "seeds=[0,1,2]", "cluster=local"]))
    assert {s.key for s in k["teacher"]} == {s.key for s in one.stages.values() if s.kind == "teacher"}
    by = {(pt["label"]["generations.data"], pt["label"]["generations.distill"], pt["label"]["train.seed"]): pt
          for pt in p.points}
    plain, distilled = by["replace", "none", 0], by["replace", "teacher", 0]
    assert plain["models"][0] == distilled["models"][0] and plain["evals"][0] == distilled["evals"][0]
    assert plain["models"][1] != distilled["models"][1]
    # a shorter chain is a prefix of the longer one: same keys, nothing new to run
    short = plan.build(load_sweep(["grid=vae_generations", "generations.count=3", "cluster=local"]))
    for pt in short.points:
        lab = pt["label"]
        long = by[lab["generations.data"], lab["generations.distill"], lab["train.seed"]]
        assert pt["models"] == long["models"][:4] and pt["evals"] == long["evals"][:4]
    # deps: replace reads generation t's samples; accumulate every generation's; distill reads M0
    stages = p.stages
    gen3 = stages[by["accumulate", "teacher", 1]["models"][3]]
    assert gen3.deps == {"data.0": stages[gen3.deps["data.0"]].key, "data.1": by["accumulate", "teacher", 1]["models"][1],
                         "data.2": by["accumulate", "teacher", 1]["models"][2],
                         "distill_from": by["accumulate", "teacher", 1]["models"][0]}
    assert stages[gen3.deps["data.0"]].kind == "synth"
    assert stages[by["replace", "none", 2]["models"][5]].deps == {"data.4": by["replace", "none", 2]["models"][4]}
    plain = stages[by["replace", "none", 2]["models"][5]].config["distill"]
    assert {k: plain[k] for k in ("lam", "beta", "gamma")} == {"lam": 0.0, "beta": 0.0, "gamma": 0.0}


def test_distill_modes_share_generation_one_and_unused_knobs_stay_out_of_keys(grids):
    grids("chains_all", "experiment: vae_mnist\nseeds: [0]\noverrides: {generations.count: 3, distill.lam: 1.0}\n"
          "axes:\n  generations.data: [replace, mix, accumulate_subsample]\n"
          "  generations.distill: [none, teacher, previous]\n")
    p = plan.build(load_sweep(["grid=chains_all", "cluster=local"]))
    by = {(pt["label"]["generations.data"], pt["label"]["generations.distill"]): pt for pt in p.points}
    for policy in ("replace", "mix", "accumulate_subsample"):
        teacher, previous = by[policy, "teacher"], by[policy, "previous"]
        assert teacher["models"][1] == previous["models"][1]          # both distil generation 1 from M0
        assert teacher["models"][2] != previous["models"][2]
        assert p.stages[previous["models"][3]].deps["distill_from"] == previous["models"][2]
    assert len({pt["models"][0] for pt in p.points}) == 1
    # mix_ratio changes mix chains only; subsample_size changes accumulate_subsample chains only
    q = plan.build(load_sweep(["grid=chains_all", "cluster=local", "generations.mix_ratio=0.25",
                               "generations.subsample_size=100"]))
    byq = {(pt["label"]["generations.data"], pt["label"]["generations.distill"]): pt for pt in q.points}
    for mode in ("none", "teacher", "previous"):
        assert byq["replace", mode]["models"] == by["replace", mode]["models"]
        assert byq["mix", mode]["models"][1] != by["mix", mode]["models"][1]
        assert byq["accumulate_subsample", mode]["models"][1] != by["accumulate_subsample", mode]["models"][1]


BAD = [
    (["grid=vae_generations", "generations.count=0"], "key 'generations.count': value 0 is not allowed"),
    (["grid=vae_generations", "generations.mix_ratio=1.5"], "key 'generations.mix_ratio': value 1.5"),
    (["grid=vae_generations", "generations.data=shuffle"],
     "key 'generations.data': value 'shuffle' is not allowed; expected one of: replace, mix, accumulate"),
    (["grid=vae_generations", "generations.distill=sideways"], "key 'generations.distill': value 'sideways'"),
    (["grid=gaussian_generations", "generations.distill=teacher"],
     "key 'generations.distill': value 'teacher' is not allowed; expected one of: none (task gaussian)"),
    (["grid=vae_generations", "distill.lam=0", "distill.beta=0", "distill.gamma=0"],
     "expected 'none' when every distill.* coefficient is 0"),
    (["grid=vae_smoke3", "generations.data=accumulate"], "expected 'replace' unless generations.count is set"),
    (["grid=vae_generations", "synth.size=100"], "key 'synth.size': value 100"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[a[-1] for a, _ in BAD])
def test_bad_input_is_one_clear_line_and_nothing_is_written(tmp_path, capsys, argv, message):
    from collapse.launch import launch as launch_here
    root = tmp_path / "results"
    assert launch_here([*argv, "cluster=local", f"results_root={root}"], out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not root.exists()


# ---------------------------------------------------------------- the report's arithmetic

def test_chain_report_pairs_seeds_for_the_distillation_effect(tmp_path):
    values = {("none", 0): [10, 8, 6], ("none", 1): [12, 9, 7], ("teacher", 0): [10, 7, 4], ("teacher", 1): [12, 8, 6]}
    points, by_key = [], {}
    for (mode, seed), vals in values.items():
        keys = [f"{mode}{seed}g{t}" for t in range(3)]
        for key, v in zip(keys, vals):
            by_key[key] = {"key": key, "status": "done", "metrics": {"test_loss": float(v)}}
        points.append({"label": {"generations.data": "accumulate", "generations.distill": mode, "train.seed": seed},
                       "evals": keys, "models": keys})
    sweep = {"config": {"task": "vae", "plan": "chains", "points": points}}
    assert chains.handles(sweep)
    chains.write_chains(SweepView("toy", "vae", sweep, by_key, tmp_path, tmp_path, VAE_PRIMARY))
    rows = {r["distill"]: r for r in csv.DictReader(open(tmp_path / "toy.csv"))}
    assert float(rows["none"]["L_M(Test)"]) == 6.5 and float(rows["teacher"]["L_M(Test)"]) == 5.0
    assert float(rows["teacher"]["distill_effect"]) == -1.5                  # mean of (4-6, 6-7)
    assert float(rows["teacher"]["mean_effect_gens_1..2"]) == pytest.approx(-1.25)  # seeds: (-1-2)/2, (-1-1)/2
    assert rows["none"]["M0 (gen 0)"] == "11.000"
    md = (tmp_path / "toy.md").read_text()
    assert "## Does distillation still help?" in md and "-1.5" in md
    long = list(csv.DictReader(open(tmp_path / "toy_by_generation.csv")))
    assert len(long) == 6 and (tmp_path / "toy_by_generation.png").stat().st_size > 1000


# ---------------------------------------------------------------- end to end

def records(root):
    return {r["key"]: r for r in manifest.read_all(root)}


@pytest.mark.slow
def test_tiny_vae_chain_runs_shares_its_prefix_and_relaunches_nothing(tmp_path, tiny, grids):
    grids("chain_tiny", "experiment: vae_mnist\nseeds: [0]\n"
                     "overrides: {generations.count: 3, generations.data: accumulate, distill.lam: 1.0}\n"
                     "axes:\n  generations.distill: [teacher, previous]\n")
    root = tmp_path / "r"
    out = launch("grid=chain_tiny", f"results_root={root}", *tiny)
    # teacher, synth, eval; generation 1 (+eval) shared; generations 2-3 (+evals) per chain
    assert "14 stages, 0 already done, 14 to run on local" in out.stdout, out.stdout   # + the report
    recs = records(root)
    assert all(r["status"] == "done" for r in recs.values()), [r.get("error") for r in recs.values()]
    stage = {k: [r for r in recs.values() if r.get("kind") == k] for k in ("teacher", "synth", "generation", "eval")}
    assert [len(stage[k]) for k in ("teacher", "synth", "generation", "eval")] == [1, 1, 5, 6]
    gens = {(r["metrics"]["generation"], r["deps"].get("distill_from")): r for r in stage["generation"]}
    teacher = stage["teacher"][0]["key"]
    g1 = gens[1, teacher]
    assert g1["metrics"]["composition"] == {"real": 256, "0": 256} and g1["deps"]["data.0"] == stage["synth"][0]["key"]
    g2_prev = next(r for (t, _), r in gens.items() if t == 2 and r["deps"]["distill_from"] == g1["key"])
    g3_prev = gens[3, g2_prev["key"]]
    assert g3_prev["metrics"]["composition"] == {"real": 256, "0": 256, "1": 256, "2": 256}
    assert g3_prev["deps"] == {"data.0": stage["synth"][0]["key"], "data.1": g1["key"], "data.2": g2_prev["key"],
                               "distill_from": g2_prev["key"]}
    g3_teacher = next(r for (t, d), r in gens.items() if t == 3 and d == teacher)
    assert g3_teacher["metrics"]["train_size"] == 1024 and g3_teacher["key"] != g3_prev["key"]
    from collapse.run import artifact
    from collapse.storage import load_tensors
    data = load_tensors(artifact(root, g3_prev, "data"))["data"]
    assert data.shape == (256, 32, 32) and data.dtype == torch.uint8

    table = list(csv.DictReader(open(root / "report" / "chain_tiny.csv")))
    assert [(r["distill"], r["generation"], r["status"]) for r in table] == [("teacher", "3", "done"),
                                                                            ("previous", "3", "done")]
    evals = {r["deps"]["model"]: r["metrics"]["test_loss"] for r in stage["eval"]}
    assert float(table[1]["L_M(Test)"]) == pytest.approx(evals[g3_prev["key"]], abs=1e-3)
    assert (root / "report" / "chain_tiny_by_generation.png").stat().st_size > 1000
    sweep = next(r for r in recs.values() if r.get("kind") == "sweep")   # the strip: a row per policy x distill
    cells = chains.sample_cells(sweep, recs, root)                          # a column per generation, the evals' pictures
    assert [(label.splitlines()[1], len(row)) for label, row in cells] == [("distilled from teacher", 4),
                                                                            ("distilled from previous", 4)]
    pictures = {root / r["artifacts"]["samples"]["path"] for r in stage["eval"]}
    assert all(c in pictures for _, row in cells for c in row) and cells[0][1][0] == cells[1][1][0]   # M0 shared
    assert (root / "report" / "chain_tiny_samples_by_generation.pdf").read_bytes().startswith(b"%PDF-")

    again = launch("grid=chain_tiny", f"results_root={root}", *tiny)
    assert "14 stages, 14 already done, 0 to run" in again.stdout
    shorter = launch("grid=chain_tiny", f"results_root={root}", "generations.count=2", *tiny)
    assert "10 stages, 9 already done, 1 to run" in shorter.stdout   # a prefix of the G=3 chains; its own report


@pytest.mark.slow
def test_gaussian_grid_runs_one_stage_per_policy_and_reports_measured_vs_closed_form(tmp_path):
    root = tmp_path / "g"
    out = launch("grid=gaussian_generations", "cluster=local", "gaussian.chains=400", "generations.count=20",
                 f"results_root={root}")
    assert "9 stages, 0 already done, 9 to run" in out.stdout
    recs = [r for r in records(root).values() if r.get("kind") == "gaussian"]
    assert len(recs) == 8 and all(r["status"] == "done" for r in recs)
    from collapse.experiment import from_dict
    from collapse.tasks.gaussian import toy_config
    for r in recs:
        m = r["metrics"]
        toy = toy_config(from_dict(r["config"]))
        assert toy.generations == 20 and toy.seeds == 400 and toy.n == 50
        assert m["sigma2_closed_form"] == pytest.approx(expected_sigma2(toy).tolist(), rel=1e-12)
        z = (np.array(m["sigma2_mean"]) - np.array(m["sigma2_closed_form"])) / np.array(m["sigma2_se"])
        assert np.abs(z).max() < 5, (r["name"], z)
        assert m["sigma2_q05"][-1] <= m["sigma2_q50"][-1] <= m["sigma2_q95"][-1]
        assert m["simulate_seconds"] < 5
    table = {(r["data"], r["estimator"]): r for r in csv.DictReader(open(root / "report" / "gaussian_generations.csv"))}
    assert len(table) == 8
    replace = table["replace", "mle"]
    assert float(replace["closed_form_E[sigma2_G]"]) == pytest.approx((49 / 50) ** 21, abs=1e-4)
    assert float(table["accumulate", "mle"]["measured_mean"]) > 0.9 > float(replace["measured_mean"])
    md = (root / "report" / "gaussian_generations.md").read_text()
    assert "measured against closed form" in md and "closed_form_E[sigma2_G]" in md
    assert (root / "report" / "gaussian_generations_by_generation.png").stat().st_size > 1000
    sweep = next(r for r in records(root).values() if r.get("kind") == "sweep")
    assert sweep["config"]["plan"] == "gaussian"
