"""What the stages run, measured on this machine's GPU, most important first; the rates a dry run reads.

Each measurement runs the project's own code the way a stage runs it, at the paper's sizes (--tiny:
tiny sizes, for a CPU test of this script), and records its seconds, items per second and peak GPU memory:
  1. training steps through the DeepSpeed engine collapse/train.py builds (train.make_engine, the task's
     loss; bf16 where train.bf16 null gives it, the grid's ZeRO stage), plain and distilled (the frozen
     teacher in the student's dtype, as train.train casts it): the 38.4M UNet at batch 32
     (ddpm_lambda_celeba) and a t5-small-sized T5 at 1,024 + 128 tokens at batch 32 (t5_lambda_cnndm)
  2. DDPM sampling (ddpm._sampled, the stages' sampling function) at batch 256 and 512, in the inference
     precision (infer.precision auto: bf16 on a GPU) and in fp32
  3. T5 greedy generation of 128 tokens at batch 64 (generate(), as collapse/summarize.py calls it), the
     encoder timed apart, in bf16 and fp32; the teacher-forced forward of the test loss
  4. Inception features (metrics/fid.py, with its CPU resize) and GPT-2 124M scoring, per item, in fp32
  5. channels_last and torch.compile on (off is 1-3) for the UNet's step and sampling, compile for T5's step
The rates file (--out) is rewritten after every measurement, so a run cut short keeps what it measured:
{"device", "torch", "tiny", "rates": {the names of collapse/tasks/gpu_rates.py STATED}, "measurements": [...]};
`python sweeps/launch.py grid=... dry_run=true rates=FILE` estimates from it. Last, the paper grids'
GPU-hours from the stated and from the measured rates.
Run: python bench/gpu_check.py --out rates.json [--tiny] [--budget-s 420]
"""
import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collapse import infer, tasks, train  # noqa: E402
from collapse.device import StepNoise, this_device  # noqa: E402
from collapse.grid import load_sweep  # noqa: E402
from collapse.models import t5 as t5_model  # noqa: E402
from collapse.plan import build  # noqa: E402
from collapse.tasks import ddpm, gpu_rates, t5  # noqa: E402

PAPER = {"unet": [], "t5": dict(vocab=32128, d_model=512, layers=6, heads=8, d_ff=2048, source=1024, target=128),
         "train_batch": 32, "sample_batches": (256, 512), "sample_steps": 3, "gen_batch": 64,
         "features": 128, "gpt2": {}, "gpt2_tokens": 128, "steps": 5}
TINY = {"unet": ["model.block_channels=[8,16,16]", "model.norm_groups=4", "model.attention_level=1",
                 "model.image_size=16"],
        "t5": dict(vocab=512, d_model=32, layers=1, heads=2, d_ff=64, source=32, target=8),
        "train_batch": 4, "sample_batches": (4, 8), "sample_steps": 2, "gen_batch": 4,
        "features": 2, "gpt2": dict(n_layer=1, n_embd=32, n_head=2, vocab_size=512), "gpt2_tokens": 16, "steps": 2}


class Check:
    """The measurements so far, and the rates file rewritten after each."""

    def __init__(self, out: Path, tiny: bool, budget_s: float):
        self.out, self.tiny, self.budget_s, self.t0 = out, tiny, budget_s, time.time()
        self.device = this_device()
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        self.data = {"device": name + (" (--tiny sizes)" if tiny else ""), "torch": torch.__version__,
                     "tiny": tiny, "inference_precision": infer.resolved("auto", self.device),
                     "rates": {}, "measurements": []}

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(self, fn, steps: int) -> tuple[float, float, float | None]:
        """(seconds of the first call, median seconds a call after it, peak GPU GiB) of fn()."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        first, times = time.perf_counter() - t0, []
        for _ in range(steps):
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(self.device) / 2 ** 30 if self.device.type == "cuda" else None
        return first, sorted(times)[len(times) // 2], peak

    def record(self, name: str, seconds: float, items: int, peak, first: float, **what) -> None:
        entry = {"name": name, "seconds": seconds, "items": items, "items_per_s": items / seconds,
                 "first_call_s": first, "peak_gib": peak, **what}
        self.data["measurements"].append(entry)
        shown = ", ".join(f"{k} {v}" for k, v in what.items())
        print(f"gpu_check: measure {name} {seconds * 1000:.1f} ms ({items / seconds:.4g} items/s; {shown}) peak "
              f"{'-' if peak is None else f'{peak:.2f} GiB'}, first call {first:.1f} s, at {self.elapsed():.0f} s",
              flush=True)
        self.write()

    def rate(self, name: str, value: float, precision: str | None = None) -> None:
        if precision:
            self.data["rates"].setdefault(name, {})[precision] = value
        else:
            self.data["rates"][name] = value
        self.write()

    def write(self):
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.out)

    def elapsed(self) -> float:
        return time.time() - self.t0

    def over_budget(self, what: str) -> bool:
        if self.elapsed() > self.budget_s:
            print(f"gpu_check: measure {what} SKIP past --budget-s {self.budget_s:.0f} s", flush=True)
            return True
        return False


def precisions(check: Check) -> list:
    """The stages' inference precision first (auto), then fp32, and tf32 on a GPU (bf16 on a CPU)."""
    return list(dict.fromkeys([check.data["inference_precision"], "fp32",
                               "tf32" if check.device.type == "cuda" else "bf16"]))


