"""sweeps/export.py: a results root's records replayed into TensorBoard, MLflow and W&B (offline), each
checked with the library's own reader: TensorBoard's EventAccumulator and hparams protos, MLflow's
MlflowClient on the file store, W&B's record protos and `wandb sync --dry-run`. The records come from a
real grid of the toy modality (tests/toy_task.py) on the local executor, run once for the module.
mlflow and wandb are the optional extra `export`: where one is not installed its test is skipped."""
import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from collapse import manifest

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
TOY = {"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "COLLAPSE_TASKS": "toy=toy_task",
       "COLLAPSE_CONFIG_DIR": str(TESTS / "toy"), "COLLAPSE_GRID_DIR": str(TESTS / "toy" / "grids"),
       "OMP_NUM_THREADS": "1"}
STUDENT = "student[lam=1,seed=0]"
MISSING = "{} is not installed here (the optional extra 'export': pip install '.[export]')"


def installed(module: str) -> bool:   # decided before the module's toy grid runs, so a skip costs nothing
    return importlib.util.find_spec(module) is not None


def run(*argv, env=None):
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **TOY, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    """A finished toy grid (M1 and lam=1, seed 0): teacher, synth, 2 students, 3 evals, the report."""
    root = tmp_path_factory.mktemp("export") / "r"
    out = run(REPO / "sweeps" / "launch.py", "grid=toy_lambda", "cluster=local", "train.threads=1", f"results_root={root}")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return root


def stages(root) -> dict:
    """{stage name: record} of every stage (not sweep) record."""
    return {r["name"]: r for r in manifest.read_all(root) if r.get("kind") != "sweep"}


def test_bad_arguments_are_one_line_naming_the_key_the_value_and_what_is_allowed(tmp_path):
    (tmp_path / "manifest").mkdir()
    cases = [(["to=neptune"], "key 'to': value 'neptune' is not allowed; expected one of mlflow, tensorboard, wandb"),
             (["to=mlflow", "colour=red"], "expected results_root=DIR to=mlflow|tensorboard|wandb [out=DIR] [project=NAME]"),
             (["to=tensorboard", f"results_root={tmp_path / 'nowhere'}"], "has no manifest/")]
    for argv, message in cases:
        args = argv if any(a.startswith("results_root=") for a in argv) else [f"results_root={tmp_path}", *argv]
        out = run(REPO / "sweeps" / "export.py", *args)
        assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "usage: python sweeps/export.py results_root=DIR to=" in run(REPO / "sweeps" / "export.py", "--help").stdout


