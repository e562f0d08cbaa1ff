"""How far a running stage has got, for sweeps/status.py: <out>/progress.json, rewritten atomically
(collapse/storage.py) at most every EVERY_S seconds by the training loop (its steps, epochs and latest
test loss) and by the chunk loops of synth and eval (<out>/partial/progress.json: items made):

    {"unit": "step", "done": 13865, "total": 16450, "epoch": 59, "epochs": 70, "metric": "test_loss",
     "value": 0.072, "started": 1796415279.1, "done_at_start": 0, "time": 1796415519.4}

`started` and `done_at_start` are this run's (a resumed run counts from its checkpoint), so the time
to go comes from the stage's own rate so far. A run started before these files existed shows what
the last progress lines of its log say (train.py's evaluation and checkpoint lines). No torch here.
"""
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from collapse import storage

FILE = "progress.json"
EVERY_S = 5.0       # a write (with its fsync) every few seconds at most: nothing next to a training step
LOG_TAIL_BYTES = 1 << 16


class Writer:
    """Keeps `path` up to date with a loop's progress: update() every step, written every `every_s`."""

    def __init__(self, path: Path, unit: str, total: int, done: int = 0, every_s: float = EVERY_S, clock=time.time):
        self.path, self.every_s, self.clock = Path(path), every_s, clock
        self.fields = {"unit": unit, "total": total, "done": done, "done_at_start": done, "started": clock()}
        self.written_at = -math.inf

    def update(self, done: int, force: bool = False, **fields) -> None:
        """`fields`: epoch, epochs, metric (its name) and value, kept for the next writes too."""
        self.fields.update(done=done, **fields)
        now = self.clock()
        if not force and now - self.written_at < self.every_s:
            return
        self.written_at = now
        try:
            storage.write_json(self.path, {**self.fields, "time": now})
        except OSError:   # a view of the work: a full disk must not stop the work itself
            pass


@dataclass
class Progress:
    unit: str               # step, epoch, or what a chunk loop makes (samples, summaries, ...)
    done: int
    total: int
    metric: str = ""        # the latest test metric and its value
    value: float | None = None
    to_go_s: float | None = None   # from the stage's own rate so far

    def where(self) -> str:
        return f"{self.unit} {self.done}/{self.total}"

    def latest(self) -> str:
        return "" if self.value is None else f"{self.metric} {self.value:.4g}"


def read(stage_folder: Path, log_file: Path | None = None, now: float | None = None) -> Progress | None:
    """The newest progress file of a stage (its folder, its partial/, a redo's folder), else its log's."""
    now = time.time() if now is None else now
    found = None
    for path in _progress_files(Path(stage_folder)):
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        if found is None or mtime > found[0]:
            found = (mtime, path)
    if found is not None:
        try:
            return from_file(storage.read_json(found[1]), now)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return from_log(log_file, now) if log_file is not None else None


def _progress_files(folder: Path) -> list[Path]:
    outs = [folder] + (sorted(folder.glob("redo-*")) if folder.is_dir() else [])
    return [p for out in outs for p in (out / FILE, out / "partial" / FILE)]


def from_file(fields: dict, now: float) -> Progress:
    done, total = int(fields["done"]), int(fields["total"])
    rate = _rate(done - fields.get("done_at_start", 0), fields["time"] - fields["started"])
    progress = Progress(fields["unit"], done, total, fields.get("metric") or "", fields.get("value"),
                        _to_go(total - done, rate, now - fields["time"]))
    if fields.get("epochs"):   # an epoch budget reads as epochs
        progress.unit, progress.done, progress.total = "epoch", int(fields.get("epoch") or 0), int(fields["epochs"])
    return progress


def _rate(done: float, seconds: float) -> float | None:
    return done / seconds if done > 0 and seconds > 0 else None


def _to_go(left: float, rate: float | None, since_written: float) -> float | None:
    return None if rate is None else max(0.0, left / rate - max(0.0, since_written))


# ---------------------------------------------------------------- a log's progress lines (collapse/train.py)

CLOCK = re.compile(r"^\[(\d\d):(\d\d):(\d\d)\] ")
STARTING = re.compile(r": starting on ")
RESUMED = re.compile(r": resumed at epoch \d+ batch \d+ step (\d+)")
BY_EPOCH = re.compile(r": epoch (\d+)/(\d+) step (\d+) train \S+ test (\S+)")
BY_STEP = re.compile(r": step (\d+)/(\d+) \(epoch \d+\) train \S+ test (\S+)")
CHECKPOINT = re.compile(r": step (\d+)/(\d+): checkpoint saved")


def from_log(log_file: Path, now: float) -> Progress | None:
    """What the last progress lines of the current run in `log_file` say; None when there are none."""
    try:
        with open(log_file, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - LOG_TAIL_BYTES))
            text = f.read().decode(errors="replace")
            written = Path(log_file).stat().st_mtime
    except OSError:
        return None
    points, epochs, test = [], 0, None   # points: (clock seconds, step, total steps)
    for line in text.splitlines():
        clock = CLOCK.match(line)
        if clock is None:
            continue
        seconds = int(clock[1]) * 3600 + int(clock[2]) * 60 + int(clock[3])
        if STARTING.search(line):
            points, test = [(seconds, 0, None)], None
        elif m := RESUMED.search(line):
            points = [(seconds, int(m[1]), None)]
        elif m := BY_EPOCH.search(line):
            epoch, epochs, step, test = int(m[1]), int(m[2]), int(m[3]), _number(m[4])
            points.append((seconds, step, step * epochs // epoch if epoch else None))
        elif m := BY_STEP.search(line):
            points.append((seconds, int(m[1]), int(m[2])))
            test, epochs = _number(m[3]), 0
        elif m := CHECKPOINT.search(line):
            points.append((seconds, int(m[1]), int(m[2])))
    if not points or points[-1][2] is None:
        return None
    (first_s, first_step, _), (last_s, step, total) = points[0], points[-1]
    rate = _rate(step - first_step, (last_s - first_s) % 86400)   # the clock has no date: one wrap past midnight
    to_go = _to_go(total - step, rate, now - written)
    if epochs:
        return Progress("epoch", step * epochs // total, epochs, "test_loss", test, to_go)
    return Progress("step", step, total, "test_loss", test, to_go)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
