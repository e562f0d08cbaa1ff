"""DDPM on images: the paper's section 4.2 (CelebA 64x64; offline stand-in: MNIST at 32x32).

L_DDPM = SmoothL1(eps_s, eps)  for x_t = q(x_t | x_0) with t ~ U{0..T-1}, eps ~ N(0, I)
L_SD   = L_DDPM(eps_s, eps) + lam * L_DDPM(eps_s, eps_t) [+ mse * MSE(enc_s, enc_t)]   (eq. 2)
where the frozen teacher sees the same x_t and t as the student (so its output depends on the
step's noise and is computed every step) and enc are the UNets' encoder outputs (the paper's
"0.5 + MSE" row). The schedule and samplers live in collapse/diffusion.py, the network in
collapse/models/unet.py. Data are uint8 [N, C, H, W]; the model sees them in [-1, 1].
"""
import torch
import torch.nn.functional as F

from collapse import diffusion
from collapse.device import StepNoise, device_of, dtype_of
from collapse.models.unet import UNet

EVAL_SEED = 12345
DISTILL_MODES = ("none", "teacher", "previous")
# The teacher's output depends on the step's noise: the loop computes it every step.
TEACHER_OUTPUTS_DETERMINISTIC = False


def build_model(cfg) -> UNet:
    m = cfg.model
    return UNet(image_size=m.image_size, channels=m.channels, block_channels=tuple(m.block_channels),
                attention_level=m.attention_level, layers_per_block=m.layers_per_block, dropout=m.dropout,
                norm_groups=m.norm_groups)


def scheduler(cfg):
    d = cfg.diffusion
    return diffusion.make_scheduler(d.timesteps, d.beta_start, d.beta_end)


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
    eps_s = out["eps"].float()
    total = F.smooth_l1_loss(eps_s, eps)
    if teacher is None:
        return total, out
    coeffs = cfg.distill
    if coeffs.lam:
        total = total + coeffs.lam * F.smooth_l1_loss(eps_s, teacher["eps"])
    if coeffs.encoder_mse:
        total = total + coeffs.encoder_mse * F.mse_loss(out["encoded"].float(), teacher["encoded"])
    return total, out


@torch.no_grad()
def teacher_outputs(teacher, x0, noise: StepNoise, cfg):
    """The frozen teacher's noise prediction (and encoder output) for the same x_t and t as the student's:
    `noise` must be a fresh copy of the student's step noise, so both draw the same t and eps."""
    x_t, t, _ = noised(x0, noise, cfg)
    out = teacher(x_t.to(dtype_of(teacher)), t)
    return {"eps": out["eps"].float(), "encoded": out["encoded"].float()}


def distills(coeffs) -> bool:
    return bool(coeffs.lam or coeffs.encoder_mse)


@torch.no_grad()
def test_loss(model, data: torch.Tensor, cfg, batch_size: int = 256) -> float:
    """L_M(Test): mean L_DDPM over the hold-out, with fixed t and eps so the number is repeatable."""
    device = device_of(model)
    generator = torch.Generator(device=device).manual_seed(EVAL_SEED)
    total = 0.0
    for start in range(0, len(data), batch_size):
        x0 = batch(data, torch.arange(start, min(start + batch_size, len(data)))).to(device)
        total += loss(model, x0, StepNoise(generator, len(x0)), cfg)[0].item() * len(x0)
    return total / len(data)


@torch.no_grad()
def sample(model, n: int, generator: torch.Generator, cfg, batch_size: int = 256) -> torch.Tensor:
    """n images as uint8 [n, C, H, W] on the CPU, by cfg.synth.sampler with cfg.synth.steps."""
    m, chunks = cfg.model, []
    eps_model = lambda x, t: model(x, t)["eps"]   # noqa: E731
    for start in range(0, n, batch_size):
        shape = (min(batch_size, n - start), m.channels, m.image_size, m.image_size)
        x = diffusion.sample(eps_model, scheduler(cfg), shape, generator, cfg.synth.sampler, cfg.synth.steps,
                             dtype_of(model))
        chunks.append(x.add(1).mul(127.5).round_().clamp_(0, 255).to(torch.uint8).cpu())
    return torch.cat(chunks)


def as_images(data: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float in [0, 1] for image grids."""
    return data.float() / 255.0
