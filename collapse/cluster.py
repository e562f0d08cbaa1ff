"""Which cluster a command uses, and whether SLURM may be called here: below the grid (which resolves
`cluster=auto`) and below everything that asks SLURM (status, cancel, the SLURM backend).

The one place that decides which cluster file a command uses: `cluster=auto` (the default) is
`configs/cluster/slurm.yaml` where SLURM answers and `configs/cluster/local.yaml` elsewhere, so a
launch, its dry run, status and cancel see the same resources as `cluster=slurm` (or `local`) would.
COLLAPSE_SLURM=off makes SLURM unreachable for this process and its children: the test suite sets it
where the SLURM that answers is not the project's own local cluster (tests/conftest.py), so nothing is
ever submitted to a site's scheduler by a test.
"""
import os
import shutil
import subprocess

OFF_ENV = "COLLAPSE_SLURM"


def slurm_switched_off() -> bool:
    return os.environ.get(OFF_ENV, "").lower() == "off"


def slurm_command(name: str) -> bool:
    """SLURM's command `name` (squeue, sacct, scancel) may be called here: installed, and SLURM not
    switched off. No sinfo round trip: status must answer fast."""
    return not slurm_switched_off() and shutil.which(name) is not None


def slurm_reachable() -> bool:
    if slurm_switched_off():
        return False
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def cluster_file(name: str) -> str:
    """The configs/cluster/<file> that `cluster=<name>` loads: `auto` resolves to slurm or local here."""
    if name == "auto":
        return "slurm" if slurm_reachable() else "local"
    return name


def choose_backend(cluster_cfg) -> str:
    if cluster_cfg.backend == "auto":
        return "slurm" if slurm_reachable() else "local"
    return cluster_cfg.backend
