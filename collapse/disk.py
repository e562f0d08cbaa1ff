"""What the stages to run will write under results_root, per stage kind, from the model and data sizes in
their configs; and the warning when the filesystem's free space is below it. Pure functions of the
configs (torch-free), as the time estimate is (collapse/dryrun.py, collapse/tasks/gpu_rates.py).

What a stage leaves in its folder (collapse/run.py, collapse/train.py, collapse/storage.py, collapse/partial.py):
* training (pretrain, teacher, student, generation): its checkpoint, kept after the stage ends: DeepSpeed's
  files, per parameter the fp32 weights and AdamW's two fp32 moments (12 bytes: 10.66 MB for the VAE's 887,264
  parameters, measured), and an fp32 master copy (4 more) where ZeRO or bf16 may be on (train.zero_stage > 0,
  train.bf16 not false); and best.safetensors (fp32; hard-linked into the checkpoint: counted once). While a checkpoint
  is saved the previous one is still there: one more checkpoint, for a while. A generation also samples the
  next generation's data: a synthetic set.
* synth: the synthetic set, synth.size (else data.train_size, else the data set's size) x the task's bytes
  per item; while it runs, its chunks (partial/) as large again. Shards: each its part, the join the whole.
* eval: a few examples (a picture, texts); while it runs, the chunks of what it scores (the DDPM's Inception
  features of eval.fid_samples samples); the real hold-out's features go once into <results_root>/cache.
* every stage: a log and a record; the report: its tables and figures.
The total asked for: what stays, plus the largest of what is there only while a stage runs.
"""
import shutil
from pathlib import Path

from collapse import tasks

CHECKPOINT_BYTES = 12          # per parameter: fp32 weights (4), AdamW's two moments (8)
MASTER_BYTES = 4               # per parameter: the fp32 master copy of bf16 or ZeRO
WEIGHTS_BYTES = 4              # best.safetensors: fp32
LOG_BYTES = 256 << 10          # a stage's log, record, progress, tensorboard events, examples: tens of KB measured
REPORT_BYTES = 5 << 20          # the report's tables and figures: 0.2 MB measured for a smoke grid
FEATURE_BYTES = 2048 * 4       # one image's Inception features, float32
TRAINING = ("pretrain", "teacher", "student", "generation")


# ---------------------------------------------------------------- model and item sizes, per task

def vae_parameters(model: dict) -> int:
    """The MLP VAE on 32x32 (collapse/models/vae.py): 887,264 at hidden 420, latent 20."""
    pixels, hidden, latent = 32 * 32, model["hidden"], model["latent"]
    return (pixels + 1) * hidden + (hidden + 1) * 2 * latent + (latent + 1) * hidden + (hidden + 1) * pixels


def unet_parameters(model: dict) -> int:
    """diffusers' UNet2DModel as collapse/models/unet.py builds it: 38,390,019 at the paper's 64x64 settings."""
    chans, per_block, attn_at = list(model["block_channels"]), model["layers_per_block"], model["attention_level"]
    image_channels, levels, temb = model["channels"], len(chans), 4 * chans[0]

    def conv(i, o, k=3):
        return i * o * k * k + o

    def resnet(i, o):   # two GroupNorms, two 3x3 convolutions, the time embedding's projection, a 1x1 shortcut
        return 2 * i + conv(i, o) + temb * o + o + 2 * o + conv(o, o) + (conv(i, o, 1) if i != o else 0)

    def attention(c):   # GroupNorm, q, k, v, out
        return 2 * c + 4 * (c * c + c)

    n = chans[0] * temb + temb + temb * temb + temb + conv(image_channels, chans[0])
    out = chans[0]
    for i, c in enumerate(chans):
        for j in range(per_block):
            n += resnet(out if j == 0 else c, c) + (attention(c) if i == attn_at else 0)
        n += conv(c, c) if i < levels - 1 else 0
        out = c
    n += 2 * resnet(chans[-1], chans[-1]) + attention(chans[-1])
    up = chans[::-1]
    prev = up[0]
    for i, c in enumerate(up):
        skip_in = up[min(i + 1, levels - 1)]
        for j in range(per_block + 1):
            skip = skip_in if j == per_block else c
            n += resnet((prev if j == 0 else c) + skip, c) + (attention(c) if i == levels - 1 - attn_at else 0)
        n += conv(c, c) if i < levels - 1 else 0
        prev = c
    return n + 2 * chans[0] + conv(chans[0], image_channels)


def t5_parameters(model: dict) -> int:
    """The encoder-decoder of model.vocab, d_model, layers, heads, d_ff, embeddings tied (t5-small's shape
    by default: 60,506,624); model.path's own config is not read: its fields are t5-small's there."""
    v, d, layers, heads, ff = model["vocab"], model["d_model"], model["layers"], model["heads"], model["d_ff"]
    attention, mlp, bias = 4 * d * d, 2 * d * ff, 32 * heads   # q k v o; wi wo; relative position buckets
    encoder = layers * (attention + mlp + 2 * d) + bias + d
    decoder = layers * (2 * attention + mlp + 3 * d) + bias + d
    return v * d + encoder + decoder


