"""The full-size rehearsal of a paper grid (profile=rehearsal, docs/rehearsal.md): launch it on fabricated data,
watch its stages, and write the per-stage table.

    python -m collapse.rehearsal run GRID DIR ROOT [key=value ...]   # fabricates DIR if empty, launches, watches, tables
    python -m collapse.rehearsal table ROOT                          # the table again, from ROOT

`run` launches `GRID profile=rehearsal` on DIR's fabricated data into ROOT with the resources the local SLURM
has (LOWERED: --mem and CPUs; the GPU requests stay) and no canary (it would fail, rightly: the placeholder
GPUs are not devices), then, until the report stage has ended, samples once a second what the records do not
carry yet: each SLURM job's host memory (the processes whose environment names the job: the largest VmHWM,
the kernel's own peak, and the largest sum of VmRSS) and each training stage's progress file (the time of
each step). It writes ROOT/rehearsal/watch.json, then ROOT/rehearsal/table.md. A record's `measured`
(peak_rss_mib, items_per_s), where the stage runner writes one, is used before what was watched.
"""
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from collapse import manifest, storage
from collapse.stages import stage_dir

REPO = Path(__file__).resolve().parent.parent
LOWERED = {"cluster.cpus_per_task": 4, "cluster.mem_gb": 11}   # 2 stages at once on the node's 8 CPUs, 24 GB
PATHS = {"ddpm_lambda_celeba": {"data.root": "celeba"},
         "t5_lambda_cnndm": {"data.root": "cnn_dailymail", "model.path": "t5-small", "eval.ppl_model.path": "gpt2"}}
# the paper's counts per stage kind (configs/experiment/*.yaml): what a rehearsal count scales to
PAPER = {"ddpm": {"steps": 30_000, "train_items": 15_000, "sample_steps": 1000, "eval_items": 5000},
         "t5": {"steps": 20_000, "train_items": 287_113, "sample_steps": 1, "eval_items": 13_368}}
TRAINING = ("teacher", "student", "generation", "pretrain")
STAGE_KINDS = (*TRAINING, "synth_shard", "synth", "eval", "report")   # a sweep's own record is not a stage


def launch_argv(grid: str, data_dir: Path, root: Path, extra: list[str]) -> list[str]:
    paths = [f"{k}={Path(data_dir, v).resolve()}" for k, v in PATHS[grid].items()]
    lowered = [f"{k}={v}" for k, v in LOWERED.items()]
    return [sys.executable, str(REPO / "sweeps" / "launch.py"), f"grid={grid}", "profile=rehearsal", "cluster=slurm",
            f"results_root={root}", "canary=false", *lowered, *paths, *extra]


# ---------------------------------------------------------------- watching

def job_processes() -> dict[str, list[int]]:
    """SLURM job id -> pids of the processes running in it (read from /proc)."""
    jobs = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        job = next((e[13:].decode() for e in env if e.startswith(b"SLURM_JOB_ID=")), None)
        if job:
            jobs.setdefault(job, []).append(int(pid))
    return jobs


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of a process in KiB; (0, 0) once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    except OSError:
        return 0, 0
    kib = lambda name: int(fields.get(name, "0 kB").split()[0])  # noqa: E731
    return kib("VmHWM"), kib("VmRSS")


class Watch:
    """Peak host memory per SLURM job and (done, first time, last time) per training stage's progress."""

    def __init__(self, root: Path):
        self.root, self.memory, self.progress = root, {}, {}

    def sample(self) -> None:
        for job, pids in job_processes().items():
            pairs = [memory_kib(p) for p in pids]
            seen = self.memory.setdefault(job, {"hwm_mib": 0.0, "rss_sum_mib": 0.0})
            seen["hwm_mib"] = max(seen["hwm_mib"], max(h for h, _ in pairs) / 1024)
            seen["rss_sum_mib"] = max(seen["rss_sum_mib"], sum(r for _, r in pairs) / 1024)
        for path in (self.root / "stages").glob("*/progress.json"):
            try:
                p = storage.read_json(path)
            except (OSError, ValueError):
                continue
            if p.get("unit") != "step":
                continue
            times = self.progress.setdefault(path.parent.name, {})
            first, _ = times.get(str(p["done"]), (p["time"], p["time"]))
            times[str(p["done"])] = (first, p["time"])

    def save(self) -> None:
        storage.write_json(self.root / "rehearsal" / "watch.json", {"memory": self.memory, "progress": self.progress})


