"""Issue 28's readings as settings: R1 (distill.kl_weight=lambda), R3 (data.range=[-1, 1] with the
Gaussian reconstruction) and Bernoulli D_M0 (synth.binarize) under the per-pixel reading; today's keys
unchanged at their defaults."""
import pytest
import torch

from collapse.config import ConfigError, load_yaml
from collapse.device import StepNoise
from collapse.experiment import from_dict
from collapse.grid import load_sweep
from collapse.models.vae import VAE
from collapse.plan import build
from collapse.tasks import vae

# Reading (a) at seed 0, grid vae_coeffs_key (tests/test_vae_readings.py KEYS_BEFORE["pixel"]).
TEACHER_A, SYNTH_A, M1_A = "dcfefa83fa51194f", "6fbddf957ed2a8b1", "ed4dfdbf51b80afc"
KEY_ROWS = ["grid=vae_coeffs_key", "seeds=[0]", "model.kl_weight=1.0"]


def keys(argv):
    return {s.name: s.key for s in build(load_sweep(argv)).stages.values()}


def config(**sections):
    base = load_yaml(vae.__file__.replace("collapse/tasks/vae.py", "configs/experiment/vae_mnist.yaml"), "experiment")
    for name, over in sections.items():
        base[name] = {**base.get(name, {}), **over}
    base["model"] = {**base["model"], "hidden": 16}
    return from_dict(base)


def batch_and_teacher(n=8):
    torch.manual_seed(0)
    x = torch.rand(n, 1024)
    with torch.no_grad():
        t = vae.teacher_outputs(VAE(hidden=16), x)
    return x, t


def student_loss(cfg, x, t):
    torch.manual_seed(1)
    student = VAE(hidden=16)
    return vae.loss(student, x, StepNoise(torch.Generator().manual_seed(1), len(x)), cfg, t)[0].item(), student


def test_defaults_spelled_out_keep_todays_keys():
    today = keys(KEY_ROWS)
    assert today["teacher[seed=0]"] == TEACHER_A and today["synth[seed=0]"] == SYNTH_A
    assert keys([*KEY_ROWS, "distill.kl_weight=model", "data.range=[0,1]"]) == today


def test_r1_changes_only_distilled_students_and_the_grid_keeps_m1_and_m0_of_reading_a():
    today = keys(KEY_ROWS)
    r1 = keys([*KEY_ROWS, "distill.kl_weight=lambda"])
    assert r1["teacher[seed=0]"] == TEACHER_A and r1["synth[seed=0]"] == SYNTH_A
    assert all(r1[n] != today[n] for n in today if n.startswith("student[lam=0.5"))
    grid = keys(["grid=vae_readings_r1"])
    assert grid["teacher[seed=0]"] == TEACHER_A
    assert grid["student[lam=0,beta=0,gamma=0,kl_weight=model,seed=0]"] == M1_A
    points = load_sweep(["grid=vae_readings_r1"]).points
    assert sorted((p.config.distill.lam, p.config.distill.beta, p.config.distill.gamma) for p in points) == sorted(
        [(0, 0, 0), (.5, 1, 1), (.5, 0, 1), (.5, 1, 0), (0, 1, 1), (1, 1, 1), (.5, .5, 1), (.25, 1, 1), (.5, 1, .25)])
    assert {p.config.distill.kl_weight for p in points if p.config.distill.lam + p.config.distill.beta} == {"lambda"}


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_r1_trains_a_distilled_student_at_kl_weight_lam(lam):
    """L_SD under R1 is L_SD with model.kl_weight = lam, in both L_VAE terms."""
    x, t = batch_and_teacher()
    coeffs = {"lam": lam, "beta": 1.0, "gamma": 1.0}
    r1, _ = student_loss(config(distill={**coeffs, "kl_weight": "lambda"}), x, t)
    as_weight, _ = student_loss(config(distill=coeffs, model={"kl_weight": lam}), x, t)
    weight_1, _ = student_loss(config(distill=coeffs), x, t)
    assert r1 == pytest.approx(as_weight, rel=1e-6)
    assert (r1 == pytest.approx(weight_1, rel=1e-6)) == (lam == 1.0)


