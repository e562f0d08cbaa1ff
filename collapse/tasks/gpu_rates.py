"""What a stage costs on one GPU, stated, for the dry run's estimate before anything has run on GPUs.

The reference GPU is one A100 in bf16 (dense peak 312 TFLOP/s, NVIDIA's A100 datasheet; a V100's fp16
tensor-core peak is 125 TFLOP/s, an H100 SXM's bf16 989 TFLOP/s). Each rate is FLOPs counted here
(torch.utils.flop_counter on the paper's models; bench/gpu_projection.py counts them again) divided
by a sustained throughput taken from a public figure:

* UNet (DDPM): Ho et al. 2020, appendix B: their 35.7M CIFAR10 UNet trains at 21 steps/s at batch 128
  and samples a batch of 256 images in 17 s on a TPU v3-8, "similar to 8 V100 GPUs". The same UNet
  built here (35,746,307 parameters) takes 12.1 GFLOPs a forward at 32x32, so that is 12.2 TFLOP/s
  training and 22.8 TFLOP/s sampling per V100, x2.5 (the peak ratio) on an A100.
* T5 training: 25% of the A100's peak (assumed: a 60M-parameter model at 1,152 tokens a row sits
  well below the ~50% Megatron-LM reports for billion-parameter models).
* T5 greedy generation: HF generate() costs ~15 ms a decoder step whatever the batch at t5-small's
  size (assumed: per-step Python and kernel-launch overhead dominates a 6-layer decoder), 128 steps
  a batch of eval.batch_size articles.

bench/gpu_check.sh measures the real rates on a lent GPU; until then these are the figures the
dry run prints, marked as stated.
"""
import math

REFERENCE_GPU = "A100 (bf16)"
UNET_FORWARD_FLOPS_64 = 30.5e9      # the paper's 38.4M UNet, one 64x64 image (FLOPs, counted)
UNET_TRAIN_FLOPS_S = 12.2e12 * 2.5  # sustained on one A100, from Ho et al.'s TPU figures
UNET_SAMPLE_FLOPS_S = 22.8e12 * 2.5
T5_FORWARD_FLOPS = 69.6e9           # t5-small, one row of 1,024 article + 128 summary tokens (counted)
T5_TRAIN_FLOPS_S = 0.25 * 312e12
T5_DECODE_STEP_S = 0.015            # one greedy decoder step of a batch (assumed)
TRAIN_KINDS = ("teacher", "student", "generation")


def _steps(config: dict, items: int) -> int:
    train = config["train"]
    return train.get("steps") or train["epochs"] * math.ceil(items / train["batch_size"])


def _distills(config: dict) -> bool:
    return any(v for v in (config.get("distill") or {}).values() if isinstance(v, (int, float)))


def ddpm_seconds(kind: str, config: dict) -> float | None:
    data, synth, ev = config["data"], config["synth"], config["eval"]
    forward = UNET_FORWARD_FLOPS_64 * (config["model"]["image_size"] / 64) ** 2
    n_train, n_test = data.get("train_size") or 15_000, data.get("test_size") or 5_000
    sampling_steps = synth.get("steps") or config["diffusion"]["timesteps"]
    if kind in TRAIN_KINDS:
        batch = config["train"]["batch_size"]
        per_item = 3 * forward + (forward if kind != "teacher" and _distills(config) else 0)
        evals = _steps(config, n_train) / (config["train"].get("eval_every_steps") or _steps(config, n_train))
        train = _steps(config, n_train) * batch * per_item / UNET_TRAIN_FLOPS_S
        sampled = n_train * sampling_steps * forward / UNET_SAMPLE_FLOPS_S if kind == "generation" else 0
        return train + evals * n_test * forward / UNET_SAMPLE_FLOPS_S + sampled
    if kind in ("synth", "synth_shard"):
        n = (synth.get("size") or n_train) / (synth.get("shards", 1) if kind == "synth_shard" else 1)
        return 0.0 if kind == "synth" and synth.get("shards", 1) > 1 else n * sampling_steps * forward / UNET_SAMPLE_FLOPS_S
    if kind == "eval":
        return (ev["fid_samples"] * sampling_steps + n_test) * forward / UNET_SAMPLE_FLOPS_S
    return None


def t5_seconds(kind: str, config: dict, full_sizes: tuple[int, int]) -> float | None:
    """full_sizes: the dataset's (train, test) pairs, used where data.*_size is null (the task's full_sizes)."""
    data, synth, ev = config["data"], config["synth"], config["eval"]
    n_train, n_test = data.get("train_size") or full_sizes[0], data.get("test_size") or full_sizes[1]
    tokens = data["max_source_tokens"] + data["max_target_tokens"]
    forward = T5_FORWARD_FLOPS * tokens / 1152

    def generate(n: int, batch: int) -> float:
        return math.ceil(n / batch) * data["max_target_tokens"] * T5_DECODE_STEP_S

    if kind == "pretrain":   # a window of pretrain.tokens: ~0.9 of it in the input, ~0.25 in the target
        p = config["pretrain"]
        return p["steps"] * p["batch_size"] * 3 * T5_FORWARD_FLOPS * 1.15 * p["tokens"] / 1152 / T5_TRAIN_FLOPS_S
    if kind in TRAIN_KINDS:
        batch = config["train"]["batch_size"]
        per_item = 3 * forward + (forward if kind != "teacher" and _distills(config) else 0)
        steps = _steps(config, n_train)
        evals = steps // (config["train"].get("eval_every_steps") or steps)
        curve = evals * generate(ev.get("curve_articles") or 0, ev["batch_size"])
        return steps * batch * per_item / T5_TRAIN_FLOPS_S + curve
    if kind in ("synth", "synth_shard"):
        n = (synth.get("size") or n_train) / (synth.get("shards", 1) if kind == "synth_shard" else 1)
        return 0.0 if kind == "synth" and synth.get("shards", 1) > 1 else generate(int(n), synth["batch_size"])
    if kind == "eval":
        return generate(ev.get("articles") or n_test, ev["batch_size"]) + n_test * forward / T5_TRAIN_FLOPS_S
    return None
