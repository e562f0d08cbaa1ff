"""DDPM costs: our training step against a bare PyTorch loop, distilled against plain, and sampling.

Same UNet, batch, data and threads; blocks of steps alternate (bare, engine, distilled) in one
process so drift in machine speed hits all of them. Prints the median ms/step of each and:
  engine/bare      our DeepSpeed step (collapse/tasks/ddpm.py's loss through the engine) vs
                   `loss.backward(); opt.step()` with the same fused AdamW        (goal <= 1.05)
  distilled/plain  an L_SD step (lam 0.5 + encoder MSE 0.5: one extra teacher forward on the
                   same x_t and t) vs a plain step, both ours                      (goal <= 1.35)
  sampling         images/s of ddpm.sample (DDIM with --ddim-steps steps, batch --sample-batch)
FID feature extraction images/s: bench/fid_features.py.
--size small: the 408,641-parameter UNet at 32x32 (the stand-in, configs/experiment/ddpm_mnist.yaml);
--size paper: the 38,390,019-parameter UNet at 64x64 RGB (configs/experiment/ddpm_celeba.yaml).
On a GPU everything runs there (bf16 with --bf16, as train.bf16 null does on GPUs).
Run: python bench/ddpm_step.py [--size small --batch 32 --steps 5 --rounds 4 --threads 1]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collapse.config import TrainConfig  # noqa: E402
from collapse import train  # noqa: E402
from collapse.device import StepNoise, this_device  # noqa: E402
from collapse.tasks import ddpm  # noqa: E402

SIZES = {
    "small": dict(image_size=32, channels=1, block_channels=[16, 32, 32], attention_level=1, norm_groups=4),
    "paper": dict(image_size=64, channels=3, block_channels=[128, 128, 256, 256, 256], attention_level=2,
                  norm_groups=32),
}


def config(size, batch, lam=0.0, encoder_mse=0.0, bf16=False, ddim_steps=20):
    return SimpleNamespace(
        model=SimpleNamespace(**SIZES[size], layers_per_block=2, dropout=0.1),
        diffusion=SimpleNamespace(timesteps=1000, beta_start=1e-4, beta_end=0.02),
        train=TrainConfig(lr=1e-4, weight_decay=0.01, batch_size=batch, zero_stage=0, bf16=bf16),
        distill=SimpleNamespace(lam=lam, encoder_mse=encoder_mse),
        synth=SimpleNamespace(sampler="ddim", steps=ddim_steps))


def step(model, optimizer, data, index, s, cfg, teacher=None):
    """One training step as collapse.train.train takes it: teacher outputs on the step's own noise."""
    x0 = ddpm.batch(data, index).to(data.device)
    noise = lambda: StepNoise(train.step_generator(0, s, x0.device), len(x0))   # noqa: E731
    targets = ddpm.teacher_outputs(teacher, x0, noise(), cfg) if teacher is not None else None
    loss, _ = ddpm.loss(model, x0, noise(), cfg, targets)
    if not torch.isfinite(loss):
        raise RuntimeError(f"loss {loss.item()}")
    if optimizer is None:   # a DeepSpeed engine
        model.backward(loss)
        model.step()
    else:
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def timed(fn, data, batch, steps, start):
    t0 = time.perf_counter()
    for s in range(start, start + steps):
        fn(torch.randint(0, len(data), (batch,), generator=torch.Generator().manual_seed(s)), s)
    if data.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="small")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--sample-batch", type=int, default=32)
    ap.add_argument("--ddim-steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = this_device()
    plain = config(args.size, args.batch, bf16=args.bf16, ddim_steps=args.ddim_steps)
    distilled = config(args.size, args.batch, lam=0.5, encoder_mse=0.5, bf16=args.bf16)
    m = plain.model
    data = torch.randint(0, 256, (512, m.channels, m.image_size, m.image_size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0)).to(device)

    torch.manual_seed(0)
    bare_model = ddpm.build_model(plain).to(device)
    bare_opt = torch.optim.AdamW(bare_model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    torch.manual_seed(0)
    engine = train.make_engine(ddpm.build_model(plain), plain.train)
    teacher = ddpm.build_model(plain).to(device).eval().requires_grad_(False)
    if args.bf16:
        bare_model.to(torch.bfloat16)
        teacher.to(torch.bfloat16)
    runners = {"bare": lambda i, s: step(bare_model, bare_opt, data, i, s, plain),
               "engine": lambda i, s: step(engine, None, data, i, s, plain),
               "distilled": lambda i, s: step(engine, None, data, i, s, distilled, teacher)}
    for fn in runners.values():   # warm-up
        timed(fn, data, args.batch, 2, 0)
    times, s = {k: [] for k in runners}, 0
    for _ in range(args.rounds):
        for name, fn in runners.items():
            times[name].append(timed(fn, data, args.batch, args.steps, s))
            s += args.steps
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))   # noqa: E731
    n_params = sum(p.numel() for p in bare_model.parameters())
    print(f"{device}, UNet {args.size} ({n_params:,} parameters, {m.image_size}x{m.image_size}x{m.channels}), "
          f"batch {args.batch}, {'bf16' if args.bf16 else 'fp32'}, threads {args.threads}, "
          f"{args.rounds} rounds x {args.steps} steps")
    for k, v in times.items():
        print(f"  {k:10s} {statistics.median(v):8.1f} ms/step  (min {min(v):.1f}, max {max(v):.1f})")
    print(f"  engine/bare      {ratio('engine', 'bare'):.3f}   (goal <= 1.05)")
    print(f"  distilled/plain  {ratio('distilled', 'engine'):.3f}   (goal <= 1.35)")

    sampler = engine.module.eval()
    ddpm.sample(sampler, 2, torch.Generator(device=device).manual_seed(0), plain, batch_size=2)   # warm-up
    t0 = time.perf_counter()
    ddpm.sample(sampler, args.samples, torch.Generator(device=device).manual_seed(1), plain,
                batch_size=args.sample_batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = args.samples / (time.perf_counter() - t0)
    print(f"  sampling         {rate:.2f} images/s  (DDIM-{args.ddim_steps}, batch {args.sample_batch}; "
          f"ancestral DDPM-1000 ~{rate * args.ddim_steps / 1000:.3f} images/s)")


if __name__ == "__main__":
    main()