def test_r1_keeps_m1_and_l_m_test_at_the_experiments_weight():
    """No teacher (M1, a teacher, L_M(Test) and so the best epoch): model.kl_weight, whatever distill.kl_weight."""
    x, _ = batch_and_teacher()
    r1 = config(distill={"lam": 0.25, "beta": 1.0, "gamma": 1.0, "kl_weight": "lambda"})
    plain = config(distill={"lam": 0.25, "beta": 1.0, "gamma": 1.0})
    assert student_loss(r1, x, None)[0] == student_loss(plain, x, None)[0]
    model = VAE(hidden=16).eval()
    data = (x[:6] * 255).round().to(torch.uint8).reshape(6, 32, 32)
    assert vae.evaluate(model, data, r1) == vae.evaluate(model, data, plain)


@pytest.mark.parametrize("value, allowed", [("lam", "one of: model, lambda"), (0.5, "a string")])
def test_r1_bad_values_are_one_line_errors(value, allowed):
    with pytest.raises(ConfigError) as e:
        from_dict({"task": "vae", "distill": {"kl_weight": value}})
    assert "\n" not in str(e.value) and "'distill.kl_weight'" in str(e.value) and allowed in str(e.value)


@pytest.mark.parametrize("over, allowed", [
    ({"data": {"range": [0, 2]}}, "[0, 1] or [-1, 1]"),
    ({"data": {"range": [-1, 1]}}, "[0, 1] under model.likelihood=bernoulli"),
])
def test_r3_bad_ranges_are_one_line_errors(over, allowed):
    with pytest.raises(ConfigError) as e:
        from_dict({"task": "vae", **over})
    assert "\n" not in str(e.value) and "'data.range'" in str(e.value) and allowed in str(e.value)


def test_r3_sees_and_reconstructs_pixels_on_minus_one_to_one():
    """The model's input is 2x - 1; the reconstruction is 0.5 ||(2 sigmoid(logits) - 1) - (2x - 1)||^2."""
    x, t = batch_and_teacher()
    cfg = config(data={"range": [-1.0, 1.0]}, model={"likelihood": "gaussian"}, distill={"lam": 0.5})
    got, student = student_loss(cfg, x, t)
    s = student(2 * x - 1, torch.randn(len(x), 20, generator=torch.Generator().manual_seed(1)))
    y = 2 * torch.sigmoid(s.logits) - 1
    kl = (-0.5 * (1 + s.logvar - s.mean ** 2 - s.logvar.exp())).sum(1)
    l_vae = lambda target: ((0.5 * ((y - (2 * target - 1)) ** 2).sum(1) + kl) / 1024).mean()  # noqa: E731
    assert got == pytest.approx((l_vae(x) + 0.5 * l_vae(t.probs)).item(), rel=1e-5)
    unit = config(model={"likelihood": "gaussian"}, distill={"lam": 0.5})
    assert abs(student_loss(unit, x, t)[0] - got) > 1e-3 * got   # not the [0, 1] reading's number


def test_r3_gets_keys_of_its_own_and_its_grid_sets_it():
    today = keys(KEY_ROWS)
    r3 = keys([*KEY_ROWS, "data.range=[-1,1]", "model.likelihood=gaussian"])
    assert not set(r3.values()) & set(today.values())
    for p in load_sweep(["grid=vae_readings_r3"]).points:
        assert p.config.data.range == [-1.0, 1.0] and p.config.model.likelihood == "gaussian"
        assert p.config.train.epochs == 70 and p.config.model.kl_weight == 1.0


def test_bernoulli_d_m0_under_the_per_pixel_reading_shares_the_teacher_and_draws_binary_images():
    grid = keys(["grid=vae_readings_binary"])
    assert grid["teacher[seed=0]"] == TEACHER_A and grid["synth[seed=0]"] != SYNTH_A
    cfg = load_sweep(["grid=vae_readings_binary"]).points[0].config
    assert cfg.synth.binarize and cfg.train.reduction == "pixel"
    images = vae.sample(VAE(hidden=16), 200, torch.Generator().manual_seed(0), cfg)
    assert set(images.unique().tolist()) == {0, 255}


@pytest.mark.parametrize("full, nine", [("vae_coeffs_r1", "vae_readings_r1"), ("vae_coeffs_r1_r3", "vae_readings_r1_r3")])
def test_the_16_row_grids_of_a_reading_contain_its_nine_row_grid_at_seed_0(full, nine):
    big, small = keys([f"grid={full}"]), keys([f"grid={nine}"])
    assert len([n for n in big if n.startswith("student")]) == 48
    assert {n: k for n, k in small.items() if not n.startswith("report")}.items() <= big.items()
