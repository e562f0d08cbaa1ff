"""Issue 20: the VAE's readings of the paper (model.likelihood, model.kl_weight, distill.variance_term)
as config settings, today's reading the default and its stage keys unchanged."""
import dataclasses

import pytest
import torch

from collapse.config import ConfigError, load_yaml
from collapse.experiment import from_dict
from collapse.device import StepNoise
from collapse.grid import load_sweep
from collapse.models.vae import VAE
from collapse.plan import build
from collapse.tasks import vae

# Computed with the code before these settings existed (commit b1b0031), grid vae_coeffs_key, seed 0.
KEYS_BEFORE = {
    "pixel": {"teacher[seed=0]": "dcfefa83fa51194f", "synth[seed=0]": "6fbddf957ed2a8b1",
              "student[lam=0.5,beta=1,gamma=1,seed=0]": "b8fb6fb7a120079c",
              "student[lam=0,beta=1,gamma=1,seed=0]": "f37e1944e2e30729",
              "student[lam=0.5,beta=0,gamma=1,seed=0]": "adaa994731941b71",
              "student[lam=0.5,beta=1,gamma=0,seed=0]": "6db6b774206207b5",
              "student[lam=0,beta=0,gamma=0,seed=0]": "ed4dfdbf51b80afc"},
    "sum": {"teacher[seed=0]": "1e5e1d027dce9fd7", "synth[seed=0]": "691af63435e1bf15",
            "student[lam=0.5,beta=1,gamma=1,seed=0]": "4f8ca2a72b2f0572",
            "student[lam=0,beta=1,gamma=1,seed=0]": "acf852849cbae7cd",
            "student[lam=0.5,beta=0,gamma=1,seed=0]": "95854e7d3c4a0ba4",
            "student[lam=0.5,beta=1,gamma=0,seed=0]": "a5d6e4cce66cfab3",
            "student[lam=0,beta=0,gamma=0,seed=0]": "f53967c6f256a049"},
}
READINGS = {"today": {}, "gaussian": {"likelihood": "gaussian"}, "kl": {"kl_weight": 0.1},
            "var": {"variance_term": "var"}}
GRIDS = {"gaussian": {"model.likelihood": "gaussian"}, "var": {"distill.variance_term": "var"}}


TODAY = ["grid=vae_coeffs_key", "seeds=[0]", "model.kl_weight=1.0"]   # the paper grids now set reading (c)


def keys(argv):
    plan = build(load_sweep(argv))
    return {s.name: s.key for s in plan.stages.values() if s.kind in ("teacher", "synth", "student")}


@pytest.mark.parametrize("reduction", ["pixel", "sum"])
def test_todays_reading_keeps_its_stage_keys(reduction):
    assert keys([*TODAY, f"train.reduction={reduction}"]) == KEYS_BEFORE[reduction]
    explicit = ["model.likelihood=bernoulli", "distill.variance_term=logvar"]
    assert keys([*TODAY, f"train.reduction={reduction}", *explicit]) == KEYS_BEFORE[reduction]


def test_the_paper_grids_run_reading_c_the_kl_weight_of_the_readings_study():
    assert load_sweep(["grid=vae_coeffs"]).points[0].config.model.kl_weight == 0.1
    assert keys(["grid=vae_coeffs_key", "seeds=[0]"]) == keys(["grid=vae_readings_kl"])


def test_each_other_reading_gets_keys_of_its_own():
    today = KEYS_BEFORE["pixel"]
    for over in ("model.likelihood=gaussian", "model.kl_weight=0.1"):
        got = keys([*TODAY, over])
        assert got["teacher[seed=0]"] != today["teacher[seed=0]"]
        assert not set(got.values()) & set(today.values())
    got = keys([*TODAY, "distill.variance_term=var"])
    assert got["teacher[seed=0]"] == today["teacher[seed=0]"] and got["synth[seed=0]"] == today["synth[seed=0]"]
    assert all(got[n] != today[n] for n in today if n.startswith("student"))   # the teacher does not read it


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_reading_grids_set_their_reading_on_vae_coeffs_key_rows(grid):
    sweep = load_sweep([f"grid=vae_readings_{grid}"])
    key_rows = load_sweep(TODAY)
    assert [p.label for p in sweep.points] == [p.label for p in key_rows.points]
    for point in sweep.points:
        for dotted, value in GRIDS[grid].items():
            section, name = dotted.split(".")
            assert getattr(getattr(point.config, section), name) == value
        assert point.config.train.epochs == 70 and point.config.train.reduction == "pixel"


def test_kl_reading_grid_sets_a_kl_weight_below_one():
    weight = {p.config.model.kl_weight for p in load_sweep(["grid=vae_readings_kl"]).points}
    assert len(weight) == 1 and 0 < weight.pop() < 1


def config(reading: str, **over):
    base = load_yaml(vae.__file__.replace("collapse/tasks/vae.py", "configs/experiment/vae_mnist.yaml"), "experiment")
    r = READINGS[reading]
    model = {**base["model"], "hidden": 32, **{k: v for k, v in r.items() if k in ("likelihood", "kl_weight")}}
    distill = {**base.get("distill", {}), **{k: v for k, v in r.items() if k == "variance_term"}, **over}
    return from_dict({**base, "model": model, "distill": distill})


