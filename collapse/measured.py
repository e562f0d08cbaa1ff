"""What a stage measured while it ran, kept in its record as `measured`.

    {"seconds": 412.3, "items": 1_920_000, "items_per_s": 4657.0, "resumed": false,
     "device": "cpu", "devices": 1, "device_s": 412.3, "peak_rss_mib": 812.0}

`seconds` is the stage's own work (from reading its inputs to its last artifact; not the interpreter's
start). `items` is this run's work in the dry run's unit (collapse/dryrun.py work(): item-steps for
training, items made for synth, test items for eval), so a rate measured here and an estimate made
there are about the same thing. A run that resumed part-way (from a checkpoint, or from kept chunks)
says `resumed`: its seconds cover only its part, and estimates do not learn from it. `device_s` is
seconds times the GPUs the stage held (its ranks); on CPU, seconds times the cores (threads x ranks),
so `device` says which. Peak memory is this process's (rank 0's): resident host memory, and on CUDA
the allocator's peak.
"""
import os
import resource
import sys
from dataclasses import dataclass

import torch

KINDS = ("pretrain", "teacher", "student", "generation", "synth", "synth_shard", "eval")


@dataclass
class Work:
    """What a runner did in this run, filled in by the runner (collapse/run.py)."""
    items: int = 0
    resumed: bool = False


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def device_summary() -> tuple[str, int]:
    """(device name, how many of them this stage held): GPUs are its ranks; on CPU, its cores."""
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(), ranks
    return "cpu", ranks * torch.get_num_threads()


def record(work: Work, seconds: float) -> dict:
    """A record's `measured` entry for a stage that did `work` in `seconds`."""
    device, devices = device_summary()
    out = {"seconds": round(seconds, 6), "items": int(work.items),
           "items_per_s": round(work.items / seconds, 3) if seconds > 0 and work.items else None,
           "resumed": bool(work.resumed), "device": device, "devices": devices,
           "device_s": round(seconds * devices, 6), "peak_rss_mib": peak_rss_mib()}
    if torch.cuda.is_available():
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out