def flops(model, *args, **kwargs) -> float:
    """Forward FLOPs of model(*args, **kwargs), counted (torch.utils.flop_counter)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*args, **kwargs)
    return counter.get_total_flops()


def grids(folder: Path, sizes: dict) -> dict:
    """name -> (plain config, distilled config) of the paper grids, at `sizes`."""
    for name in ("t5", "gpt2"):
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "config.json").write_text("{}")
    out = {}
    for name, grid, extra in (("ddpm", "ddpm_lambda_celeba", [f"data.root={folder}", *sizes["unet"]]),
                              ("t5", "t5_lambda_cnndm", [f"model.path={folder / 't5'}", f"data.root={folder}",
                                                         f"eval.ppl_model.path={folder / 'gpt2'}"])):
        points = load_sweep([f"grid={grid}", "cluster=slurm", f"train.batch_size={sizes['train_batch']}",
                             *extra]).points
        coeffs = lambda p: [v for v in vars(p.config.distill).values() if isinstance(v, (int, float))]   # noqa: E731
        distilled = max(points, key=lambda p: (sum(v > 0 for v in coeffs(p)), sum(coeffs(p))))   # every term on
        out[name] = (points[0].config, distilled.config)
    return out


# ---------------------------------------------------------------- 1. training steps as the stages take them

def train_steps(check: Check, name: str, task, make, base, cfg, distilled_cfg, batch_of, per_item_flops: float,
                steps: int, **variant) -> None:
    """Plain and distilled steps of the engine train.make_engine builds, as train.train takes them (a
    variant: the plain step only). `make`: the student as the variant builds it; `base`: the teacher."""
    torch.manual_seed(0)
    engine = train.make_engine(make(), cfg.train, cfg.train.steps or 1000)
    if variant.get("channels_last"):   # after the engine: DeepSpeed's broadcast views each parameter as bytes
        engine.module.to(memory_format=torch.channels_last)
    engine.train()
    teacher = base().to(engine.device, next(engine.module.parameters()).dtype).eval().requires_grad_(False)
    dtype = "bf16" if engine.bfloat16_enabled() else "fp32"
    step = [0]

    def one(c, with_teacher):
        b = batch_of(step[0])
        noise = lambda: StepNoise(train.step_generator(0, step[0], engine.device), c.train.batch_size)   # noqa: E731
        targets = task.teacher_outputs(teacher, b, noise(), c) if with_teacher else None
        loss, _ = task.loss(engine, b, noise(), c, targets)
        engine.backward(loss)
        engine.step()
        step[0] += 1

    label = "".join(f", {k}" for k, v in variant.items() if v)
    for kind, c, forwards in (("plain", cfg, 3), ("distilled", distilled_cfg, 4))[:1 if any(variant.values()) else 2]:
        first, seconds, peak = check.timed(lambda: one(c, kind == "distilled"), steps)
        check.record(f"{name}.train.{kind}{label}", seconds, c.train.batch_size, peak, first, dtype=dtype,
                     zero=c.train.zero_stage, batch=c.train.batch_size, **variant)
        if not any(variant.values()):
            check.rate(f"{name}_{'distill' if kind == 'distilled' else 'train'}_flops_s",
                       forwards * per_item_flops * c.train.batch_size / seconds)
    del engine, teacher


def unet_part(check: Check, cfgs, sizes, variant: dict) -> None:
    cfg, distilled = cfgs["ddpm"]
    m = cfg.model
    data = torch.randint(0, 256, (max(sizes["sample_batches"] + (64,)), m.channels, m.image_size, m.image_size),
                         dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    probe = ddpm.build_model(cfg)
    per_item = flops(probe, torch.zeros(1, m.channels, m.image_size, m.image_size), torch.zeros(1, dtype=torch.long))

    def make(sampling=False):   # channels_last: the sampler's here, the engine's in train_steps
        model = ddpm.build_model(cfg)
        if sampling and variant.get("channels_last"):
            model = model.to(memory_format=torch.channels_last)
        return torch.compile(model) if variant.get("compile") else model

    def batch_of(step):
        index = torch.randint(0, len(data), (cfg.train.batch_size,), generator=torch.Generator().manual_seed(step))
        return ddpm.batch(data, index).to(check.device)

    train_steps(check, "unet", ddpm, make, lambda: ddpm.build_model(cfg), cfg, distilled, batch_of, per_item,
                sizes["steps"], **variant)
    sampler = make(sampling=True).to(check.device).eval().requires_grad_(False)
    scfg = copy.deepcopy(cfg)   # a few DDIM steps: each costs what an ancestral step does (one UNet forward)
    scfg.synth.sampler, scfg.synth.steps = "ddim", sizes["sample_steps"]
    for precision in precisions(check) if not any(variant.values()) else ("auto",):
        for b in sizes["sample_batches"] if not any(variant.values()) else sizes["sample_batches"][:1]:
            if check.over_budget(f"unet.sample batch {b}"):
                return
            with infer.inference_precision(precision, check.device) as ran:
                g = torch.Generator(device=check.device).manual_seed(0)
                first, seconds, peak = check.timed(lambda: ddpm._sampled(sampler, b, g, scfg), 2)
            label = "".join(f", {k}" for k, v in variant.items() if v)
            check.record(f"unet.sample.{ran}.b{b}{label}", seconds, b * sizes["sample_steps"], peak, first,
                         precision=ran, batch=b, unit="image-step", **variant)
            if b == ddpm.SAMPLE_BATCH or (check.tiny and b == sizes["sample_batches"][0]):
                if not any(variant.values()):   # the stages sample in batches of ddpm.SAMPLE_BATCH
                    check.rate("unet_sample_flops_s", per_item * b * sizes["sample_steps"] / seconds, ran)


# ---------------------------------------------------------------- T5: steps, generation, the test loss's forward

def t5_part(check: Check, cfgs, sizes, variant: dict) -> None:
    cfg, distilled = cfgs["t5"]
    s = sizes["t5"]

    def base():
        torch.manual_seed(0)
        return t5_model.built(s["vocab"], s["d_model"], s["layers"], s["heads"], s["d_ff"], 0.1, 0, 1)

    def make():
        return torch.compile(base()) if variant.get("compile") else base()

    def batch_of(step, n=None):
        g = torch.Generator().manual_seed(step)
        n = n or cfg.train.batch_size
        source = torch.randint(3, s["vocab"], (n, s["source"]), generator=g)
        target = torch.randint(3, s["vocab"], (n, s["target"]), generator=g)
        return {"input_ids": source.to(check.device), "attention_mask": torch.ones_like(source).to(check.device),
                "labels": target.to(check.device)}

    probe = base()
    b1 = batch_of(0, 1)
    per_row = flops(probe, input_ids=b1["input_ids"].cpu(), labels=b1["labels"].cpu())
    encoder_per_row = flops(probe.get_encoder(), input_ids=b1["input_ids"].cpu())
    train_steps(check, "t5", t5, make, base, cfg, distilled, batch_of, per_row, sizes["steps"], **variant)
    if any(variant.values()):
        return
    net = probe.to(check.device).eval().requires_grad_(False)
    n = sizes["gen_batch"]
    ids = batch_of(1, n)["input_ids"]
    mask = torch.ones_like(ids)
    for precision in precisions(check):
        if check.over_budget("t5.generate"):
            return
        with infer.inference_precision(precision, check.device) as ran, torch.no_grad():
            first, enc, peak = check.timed(lambda: net.get_encoder()(input_ids=ids, attention_mask=mask), 2)
            check.record(f"t5.encoder.{ran}.b{n}", enc, n, peak, first, precision=ran, batch=n, tokens=s["source"])
            first, gen, peak = check.timed(lambda: net.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=s["target"], min_new_tokens=s["target"],
                do_sample=False, num_beams=1, pad_token_id=0, eos_token_id=1, suppress_tokens=[0]), 1)
            check.record(f"t5.generate.{ran}.b{n}", gen, n, peak, first, precision=ran, batch=n,
                         new_tokens=s["target"])
            tf = batch_of(2, n)
            first, fwd, peak = check.timed(lambda: t5.loss(net, tf, None, cfg), 2)
            check.record(f"t5.test_loss_forward.{ran}.b{n}", fwd, n, peak, first, precision=ran, batch=n)
        check.rate("t5_encoder_flops_s", encoder_per_row * n / enc, ran)
        check.rate("t5_decode_step_s", max(gen - enc, 1e-9) / s["target"], ran)
        check.rate("t5_forward_flops_s", per_row * n / fwd, ran)


# ---------------------------------------------------------------- the metric networks, fp32

def metric_part(check: Check, sizes) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel   # heavy: transformers' GPT-2 only here
    from collapse.metrics.fid import InceptionFeatures
    n = sizes["features"]
    images = torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    extractor = InceptionFeatures(None, device=check.device, batch_size=min(n, 64))
    first, seconds, peak = check.timed(lambda: extractor(images), 1)
    check.record(f"inception.b{n}", seconds, n, peak, first, precision="fp32", note="with the CPU resize to 299")
    check.rate("inception_s_per_item", seconds / n)
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(**sizes["gpt2"])).to(check.device).eval()
    ids = torch.randint(0, gpt2.config.vocab_size, (32, sizes["gpt2_tokens"]), device=check.device)
    with torch.no_grad(), infer.fp32():
        first, seconds, peak = check.timed(lambda: gpt2(input_ids=ids).logits.float(), 2)
    check.record("gpt2.score.b32", seconds, 32, peak, first, precision="fp32", tokens=sizes["gpt2_tokens"],
                 parameters=sum(p.numel() for p in gpt2.parameters()))
    check.rate("gpt2_s_per_item", seconds / 32)


def projection(check: Check, folder: Path) -> None:
    """The paper grids' GPU-hours from the stated rates and from the ones measured here."""
    for grid, extra in (("ddpm_lambda_celeba", [f"data.root={folder}"]),
                        ("t5_lambda_cnndm", [f"model.path={folder / 't5'}", f"data.root={folder}",
                                             f"eval.ppl_model.path={folder / 'gpt2'}"])):
        plan = build(load_sweep([f"grid={grid}", "cluster=slurm", *extra]))
        hours = []
        for measured in (None, gpu_rates.load(str(check.out))):
            gpu_rates.use(measured)
            hours.append(sum(tasks.get(s.config["task"]).gpu_seconds(s.kind, s.config) or 0
                             for s in plan.stages.values()) / 3600)
        gpu_rates.use(None)
        print(f"gpu_check: projection {grid}: {hours[0]:.1f} GPU-hours at the stated rates, {hours[1]:.1f} at the "
              f"measured ones ({check.data['device']}){' [--tiny: not the paper sizes]' if check.tiny else ''}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the rates file to write")
    ap.add_argument("--tiny", action="store_true", help="tiny models and batches: a CPU test of this script")
    ap.add_argument("--budget-s", type=float, default=420, help="skip the optional variants past this many seconds")
    ap.add_argument("--variants", default="auto", choices=("auto", "on", "off"),
                    help="channels_last / torch.compile variants (auto: on a GPU only)")
    args = ap.parse_args()
    sizes = TINY if args.tiny else PAPER
    check = Check(args.out, args.tiny, args.budget_s)
    print(f"gpu_check: measure on {check.data['device']}, torch {torch.__version__}, "
          f"inference precision {check.data['inference_precision']}", flush=True)
    folder = Path(tempfile.mkdtemp())
    cfgs = grids(folder, sizes)
    parts = [("unet", lambda: unet_part(check, cfgs, sizes, {})),   # 1-2: the UNet's steps and sampling
             ("t5", lambda: t5_part(check, cfgs, sizes, {})),       # 1, 3: T5's steps, generation, forward
             ("metrics", lambda: metric_part(check, sizes))]        # 4
    if args.variants == "on" or (args.variants == "auto" and check.device.type == "cuda"):   # 5
        parts += [(f"unet {v}", lambda v=v: unet_part(check, cfgs, sizes, v))
                  for v in ({"channels_last": True}, {"compile": True}, {"channels_last": True, "compile": True})]
        parts += [("t5 compile", lambda: t5_part(check, cfgs, sizes, {"compile": True}))]
    failed = []
    for name, part in parts:
        if check.over_budget(name):
            continue
        try:
            part()
        except Exception as e:   # one part's failure (an OOM, a compile error) leaves the others to measure
            failed.append(name)
            print(f"gpu_check: measure {name} FAIL {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
            torch.cuda.empty_cache() if check.device.type == "cuda" else None
    projection(check, folder)
    print(f"gpu_check: measure wrote {args.out} ({len(check.data['measurements'])} measurements, "
          f"{len(check.data['rates'])} rates) in {check.elapsed():.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