def images(n, seed):
    """Smooth blobs in [0, 1]: something a small VAE learns in a few steps."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, 1, 1, generator=g) * 16 + 8
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    return torch.exp(-((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2) / 30).reshape(n, -1)


def steps(model, cfg, teacher_out=None, n=40):
    x = images(64, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(n):
        loss, _ = vae.loss(model, x, StepNoise(torch.Generator().manual_seed(step), len(x)), cfg, teacher_out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("reading", sorted(READINGS))
def test_each_reading_trains_and_its_loss_falls(reading):
    torch.manual_seed(0)
    cfg = config(reading, lam=0.5, beta=1.0, gamma=1.0)
    teacher = vae.build_model(cfg)
    steps(teacher, dataclasses.replace(cfg, distill=type(cfg.distill)()))
    teacher.eval()
    with torch.no_grad():
        t = vae.teacher_outputs(teacher, images(64, 0))
    plain = steps(vae.build_model(cfg), cfg)                 # a teacher / M1: plain L_VAE
    distilled = steps(vae.build_model(cfg), cfg, t)          # a distilled student: L_SD
    for losses in (plain, distilled):
        assert all(map(torch.isfinite, map(torch.tensor, losses)))
        assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def hand_terms(s, x, t, likelihood, kl_weight, pixels=1024):
    """eq. (1)'s L_VAE terms under `pixel`, written out: reconstruction + kl_weight * KL per pixel."""
    y = torch.sigmoid(s.logits)
    kl = (-0.5 * (1 + s.logvar - s.mean ** 2 - s.logvar.exp())).sum(1)

    def rec(target):
        if likelihood == "gaussian":
            return 0.5 * ((y - target) ** 2).sum(1)
        return torch.nn.functional.binary_cross_entropy_with_logits(s.logits, target, reduction="none").sum(1)
    return lambda target: ((rec(target) + kl_weight * kl) / pixels).mean()


@pytest.mark.parametrize("reading", sorted(READINGS))
def test_student_loss_is_eq1_written_out_under_each_reading(reading):
    torch.manual_seed(0)
    cfg = config(reading, lam=0.7, beta=3.0, gamma=0.5)
    student, teacher = VAE(hidden=16, latent=20), VAE(hidden=16, latent=20)
    x = torch.rand(8, 1024)
    with torch.no_grad():
        t = vae.teacher_outputs(teacher, x)
    got, _ = vae.loss(student, x, StepNoise(torch.Generator().manual_seed(1), 8), cfg, t)
    s = student(x, torch.randn(8, 20, generator=torch.Generator().manual_seed(1)))
    l_vae = hand_terms(s, x, t, cfg.model.likelihood, cfg.model.kl_weight)
    v = (lambda a: a.exp()) if cfg.distill.variance_term == "var" else (lambda a: a)
    by_hand = (l_vae(x) + 0.7 * l_vae(t.probs) + 3.0 * ((s.mean - t.mean) ** 2).mean()
               + 0.5 * ((v(s.logvar) - v(t.logvar)) ** 2).mean())
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-5)


@pytest.mark.parametrize("reading", sorted(READINGS))
def test_reported_test_loss_is_the_plain_l_vae(reading):
    """L_M(Test) is L_VAE on the real test items, never L_SD: under `gaussian` the folded lambda-term
    would be lower by a constant, so the reported value must not come from it."""
    torch.manual_seed(0)
    cfg = config(reading, lam=0.5, beta=1.0, gamma=1.0)
    model = vae.build_model(cfg).eval()
    data = (images(50, 3) * 255).round().to(torch.uint8).reshape(50, 32, 32)
    got = vae.evaluate(model, data, cfg)
    x = vae.batch(data, torch.arange(50))
    with torch.no_grad():
        s = model(x, StepNoise(torch.Generator().manual_seed(vae.EVAL_SEED), 50).randn(model.latent))
        plain = hand_terms(s, x, None, cfg.model.likelihood, cfg.model.kl_weight)(x)
        recon = hand_terms(s, x, None, cfg.model.likelihood, 0.0)(x)
    assert got["test_loss"] == pytest.approx(plain.item(), rel=1e-5)
    assert got["test_recon"] == pytest.approx(recon.item(), rel=1e-5)
    assert got["test_loss"] == pytest.approx(got["test_recon"] + cfg.model.kl_weight * got["test_kl"], rel=1e-5)


def test_todays_reading_computes_the_same_numbers_as_before():
    """The default path is today's arithmetic: one folded BCE pass, KL weight 1 exactly."""
    torch.manual_seed(0)
    logits, target, mean, logvar = torch.randn(4, 1024), torch.rand(4, 1024), torch.randn(4, 20), torch.randn(4, 20)
    recon = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp())
    assert torch.equal(vae.vae_loss(logits, target, mean, logvar, "pixel"), (recon + kl) / (4 * 1024))


@pytest.mark.parametrize("key, value, allowed", [
    ("model.likelihood", "laplace", "one of: bernoulli, gaussian"),
    ("model.kl_weight", -0.5, "a finite float >= 0"),
    ("model.kl_weight", "half", "a number"),
    ("distill.variance_term", "std", "one of: logvar, var"),
])
def test_bad_readings_are_one_line_errors(key, value, allowed):
    section, name = key.split(".")
    with pytest.raises(ConfigError) as e:
        from_dict({"task": "vae", section: {name: value}})
    message = str(e.value)
    assert "\n" not in message and f"'{key}'" in message and repr(value) in message and allowed in message
