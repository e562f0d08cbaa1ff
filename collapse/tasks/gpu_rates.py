"""What a stage costs on one GPU, for the dry run's estimate: stated rates, or measured ones from a rates file.

The reference GPU is one A100 in bf16 (dense peak 312 TFLOP/s, NVIDIA's A100 datasheet; TF32 156, fp32
without tensor cores 19.5; a V100's fp16 tensor-core peak is 125 TFLOP/s, an H100 SXM's bf16 989). Each
rate is FLOPs counted here (torch.utils.flop_counter on the paper's models; bench/gpu_projection.py counts
them again) divided by a sustained throughput taken from a public figure:

* UNet (DDPM): Ho et al. 2020, appendix B: their 35.7M CIFAR10 UNet trains at 21 steps/s at batch 128
  and samples a batch of 256 images in 17 s on a TPU v3-8, "similar to 8 V100 GPUs". The same UNet
  built here (35,746,307 parameters) takes 12.1 GFLOPs a forward at 32x32, so that is 12.2 TFLOP/s
  training and 22.8 TFLOP/s sampling per V100, x2.5 (the peak ratio) on an A100.
* T5 training: 25% of the A100's peak (assumed: a 60M-parameter model at 1,152 tokens a row sits
  well below the ~50% Megatron-LM reports for billion-parameter models).
* T5 greedy generation: HF generate() costs ~15 ms a decoder step whatever the batch at t5-small's
  size (assumed: per-step Python and kernel-launch overhead dominates a 6-layer decoder), 128 steps
  a batch of eval.batch_size articles, after the encoder's forward over the batch's articles.
* Inference precision (infer.precision, collapse/infer.py; auto is bf16 on a GPU): the bf16 rates above;
  tf32 at the TF32/bf16 peak ratio (2x the time), fp32 at 70% of the fp32 peak (13.7 TFLOP/s, 4.2x the
  time of UNet sampling's stated 57 TFLOP/s). Generation's decoder steps are overhead, not FLOPs: the
  same in every precision. The metric networks run in fp32 always: Inception v3 at 5.7 GFLOPs an image
  (torchvision's count), GPT-2 124M at 2 x 124M FLOPs a token of a 128-token summary, at 13.7 TFLOP/s.

bench/gpu_check.sh measures these rates on a GPU and writes them to a JSON file; `rates=FILE` on a launch
(collapse/launch.py) makes every estimate use them (`use(load(FILE))`), and the dry run says so.
"""
import json
import math
from pathlib import Path

from collapse.config import bad

REFERENCE_GPU = "A100 (bf16)"
UNET_FORWARD_FLOPS_64 = 30.5e9      # the paper's 38.4M UNet, one 64x64 image (FLOPs, counted)
UNET_TRAIN_FLOPS_S = 12.2e12 * 2.5  # sustained on one A100, from Ho et al.'s TPU figures
UNET_SAMPLE_FLOPS_S = 22.8e12 * 2.5
T5_FORWARD_FLOPS = 69.6e9           # t5-small, one row of 1,024 article + 128 summary tokens (counted)
T5_TRAIN_FLOPS_S = 0.25 * 312e12
T5_DECODE_STEP_S = 0.015            # one greedy decoder step of a batch (assumed)
INCEPTION_FLOPS = 5.7e9             # Inception v3, one 299x299 image
GPT2_FLOPS_PER_TOKEN = 2 * 124e6
FP32_FLOPS_S = 0.7 * 19.5e12        # fp32 without tensor cores: the metric networks, infer.precision=fp32
SLOWER = {"bf16": 1.0, "tf32": 312 / 156, "fp32": UNET_SAMPLE_FLOPS_S / FP32_FLOPS_S}   # inference time vs bf16
TRAIN_KINDS = ("teacher", "student", "generation")
PRECISIONS = ("bf16", "tf32", "fp32")

