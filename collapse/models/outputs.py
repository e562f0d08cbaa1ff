"""What a model returns, typed: each model's outputs are a typing.NamedTuple of tensors (diffusers' typed
outputs; a NamedTuple rather than a dataclass because DeepSpeed's ZeRO-3 hooks walk tuples and dicts, not
dataclasses, to attach their backward hooks to a module's outputs).

Beside them, the two things the training loop does with a frozen teacher's outputs when it computes them
once per dataset (a task's TEACHER_OUTPUTS_DETERMINISTIC): join the chunks, take one batch's items.
"""
import torch


def concat(parts: list):
    """One output of the same type from chunks of items, field by field (a None field stays None)."""
    return type(parts[0])(*(None if values[0] is None else torch.cat(values) for values in zip(*parts)))


def select(outputs, index: torch.Tensor):
    """The items `index` of every field."""
    return type(outputs)(*(None if v is None else v[index.to(v.device)] for v in outputs))