def sizes(config: dict) -> tuple[int, int, int] | None:
    """(parameters, bytes per synthetic item, bytes an eval keeps in chunks) of a stage's task; None: a task
    this module has no sizes for."""
    task, model, data = config["task"], config.get("model") or {}, config.get("data") or {}
    if task == "vae":
        return vae_parameters(model), 32 * 32, 0                         # uint8 32x32 images
    if task == "ddpm":
        item = model["channels"] * model["image_size"] ** 2               # uint8 images
        return unet_parameters(model), item, config["eval"]["fid_samples"] * FEATURE_BYTES
    if task == "t5":   # int32 token ids of article and summary, padded to at most their limits
        return t5_parameters(model), 4 * (data["max_source_tokens"] + data["max_target_tokens"]), 0
    if task == "gaussian":
        return 0, 0, 0                                                    # arrays of a few KB
    return None


# ---------------------------------------------------------------- per stage, per kind

def stage_bytes(kind: str, config: dict) -> dict | None:
    """{part: bytes} a stage of `kind` writes: the parts that stay, and "while running" (there only until it
    ends); None where the task's sizes are unknown."""
    if kind == "report":
        return {"tables and figures": REPORT_BYTES}
    got = sizes(config)
    if got is None:
        return None
    params, item, chunks = got
    data, synth = config.get("data") or {}, config.get("synth") or {}
    task = tasks.get(config["task"])
    full_train = task.full_sizes(data)[0] if data and hasattr(task, "full_sizes") else 0   # a Simulation has none
    n = (synth.get("size") if kind in ("synth", "synth_shard") else None) or data.get("train_size") or full_train
    shards = synth.get("shards", 1)
    out = {"log": LOG_BYTES}
    if kind in TRAINING:
        train = config.get("train") or {}
        per = CHECKPOINT_BYTES + (MASTER_BYTES if train.get("zero_stage") or train.get("bf16") is not False else 0)
        out.update(checkpoint=params * per, weights=params * WEIGHTS_BYTES)
        out["while running"] = params * per       # the previous checkpoint, until the new one is whole
        if kind == "generation":
            out["synthetic set"] = n * item
            out["while running"] += n * item
    elif kind in ("synth", "synth_shard"):
        part = n * item / (shards if kind == "synth_shard" else 1)
        out.update({"synthetic set": int(part), "while running": int(part) if kind == "synth_shard" or shards == 1 else 0})
    elif kind == "eval":
        out["while running"] = chunks
    return out


def staying(parts: dict) -> int:
    return sum(v for k, v in parts.items() if k != "while running")


def by_kind(stages: list) -> tuple[dict, list[str]]:
    """({kind: (stages, bytes they all leave, {part: bytes} of the largest one)}, [tasks without sizes])."""
    out, unknown = {}, []
    for s in stages:
        parts = stage_bytes(s.kind, s.config)
        if parts is None:
            unknown.append(s.config["task"])
            continue
        count, total, biggest = out.get(s.kind, (0, 0, {}))
        out[s.kind] = (count + 1, total + staying(parts), parts if staying(parts) >= staying(biggest) else biggest)
    return out, sorted(set(unknown))


def total_bytes(stages: list) -> int:
    """What stays after every stage has run, plus the largest of what is there only while one runs."""
    parts = [p for p in (stage_bytes(s.kind, s.config) for s in stages) if p is not None]
    return sum(staying(p) for p in parts) + max((p.get("while running", 0) for p in parts), default=0)


def free_bytes(root: Path) -> tuple[int, Path]:
    """Free bytes on the filesystem of `root`, or of its nearest existing parent (a root not made yet)."""
    here = Path(root).absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    return shutil.disk_usage(here).free, here


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return ""


def summary(stages: list, root: Path) -> list[str]:
    """The dry run's lines: the total under results_root, free space there, and each kind's stage."""
    if not stages:
        return []
    kinds, unknown = by_kind(stages)
    free, where = free_bytes(root)
    lines = [f"disk: {size(total_bytes(stages))} more under results_root ({size(free)} free on {where})"
             + (f"; no sizes for task {', '.join(unknown)}" if unknown else "")]
    for kind, (count, total, parts) in kinds.items():
        shown = ", ".join(f"{k} {size(v)}" for k, v in parts.items() if k != "while running" and v)
        extra = f"; + {size(parts['while running'])} while it runs" if parts.get("while running") else ""
        each = f"{size(total)}" + (f" ({count} stages, the largest {size(staying(parts))}: " if count > 1 else " (")
        lines.append(f"  {kind}: {each}{shown}{extra})")
    return lines


def warnings(stages: list, root: Path) -> list[str]:
    """One line when the free space of results_root's filesystem is below what the stages to run write."""
    need = total_bytes(stages)
    free, where = free_bytes(root)
    if need <= free:
        return []
    return [f"disk: the stages to run write about {size(need)} under results_root; {where} has {size(free)} free: "
            "free some, or put results_root on a larger filesystem"]