# Every rate an estimate reads; a rates file (bench/gpu_check.sh) holds the same names. Per precision: a dict.
STATED = {
    "unet_train_flops_s": UNET_TRAIN_FLOPS_S, "unet_distill_flops_s": UNET_TRAIN_FLOPS_S,
    "unet_sample_flops_s": {p: UNET_SAMPLE_FLOPS_S / SLOWER[p] for p in PRECISIONS},
    "t5_train_flops_s": T5_TRAIN_FLOPS_S, "t5_distill_flops_s": T5_TRAIN_FLOPS_S,
    "t5_forward_flops_s": {p: T5_TRAIN_FLOPS_S / SLOWER[p] for p in PRECISIONS},   # teacher-forced test loss
    "t5_decode_step_s": {p: T5_DECODE_STEP_S for p in PRECISIONS},
    "t5_encoder_flops_s": {p: T5_TRAIN_FLOPS_S / SLOWER[p] for p in PRECISIONS},
    "inception_s_per_item": INCEPTION_FLOPS / FP32_FLOPS_S,
    "gpt2_s_per_item": GPT2_FLOPS_PER_TOKEN * 128 / FP32_FLOPS_S,
}
_in_use = {"rates": STATED, "source": f"stated rate on {{gpus}} {REFERENCE_GPU}"}


def load(path: str) -> dict:
    """A rates file bench/gpu_check.sh wrote, checked: {"device": ..., "rates": {name: number or {precision: number}}}."""
    allowed = "a rates file written by bench/gpu_check.sh (JSON with 'device' and 'rates')"
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise bad("rates", path, f"{allowed}; {type(e).__name__}: {e}") from None
    rates = data.get("rates") if isinstance(data, dict) else None
    if not isinstance(rates, dict) or not isinstance(data.get("device"), str):
        raise bad("rates", path, allowed)
    for name, value in rates.items():
        if name not in STATED:
            raise bad(f"rates: {path}: {name}", value, "one of: " + ", ".join(STATED))
        values = value.values() if isinstance(value, dict) else [value]
        if isinstance(value, dict) != isinstance(STATED[name], dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf for v in values):
            raise bad(f"rates: {path}: {name}", value, "a number > 0" if not isinstance(STATED[name], dict)
                      else "{precision: number > 0} for some of " + ", ".join(PRECISIONS))
    return {"path": str(path), **data}


def use(measured: dict | None) -> None:
    """Estimate from `measured` (load's result; the stated rates fill what it lacks), or from the stated rates (None)."""
    if measured is None:
        _in_use.update(rates=STATED, source=f"stated rate on {{gpus}} {REFERENCE_GPU}")
        return
    rates = {k: {**v, **measured["rates"].get(k, {})} if isinstance(v, dict) else measured["rates"].get(k, v)
             for k, v in STATED.items()}
    _in_use.update(rates=rates, source=f"measured rate on {{gpus}} {measured['device']} ({measured['path']})")


def source(gpus: int) -> str:
    """How the dry run names the rates in use: 'stated rate on 1 A100 (bf16)' or 'measured rate on 1 <GPU> (FILE)'."""
    return _in_use["source"].replace("{gpus}", str(gpus))


def _rate(name: str, precision: str | None = None) -> float:
    value = _in_use["rates"][name]
    return value[precision] if precision else value


def precision(config: dict) -> str:
    """The precision a GPU stage of `config` infers in: infer.precision, auto being bf16 on a GPU."""
    asked = (config.get("infer") or {}).get("precision", "auto")
    return "bf16" if asked == "auto" else asked


def _steps(config: dict, items: int) -> int:
    train = config["train"]
    return train.get("steps") or train["epochs"] * math.ceil(items / train["batch_size"])


def _distills(config: dict) -> bool:
    return any(v for v in (config.get("distill") or {}).values() if isinstance(v, (int, float)))


def _train_rate(model: str, kind: str, config: dict) -> tuple[float, float]:
    """(forwards per item, FLOP/s): 3 (forward and backward), one more with a teacher, at its measured rate."""
    distilled = kind != "teacher" and _distills(config)
    return 3 + distilled, _rate(f"{model}_distill_flops_s" if distilled else f"{model}_train_flops_s")


