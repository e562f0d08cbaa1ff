"""What the SLURM backend costs on top of the stages: sbatch calls, and seconds per dependency level.

    python bench/slurm_overhead.py [--keep] [--timeout 300]

Needs a cluster that answers sinfo (`bash slurm/start.sh`). Submits 16 trivial stages of the
vae_coeffs grid (64 real items, one step: a teacher, its synth, 7 students and their 7 evals, 4
dependency levels) through the real code path, collapse.executors.slurm.submit, with an sbatch shim
first on PATH that counts the calls; then waits for a complete manifest and prints:

* sbatch calls (goal: <= 1 per stage kind per level, + 1 report job);
* launch: the submit() call itself;
* wall: from submit() to the last stage's recorded end;
* overhead per level = (wall - the sum over levels of the longest stage run time at that level)
  / levels, where a stage's run time is what run_stage records (started -> ended);
* that overhead split into SLURM's part (a level's inputs ended -> its first job's Python is up,
  from submitit's "Starting" line: dependency release, scheduling tick, launch, interpreter) and the
  job's imports (-> run_stage starts: torch, DeepSpeed, the project), which no scheduler removes.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collapse import manifest, plan as planning  # noqa: E402
from collapse.cluster import slurm_reachable  # noqa: E402
from collapse import slurm_index  # noqa: E402
from collapse.executors import slurm  # noqa: E402
from collapse.executors.slurm_groups import make_groups  # noqa: E402
from collapse.grid import load_sweep  # noqa: E402
from collapse.stages import write_spec  # noqa: E402

TRIVIAL = ["profile=smoke", "cluster=slurm", "data.train_size=64", "data.test_size=64", "train.epochs=1",
           "train.batch_size=64", "model.hidden=32", "synth.size=64", "eval.grid_samples=4"]


def sbatch_shim(folder: Path) -> Path:
    """An `sbatch` that logs each call and runs the real one."""
    real = shutil.which("sbatch")
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "sbatch"
    shim.write_text(f'#!/bin/sh\necho "$@" >> "{folder}/calls"\nexec "{real}" "$@"\n')
    shim.chmod(0o755)
    return folder / "calls"


def sixteen_stages(plan) -> list:
    stages = list(plan.stages.values())
    teacher = next(s for s in stages if s.kind == "teacher")
    synth = next(s for s in stages if s.kind == "synth")
    students = [s for s in stages if s.kind == "student"][:7]
    evals = [s for s in stages if s.kind == "eval" and s.deps.get("model") in {t.key for t in students}]
    return [teacher, synth, *students, *evals]


def submitit_start(root, job_id: str) -> float | None:
    """When the job's Python was up: the timestamp of submitit's first log line."""
    try:
        for line in slurm_index.job_stdout(root, job_id).read_text().splitlines():
            if "Starting with JobEnvironment" in line:
                stamp = line.split("(", 1)[1].split(")", 1)[0]
                return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except (OSError, IndexError, ValueError):
        pass
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the results root (printed) for inspection")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for the stages")
    args = ap.parse_args(argv)
    if not slurm_reachable():
        print("error: no SLURM cluster answers sinfo; start the local one with `bash slurm/start.sh`",
              file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="slurm-overhead-"))
    root = work / "results"
    calls = sbatch_shim(work / "shim")
    os.environ["PATH"] = f"{calls.parent}{os.pathsep}{os.environ['PATH']}"

    sweep = load_sweep(["grid=vae_coeffs", f"results_root={root}", *TRIVIAL])
    plan = planning.build(sweep)
    stages = sixteen_stages(plan)
    sub = planning.Plan()
    for s in stages:
        sub.add(s)
        write_spec(root, s)
    groups = make_groups(stages)
    levels = {s.key: g.level for g in groups for s in g.stages}
    n_levels = 1 + max(levels.values())

    t0 = time.time()
    out = open(work / "launch.txt", "w")
    rc = slurm.submit(sweep, sub, stages, root, out=out)
    t_launch = time.time() - t0
    out.close()
    if rc != 0:
        print((work / "launch.txt").read_text(), file=sys.stderr)
        return rc
    index = slurm_index.read_index(root)
    launch = index["launches"][-1]

    deadline = time.monotonic() + args.timeout
    recs = {}
    while time.monotonic() < deadline:
        recs = {s.key: manifest.read(root, s.key) for s in stages}
        if all(r is not None and r["status"] in ("done", "failed") for r in recs.values()):
            break
        time.sleep(0.1)
    else:
        slurm_index.cancel([a["job"] for a in launch["arrays"]] + [launch["report"]])
        print(f"error: the stages did not finish in {args.timeout:.0f}s (results in {root})", file=sys.stderr)
        return 1
    failed = [r["name"] for r in recs.values() if r["status"] != "done"]
    n_calls = len(calls.read_text().splitlines()) if calls.exists() else 0

    wall = max(r["ended"] for r in recs.values()) - t0
    by_level: dict[int, list] = {}
    for key, r in recs.items():
        by_level.setdefault(levels[key], []).append((key, r))
    run_path = sum(max(r["ended"] - r["started"] for _, r in by_level[lv]) for lv in by_level)
    overhead = (wall - run_path) / n_levels

    print(f"{len(stages)} stages, {n_levels} dependency levels, {len(groups)} groups "
          f"({', '.join(f'L{g.level} {g.kind} x{len(g.stages)}' for g in groups)})")
    print(f"sbatch calls: {n_calls} ({len(groups)} groups + 1 report job; goal <= 1 per kind per level + 1)")
    print(f"launch (submit() call): {t_launch:.2f} s")
    print(f"wall, submit -> complete manifest: {wall:.1f} s; longest stage per level, summed: {run_path:.1f} s")
    print(f"overhead per level: {overhead:.2f} s (goal <= 3 s)")
    print("per level, mean over its stages: its inputs ended -> its job's Python up (SLURM: dependency release,")
    print("  scheduling, launch, interpreter) | -> run_stage started (imports: torch, DeepSpeed) | its run time")
    slurm_parts, import_parts = [], []
    for lv in sorted(by_level):
        s_l, i_l = [], []
        for key, r in by_level[lv]:
            up = submitit_start(root, index["stages"][key]["job"])
            deps = [recs[d]["ended"] for d in r["deps"].values() if d in recs]
            if up is not None:
                s_l.append(up - max(deps, default=t0))
                i_l.append(r["started"] - up)
        items = by_level[lv]
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
        slurm_parts.append(mean(s_l))
        import_parts.append(mean(i_l))
        print(f"  level {lv}: {mean(s_l):5.2f} s | {mean(i_l):5.2f} s | "
              f"{mean([r['ended'] - r['started'] for _, r in items]):5.2f} s  ({len(items)} x {items[0][1]['kind']})")
    print(f"mean per level: SLURM {sum(slurm_parts) / n_levels:.2f} s, job imports {sum(import_parts) / n_levels:.2f} s")
    if failed:
        print(f"warning: {len(failed)} stages failed: {', '.join(failed)}", file=sys.stderr)
    if args.keep:
        print(f"results root: {root}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
