"""Loops over items that resume part-way: a stage killed (SIGKILL, SLURM's time limit, a requeue) goes
on from its last finished chunk instead of starting over.

A loop makes items 0..total-1 batch by batch. With a `Keep` (a stage's <out>/partial/), every chunk of
several batches is written as it is finished, atomically (collapse/storage.py):

    <out>/partial/<name>/state.json             what the chunks are made from, the item count, the chunk size
    <out>/partial/<name>/chunk-00000.safetensors  items 0..chunk-1: the batches' tensors, and the state
    <out>/partial/<name>/chunk-00001.safetensors  of the loop's torch.Generator after them (if it draws)
    <out>/partial/progress.json                  the current loop's items made so far, for sweeps/status.py

A rerun loads the finished chunks, puts the generator back to where the last one left it, and makes
the rest. Chunks hold whole batches, so every batch sees the same items and random draws as in one go:
the result is bit-identical to an uninterrupted run's (on CPU). Chunks made from something else (other
weights, count or seed: state.json differs) are discarded. The runner deletes <out>/partial/ once its
stage's artifacts are written.

COLLAPSE_CHUNK_ITEMS=N (a test hook): chunks of N items instead of CHUNK_ITEMS rounded to whole
batches; where N is smaller than a batch, the batches shrink to N. That moves batch boundaries, so the
numbers can differ from a run without it; a run resumed under it still ends as an uninterrupted one
under it does.
"""
import json
import os
import shutil
import time
from pathlib import Path

import torch

from collapse import progress, storage

CHUNK_ITEMS = 256    # items a chunk holds, rounded down to whole batches (at least one): seconds to minutes of work
CHUNK_ENV = "COLLAPSE_CHUNK_ITEMS"
GENERATOR_STATE = "generator.state"


def sizes(batch_size: int) -> tuple[int, int]:
    """(items a chunk, items a batch) for a loop over batches of `batch_size`."""
    override = os.environ.get(CHUNK_ENV)
    if override:
        if not override.isdigit() or int(override) < 1:
            raise ValueError(f"{CHUNK_ENV}={override!r}: expected an integer >= 1")
        return int(override), min(batch_size, int(override))
    return max(1, CHUNK_ITEMS // batch_size) * batch_size, batch_size


class Keep:
    """Where a stage keeps the chunks of its loops (`folder`), what they are made from (`made_from`:
    JSON values, e.g. the model's weights hash and the seed), and the stage's log. `reused` counts the
    items read back from an earlier run's chunks (the record's measured.resumed)."""

    def __init__(self, folder: Path, made_from: dict, log=print):
        self.folder, self.made_from, self.log = Path(folder), dict(made_from), log
        self.reused = 0

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def batched(keep: Keep | None, name: str, total: int, batch_size: int, make, generator: torch.Generator | None = None,
            what: str = "sampled") -> dict:
    """`make(start, stop)` -> {key: tensor with a row per item} for items start..stop-1, called batch by
    batch over 0..total-1; returns each key's rows for all items, in order. With `keep`, chunks of
    batches are kept in keep.folder/name and a rerun resumes after the last one (see the module's doc)."""
    chunk, batch = sizes(batch_size)
    folder = keep.folder / name if keep is not None else None
    done = _kept_chunks(keep, folder, total, chunk, generator) if keep is not None else []
    if done:
        keep.reused += min(len(done) * chunk, total)
        keep.log(f"resuming: {min(len(done) * chunk, total)} of {total} items already {what} (partial/{name})")
    shown = _progress(keep, name, total, min(len(done) * chunk, total))
    for start in range(len(done) * chunk, total, chunk):
        stop = min(start + chunk, total)
        parts = [make(b, min(b + batch, stop)) for b in range(start, stop, batch)]
        made = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        if folder is not None:
            state = {GENERATOR_STATE: generator.get_state()} if generator is not None else {}
            storage.save_tensors(_chunk_path(folder, start // chunk), {**made, **state})
        done.append(made)
        if shown is not None:
            shown.update(stop, force=stop == total)
    if not done:
        return {}
    return {k: torch.cat([d[k] for d in done]) for k in done[0]}


def once(keep: Keep | None, name: str, items: int, make) -> dict:
    """`make()` -> {key: tensor} about `items` items, made in one piece; with `keep`, kept in
    keep.folder/name once made, and read back by a rerun instead of made again."""
    if keep is None:
        return make()
    folder = keep.folder / name
    done = _kept_chunks(keep, folder, items, max(1, items), None)
    if done:
        keep.reused += items
        keep.log(f"resuming: {items} of {items} items already scored (partial/{name})")
        return done[0]
    made = make()
    storage.save_tensors(_chunk_path(folder, 0), made)
    return made


def _progress(keep: Keep | None, name: str, total: int, done: int) -> progress.Writer | None:
    """keep.folder/progress.json for sweeps/status.py: `name`'s items made of `total`, this run's rate."""
    if keep is None:
        return None
    shown = progress.Writer(keep.folder / progress.FILE, name, total, done)
    shown.update(done, force=True)
    return shown


def _chunk_path(folder: Path, index: int) -> Path:
    return folder / f"chunk-{index:05d}.safetensors"


def _kept_chunks(keep: Keep, folder: Path, total: int, chunk: int, generator) -> list[dict]:
    """The chunks already kept in `folder`, in order (the generator set to after the last);
    [] when there are none or they were made from something else (then the folder is emptied)."""
    state = {**keep.made_from, "total": total, "chunk": chunk}
    if generator is not None:   # a CUDA generator's stream is not the CPU's
        state["generator"] = generator.device.type
    state = json.loads(json.dumps(state))   # as read back: lists for tuples
    try:
        kept = storage.read_json(folder / "state.json")
    except (OSError, ValueError):
        kept = None
    if kept != state:
        if kept is not None:
            keep.log(f"partial/{folder.name}: made from something else ({kept} != {state}); starting over")
        shutil.rmtree(folder, ignore_errors=True)
        storage.write_json(folder / "state.json", state)
        return []
    done = []
    for index in range(-(-total // chunk)):
        try:
            done.append(storage.load_tensors(_chunk_path(folder, index)))
        except storage.CorruptFileError:   # missing, or unreadable: made again from here
            break
    if done and generator is not None:
        generator.set_state(done[-1][GENERATOR_STATE])
    for d in done:
        d.pop(GENERATOR_STATE, None)
    return done


def rows_to_tensors(rows: list[list[int]]) -> dict:
    """Rows of different lengths (token ids) as two tensors: every row's values end to end, and the lengths."""
    return {"values": torch.tensor([v for r in rows for v in r], dtype=torch.int64),
            "lengths": torch.tensor([len(r) for r in rows], dtype=torch.int64)}


def rows_from_tensors(tensors: dict) -> list[list[int]]:
    values, out, at = tensors["values"].tolist(), [], 0
    for n in tensors["lengths"].tolist():
        out.append(values[at:at + n])
        at += n
    return out


def timed(make):
    """`make` with each call's seconds added as a one-row tensor "seconds" (summed: the loop's own time,
    over every run that made a part of it)."""
    def made(start, stop):
        began = time.perf_counter()
        out = make(start, stop)
        return {**out, "seconds": torch.tensor([time.perf_counter() - began], dtype=torch.float64)}
    return made