def seconds_per_step(times: dict) -> float | None:
    """The median over the steps after the first of (next first time - this last time) / steps between."""
    done = sorted((int(d), t) for d, t in times.items())
    gaps = [(b[1][0] - a[1][1]) / (b[0] - a[0]) for a, b in zip(done, done[1:]) if a[0] >= 1]
    return statistics.median(gaps) if gaps else None


def report_ended(root: Path) -> bool:
    records = [r for r in manifest.read_all(root) if r.get("kind") == "report"]
    return bool(records) and all(r["status"] in ("done", "partial", "failed") for r in records)


def run(grid: str, data_dir: Path, root: Path, extra: list[str], timeout_s: float = 3600) -> int:
    from collapse import fabricate   # heavy: datasets, transformers (only when DIR is to be made)
    if not (data_dir / "FABRICATED.json").is_file():
        fabricate.fabricate(data_dir)
    started = time.time()
    launched = subprocess.run(launch_argv(grid, data_dir, root, extra), cwd=REPO)
    if launched.returncode:
        return launched.returncode
    watch = Watch(root)
    while not report_ended(root) and time.time() - started < timeout_s:
        watch.sample()
        if int(time.time()) % 10 == 0:
            watch.save()
        time.sleep(1)
    watch.save()
    print(f"rehearsal of {grid}: {time.time() - started:.0f} s launch to report")
    write_table(root, wall_s=time.time() - started)
    return 0


# ---------------------------------------------------------------- the table

def asked_mem_mib(record: dict) -> float | None:
    cluster = record["config"]["cluster"]
    mem = (cluster.get("stages", {}).get(record["kind"]) or {}).get("mem_gb", cluster.get("mem_gb"))
    return None if mem is None else mem * 1024


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def items(record: dict) -> tuple[str, int, int, float] | None:
    """(unit, this run's count, the paper's count, the paper's items over this run's: what data scales by) of
    what a stage's time scales with."""
    task, cfg, metrics = record["config"]["task"], record["config"], record.get("metrics") or {}
    paper = PAPER.get(task)
    if paper is None or record["kind"] == "report":
        return None
    sample_steps = (cfg["synth"].get("steps") or 1) if task == "ddpm" else 1
    if record["kind"] in TRAINING:
        return "step", metrics.get("steps") or cfg["train"]["steps"], paper["steps"], 1.0
    if record["kind"] == "synth" and cfg["synth"]["shards"] > 1:   # the join of the shards: items, no sampling
        n = metrics.get("n") or 1
        return "item joined", n, paper["train_items"], paper["train_items"] / n
    if record["kind"] in ("synth_shard", "synth"):
        shards = cfg["synth"]["shards"] if record["kind"] == "synth_shard" else 1
        n = metrics.get("n") or 1
        return ("item x sampling step", n * sample_steps, paper["train_items"] * paper["sample_steps"] // shards,
                paper["train_items"] / shards / n)
    if record["kind"] == "eval":
        n = cfg["eval"].get("fid_samples") or cfg["eval"].get("articles") or 1
        return "item x sampling step", n * sample_steps, paper["eval_items"] * paper["sample_steps"], 1.0
    return None


