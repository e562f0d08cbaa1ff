"""Backends that run a list of stages: `local` (subprocesses here) and `slurm` (submitit arrays)."""
import shutil
import subprocess


def slurm_reachable() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def choose_backend(cluster_cfg) -> str:
    if cluster_cfg.backend == "auto":
        return "slurm" if slurm_reachable() else "local"
    return cluster_cfg.backend
