"""Measured rates (issue 29 item 3): every training, synth and eval record says what it measured; the
report sets each stage kind's measurement beside the launch's estimate; `time_from=measured` sizes a
SLURM time limit from the measurements of finished stages, and refuses to guess without them."""
import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
sys.path.insert(0, str(REPO))

from collapse import limits, manifest  # noqa: E402
from collapse.config import ClusterConfig, ConfigError  # noqa: E402

from helpers import cluster, launch_toy as launch, toy_env  # noqa: E402,F401


ONE_WORKER_WITH_SLURM = True   # the SLURM test below reads the same module fixture (tests/conftest.py)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("measured") / "r"
    out = launch("cluster=local", f"results_root={root}")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    # the toy task states no CPU rate: only a relaunch has finished students to estimate the redone ones from
    again = launch("cluster=local", f"results_root={root}", "redo=student")
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    return root


def test_each_training_synth_and_eval_record_says_what_it_measured(toy_run):
    records = [r for r in manifest.read_all(toy_run) if r.get("kind") not in ("sweep", None)]
    kinds = {r["kind"] for r in records if "measured" in r}
    assert kinds == {"teacher", "synth", "student", "eval"}, kinds
    for r in records:
        if r["kind"] == "report":
            assert "measured" not in r
            continue
        m = r["measured"]
        cfg = r["config"]
        items = {"teacher": 3 * math.ceil(512 / 64) * 64,   # toy.yaml: 3 epochs of 512 items at batch 64
                 "student": 3 * math.ceil(512 / 64) * 64, "synth": 512, "eval": 128}[r["kind"]]
        assert m["items"] == items and cfg["train"]["batch_size"] == 64, (r["name"], m)
        assert 0 < m["seconds"] <= r["ended"] - r["started"], (r["name"], m)
        assert m["items_per_s"] == pytest.approx(items / m["seconds"], rel=1e-3)
        assert m["resumed"] is False and m["device"] == "cpu" and m["devices"] == 1
        assert m["device_s"] == pytest.approx(m["seconds"], rel=0.01)
        assert 50 < m["peak_rss_mib"] < 8000       # a Python with torch loaded, in MiB


def test_the_report_sets_each_kind_measured_beside_the_launch_estimate(toy_run):
    records = manifest.read_all(toy_run)
    (sweep,) = [r for r in records if r.get("kind") == "sweep"]
    stages = [r for r in records if r.get("kind") not in ("sweep", None)]
    assert set(sweep["estimate"]) == {r["key"] for r in stages}   # the launches estimated every stage they ran
    teacher = next(r for r in stages if r["kind"] == "teacher")
    assert sweep["estimate"][teacher["key"]]["source"].startswith("no estimate")   # first launch: nothing finished
    assert all(sweep["estimate"][r["key"]]["source"] == "2 finished student stage(s)"
               for r in stages if r["kind"] == "student")
    lines = (toy_run / "report" / "toy_lambda_timing.md").read_text().splitlines()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in lines if line.startswith("| ") and not line.startswith("| kind")}
    assert set(rows) == {"teacher", "synth", "student", "eval"}, lines
    students = [r for r in stages if r["kind"] == "student"]
    kind, n, est_h, measured_h, ratio, device_h, device = rows["student"][:7]
    assert int(n) == 2 and device == "cpu" and rows["teacher"][2] == "" and rows["teacher"][4] == ""
    assert float(measured_h) == pytest.approx(sum(r["measured"]["seconds"] for r in students) / 3600, rel=0.01)
    estimated = sum(sweep["estimate"][r["key"]]["seconds"] for r in students) / 3600
    assert float(est_h) == pytest.approx(estimated, rel=0.01)
    assert float(ratio) == pytest.approx(float(measured_h) / float(est_h), rel=0.02)


@pytest.mark.slurm
def test_time_from_measured_sets_the_limit_from_finished_stages_and_refuses_without_them(cluster, toy_run, tmp_path):
    # a relaunch that redoes the students: their estimate is the finished students' median duration
    out = launch("cluster=slurm", f"results_root={toy_run}", "redo=student", "dry_run=true",
                 "cluster.stages.student.time_from=measured", "cluster.stages.student.time_factor=600")
    assert out.returncode == 0, out.stdout + out.stderr
    students = [r for r in manifest.read_all(toy_run) if r.get("kind") == "student"]
    durations = sorted(r["ended"] - r["started"] for r in students)
    median = (durations[0] + durations[1]) / 2
    minutes = max(math.ceil(600 * median / 60), 3)   # signal_delay_s 90: never under 2 + 1 minutes
    assert f"student: --time={minutes} min = 600 x {median / 60:.1f} min (the longest of 2; 2 finished student " \
           "stage(s))" in out.stdout, out.stdout
    (job,) = [x for x in out.stdout.splitlines() if x.lstrip().startswith("<job") and " student " in x]
    assert f"--time={minutes} " in job, job
    # a fresh root: no student has finished anywhere it can read, so there is nothing measured to size from
    fresh = launch("cluster=slurm", f"results_root={tmp_path / 'fresh'}", "dry_run=true",
                   "cluster.stages.student.time_from=measured")
    assert fresh.returncode == 2 and fresh.stdout == "", fresh.stdout + fresh.stderr
    assert fresh.stderr.startswith("error: cluster.stages.student.time_from=measured: no measured rate for the "
                                   "student stages (no estimate: no student stage of task toy has finished here yet)"), fresh.stderr
    assert not (tmp_path / "fresh").exists()


@dataclasses.dataclass
class _Stage:
    key: str
    kind: str


@dataclasses.dataclass
class _Base:
    cluster: ClusterConfig


@dataclasses.dataclass
class _Sweep:
    base: _Base


def test_a_measured_limit_is_capped_at_the_partition_limit_and_a_stated_rate_is_refused():
    sweep = _Sweep(_Base(ClusterConfig(stages={"student": {"time_from": "measured"}})))
    to_run = [_Stage("a", "student"), _Stage("b", "student"), _Stage("t", "teacher")]
    costs = {"a": (3600.0, 1, "3 finished student stage(s)"), "b": (1800.0, 1, "3 finished student stage(s)"),
             "t": (60.0, 1, "default")}
    # 1.5 x the longest (60 min) = 90 min, under an infinite default partition
    resolved, lines = limits.resolve(sweep, to_run, costs, {None: None})
    assert resolved.base.cluster.resources("student").time_min == 90
    assert resolved.base.cluster.resources("teacher").time_min == 60   # given: as set
    assert sweep.base.cluster.resources("student").time_min == 60      # the loaded sweep is left as it was
    assert lines == ["student: --time=90 min = 1.5 x 60.0 min (the longest of 2; 3 finished student stage(s))"]
    capped, lines = limits.resolve(sweep, to_run, costs, {None: 45.0})
    assert capped.base.cluster.resources("student").time_min == 45
    assert "capped at partition (default)'s limit" in lines[0]
    gpu = {**costs, "a": (3600.0, 1, "measured rate on 1 NVIDIA H100 (rates.json)")}
    assert limits.resolve(sweep, to_run, gpu, {})[0].base.cluster.resources("student").time_min == 90
    stated = {**costs, "a": (3600.0, 1, "stated rate on 1 A100 (bf16)")}
    with pytest.raises(ConfigError, match=r"^cluster.stages.student.time_from=measured: no measured rate for the "
                                          r"student stages \(stated rate on 1 A100 \(bf16\)\)"):
        limits.resolve(sweep, to_run, stated, {})
