"""What several tasks share, imported by each into its own namespace (collapse/tasks/base.py):
the held-out loss of a loss that draws noise, and the image tasks' storage, joining, sampling and
example grid."""
import math
from pathlib import Path

import torch

from collapse import storage
from collapse.device import StepNoise, device_of


def held_out_loss(loss, batch, model, data, cfg, batch_size: int, seed: int) -> float:
    """L_M(Test) of a task whose loss draws noise: the mean of `loss` over `data` in batches (weighted
    by their sizes), with every draw from one generator seeded with `seed`, so the number is repeatable."""
    device = device_of(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = batch(data, torch.arange(start, min(start + batch_size, len(data)))).to(device)
            total += loss(model, x, StepNoise(generator, len(x)), cfg)[0].item() * len(x)
    return total / len(data)


# ---------------------------------------------------------------- image tasks: D_M is one tensor of images

def to_tensors(data: torch.Tensor) -> dict:
    return {"data": data}


def from_tensors(tensors: dict) -> torch.Tensor:
    return tensors["data"]


def concat(parts: list) -> torch.Tensor:
    return torch.cat(parts)


def save_grid(images: torch.Tensor, path: Path) -> Path:
    """images (float in [0, 1], [N, C, H, W]) as one PNG grid, written atomically."""
    from torchvision.utils import save_image   # slow import: torchvision only for the eval's picture
    nrow = max(1, int(math.sqrt(len(images))))
    return storage.atomic_write(path, lambda tmp: save_image(images, tmp, nrow=nrow, format="png"))
