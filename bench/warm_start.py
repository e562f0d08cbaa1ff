"""What warm starts buy the local executor (collapse/executors/warm.py): one grid launched with stages forked
from the warm server and with stages spawned as fresh processes, side by side.

    python bench/warm_start.py [--rounds 2] [--grid vae_coeffs] [override ...]

Each round launches the grid twice into fresh results roots (warm first in even rounds, spawned first in
odd ones, so drift in the machine's load falls on both) and prints, per mode, the median wall time and
CPU seconds of the launch and every process under it, then warm/spawn for each, and the CPU saved per
stage. The default grid is the VAE study's 16 rows at smoke size (36 stages of about a second each),
where the interpreter's start is a large share; a paper-size stage runs minutes and gains nothing.
"""
import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMALL = ["profile=smoke", "data.train_size=256", "data.test_size=128", "train.epochs=1", "eval.grid_samples=4"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)   # every descendant reaped below us, the forks too
    return usage.ru_utime + usage.ru_stime


def launch(grid: str, warm: bool, overrides: list[str], base: Path) -> tuple[float, float, int]:
    root = Path(tempfile.mkdtemp(prefix="warm-" if warm else "spawn-", dir=base))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cpu, began = children_cpu(), time.monotonic()
    done = subprocess.run([sys.executable, str(REPO / "sweeps" / "launch.py"), f"grid={grid}", f"results_root={root}",
                           "cluster=local", f"cluster.warm_start={str(warm).lower()}", *overrides],
                          capture_output=True, text=True, env=env, cwd=REPO)
    wall, cpu = time.monotonic() - began, children_cpu() - cpu
    if done.returncode != 0:
        sys.exit(f"launch ({'warm' if warm else 'spawn'}) exited {done.returncode}:\n{done.stderr[-3000:]}")
    stages = len(list((root / "manifest").glob("*.json")))
    shutil.rmtree(root, ignore_errors=True)
    return wall, cpu, stages


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--grid", default="vae_coeffs")
    ap.add_argument("overrides", nargs="*", default=SMALL)
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    runs = {True: [], False: []}
    try:
        for r in range(a.rounds):
            for warm in ((True, False) if r % 2 == 0 else (False, True)):
                runs[warm].append(launch(a.grid, warm, a.overrides, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    stages = runs[True][0][2]
    median = {warm: (statistics.median(w for w, _, _ in rs), statistics.median(c for _, c, _ in rs))
              for warm, rs in runs.items()}
    print(f"grid {a.grid} ({stages} stages), {a.rounds} rounds, {os.cpu_count()} cores")
    for warm, name in ((True, "warm"), (False, "spawn")):
        print(f"  {name:5s}: wall {median[warm][0]:7.1f} s   cpu {median[warm][1]:7.1f} s")
    print(f"wall warm/spawn {median[True][0] / median[False][0]:.3f}")
    print(f"cpu warm/spawn {median[True][1] / median[False][1]:.3f}")
    print(f"cpu saved per stage: {(median[False][1] - median[True][1]) / stages:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
