"""Operating a sweep: every record as one table (collapse.results, report/results.csv), loss curves
in TensorBoard per training stage and <grid>_curves.png in the report. One tiny launch for all."""
import os
import subprocess
import sys

import pandas as pd
import pytest

import collapse
from collapse import manifest
from helpers import REPO, TINY, launch


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("results") / "r"
    launch("grid=vae_smoke3", *TINY, "train.epochs=2", f"results_root={root}")
    return root


@pytest.fixture(scope="module")
def stages(root):
    return [r for r in manifest.read_all(root) if r["kind"] != "sweep"]


def test_one_row_per_stage_record_with_flat_config_and_metrics(root, stages):
    table = collapse.results(root)
    assert len(table) == len(stages) == 10   # the report stage too
    assert set(table["key"]) == {r["key"] for r in stages}
    for column in ("key", "kind", "name", "status", "started", "ended", "seconds", "host", "git_commit", "log",
                   "config.train.seed", "config.distill.lam", "deps.teacher", "metrics.best_test_loss",
                   "metrics.test_loss"):
        assert column in table.columns, column
    assert "metrics.history" not in table.columns          # lists of metrics stay in the record
    assert (table["status"] == "done").all()
    assert sorted(table["kind"].value_counts().items()) == [("eval", 4), ("report", 1), ("student", 3), ("synth", 1),
                                                           ("teacher", 1)]

    m1 = next(r for r in stages if r["kind"] == "student"
              and not any(r["config"]["distill"][k] for k in ("lam", "beta", "gamma")))
    row = table.set_index("key").loc[m1["key"]]
    assert row["metrics.best_test_loss"] == m1["metrics"]["best_test_loss"]
    assert row["config.distill.lam"] == 0.0 and row["config.train.seed"] == 0
    assert row["seconds"] == pytest.approx(m1["ended"] - m1["started"], abs=1e-3)
    assert row["log"] == m1["log"] and row["host"] == m1["host"] and row["git_commit"] == m1["git_commit"]
    assert row["deps.teacher"] == m1["deps"]["teacher"]
    # what it ran with: every record names the versions of the packages that decide its numbers
    import platform
    import torch
    assert m1["versions"]["python"] == platform.python_version()
    assert m1["versions"]["torch"] == torch.__version__   # as torch says it: its build tag (+cu130) included
    assert m1["versions"]["torch_cuda"] == torch.version.cuda   # the CUDA it was built for (None: a CPU build)
    assert {"python", "collapse", "torch", "deepspeed", "diffusers", "transformers", "clean-fid", "rouge-score"} \
        <= set(m1["versions"]) and all(v for k, v in m1["versions"].items() if k != "torch_cuda")
    assert m1["git_dirty"] in (True, False) and m1["cuda"] is None   # a CPU run: no CUDA
    assert row["versions.torch"] == m1["versions"]["torch"] and row["git_dirty"] == m1["git_dirty"]


def test_report_script_writes_the_same_table_as_csv(root):
    csv = root / "report" / "results.csv"
    csv.unlink()
    out = subprocess.run([sys.executable, str(REPO / "sweeps" / "report.py"), f"results_root={root}"],
                         capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert str(csv) in out.stdout
    table, back = collapse.results(root), pd.read_csv(csv)
    assert list(back.columns) == list(table.columns) and list(back["key"]) == list(table["key"])
    numbers = ["seconds", "metrics.best_test_loss", "metrics.test_loss", "config.distill.lam"]
    pd.testing.assert_frame_equal(back[numbers], table[numbers], check_dtype=False, rtol=1e-12)


def test_each_training_stage_writes_its_loss_curves_to_tensorboard(root, stages):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    trained = [r for r in stages if r["kind"] in ("teacher", "student")]
    assert len(trained) == 4
    for r in trained:
        folder = root / "stages" / r["key"] / "tensorboard"
        assert any(p.name.startswith("events.out.tfevents") for p in folder.iterdir()), r["name"]
        events = EventAccumulator(str(folder))
        events.Reload()
        history = r["metrics"]["history"]
        assert len(history) == 2
        for tag, field in (("loss/test", "test_loss"), ("loss/train", "train_loss")):
            scalars = events.Scalars(tag)
            assert [s.step for s in scalars] == [h["step"] for h in history], (r["name"], tag)
            assert [s.value for s in scalars] == pytest.approx([h[field] for h in history], rel=1e-6)


def test_report_draws_the_grid_curves(root):
    assert (root / "report" / "vae_smoke3_curves.png").stat().st_size > 1000
