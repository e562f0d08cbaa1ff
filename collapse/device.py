"""Where a stage's tensors live and in which dtype.

Every tensor a stage creates or feeds a model goes to the model's device: the GPU of this
process's local rank on a GPU node, else the CPU. A model's inputs are cast to its parameters'
dtype (bf16 under mixed precision); losses and metrics are computed in fp32 from its outputs.
Artifacts go back to the CPU before they are stored.
"""
import os

import torch


def this_device() -> torch.device:
    """The GPU of this process's local rank (LOCAL_RANK, set for every task of a job), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def _first_parameter(model: torch.nn.Module) -> torch.Tensor:
    return next(getattr(model, "module", model).parameters())


def device_of(model: torch.nn.Module) -> torch.device:
    return _first_parameter(model).device


def dtype_of(model: torch.nn.Module) -> torch.dtype:
    """The dtype the model computes in: its parameters' (bf16 under DeepSpeed's mixed precision)."""
    return _first_parameter(model).dtype


def to_device(obj, device: torch.device):
    """A tensor, or a dict/list/tuple of them, on `device` (other values as they are)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on `device`: the same seed gives the same numbers on the same kind of device.

    CUDA's generator draws a different stream from the CPU's, so a GPU run's noise (and numbers)
    differ from a CPU run's with the same seed; each is repeatable on its own kind of device.
    """
    return torch.Generator(device=device).manual_seed(seed)


class StepNoise:
    """The random draws of one step, over the whole global batch, sliced to this rank's items.

    Data parallel training gives rank r the items global_batch[r::world]. Drawing the global
    batch's noise from one generator and slicing it the same way gives every item the noise it
    gets on one process, so a 2-rank run follows the 1-rank run to float rounding.
    """

    def __init__(self, generator: torch.Generator, global_size: int, rank: int = 0, world: int = 1):
        self.generator, self.global_size, self.rank, self.world = generator, global_size, rank, world

    def randn(self, *item_shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        draw = torch.randn(self.global_size, *item_shape, generator=self.generator, device=self.generator.device)
        return draw[self.rank::self.world].to(dtype)

    def randint(self, low: int, high: int, *item_shape: int) -> torch.Tensor:
        draw = torch.randint(low, high, (self.global_size, *item_shape), generator=self.generator,
                             device=self.generator.device)
        return draw[self.rank::self.world]