@pytest.mark.slow
def test_tensorboard_tree_is_named_by_grid_and_stage_with_the_history_and_hparams(toy_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    out = tmp_path / "tb"
    for _ in range(2):   # a second export replaces the first: one events file per run
        done = run(REPO / "sweeps" / "export.py", f"results_root={toy_root}", "to=tensorboard", f"out={out}")
        assert done.returncode == 0 and "8 runs of 1 grids (toy_lambda)" in done.stdout, done.stdout + done.stderr
    recs = stages(toy_root)
    assert {p.name for p in (out / "toy_lambda").iterdir()} == set(recs)
    assert all(len(list((out / "toy_lambda" / name).glob("events.out.tfevents.*"))) == 1 for name in recs)

    events = EventAccumulator(str(out / "toy_lambda" / STUDENT))
    events.Reload()
    history = recs[STUDENT]["metrics"]["history"]
    assert [(s.step, round(s.value, 5)) for s in events.Scalars("test_loss")] == \
        [(h["step"], round(h["test_loss"], 5)) for h in history]
    (best,) = events.Scalars("best_test_loss")
    assert best.value == pytest.approx(recs[STUDENT]["metrics"]["best_test_loss"]) and best.step == history[-1]["step"]
    content = {tag: plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in events.PluginTagToContent("hparams").items()}
    start = content["_hparams_/session_start_info"].session_start_info.hparams
    assert start["distill.lam"].number_value == 1.0 and start["train.seed"].number_value == 0
    assert start["kind"].string_value == "student" and "generations.data" not in start   # not a chain
    assert "best_test_loss" in [m.name.tag for m in content["_hparams_/experiment"].experiment.metric_infos]


@pytest.mark.slow
@pytest.mark.skipif(not installed("mlflow"), reason=MISSING.format("mlflow"))
def test_mlflow_file_store_has_one_run_per_stage_with_params_metrics_and_history(toy_root, tmp_path):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")   # MLflow 3's file store, as collapse/export.py says
    from mlflow.tracking import MlflowClient
    from collapse.export import export
    for _ in range(2):   # a second export replaces each run, it does not add one
        export(toy_root, "mlflow", tmp_path / "mlruns")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("toy_lambda")
    found = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    recs = stages(toy_root)
    assert set(found) == set(recs) and len(client.search_runs([experiment.experiment_id])) == len(recs)
    student = found[STUDENT]
    assert student.info.status == "FINISHED" and student.data.tags["collapse.key"] == recs[STUDENT]["key"]
    assert student.data.params["distill.lam"] == "1.0" and student.data.params["train.seed"] == "0"
    assert student.info.start_time == int(recs[STUDENT]["started"] * 1000)
    assert student.data.metrics["best_test_loss"] == pytest.approx(recs[STUDENT]["metrics"]["best_test_loss"])
    history = client.get_metric_history(student.info.run_id, "test_loss")
    assert [m.step for m in history] == [h["step"] for h in recs[STUDENT]["metrics"]["history"]]
    assert [m.value for m in history] == pytest.approx([h["test_loss"] for h in recs[STUDENT]["metrics"]["history"]])
    evals = {n: r for n, r in found.items() if n.startswith("eval:")}
    assert len(evals) == 3 and all(r.data.metrics["test_loss"] == pytest.approx(recs[n]["metrics"]["test_loss"])
                                   for n, r in evals.items())


def wandb_records(path: Path) -> list:
    """The records of a .wandb file: W&B's own protobuf messages (wandb_internal_pb2.Record), framed as a
    LevelDB log (7-byte header ':W&B' + magic + version; 32 KiB blocks; chunks of crc, length, type)."""
    from wandb.proto import wandb_internal_pb2
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, found, buffer = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block   # a block's tail too short for a chunk header is padding
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buffer += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):   # a full record, or the last chunk of one
            found.append(wandb_internal_pb2.Record.FromString(buffer))
            buffer = b""
    return found


@pytest.mark.slow
@pytest.mark.skipif(not installed("wandb"), reason=MISSING.format("wandb"))
def test_wandb_offline_runs_hold_name_group_config_history_and_summary_and_wandb_sync_sees_them(
        toy_root, tmp_path, monkeypatch):
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    from collapse.export import export
    for _ in range(2):   # a second export replaces each run's folder (same run id)
        export(toy_root, "wandb", tmp_path / "wb", project="collapse-test")
    recs = stages(toy_root)
    folders = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(folders) == len(recs)
    runs = {}
    for folder in folders:
        (log,) = folder.glob("run-*.wandb")
        records = wandb_records(log)
        (header,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        runs[header.display_name] = (header, records)
    assert set(runs) == set(recs)
    header, records = runs[STUDENT]
    assert header.run_group == "toy_lambda" and header.job_type == "student" and header.project == "collapse-test"
    config = {i.key: json.loads(i.value_json) for i in header.config.update if i.key != "_wandb"}
    assert config == {"distill.lam": 1.0, "train.seed": 0}
    steps = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
             for r in records if r.WhichOneof("record_type") == "history"]
    assert [s["_step"] for s in steps] == [h["step"] for h in recs[STUDENT]["metrics"]["history"]]
    assert [s["test_loss"] for s in steps] == pytest.approx([h["test_loss"] for h in recs[STUDENT]["metrics"]["history"]])
    summary = {i.key: json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "summary"
               for i in r.summary.update if i.key}
    assert summary["best_test_loss"] == pytest.approx(recs[STUDENT]["metrics"]["best_test_loss"])
    assert summary["collapse.key"] == recs[STUDENT]["key"]
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [0]

    listed = subprocess.run([str(Path(sys.executable).parent / "wandb"), "sync", "--dry-run", *map(str, folders)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert all(next(f.glob("run-*.wandb")).name in listed.stdout + listed.stderr for f in folders)
