"""One module per modality, all with the same functions (see collapse/tasks/vae.py)."""
import importlib

TASKS = ("vae", "ddpm", "t5", "gaussian")   # gaussian: the toy model of collapse/gaussian.py, chains only


def get(name: str):
    if name not in TASKS:
        raise ValueError(f"key 'task': value '{name}' is not one of {', '.join(TASKS)}")
    return importlib.import_module(f"collapse.tasks.{name}")


def held_out_loss(loss, batch, model, data, cfg, batch_size: int, seed: int) -> float:
    """L_M(Test) of a task whose loss draws noise: the mean of `loss` over `data` in batches (weighted
    by their sizes), with every draw from one generator seeded with `seed`, so the number is repeatable."""
    import torch   # here: the config loads this module and must not wait for torch

    from collapse.device import StepNoise, device_of
    device = device_of(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = batch(data, torch.arange(start, min(start + batch_size, len(data)))).to(device)
            total += loss(model, x, StepNoise(generator, len(x)), cfg)[0].item() * len(x)
    return total / len(data)
