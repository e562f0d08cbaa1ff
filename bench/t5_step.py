"""T5 summarization: our training step against a bare transformers loop, distilled against plain,
greedy generation speed, and ROUGE scoring over all cores against one.

Same model, batch and threads; blocks of steps alternate A B A B in one process so drift in machine
speed hits both. Prints the median ms/step of each and the ratios:
  engine/bare      our step (DeepSpeed engine, collapse.tasks.t5.loss, step-seeded dropout) vs
                   `model(..., labels=...).loss.backward(); opt.step()` with the same fused AdamW (goal <= 1.05)
  distilled/plain  a step with the frozen teacher's forward and the cosine term vs a plain step (goal <= 1.35)
  generation       greedy new tokens per second (collapse.tasks.t5.summarize)
  rouge            pairs/s scoring with a process per core vs in this process (goal >= 1.8 on 2 cores),
                   with the extra processes started cold and started ahead (as the eval does)
--shape standin is configs/experiment/t5_standin.yaml's model (1.44M parameters) at 256/48 tokens,
--shape t5-small t5-small's shape (60.5M, random weights) for the GPU check at batch 32, 1024/128, bf16.
Run: OMP_NUM_THREADS=1 python bench/t5_step.py [--shape standin --steps 5 --rounds 4]
"""
import argparse
import statistics
import time
from types import SimpleNamespace

import torch

from collapse.config import TrainConfig  # noqa: E402
from collapse import train
from collapse.device import StepNoise, this_device
from collapse.models import t5 as t5_model
from collapse.tasks import t5

SHAPES = {"standin": dict(vocab=4096, d_model=128, layers=2, heads=4, d_ff=512, source=256, target=48, batch=16),
          "t5-small": dict(vocab=32128, d_model=512, layers=6, heads=8, d_ff=2048, source=1024, target=128,
                           batch=32)}


def config(shape: dict, lam: float, bf16: bool, zero: int):
    return SimpleNamespace(
        train=TrainConfig(lr=1e-3, weight_decay=0.0, batch_size=shape["batch"], zero_stage=zero, bf16=bf16,
                              lr_schedule="constant", warmup_steps=0, lr_waves=0.5, steps=10 ** 6),
        distill=SimpleNamespace(lam=lam))


def model(shape: dict, seed: int = 0):
    torch.manual_seed(seed)
    return t5_model.built(shape["vocab"], shape["d_model"], shape["layers"], shape["heads"], shape["d_ff"], 0.1, 0, 1)


