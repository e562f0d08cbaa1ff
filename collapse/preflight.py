"""Warnings before an overnight run: what would make it fail or crawl, said before anything is submitted.

* results_root on a filesystem the nodes do not share (tmpfs, /tmp, a local disk) under SLURM: jobs on
  other nodes would not see the specs, and the report would not see their results;
* a GPU-sized stage (over GPU_SIZED_S on one GPU by the task's stated rate) that gets no GPU;
* a stage whose estimate exceeds its time limit (it relies on requeue and resumes from its checkpoints;
  past MAX_REQUEUES requeues submitit gives up), or whose time limit or estimate exceeds the
  partition's (sinfo);
* less free space on results_root's filesystem than the stages to run will write (collapse/disk.py).

Torch-free but for local_gpus(): the dry run and the launch call these, status and cancel never do.
"""
import shutil
import subprocess
from pathlib import Path

from collapse import disk, tasks
from collapse.tasks.gpu_rates import REFERENCE_GPU

GPU_SIZED_S = 600          # on one GPU; on one CPU core such a stage takes days
MAX_REQUEUES = 3           # collapse/executors/slurm.py: submitit's max_num_timeout
NODE_LOCAL_TYPES = {"tmpfs", "ramfs", "devtmpfs", "overlay", "squashfs"}
SHARED_TYPES = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "glusterfs", "fuse.glusterfs",
                "cifs", "smb3", "wekafs", "panfs", "pvfs2", "orangefs", "fuse.juicefs", "fuse.cephfs",
                "fuse.sshfs", "vast", "daos", "fuse.dfuse"}
NODE_LOCAL_PATHS = ("/tmp", "/dev/shm", "/var/tmp", "/run")


def mount_of(path: Path, mounts: str = "/proc/mounts") -> tuple[str, str]:
    """(mount point, filesystem type) of the mount that holds (or will hold) `path`."""
    path = Path(path).resolve()
    best = ("/", "unknown")
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, parts[2])
    return best


def shared_filesystem_note(root: Path, mounts: str = "/proc/mounts") -> str | None:
    point, fstype = mount_of(root, mounts)
    resolved = str(Path(root).resolve())
    under = next((p for p in NODE_LOCAL_PATHS if resolved == p or resolved.startswith(p + "/")), None)
    if fstype in NODE_LOCAL_TYPES or under:
        why = f"{fstype} mounted on {point}" + (f", under {under}" if under else "")
        return (f"results_root {resolved} is node-local ({why}): jobs on other nodes will not see it; "
                "put it on the filesystem your nodes share (e.g. /shared or $HOME on NFS/Lustre/GPFS)")
    if fstype not in SHARED_TYPES:
        return (f"results_root {resolved} is on {fstype} ({point}), not a filesystem known to be shared "
                f"between nodes ({', '.join(sorted(SHARED_TYPES)[:6])}, ...): fine on a single-node cluster, "
                "lost to jobs on other nodes")
    return None


def local_gpus() -> int:
    import torch   # torch-free otherwise: only a local dry run or launch counts GPUs, and it loads torch anyway
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def partition_limits() -> dict:
    """{partition: time limit in minutes (None: infinite)}, and the default under key None; {} without sinfo."""
    if shutil.which("sinfo") is None:
        return {}
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P|%l"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    limits = {}
    for line in out.splitlines():
        name, _, limit = line.strip().partition("|")
        minutes = slurm_minutes(limit)
        limits[name.rstrip("*")] = minutes
        if name.endswith("*"):
            limits[None] = minutes
    return limits


def slurm_minutes(text: str) -> float | None:
    """SLURM's [days-]hours:minutes:seconds (or minutes) as minutes; None for infinite or unknown."""
    text = text.strip()
    if not text or text in ("infinite", "UNLIMITED", "n/a"):
        return None
    days, _, rest = text.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    if len(parts) == 1:
        minutes = parts[0]
    else:
        parts = [0.0] * (3 - len(parts)) + parts
        minutes = parts[0] * 60 + parts[1] + parts[2] / 60
    return minutes + (float(days) * 1440 if days else 0)


def warnings(sweep, to_run: list, root: Path, backend: str, seconds: dict, limits: dict | None = None) -> list[str]:
    """Everything worth saying before the launch, one line each."""
    cluster, notes = sweep.base.cluster, []
    if backend == "slurm":
        note = shared_filesystem_note(root)
        if note:
            notes.append(note)
    notes += _gpu_notes(to_run, cluster, backend)
    if backend == "slurm":
        notes += _time_notes(to_run, cluster, seconds, partition_limits() if limits is None else limits)
    return notes + disk.warnings(to_run, root)


def _gpu_notes(to_run: list, cluster, backend: str) -> list[str]:
    here = local_gpus() if backend == "local" else None
    starved = {}
    for s in to_run:
        on_gpu = tasks.get(s.config["task"]).gpu_seconds(s.kind, s.config)
        gets = here if backend == "local" else cluster.resources(s.kind).gpus_per_node
        if on_gpu is not None and on_gpu > GPU_SIZED_S and not gets:
            starved.setdefault(s.kind, []).append(on_gpu)
    if not starved:
        return []
    what = ", ".join(f"{kind} x{len(v)} ({max(v) / 3600:.2g} h each on one {REFERENCE_GPU})"
                     for kind, v in starved.items())
    fix = ("set cluster.gpus_per_node=1 (or the grid's overrides)" if backend == "slurm"
           else "this machine has no GPU: launch it on a GPU cluster (cluster=slurm)")
    return [f"GPU-sized stages ask for no GPU: {what}; on CPU cores they take days: {fix}"]


def _time_notes(to_run: list, cluster, seconds: dict, limits: dict) -> list[str]:
    notes, over, hopeless = [], {}, {}
    for s in to_run:
        res, est = cluster.resources(s.kind), seconds.get(s.key, 0.0)
        partition = limits.get(res.partition) if res.partition in limits else limits.get(None)
        if partition is not None and res.time_min > partition:
            notes.append(f"{s.kind}: cluster time_min {res.time_min} min exceeds partition "
                         f"{res.partition or '(default)'}'s limit of {partition:.0f} min: sbatch will refuse or "
                         f"hold it; set cluster.stages.{s.kind}.time_min <= {partition:.0f}")
        if est > res.time_min * 60 * (MAX_REQUEUES + 1):
            hopeless.setdefault(s.kind, (est, res.time_min))
        elif est > res.time_min * 60:
            over.setdefault(s.kind, (est, res.time_min))
        if partition is not None and est > partition * 60 and s.kind not in over:
            over.setdefault(s.kind, (est, res.time_min))
    for kind, (est, limit) in over.items():
        notes.append(f"{kind}: estimated {est / 60:.0f} min > its time limit {limit} min: it relies on requeue "
                     f"(checkpoint at USR2, resume part-way; at most {MAX_REQUEUES} requeues)")
    for kind, (est, limit) in hopeless.items():
        notes.append(f"{kind}: estimated {est / 60:.0f} min is more than {MAX_REQUEUES + 1} time limits of {limit} min: "
                     f"it will run out of requeues; raise cluster.stages.{kind}.time_min")
    return list(dict.fromkeys(notes))
