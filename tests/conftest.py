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