def batch(shape: dict, step: int, device) -> dict:
    g = torch.Generator().manual_seed(step)
    b, s, t = shape["batch"], shape["source"], shape["target"]
    source = torch.randint(3, shape["vocab"], (b, s), generator=g)
    target = torch.randint(3, shape["vocab"], (b, t), generator=g)
    target[:, -1] = 1
    return {"input_ids": source.to(device), "attention_mask": torch.ones_like(source).to(device),
            "labels": target.to(device)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_step(runner, shape, step, cfg, device):
    m, opt = runner
    b = batch(shape, step, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.bf16):
        loss = m(**b).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def engine_step(runner, shape, step, cfg, device):
    engine, teacher = runner
    b = batch(shape, step, device)
    noise = lambda: StepNoise(train.step_generator(0, step, device), shape["batch"])   # noqa: E731
    targets = t5.teacher_outputs(teacher, b, noise(), cfg) if teacher is not None else None
    loss, _ = t5.loss(engine, b, noise(), cfg, targets)
    engine.backward(loss)
    engine.step()


def timed(fn, runner, shape, cfg, device, steps, start) -> float:
    sync(device)
    t0 = time.perf_counter()
    for s in range(start, start + steps):
        fn(runner, shape, s, cfg, device)
    sync(device)
    return (time.perf_counter() - t0) / steps * 1000


def bench_steps(shape, steps, rounds, bf16, zero):
    device = this_device()
    plain, distilled = config(shape, 0.0, bf16, zero), config(shape, 1.0, bf16, zero)
    bare_model = model(shape).to(device).train()
    bare = (bare_model, torch.optim.AdamW(bare_model.parameters(), lr=1e-3, fused=True))
    engine = train.make_engine(model(shape), plain.train, plain.train.steps)
    engine.train()
    teacher = model(shape, seed=1).to(device).eval().requires_grad_(False)
    if engine.bfloat16_enabled():
        teacher = teacher.to(torch.bfloat16)
    runs = {"bare": (bare_step, bare, plain), "engine": (engine_step, (engine, None), plain),
            "distilled": (engine_step, (engine, teacher), distilled)}
    times = {k: [] for k in runs}
    for name, (fn, runner, cfg) in runs.items():   # warm-up
        timed(fn, runner, shape, cfg, device, 2, 10_000)
    for r in range(rounds):
        for name, (fn, runner, cfg) in runs.items():
            times[name].append(timed(fn, runner, shape, cfg, device, steps, r * steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"step ms (median of {rounds} blocks of {steps}): " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
    print(f"engine/bare {med['engine'] / med['bare']:.3f} (goal <= 1.05); "
          f"distilled/plain {med['distilled'] / med['engine']:.3f} (goal <= 1.35)")
    return engine.module


def bench_generation(net, shape, n):
    """Greedy decoding of full-length summaries (an untrained model would stop at once: min = max length)."""
    device = this_device()
    net.eval()
    source = batch({**shape, "batch": n}, 0, device)["input_ids"]
    sync(device)
    t0 = time.perf_counter()
    tokens = 0
    with torch.no_grad():
        for i in range(0, n, 64):
            ids = source[i:i + 64]
            out = net.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
                               max_new_tokens=shape["target"], min_new_tokens=shape["target"])
            tokens += (out.shape[1] - 1) * len(ids)
    sync(device)
    seconds = time.perf_counter() - t0
    print(f"greedy generation: {n} articles of {shape['source']} tokens, {tokens} new tokens in {seconds:.1f} s: "
          f"{tokens / seconds:.0f} tokens/s")


def bench_rouge(pairs: int):
    """Three ways, side by side: one process; all cores started cold (their ~1 s imports inside the
    timing); all cores started ahead, as the eval starts them before generating the summaries it scores."""
    from collapse.data import summaries
    from collapse.metrics import rouge
    _, highlights = summaries.load_aclsum("train")
    refs = (highlights * (pairs // len(highlights) + 1))[:pairs]
    preds = refs[1:] + refs[:1]
    extra = rouge.available_cores() - 1
    times = {"one": [], "cold": [], "ahead": []}
    for _ in range(3):   # each from a cold stem cache, as every scoring process starts
        for name in times:
            rouge._scorer = None
            workers = None
            if name == "ahead":
                workers = rouge.Workers(extra)
                workers.wait_ready()   # in the eval, during generation
            t0 = time.perf_counter()
            scores = rouge.score_pairs(refs, preds, processes=1 if name == "one" else 0, workers=workers)
            times[name].append(time.perf_counter() - t0)
            if name == "one":
                reference = scores
            else:
                assert (scores == reference).all()
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = {name: statistics.median(a / b for a, b in zip(times["one"], times[name])) for name in ("cold", "ahead")}
    print(f"rouge: {pairs} pairs, 1 process {pairs / median['one']:.0f} pairs/s; {extra + 1} processes started cold "
          f"{pairs / median['cold']:.0f} pairs/s, all/one {ratio['cold']:.2f}; started ahead (as the eval does) "
          f"{pairs / median['ahead']:.0f} pairs/s, all/one {ratio['ahead']:.2f} (goal >= 1.8 on 2 cores)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=SHAPES, default="standin")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--zero", type=int, default=0)
    p.add_argument("--generate", type=int, default=64, help="articles to summarise (0: skip)")
    p.add_argument("--rouge-pairs", type=int, default=3000, help="pairs to score (0: skip)")
    a = p.parse_args()
    shape = SHAPES[a.shape]
    print(f"shape {a.shape}: {shape}, threads {torch.get_num_threads()}, device {this_device()}")
    net = bench_steps(shape, a.steps, a.rounds, a.bf16, a.zero)
    if a.generate:
        bench_generation(net, shape, a.generate)
    if a.rouge_pairs:
        bench_rouge(a.rouge_pairs)


if __name__ == "__main__":
    main()
