"""The precision synth and eval stages run in: `infer.precision` (collapse/config.py InferConfig).

  fp32  fp32 throughout, TF32 off for matmuls and cuDNN convolutions (strict fp32 on a GPU)
  tf32  fp32 weights and activations, TF32 tensor cores allowed for matmuls and convolutions (GPU only;
        on a CPU this is fp32)
  bf16  torch.autocast to bf16 (matmuls, convolutions, attention in bf16; norms, softmax, losses in
        fp32 as autocast keeps them), TF32 allowed for what stays fp32; the weights stay fp32
  auto  (the default) bf16 on a CUDA device, fp32 on a CPU: resolved by the device the stage runs on,
        and recorded in its metrics as `precision`

What it covers: the model under study, where it samples (DDPM's reverse chain, the VAE's decoder,
T5's greedy generation) and where it is scored (L_M(Test)). The metric networks are not covered:
Inception's FID features and GPT-2's perplexities run in fp32 without TF32 whatever the setting
(`fp32()` below; bf16 Inception features differ by ~3%, too much for FID), so a metric changes with the
precision only through the samples it scores. A set precision enters the key of the stages it changes
(synth, its shards, eval, generation: collapse/plan.py); `auto` stays out, so the keys of every stage
from before the setting existed are kept, as train.bf16's null (bf16 on GPU, fp32 on CPU) is.
"""
import contextlib

import torch

from collapse.config import PRECISIONS  # noqa: F401  (the allowed values)


def resolved(precision: str, device) -> str:
    """The precision a stage on `device` runs under `precision`: auto is bf16 on CUDA, else fp32."""
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


@contextlib.contextmanager
def _tf32(allowed: bool):
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@contextlib.contextmanager
def inference_precision(precision: str, device):
    """Run the block (a synth's sampling, an eval) in `precision` on `device`; yields the resolved name."""
    name = resolved(precision, device)
    kind = torch.device(device).type
    with _tf32(name in ("tf32", "bf16")), torch.autocast(kind, dtype=torch.bfloat16, enabled=name == "bf16"):
        yield name


@contextlib.contextmanager
def fp32():
    """A metric network's forward: fp32, autocast off on every device, no TF32, whatever encloses it."""
    with _tf32(False), torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
        yield