def rows(root: Path) -> list[dict]:
    watched = {}
    if (root / "rehearsal" / "watch.json").is_file():
        watched = storage.read_json(root / "rehearsal" / "watch.json")
    out = []
    for r in sorted(manifest.read_all(root), key=lambda r: (r.get("started") or 0)):
        if r.get("status") not in ("done", "partial", "failed") or r.get("kind") not in STAGE_KINDS:
            continue
        measured = r.get("measured") or {}
        mem = watched.get("memory", {}).get(str(r.get("slurm_job_id")), {})
        peak = measured.get("peak_rss_mib") or max(mem.get("hwm_mib", 0), mem.get("rss_sum_mib", 0)) or None
        wall = (r.get("ended") or 0) - (r.get("started") or 0)
        unit = items(r)
        per = None
        if r["kind"] in TRAINING:   # the steps alone: evaluations, checkpoints and set-up left out
            per = seconds_per_step(watched.get("progress", {}).get(r["key"], {}))
        if per is None and unit and unit[1]:   # the stage's loop (measured) or its wall time (set-up included)
            per = (measured.get("seconds") or wall) / unit[1]
        artifacts = {k: v.get("bytes", 0) for k, v in (r.get("artifacts") or {}).items()}
        checkpoints = folder_bytes(stage_dir(root, r["key"]) / "checkpoints")
        scale = unit[3] if unit else None
        data_bytes = artifacts.get("data", 0)
        out.append({"name": r["name"], "kind": r["kind"], "status": r["status"], "wall_s": wall, "peak_mib": peak,
                    "asked_mib": asked_mem_mib(r), "weights": artifacts.get("weights", 0), "checkpoints": checkpoints,
                    "data": data_bytes, "data_paper": data_bytes * scale if scale and data_bytes else None,
                    "unit": unit[0] if unit else "", "count": unit[1] if unit else None,
                    "per_unit_s": per, "paper_h": per * unit[2] / 3600 if per and unit else None,
                    "source": "measured" if measured else "watched"})
    return out


def _mb(b) -> str:
    return "" if not b else f"{b / 1e6:,.1f} MB" if b < 1e9 else f"{b / 1e9:,.2f} GB"


def table(found: list[dict]) -> str:
    head = ("| stage | kind | status | wall s | peak host MiB / --mem asked | weights | checkpoints | data (at the paper's "
            "count) | s per unit (unit, count) | CPU-hours at the paper's count |")
    lines = [head, "|" + "---|" * 10]
    for r in found:
        mem = f"{r['peak_mib']:,.0f}" if r["peak_mib"] else "?"
        asked = f"{r['asked_mib']:,.0f}" if r["asked_mib"] else "partition default"
        data = f"{_mb(r['data'])} ({_mb(r['data_paper'])})" if r["data"] else ""
        per = f"{r['per_unit_s']:.2f} ({r['unit']}, {r['count']})" if r["per_unit_s"] else ""
        hours = f"{r['paper_h']:,.1f}" if r["paper_h"] else ""
        lines.append(f"| {r['name']} | {r['kind']} | {r['status']} | {r['wall_s']:.0f} | {mem} / {asked} | "
                     f"{_mb(r['weights'])} | {_mb(r['checkpoints'])} | {data} | {per} | {hours} |")
    return "\n".join(lines) + "\n"


def write_table(root: Path, wall_s: float | None = None) -> Path:
    found = rows(root)
    text = table(found)
    if wall_s is not None:
        text += f"\nLaunch to report: {wall_s / 60:.1f} min; {len(found)} stages.\n"
    path = root / "rehearsal" / "table.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    return path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 4 and argv[0] == "run" and argv[1] in PATHS:
        return run(argv[1], Path(argv[2]), Path(argv[3]).resolve(), argv[4:])
    if len(argv) == 2 and argv[0] == "table":
        write_table(Path(argv[1]))
        return 0
    print("usage: python -m collapse.rehearsal run {" + ",".join(PATHS) + "} DIR ROOT [key=value ...]\n"
          "       python -m collapse.rehearsal table ROOT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
