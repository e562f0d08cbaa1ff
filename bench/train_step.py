"""Per-step cost of collapse's training step against a bare PyTorch loop, side by side.

Same VAE, batch, data and threads; blocks of steps alternate A B A B in one process so drift
in machine speed hits both. Prints the median ms/step of each and the ratios:
  engine/bare      our DeepSpeed step vs `loss.backward(); opt.step()` with the same fused AdamW
                   (goal <= 1.05)
  distilled/plain  a full-L_SD step vs a plain step, both ours           (goal <= 1.35)
  bf16/fp32        our step under DeepSpeed's bf16 mixed precision vs fp32 (reported; on CPU
                   bf16 matmuls have no fast path on most processors, on a GPU it is the default)
  leased/plain     our step while the stage's lease is held (collapse/lease.py), its heartbeat
                   thread beating every 50 ms: 200x its default rate (goal: not measurable, ~1.00)
On a GPU machine everything runs on the GPU (timed with a synchronize at each block's end).
Run: python bench/train_step.py [--steps 50 --rounds 8 --zero 0]
"""
import argparse
import os
import statistics
import tempfile
import time
from types import SimpleNamespace

import torch

from collapse import lease, train
from collapse.device import StepNoise, this_device
from collapse.models import outputs
from collapse.tasks import vae
from collapse.tasks.vae_config import VaeTrainConfig


def config(zero_stage, lam=0.0, beta=0.0, gamma=0.0, bf16=False):
    return SimpleNamespace(
        model=SimpleNamespace(hidden=420, latent=20),
        train=VaeTrainConfig(lr=1e-3, weight_decay=0.01, batch_size=256, zero_stage=zero_stage, bf16=bf16,
                             reduction="sum"),
        distill=SimpleNamespace(lam=lam, beta=beta, gamma=gamma))


def bare_step(model, opt, data, index, step, cfg):
    x = vae.batch(data, index)
    loss, out = vae.loss(model, x, StepNoise(train.step_generator(0, step, x.device), len(x)), cfg)
    if not torch.isfinite(loss):
        raise RuntimeError
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def engine_step(engine, _opt, data, index, step, cfg, targets=None):
    """What collapse.train.train does per step (teacher outputs precomputed, as train() does)."""
    x = vae.batch(data, index)
    t = outputs.select(targets, index) if targets is not None else None
    loss, out = vae.loss(engine, x, StepNoise(train.step_generator(0, step, x.device), len(x)), cfg, t)
    if not torch.isfinite(loss):
        raise RuntimeError
    engine.backward(loss)
    engine.step()


def timed(fn, runner, data, steps, start):
    n = len(data)
    t0 = time.perf_counter()
    for s in range(start, start + steps):
        index = torch.randint(0, n, (256,), generator=torch.Generator().manual_seed(s)).to(data.device)
        fn(*runner, data, index, s)
    if data.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--zero", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = this_device()
    data = torch.randint(0, 256, (10_000, 32, 32), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0)).to(device)

    plain, distilled = config(args.zero), config(args.zero, lam=1.0, beta=1.0, gamma=1.0)
    plain_bf16 = config(args.zero, bf16=True)
    torch.manual_seed(0)
    bare_model = vae.build_model(plain).to(device)
    # the fastest bare loop we can write: the same fused AdamW the engine is given
    bare_opt = torch.optim.AdamW(bare_model.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    torch.manual_seed(0)
    engine = train.make_engine(vae.build_model(plain), plain.train)
    torch.manual_seed(0)
    engine_bf16 = train.make_engine(vae.build_model(plain), plain_bf16.train)
    teacher = vae.build_model(plain).to(device).eval().requires_grad_(False)
    targets = train.teacher_targets(vae, teacher, data, plain)

    runners = {
        "bare": lambda d, i, s: bare_step(bare_model, bare_opt, d, i, s, plain),
        "engine": lambda d, i, s: engine_step(engine, None, d, i, s, plain),
        "distilled": lambda d, i, s: engine_step(engine, None, d, i, s, distilled, targets),
        "bf16": lambda d, i, s: engine_step(engine_bf16, None, d, i, s, plain_bf16),
    }
    runners["leased"] = runners["engine"]   # same step; the lease is held only while its blocks run
    os.environ[lease.HEARTBEAT_ENV] = "0.05"
    lease_root = tempfile.mkdtemp(prefix="bench-lease-")
    times = {k: [] for k in runners}
    for name, fn in runners.items():  # warm-up
        timed(lambda *a: fn(*a[-3:]), (), data, 10, 0)
    step = 0
    for _ in range(args.rounds):
        for name, fn in runners.items():
            if name == "leased":
                with lease.acquire(lease_root, "bench"):
                    times[name].append(timed(lambda *a: fn(*a[-3:]), (), data, args.steps, step))
            else:
                times[name].append(timed(lambda *a: fn(*a[-3:]), (), data, args.steps, step))
            step += args.steps
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))
    print(f"{device}, zero stage {args.zero}, threads {args.threads}, {args.rounds} rounds x {args.steps} steps, "
          "batch 256")
    for k, v in med.items():
        print(f"  {k:10s} {v:7.2f} ms/step  (min {min(times[k]):.2f}, max {max(times[k]):.2f})")
    print(f"  engine/bare      {ratio('engine', 'bare'):.3f}   (goal <= 1.05)")
    print(f"  distilled/plain  {ratio('distilled', 'engine'):.3f}   (goal <= 1.35)")
    print(f"  bf16/fp32        {ratio('bf16', 'engine'):.3f}")
    print(f"  leased/plain     {ratio('leased', 'engine'):.3f}   (goal: ~1.00, heartbeat every 50 ms)")


if __name__ == "__main__":
    main()
