"""Which run is which in TensorBoard: `tensorboard --logdir <results_root>/tensorboard` shows every
training stage as <grid>/<stage name> (toy_lambda/student[lam=1,seed=0]), not as a 16-hex key, and its
HParams view compares the rows: each run carries its coefficients and seed against its best test loss.

The events stay where the stage writes them (stages/<key>/tensorboard/, content-addressed); the tree is
symbolic links to those folders, one per grid whose launch planned the stage (a teacher two grids share
appears in both; TensorBoard follows the links). collapse/train.py calls link() when it opens its writer
(so a running stage shows up at once) and add_hparams() when training ends; link_all() makes the tree of
a results root whose stages trained before that.

Each run writes its session's hparams and no experiment summary of its own: TensorBoard then builds the
experiment from every run's hparams (a teacher has no coefficients, a student has them), where one
run's experiment summary would hide the hparams the others have.
"""
import json
import math
import os
from pathlib import Path

from collapse import stages

TREE = "tensorboard"            # <results_root>/tensorboard/<grid>/<stage name>
BEST = "best/test_loss"         # the metric each run's hparams stand against
MARKER = "hparams.json"         # beside a run's events once its hparams are written (TensorBoard reads events only)
TRAINED = ("pretrain", "teacher", "student", "generation")
SECTIONS = {"student": ("distill",), "generation": ("distill", "generations")}   # a teacher's: its seed only


def folder_name(name: str) -> str:
    """A stage or grid name as one folder name: '/' (synth[seed=0,shard=0/4]) and '\\' become '_'."""
    return str(name).replace("/", "_").replace("\\", "_")


def grids_of(root, key: str) -> list[str]:
    """The grids whose latest done sweep record lists stage `key` (read straight from manifest/sweep-*.json):
    a stage an older launch of a grid ran under the same name as the latest's is not the grid's any more."""
    latest: dict = {}
    for path in sorted((Path(root) / "manifest").glob("sweep-*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        name = str(record.get("name"))
        if record.get("status") == "done" and record.get("ended", 0) >= latest.get(name, {}).get("ended", 0):
            latest[name] = record
    return sorted(name for name, r in latest.items() if key in ((r.get("config") or {}).get("stages") or ()))


def link(out_dir) -> list[Path]:
    """<root>/tensorboard/<grid>/<stage name> -> out_dir/tensorboard (relative links) for every grid that
    planned the stage whose folder is out_dir (<root>/stages/<key>); returns the links. A path there that
    is not a link is left alone."""
    out_dir = Path(out_dir)
    root, key = out_dir.parent.parent, out_dir.name
    try:
        name = stages.read_spec(root, key)["name"]
    except (OSError, ValueError, KeyError):
        return []
    target = out_dir / "tensorboard"
    target.mkdir(parents=True, exist_ok=True)
    made = []
    for grid in grids_of(root, key):
        where = root / TREE / folder_name(grid) / folder_name(name)
        where.parent.mkdir(parents=True, exist_ok=True)
        if where.exists() and not where.is_symlink():
            continue
        tmp = where.with_name(f".{where.name}.{os.getpid()}.tmp")
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(os.path.relpath(target, where.parent))
        os.replace(tmp, where)
        made.append(where)
    return made


def hparams(config: dict, kind: str) -> dict:
    """The hparams a run shows: its kind and train.seed, and a student's distill.* (a generation's also
    generations.*) scalars; a teacher's config carries some row's coefficients, which do not apply to it."""
    out = {"kind": kind}
    for section in SECTIONS.get(kind, ()):
        for field, value in sorted(((config or {}).get(section) or {}).items()):
            if isinstance(value, (bool, int, float, str)) and not (isinstance(value, float) and math.isnan(value)):
                out[f"{section}.{field}"] = value
    seed = ((config or {}).get("train") or {}).get("seed")
    if isinstance(seed, int):
        out["train.seed"] = seed
    return out


def add_hparams(writer, out_dir, best_loss: float, step: int) -> None:
    """The stage's hparams (from its spec, out_dir/stage.json) against `best_loss`, into `writer`'s run
    (torch's SummaryWriter on out_dir/tensorboard), with BEST as a scalar at `step`; MARKER says so."""
    from torch.utils.tensorboard.summary import hparams as summaries   # heavy: torch's summary protos
    try:
        spec = stages.read_spec(Path(out_dir).parent.parent, Path(out_dir).name)
    except (OSError, ValueError):   # not a stage's folder (a test's, a benchmark's): curves only
        return
    if not math.isfinite(best_loss):   # no evaluation ran: nothing to stand the hparams against
        return
    _, start, end = summaries(hparams(spec.get("config"), spec.get("kind")), {BEST: best_loss})
    writer.file_writer.add_summary(start)
    writer.file_writer.add_summary(end)
    writer.add_scalar(BEST, best_loss, step)
    writer.flush()
    (Path(out_dir) / TREE / MARKER).write_text(json.dumps({BEST: best_loss, "step": step}) + "\n")


def link_all(root) -> list[Path]:
    """The tree for every done training stage of `root`'s latest sweeps, with hparams where its run has
    none yet (stages that trained before collapse/train.py called link() and add_hparams()); a link in
    the tree to a stage no latest sweep lists is removed."""
    from torch.utils.tensorboard import SummaryWriter   # heavy: torch's event writer, as collapse/train.py
    made = []
    for path in sorted((Path(root) / "manifest").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        metrics = record.get("metrics") or {}
        if record.get("kind") not in TRAINED or record.get("status") != "done" or "best_test_loss" not in metrics:
            continue
        out_dir = stages.stage_dir(root, record["key"])
        linked = link(out_dir)
        if linked and not (out_dir / TREE / MARKER).exists():
            writer = SummaryWriter(str(out_dir / TREE), filename_suffix=".hparams")
            add_hparams(writer, out_dir, metrics["best_test_loss"], metrics.get("best_step", 0))
            writer.close()
        made += linked
    for old in (Path(root) / TREE).glob("*/*"):
        if old.is_symlink() and old not in made:
            old.unlink()
    return made
