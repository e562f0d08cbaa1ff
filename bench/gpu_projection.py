"""GPU-day projection of the paper-scale studies: what one step costs here, and what the paper grids
would take on GPUs.

For each paper-scale study (Table 2: the 38.4M UNet on CelebA 64x64; Table 3: t5-small on CNN/DailyMail)
it prints:
  * the model's FLOPs per item, counted (torch.utils.flop_counter, on the meta device: no weights);
  * a training step and an inference step measured on this machine (CPU: a reduced batch, the
    per-item time scaled to the paper's batch; CUDA: the paper's batch in bf16);
  * the stated rates of collapse/tasks/gpu_rates.py (one A100 in bf16, from public figures) and, on a
    GPU, the measured ones beside them;
  * the paper grid's GPU-hours and per-stage hours from the stated rates, and on a GPU, re-projected
    from the measured ones (training stages by the training ratio, sampling/generation stages by the
    inference ratio).
bench/gpu_check.sh runs it on a lent GPU (--device cuda).

Run: OMP_NUM_THREADS=1 python bench/gpu_projection.py [--device cpu|cuda] [--steps 3] [--quick]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collapse.grid import load_sweep  # noqa: E402
from collapse.models.unet import UNet  # noqa: E402
from collapse.plan import build  # noqa: E402
from collapse import tasks  # noqa: E402
from collapse.tasks import gpu_rates  # noqa: E402

T5_SMALL = dict(d_model=512, d_ff=2048, d_kv=64, num_layers=6, num_decoder_layers=6, num_heads=8, vocab_size=32128,
                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
TRAINING = ("teacher", "student", "generation")
SIZES = {"image": 64, "source": 1024, "target": 128}   # --quick (the test's smoke run): 16x16, 64/16 tokens


def t5_small():
    from transformers import T5Config, T5ForConditionalGeneration
    return T5ForConditionalGeneration(T5Config(**T5_SMALL))


def counted_flops(make, inputs) -> float:
    with torch.device("meta"):
        model = make()
        model = getattr(model, "net", model)   # our UNet wraps diffusers' UNet2DModel
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(**inputs(1, "meta"))
    return counter.get_total_flops()


def unet_inputs(batch, device):
    side = 64 if device == "meta" else SIZES["image"]
    return {"sample": torch.zeros(batch, 3, side, side, device=device),
            "timestep": torch.zeros(batch, dtype=torch.long, device=device)}


def t5_inputs(batch, device):
    source, target = (1024, 128) if device == "meta" else (SIZES["source"], SIZES["target"])
    return {"input_ids": torch.ones(batch, source, dtype=torch.long, device=device),
            "labels": torch.ones(batch, target, dtype=torch.long, device=device)}


def timed(fn, steps: int, device: str) -> float:
    """Median seconds of fn() over `steps` calls after one warm-up."""
    fn()
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(model, inputs, loss_of, batch: int, infer_batch: int, infer, steps: int, device: str) -> tuple:
    """(seconds a training item, seconds an inference unit) on `device`."""
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    x = inputs(batch, device)

    def train_step():
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            loss = loss_of(model, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    per_item = timed(train_step, steps, device) / batch
    model.eval()
    with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
        per_unit = infer(model, infer_batch, device, steps)
    return per_item, per_unit


def unet_infer(model, batch, device, steps):
    x = unet_inputs(batch, device)
    return timed(lambda: model.net(x["sample"], x["timestep"]), steps, device) / batch   # an image-step


def t5_infer(model, batch, device, steps):
    ids = torch.ones(batch, SIZES["source"], dtype=torch.long, device=device)
    new = 16
    seconds = timed(lambda: model.generate(input_ids=ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                           num_beams=1), steps, device)
    return seconds / new    # a decoder step of the whole batch (with its share of the encoder)


def grid_hours(grid: str, extra: list[str], train_ratio: float = 1.0, infer_ratio: float = 1.0) -> tuple:
    plan = build(load_sweep([f"grid={grid}", "cluster=slurm", *extra]))
    by_kind: dict = {}
    for stage in plan.stages.values():
        seconds = tasks.get(stage.config['task']).gpu_seconds(stage.kind, stage.config) or 0.0
        seconds *= train_ratio if stage.kind in TRAINING else infer_ratio
        by_kind.setdefault(stage.kind, []).append(seconds)
    total = sum(sum(v) for v in by_kind.values()) / 3600
    return total, {k: max(v) / 3600 for k, v in by_kind.items() if max(v) > 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="measure at 16x16 images and 64/16 tokens (a smoke run "
                    "of this script; its measured times are not the paper's)")
    ap.add_argument("--data-root", default="/tmp", help="any directory: the grids' configs only check it exists")
    args = ap.parse_args()
    if args.quick:
        SIZES.update(image=16, source=64, target=16)
    cpu = args.device == "cpu"
    threads = torch.get_num_threads()
    print(f"device {args.device}" + (f" ({torch.cuda.get_device_name()})" if not cpu else f", {threads} thread(s)"))
    import tempfile
    folder = Path(tempfile.mkdtemp())
    for name in ("t5", "gpt2"):
        (folder / name).mkdir()
        (folder / name / "config.json").write_text("{}")
    studies = [
        ("Table 2: DDPM, 38.4M UNet, CelebA 64x64", "ddpm_lambda_celeba", [f"data.root={args.data_root}"],
         UNet, unet_inputs, lambda m, x: m.net(x["sample"], x["timestep"]).sample.float().pow(2).mean(),
         unet_infer, 32, 256, gpu_rates.UNET_FORWARD_FLOPS_64, "image-step",
         3 * gpu_rates.UNET_FORWARD_FLOPS_64 / gpu_rates.UNET_TRAIN_FLOPS_S,
         gpu_rates.UNET_FORWARD_FLOPS_64 / gpu_rates.UNET_SAMPLE_FLOPS_S, (2, 4)),
        ("Table 3: t5-small, CNN/DailyMail 1024/128 tokens", "t5_lambda_cnndm",
         [f"model.path={folder / 't5'}", f"eval.ppl_model.path={folder / 'gpt2'}", f"data.root={args.data_root}"],
         t5_small, t5_inputs, lambda m, x: m(**x).loss, t5_infer, 32, 64, gpu_rates.T5_FORWARD_FLOPS,
         "decoder step of a batch", 3 * gpu_rates.T5_FORWARD_FLOPS / gpu_rates.T5_TRAIN_FLOPS_S,
         gpu_rates.T5_DECODE_STEP_S, (1, 2)),
    ]
    for (title, grid, extra, make, inputs, loss_of, infer, batch, infer_batch, stated_flops, unit,
         stated_train, stated_infer, cpu_batches) in studies:
        print(f"\n{title}  (grid {grid})")
        flops = counted_flops(make, inputs)
        print(f"  forward FLOPs per item: {flops / 1e9:.2f} G counted (gpu_rates states {stated_flops / 1e9:.2f} G)")
        train_batch, infer_b = cpu_batches if cpu else (batch, infer_batch)
        torch.manual_seed(0)
        per_item, per_unit = measure(make(), inputs, loss_of, train_batch, infer_b, infer, args.steps, args.device)
        print(f"  measured here: training {per_item * batch:.3g} s a step of {batch} ({per_item:.3g} s an item, "
              f"batch {train_batch}{', fp32' if cpu else ', bf16'}), inference {per_unit:.3g} s a {unit} "
              f"(batch {infer_b}); {3 * flops / per_item / 1e9:.3g} GFLOP/s training"
              + (" [--quick: 16x16 images, 64/16 tokens, not the paper's sizes]" if SIZES["image"] != 64 else ""))
        print(f"  stated on one {gpu_rates.REFERENCE_GPU}: training {stated_train * batch:.3g} s a step of {batch}, "
              f"inference {stated_infer:.3g} s a {unit} (batch {infer_batch})"
              + (f"; this CPU is {per_item / stated_train:.0f}x slower a training item" if cpu else ""))
        total, kinds = grid_hours(grid, extra)
        print(f"  paper grid, stated rates: {total:.1f} GPU-hours; longest stage of each kind: "
              + ", ".join(f"{k} {h:.2f} h" for k, h in kinds.items()))
        if not cpu:
            ratio_train, ratio_infer = per_item / stated_train, per_unit / stated_infer
            total, kinds = grid_hours(grid, extra, ratio_train, ratio_infer)
            print(f"  measured/stated: training {ratio_train:.2f}, inference {ratio_infer:.2f}")
            print(f"  paper grid, measured rates: {total:.1f} GPU-hours; longest stage of each kind: "
                  + ", ".join(f"{k} {h:.2f} h" for k, h in kinds.items()))


if __name__ == "__main__":
    main()
