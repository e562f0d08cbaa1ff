"""The canary: one short SLURM job, on the resources of the sweep's heaviest stage kind, that every
first-level job of a launch waits for (afterok).

A GPU grid otherwise learns that its nodes see no GPU, that a `module load` line is wrong, or that
data.root is not mounted only when its teacher starts after the queue wait, and then every dependent
job fails in turn. The canary runs on the same partition with the same GPUs and setup lines, from the
launch's code snapshot, and in seconds: imports the stack and the sweep's tasks, checks that the GPUs
asked for are visible and runs a bf16 matmul on each, reads every data and weights path the sweep
reads, and writes and removes a file in results_root. If any check fails the job fails, SLURM removes
every job that waits on it (--kill-on-invalid-dep=yes), and <results_root>/slurm/canary/<launch>.json
holds the one line that `status` shows. `canary=false` on the launch leaves it out.
"""
import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path

from collapse import storage
from collapse.slurm_index import canary_record as record_path

TIME_MIN = 10   # the canary's wall-clock limit: it takes seconds


class CanaryFailed(RuntimeError):
    pass


def heaviest(kinds, resources) -> tuple[str, object]:
    """(kind, its SlurmResources) of the kind asking the most: GPUs, then nodes, CPUs, memory, time."""
    def weight(kind):
        r = resources(kind)
        return (r.gpus_per_node, r.nodes, r.cpus_per_task, r.mem_gb or 0, r.time_min)
    kind = max(kinds, key=weight)
    return kind, resources(kind)


def canary_resources(res):
    """The heaviest kind's request on one node, for TIME_MIN minutes."""
    return replace(res, nodes=1, time_min=min(res.time_min, TIME_MIN), signal_delay_s=0, array_parallelism=1)


def sweep_paths(stages: list, path_fields) -> dict[str, str]:
    """{path: the config field naming it} of every data and weights path the stages read."""
    found = {}
    for stage in stages:
        for dotted in path_fields(stage.config["task"]):
            value = stage.config
            for part in dotted.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value:
                found.setdefault(str(value), dotted)
    return found


@dataclass
class Canary:
    """What the canary job runs (pickled by submitit): every check, its record written either way."""
    root: str
    launch: str
    gpus: int
    paths: dict          # path -> the config field naming it
    task_names: list

    def __call__(self) -> dict:
        started, checks = time.time(), []
        record = {"launch": self.launch, "host": socket.gethostname(), "job": os.environ.get("SLURM_JOB_ID"),
                  "started": round(started, 3), "checks": checks}
        try:
            for name, check in (("imports", self.imports), ("gpus", self.visible_gpus),
                                ("paths", self.read_paths), ("results_root", self.write_results_root)):
                checks.append(f"{name}: {check()}")
        except Exception as e:   # whatever broke, it is the one line the sweep's status shows
            line = f"{type(e).__name__}: {e}" if not isinstance(e, CanaryFailed) else str(e)
            line = " ".join(line.split())[:500]
            self._write({**record, "status": "failed", "error": line, "seconds": round(time.time() - started, 1)})
            raise CanaryFailed(f"canary failed on {record['host']}: {line}") from None
        self._write({**record, "status": "done", "seconds": round(time.time() - started, 1)})
        return {"status": "done"}

    def _write(self, record: dict) -> None:
        try:
            storage.write_json(record_path(self.root, self.launch), record)
        except OSError as e:    # results_root not writable: the job's own output says it all
            print(f"canary: cannot write its record {record_path(self.root, self.launch)}: {e}", flush=True)

    def imports(self) -> str:
        # here, not at the top: the heavy imports are the check, and a failing one must still write the record
        import deepspeed  # noqa: F401  (heavy: what every training stage imports)
        import torch  # heavy: the node's torch, its CUDA build
        from collapse import tasks  # heavy: the sweep's task modules (torch, their libraries)
        import collapse.run  # noqa: F401  (heavy: the stage runner, torch)
        for name in self.task_names:
            tasks.get(name)
        return f"torch {torch.__version__}, tasks {', '.join(self.task_names)}"

    def visible_gpus(self) -> str:
        import torch  # heavy, and imported by imports() first
        if not self.gpus:
            return "none asked for"
        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if seen < self.gpus:
            raise CanaryFailed(f"the job asked for {self.gpus} GPU(s) per node and sees {seen} "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, "
                               f"torch {torch.__version__}, CUDA build {torch.version.cuda})")
        for i in range(self.gpus):
            a = torch.randn(512, 512, device=f"cuda:{i}", dtype=torch.bfloat16)
            total = float((a @ a).float().sum())
            if total != total:   # NaN: the device computes garbage
                raise CanaryFailed(f"a bf16 matmul on cuda:{i} ({torch.cuda.get_device_name(i)}) gave NaN")
        return f"{seen} visible, bf16 matmul on {self.gpus}"

    def read_paths(self) -> str:
        for path, field in self.paths.items():
            p = Path(path)
            try:
                if p.is_dir():
                    first = next((c for c in sorted(p.iterdir()) if c.is_file()), None)
                    if first is not None:
                        with open(first, "rb") as f:
                            f.read(4096)
                else:
                    with open(p, "rb") as f:
                        f.read(4096)
            except OSError as e:
                raise CanaryFailed(f"{field} {path}: {e.strerror or e} on this node") from None
        return f"{len(self.paths)} read"

    def write_results_root(self) -> str:
        probe = Path(self.root) / "slurm" / "canary" / f".probe-{socket.gethostname()}-{os.getpid()}"
        try:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_text("canary\n")
            probe.unlink()
        except OSError as e:
            raise CanaryFailed(f"results_root {self.root}: cannot write a file there ({e.strerror or e})") from None
        return "written and removed"
