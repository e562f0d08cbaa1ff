"""The noise schedule and the samplers of a DDPM, apart from the network (diffusers' schedulers).

Ho et al. 2020: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with a linear beta schedule over
T steps; the network predicts eps. Sampling runs the reverse chain: ancestral DDPM over all T
steps, or DDIM over fewer. Images are tensors in [-1, 1].
"""
import torch
from diffusers import DDIMScheduler, DDPMScheduler

SAMPLERS = ("ddpm", "ddim")


def make_scheduler(timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=timesteps, beta_schedule="linear", beta_start=beta_start,
                         beta_end=beta_end, prediction_type="epsilon", clip_sample=True)


def add_noise(scheduler: DDPMScheduler, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A draw of q(x_t | x_0): sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, computed in fp32."""
    return scheduler.add_noise(x0.float(), eps.float(), t)


@torch.no_grad()
def sample(eps_model, scheduler: DDPMScheduler, shape: tuple, generator: torch.Generator, sampler: str = "ddpm",
           steps: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Images [n, C, H, W] in [-1, 1] (fp32) from the reverse chain, a pure function of the generator's seed.

    `eps_model(x_t, t)` returns the predicted noise. ddpm: every one of the T steps, with fresh
    noise at each; ddim: `steps` evenly spaced steps, deterministic after the first draw (eta 0).
    """
    device = generator.device
    if sampler == "ddim":
        reverse = DDIMScheduler.from_config(scheduler.config)
        reverse.set_timesteps(steps or 50, device=device)
    else:
        reverse = DDPMScheduler.from_config(scheduler.config)
        reverse.set_timesteps(steps or scheduler.config.num_train_timesteps, device=device)
    x = torch.randn(shape, generator=generator, device=device)
    for t in reverse.timesteps:
        eps = eps_model(x.to(dtype), t.expand(shape[0]).to(device)).float()
        x = reverse.step(eps, t, x, generator=generator).prev_sample
    return x.clamp(-1, 1)