def ddpm_seconds(kind: str, config: dict) -> float | None:
    data, synth, ev = config["data"], config["synth"], config["eval"]
    forward = UNET_FORWARD_FLOPS_64 * (config["model"]["image_size"] / 64) ** 2
    n_train, n_test = data.get("train_size") or 15_000, data.get("test_size") or 5_000
    sampling_steps = synth.get("steps") or config["diffusion"]["timesteps"]
    sample_rate = _rate("unet_sample_flops_s", precision(config))
    if kind in TRAIN_KINDS:   # its evaluations' test loss: a forward in training's bf16
        batch = config["train"]["batch_size"]
        forwards, rate = _train_rate("unet", kind, config)
        evals = _steps(config, n_train) / (config["train"].get("eval_every_steps") or _steps(config, n_train))
        train = _steps(config, n_train) * batch * forwards * forward / rate
        sampled = n_train * sampling_steps * forward / sample_rate if kind == "generation" else 0
        return train + evals * n_test * forward / _rate("unet_sample_flops_s", "bf16") + sampled
    if kind in ("synth", "synth_shard"):
        n = (synth.get("size") or n_train) / (synth.get("shards", 1) if kind == "synth_shard" else 1)
        return 0.0 if kind == "synth" and synth.get("shards", 1) > 1 else n * sampling_steps * forward / sample_rate
    if kind == "eval":   # samples, the test loss, Inception features of the samples and the real images
        features = (ev["fid_samples"] + min(ev["fid_samples"], n_test)) * _rate("inception_s_per_item")
        return (ev["fid_samples"] * sampling_steps + n_test) * forward / sample_rate + features
    return None


def t5_seconds(kind: str, config: dict, full_sizes: tuple[int, int]) -> float | None:
    """full_sizes: the dataset's (train, test) pairs, used where data.*_size is null (the task's full_sizes)."""
    data, synth, ev = config["data"], config["synth"], config["eval"]
    n_train, n_test = data.get("train_size") or full_sizes[0], data.get("test_size") or full_sizes[1]
    tokens = data["max_source_tokens"] + data["max_target_tokens"]
    forward = T5_FORWARD_FLOPS * tokens / 1152

    def generate(n: int, batch: int, at: str) -> float:   # batches: the encoder, then a decoder step per token
        encoder = batch * T5_FORWARD_FLOPS * data["max_source_tokens"] / 1152 / _rate("t5_encoder_flops_s", at)
        return math.ceil(n / batch) * (data["max_target_tokens"] * _rate("t5_decode_step_s", at) + encoder)

    if kind == "pretrain":   # a window of pretrain.tokens: ~0.9 of it in the input, ~0.25 in the target
        p = config["pretrain"]
        return p["steps"] * p["batch_size"] * 3 * T5_FORWARD_FLOPS * 1.15 * p["tokens"] / 1152 / _rate("t5_train_flops_s")
    if kind in TRAIN_KINDS:   # ROUGE curves: generation in training's bf16
        batch = config["train"]["batch_size"]
        forwards, rate = _train_rate("t5", kind, config)
        steps = _steps(config, n_train)
        evals = steps // (config["train"].get("eval_every_steps") or steps)
        curve = evals * generate(ev.get("curve_articles") or 0, ev["batch_size"], "bf16")
        return steps * batch * forwards * forward / rate + curve
    at = precision(config)
    if kind in ("synth", "synth_shard"):
        n = (synth.get("size") or n_train) / (synth.get("shards", 1) if kind == "synth_shard" else 1)
        return 0.0 if kind == "synth" and synth.get("shards", 1) > 1 else generate(int(n), synth["batch_size"], at)
    if kind == "eval":
        articles = ev.get("articles") or n_test
        return (generate(articles, ev["batch_size"], at) + n_test * forward / _rate("t5_forward_flops_s", at)
                + articles * _rate("gpt2_s_per_item"))
    return None
