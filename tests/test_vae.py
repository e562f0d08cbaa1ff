"""The VAE task: the model's size, the loss terms against hand-computed values, teacher frozen."""
import math
from types import SimpleNamespace

import pytest
import torch

from collapse import train
from collapse.experiment import from_dict
from collapse.tasks.base import add_terms, distills, loss_form
from collapse.device import StepNoise
from collapse.data.mnist import PACKAGE_SIZES, load_mnist
from collapse.models import outputs
from collapse.models.vae import VAE, VAEOutput
from collapse.tasks import vae


def coeffs(lam=0.0, beta=0.0, gamma=0.0):
    return SimpleNamespace(lam=lam, beta=beta, gamma=gamma)


def noise(seed, n):
    return StepNoise(torch.Generator().manual_seed(seed), n)


def cfg_with(c=None, reduction="sum"):
    """What vae.loss reads of an experiment config: the coefficients and the reduction."""
    return SimpleNamespace(distill=c or coeffs(), train=SimpleNamespace(reduction=reduction))


def test_parameter_count_is_the_papers_887k():
    n = sum(p.numel() for p in VAE().parameters())
    assert n == 887_264
    assert abs(n - 887_000) / 887_000 < 0.01


def test_real_mnist_is_60k_train_10k_test_padded_to_32():
    train_x, test_x = load_mnist("train"), load_mnist("test")
    assert train_x.shape == (60_000, 32, 32) and test_x.shape == (10_000, 32, 32)
    assert (len(train_x), len(test_x)) == (PACKAGE_SIZES["train"], PACKAGE_SIZES["test"])   # what launch checks
    assert train_x.dtype == torch.uint8
    assert train_x[:, :2].max() == 0 and train_x[:, :, -2:].max() == 0  # the 2-pixel pad
    assert train_x[:, 2:-2, 2:-2].float().mean().item() == pytest.approx(33.32, abs=0.01)  # MNIST's mean grey


def test_model_maps_32x32_images_to_32x32_logits():
    model = VAE()
    out = model(torch.rand(5, 1024), torch.randn(5, 20))
    assert out.logits.shape == (5, 1024) and out.mean.shape == (5, 20) and out.logvar.shape == (5, 20)


def test_vae_loss_matches_hand_computation():
    logits = torch.tensor([[0.0, 2.0]])
    target = torch.tensor([[1.0, 0.0]])
    mean, logvar = torch.tensor([[1.0]]), torch.tensor([[0.0]])
    # BCE: -log(sigmoid(0)) - log(1 - sigmoid(2)) = log 2 + log(1 + e^2); KL: 0.5 * (mu^2 + e^lv - 1 - lv) = 0.5
    expected = math.log(2) + math.log(1 + math.e ** 2) + 0.5
    assert vae.vae_loss(logits, target, mean, logvar).item() == pytest.approx(expected, rel=1e-6)


def test_encoder_terms_match_hand_computation():
    student = VAEOutput(None, torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]))
    teacher = vae.TeacherOutput(None, torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 3.0]]))
    c = coeffs(lam=2.0, beta=3.0, gamma=0.5)
    total = add_terms(torch.zeros(()), vae.DISTILL_TERMS, c, student, teacher, cfg_with(c))
    assert total.item() == pytest.approx(3.0 * (1 + 4) / 2 + 0.5 * (1 + 9) / 2, rel=1e-6)   # lam: in the loss
    c = coeffs(lam=1.0)   # no outputs: a computed encoder term would raise
    assert add_terms(torch.zeros(()), vae.DISTILL_TERMS, c, None, None, cfg_with(c)).item() == 0.0


def test_one_declaration_of_the_terms_gives_the_loss_m1_and_the_report_columns():
    from collapse import tasks
    assert tasks.get("vae").REPORT_COLUMNS == {"distill.lam": "lambda", "distill.beta": "beta", "distill.gamma": "gamma"}
    assert loss_form(vae.DISTILL_TERMS, coeffs(lam=0.5, beta=1.0, gamma=0.25)) == \
        "L = L_M + 0.5 * distill + 1 * mse_means + 0.25 * mse_variances"
    assert loss_form(vae.DISTILL_TERMS, coeffs()) == "L = L_M"   # M1
    assert not distills(vae, coeffs()) and distills(vae, coeffs(beta=0.5))


def test_student_loss_is_eq1_term_by_term():
    """L_SD with the lam-term folded into one BCE equals eq. (1) written out term by term."""
    torch.manual_seed(0)
    student, teacher = VAE(hidden=16, latent=4), VAE(hidden=16, latent=4)
    x = torch.rand(8, 1024)
    with torch.no_grad():
        t = vae.teacher_outputs(teacher, x)
    c = coeffs(lam=0.7, beta=3.0, gamma=0.5)
    got, out = vae.loss(student, x, noise(1, 8), cfg_with(c), t)
    s = student(x, torch.randn(8, 4, generator=torch.Generator().manual_seed(1)))
    by_hand = (vae.vae_loss(s.logits, x, s.mean, s.logvar)
               + 0.7 * vae.vae_loss(s.logits, t.probs, s.mean, s.logvar)
               + 3.0 * ((s.mean - t.mean) ** 2).mean() + 0.5 * ((s.logvar - t.logvar) ** 2).mean())
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert torch.equal(out.logits, s.logits)


