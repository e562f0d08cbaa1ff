"""dry_run=true prints what a launch would run and writes and submits nothing; redo= reruns done stages
and what reads them, the earlier run in force until the new one is done, and recorded as replaced."""
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from helpers import TINY, cluster, launch, launch_jobs, wait_done  # noqa: F401

SMALL = [*TINY, "train.threads=1"]
KEY_ROWS = ["grid=vae_coeffs_key", "seeds=[0]", "model.kl_weight=1.0"]   # vae_smoke3's reading, so stages are shared
ROW = re.compile(r"^(teacher|synth_shard|synth|student|eval|report)\s+(\S+)\s+([0-9a-f]{16})\s+(to run|done|redo|running.*?)\s", re.M)


def tree(top: Path) -> dict:
    return {str(p.relative_to(top)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(top.rglob("*"))}


def planned(dry_out: str) -> dict:
    """name -> state, from a dry run's table."""
    return {m.group(2): m.group(4) for m in ROW.finditer(dry_out)}


def stage_records(root: Path) -> dict:
    records = [json.loads(p.read_text()) for p in (root / "manifest").glob("*.json")]
    return {r["name"]: r for r in records if r["kind"] != "sweep"}


@pytest.fixture(scope="module")
def half_done(tmp_path_factory):
    """vae_smoke3 run; vae_coeffs_key (one seed) shares its teacher, synth and M1, and their evals."""
    root = tmp_path_factory.mktemp("dry") / "r"
    launch("grid=vae_smoke3", *SMALL, f"results_root={root}")
    return root


def test_dry_run_on_a_half_done_grid_names_what_the_launch_then_runs(half_done):
    root = half_done
    before = tree(root)
    dry = launch(*KEY_ROWS, *SMALL, f"results_root={root}", "dry_run=true")
    assert tree(root) == before, "a dry run wrote to results_root"
    states = planned(dry.stdout)
    assert len(states) == 14, dry.stdout
    done = {n for n, s in states.items() if s == "done"}
    assert {"teacher[seed=0]", "synth[seed=0]", "student[lam=0,beta=0,gamma=0,seed=0]"} <= done
    assert len(done) == 5, done   # + the evals of M0 and M1
    assert "14 stages: 5 done, 0 running elsewhere, 9 to run" in dry.stdout
    assert re.search(r"estimate: [\d.]+ core-hours; wall \d+ (s|min|h) at \d+ stages at once", dry.stdout)
    assert "finished student stage(s)" in dry.stdout   # rates from this root's records, not the default
    started = time.time()
    real = launch(*KEY_ROWS, *SMALL, f"results_root={root}")
    assert "14 stages, 5 already done, 9 to run" in real.stdout, real.stdout
    ran = {r["name"] for r in stage_records(root).values() if r["started"] > started}
    assert ran == {n for n, s in states.items() if s == "to run"}


def test_redo_reruns_a_stage_and_what_reads_it_and_keeps_the_run_it_replaced(half_done):
    root = half_done
    name = "student[lam=1,beta=1,gamma=1,seed=0]"
    before = stage_records(root)
    old = before[name]
    old_weights = root / old["artifacts"]["weights"]["path"]
    old_bytes = old_weights.read_bytes()
    dry = launch("grid=vae_smoke3", *SMALL, f"results_root={root}", "redo=student[lam=1,beta=1*", "dry_run=true")
    assert planned(dry.stdout)[name] == "redo" and planned(dry.stdout)["eval:" + name] == "redo", dry.stdout
    out = launch("grid=vae_smoke3", *SMALL, f"results_root={root}", "redo=student[lam=1,beta=1*")
    # the student, its eval and the report that reads it
    assert "10 stages, 7 already done, 3 to run" in out.stdout and "3 redone" in out.stdout, out.stdout
    after = stage_records(root)
    new = after[name]
    assert new["started"] > old["ended"] and new["replaced"][0]["started"] == old["started"]
    assert new["replaced"][0]["artifacts"]["weights"] == old["artifacts"]["weights"]
    assert "/redo-" in new["artifacts"]["weights"]["path"]              # a folder of its own ...
    assert old_weights.read_bytes() == old_bytes                         # ... the earlier run's files untouched
    assert new["metrics"]["best_test_loss"] == old["metrics"]["best_test_loss"]   # same seed, same threads
    assert after["eval:" + name]["started"] > new["started"]            # what reads it ran again, after it
    for other in ("teacher[seed=0]", "synth[seed=0]", "student[lam=0,beta=0,gamma=0,seed=0]"):
        assert after[other]["started"] == before[other]["started"]


def test_redo_that_names_no_stage_is_one_line_and_writes_nothing(half_done):
    before = tree(half_done)
    out = launch("grid=vae_smoke3", *SMALL, f"results_root={half_done}", "redo=studnet", check=False)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "key 'redo': value 'studnet' is not allowed" in out.stderr and "(eval, report, student, synth, teacher)" in out.stderr
    assert tree(half_done) == before


@pytest.mark.slurm
def test_dry_run_on_slurm_submits_nothing_and_shows_the_arrays_a_launch_makes(cluster, tmp_path):  # noqa: F811
    root = tmp_path / "r"
    queue = lambda: subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout  # noqa: E731
    before = queue()
    args = ["grid=vae_smoke3", *[a for a in SMALL if a != "cluster=local"], "cluster=slurm", f"results_root={root}"]
    dry = launch(*args, "dry_run=true")
    assert queue() == before and not root.exists()
    shown = re.findall(r"<job \d+> (\w+) x(\d+) \(level (\d+)\)", dry.stdout)
    assert f"{len(shown) + 1} sbatch calls" in dry.stdout and shown[-1][0] == "report", dry.stdout   # + the canary
    assert re.search(r"<canary> on the \w+ resources, 10 min: --time=10;", dry.stdout), dry.stdout
    assert re.search(r"<job 1> teacher x1 \(level 0\): .*--dependency=afterok:<canary>", dry.stdout), dry.stdout
    assert re.search(r"<job \d+> report x1 \(level \d+\): .*--dependency=afterany:<job 1>:", dry.stdout), dry.stdout
    launch(*args)
    index = json.loads((root / "slurm" / "jobs.json").read_text())
    arrays = index["launches"][-1]["arrays"]
    assert [(a["kind"], str(a["size"]), str(a["level"])) for a in arrays] == shown
    wait_done(launch_jobs(index["launches"][-1]))
