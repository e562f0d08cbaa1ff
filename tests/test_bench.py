"""The benchmarks run: each at its smallest size prints the ratios it exists for.

They build the project's real configs and engines, so a change to either can break them without
any other test noticing (train_step.py did, when train.lr_schedule was added); bench/gpu_check.sh
runs train_step.py on GPU machines, where a broken script costs a lent device's time.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RATIO = r"\s+\d+\.\d{3}"
DISTRIBUTED = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

CASES = {
    "train_step.py": (["--steps", "2", "--rounds", "1"],
                      ["engine/bare", "distilled/plain", "bf16/fp32", "leased/plain"]),
    "ddpm_step.py": (["--steps", "1", "--rounds", "1", "--samples", "2", "--sample-batch", "2", "--ddim-steps", "2"],
                     ["engine/bare", "distilled/plain"]),
    "gpu_projection.py": (["--steps", "1", "--device", "cpu", "--quick"], []),
    "warm_start.py": (["--rounds", "1", "--grid", "vae_smoke3", "profile=smoke", "data.train_size=64",
                       "data.test_size=64", "train.epochs=1", "model.hidden=32", "eval.grid_samples=4"],
                      ["wall warm/spawn", "cpu warm/spawn"]),
    "t5_step.py": (["--steps", "1", "--rounds", "1", "--generate", "2", "--rouge-pairs", "10"],
                   ["engine/bare", "distilled/plain"]),
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_bench_runs_and_prints_its_ratios(script):
    args, ratios = CASES[script]
    # without the rendezvous an in-process test left in os.environ: its MASTER_PORT is this process's own store
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for name in ratios:
        assert re.search(re.escape(name) + RATIO, done.stdout), (name, done.stdout)
    if script == "gpu_projection.py":   # both paper studies projected: GPU-hours from the stated rates
        assert len(re.findall(r"paper grid, stated rates: \d+\.\d GPU-hours", done.stdout)) == 2, done.stdout