def test_zero_coefficients_give_the_plain_loss():
    torch.manual_seed(0)
    student, teacher = VAE(hidden=16, latent=4), VAE(hidden=16, latent=4)
    x = torch.rand(8, 1024)
    plain = vae.loss(student, x, noise(1, 8), cfg_with())[0]
    zero = vae.loss(student, x, noise(1, 8), cfg_with(coeffs()), vae.teacher_outputs(teacher, x))[0]
    assert torch.equal(plain, zero)
    assert not distills(vae, coeffs()) and distills(vae, coeffs(gamma=0.1))


def test_teacher_receives_no_gradient_and_student_does():
    torch.manual_seed(0)
    student, teacher = VAE(hidden=16, latent=4), VAE(hidden=16, latent=4)
    teacher.requires_grad_(False)
    x = torch.rand(8, 1024)
    with torch.no_grad():
        target = vae.teacher_outputs(teacher, x)
    before = [p.clone() for p in teacher.parameters()]
    vae.loss(student, x, noise(0, 8), cfg_with(coeffs(1.0, 1.0, 1.0)), target)[0].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))


def test_teacher_targets_are_precomputed_exactly():
    torch.manual_seed(0)
    teacher = VAE(hidden=16, latent=4).eval()
    data = torch.randint(0, 256, (50, 32, 32), dtype=torch.uint8)
    cached = train.teacher_targets(vae, teacher, data, None, chunk=16)
    index = torch.tensor([3, 49, 17])
    direct = vae.teacher_outputs(teacher, vae.batch(data, index))
    assert type(cached) is type(direct) is vae.TeacherOutput
    for field in direct._fields:
        assert torch.allclose(getattr(cached, field)[index], getattr(direct, field), atol=1e-6)
    for got, want in zip(outputs.select(cached, index), direct):
        assert torch.allclose(got, want, atol=1e-6)


def test_torchvision_layout_directory_loads_the_same_images(tmp_path):
    import gzip
    import numpy as np
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = load_mnist("test")[:, 2:-2, 2:-2].numpy()[:100]
    header = np.array([2051, len(images), 28, 28], dtype=">i4").tobytes()
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + images.tobytes())
    assert torch.equal(load_mnist("test", str(tmp_path)), load_mnist("test")[:100])
    cfg = from_dict({"data": {"root": str(tmp_path), "test_size": 10}})
    assert vae.real_data(cfg, "test").shape == (10, 32, 32)


def test_synthetic_images_are_grey_means_or_binary_draws():
    torch.manual_seed(0)
    model = VAE(hidden=16, latent=4).eval()
    means = vae.sample(model, 64, torch.Generator().manual_seed(0), SimpleNamespace(synth=SimpleNamespace(binarize=False)))
    binary = SimpleNamespace(synth=SimpleNamespace(binarize=True))
    draws = vae.sample(model, 64, torch.Generator().manual_seed(0), binary)
    assert torch.equal(vae.sample(model, 64, torch.Generator().manual_seed(0), binary, grid=True), means)
    assert means.dtype == draws.dtype == torch.uint8 and means.shape == draws.shape == (64, 32, 32)
    assert set(draws.unique().tolist()) == {0, 255}
    assert len(means.unique()) > 2                       # grey levels
    # each pixel is 255 with the decoder's probability: on average the draws match the means
    assert abs(draws.float().mean() - means.float().mean()) < 5


def test_reductions_are_the_same_loss_on_three_scales():
    """pixel = sum / 1,024 (the paper's per-element scale); element averages BCE over pixels and KL over latents."""
    torch.manual_seed(0)
    logits, target = torch.randn(4, 1024), torch.rand(4, 1024)
    mean, logvar = torch.randn(4, 20), torch.randn(4, 20)
    total = vae.vae_loss(logits, target, mean, logvar, "sum")
    assert vae.vae_loss(logits, target, mean, logvar, "pixel").item() == pytest.approx(total.item() / 1024, rel=1e-6)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
    kl = (-0.5 * (1 + logvar - mean ** 2 - logvar.exp())).mean(1)
    assert vae.vae_loss(logits, target, mean, logvar, "element").item() == pytest.approx((bce + kl).mean().item(),
                                                                                          rel=1e-6)


def test_the_folded_lambda_term_holds_under_the_pixel_reduction():
    torch.manual_seed(0)
    student, teacher = VAE(hidden=16, latent=4), VAE(hidden=16, latent=4)
    x = torch.rand(8, 1024)
    with torch.no_grad():
        t = vae.teacher_outputs(teacher, x)
    c = coeffs(lam=0.5, beta=1.0, gamma=1.0)
    got, _ = vae.loss(student, x, noise(1, 8), cfg_with(c, "pixel"), t)
    s = student(x, torch.randn(8, 4, generator=torch.Generator().manual_seed(1)))
    by_hand = (vae.vae_loss(s.logits, x, s.mean, s.logvar, "pixel")
               + 0.5 * vae.vae_loss(s.logits, t.probs, s.mean, s.logvar, "pixel")
               + ((s.mean - t.mean) ** 2).mean() + ((s.logvar - t.logvar) ** 2).mean())
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-5)
