import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Tiny but real: real MNIST rows, real DeepSpeed, real subprocesses.
TINY = ["profile=smoke", "cluster=local", "data.train_size=256", "data.test_size=128", "train.epochs=1",
        "eval.grid_samples=4"]


def launch(*args, check=True, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(REPO / "sweeps" / "launch.py"), *args], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"launch {args} exited {out.returncode}\n{out.stdout}\n{out.stderr[-4000:]}")
    return out


@pytest.fixture
def tiny():
    return list(TINY)


# ---------------------------------------------------------------- two test workers (make test: pytest -n 2)

def pytest_configure(config):
    """Under pytest-xdist, pin each worker to its share of the cores: the local executor sizes its
    stages by this process's affinity (collapse/executors/local.py available_cores), so two workers
    never run more torch threads than there are cores (oversubscribed, torch runs several times slower)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    mine = cores[int(worker.removeprefix("gw")) % count::count] or cores
    os.sched_setaffinity(0, mine)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(len(mine))
    import torch
    torch.set_num_threads(len(mine))


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """--dist loadgroup: the tests using the one local SLURM cluster run on one worker, one after the
    other (some count its queue); the other tests of a file stay together, so its shared fixtures run once."""
    for item in items:
        group = "slurm" if item.get_closest_marker("slurm") else item.path.name
        item.add_marker(pytest.mark.xdist_group(group))
