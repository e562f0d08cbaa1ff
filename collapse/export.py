"""A results root's records replayed, after the fact and offline, into the tools labs already use:
an MLflow file store, a TensorBoard tree, or W&B offline run folders (synced later from a login node
with `wandb sync`). python sweeps/export.py results_root=DIR to=mlflow|tensorboard|wandb.

One run per stage of each grid (a stage two grids share, their teacher, is a run in each), named by the
grid and the stage's name, not its key: MLflow experiment <grid>, run <stage name>; TensorBoard
<out>/<grid>/<stage name>/; W&B group <grid>, run <stage name>. Params (hparams, config): the
coefficients (distill.*), the seed, the chain's generations.* and whatever the grid sweeps; metrics:
each scalar metric of the record at the last step, and its training history (test loss per step) as
curves. Exporting again replaces a stage's earlier run (the key is a tag or the run's id), it does not
add a second one. The libraries are the optional extra `export` (pip install '.[export]');
tensorboard comes with collapse itself.
"""
import hashlib
import math
import os
import shutil
from pathlib import Path

TARGETS = ("mlflow", "tensorboard", "wandb")
PACKAGES = {"mlflow": "mlflow-skinny", "tensorboard": "tensorboard", "wandb": "wandb"}   # module -> pip name
PARAM_SECTIONS = ("distill", "generations")   # every field of these (generations: in a chain), train.seed


def stage_runs(records: list[dict]) -> list[dict]:
    """One run per (grid, stage record), in the order the stages started: grid, name, key, kind,
    status, started, ended, params {dotted key: str/int/float/bool}, metrics {name: float},
    history [(step, {name: float})]. Stages of every launch of a grid (its sweep records) count."""
    by_key = {r["key"]: r for r in records if r.get("kind") != "sweep"}
    grids: dict = {}   # grid -> {stage key: [labels of the points that use it]}
    for sweep in (r for r in records if r.get("kind") == "sweep" and r.get("status") == "done"):
        stages = grids.setdefault(sweep["name"], {})
        config = sweep.get("config") or {}
        for key in config.get("stages") or []:
            stages.setdefault(key, [])
        for point in config.get("points") or []:
            for value in point.values():
                for key in value if isinstance(value, list) else [value]:
                    if isinstance(key, str) and key in by_key:
                        stages.setdefault(key, []).append(point.get("label") or {})
    runs = []
    for grid, stages in sorted(grids.items()):
        for key, labels in stages.items():
            if key in by_key:
                runs.append(stage_run(grid, by_key[key], labels))
    return sorted(runs, key=lambda r: (r["grid"], r["started"] or 0, r["name"]))


def stage_run(grid: str, record: dict, labels: list[dict]) -> dict:
    config = record.get("config") or {}
    chain = (config.get("generations") or {}).get("count") is not None   # generations.*: a chain's alone
    params = {f"{section}.{field}": value for section in PARAM_SECTIONS if section != "generations" or chain
              for field, value in (config.get(section) or {}).items() if _plain(value)}
    seed = (config.get("train") or {}).get("seed")
    if _plain(seed):
        params["train.seed"] = seed
    for k in set().union(*labels) if labels else ():   # what the grid sweeps, where every point using it agrees
        values = {repr(label.get(k)) for label in labels}
        if len(values) == 1 and _plain(labels[0].get(k)):
            params[k] = labels[0][k]
    metrics = record.get("metrics") or {}
    history = [(int(h["step"]), {k: float(v) for k, v in h.items() if k != "step" and _number(v)})
               for h in metrics.get("history") or [] if isinstance(h, dict) and _number(h.get("step"))]
    return {"grid": grid, "name": record.get("name") or record["key"], "key": record["key"],
            "kind": record.get("kind"), "status": record.get("status"), "started": record.get("started"),
            "ended": record.get("ended"), "params": dict(sorted(params.items())),
            "metrics": {k: float(v) for k, v in sorted(metrics.items()) if _number(v)}, "history": history,
            "last_step": max((s for s, _ in history), default=0)}


def _plain(value) -> bool:
    return isinstance(value, (str, int, float, bool)) and not (isinstance(value, float) and math.isnan(value))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def folder_name(name: str) -> str:
    """A stage name as one folder name (names have brackets, '=' and ',', never '/'; keep them)."""
    return name.replace("/", "_").replace("\\", "_")


def export(results_root, to: str, out, project: str = "collapse") -> list[dict]:
    """Every stage run of results_root into `out` for the tool `to`; returns the runs written."""
    from collapse import manifest   # heavy: it imports torch (via storage); sweeps/export.py --help does not
    runs = stage_runs(manifest.read_all(results_root))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if to == "mlflow":
        to_mlflow(runs, out)
    elif to == "tensorboard":
        to_tensorboard(runs, out)
    elif to == "wandb":
        to_wandb(runs, out, project)
    else:
        raise ValueError(f"key 'to': value {to!r} is not allowed; expected one of {', '.join(TARGETS)}")
    return runs


# ---------------------------------------------------------------- the targets

def to_mlflow(runs: list[dict], out: Path) -> None:
    """An MLflow file store at `out` (mlflow ui --backend-store-uri file:OUT): experiment per grid.
    MLflow 3 keeps the file store in maintenance mode and asks for MLFLOW_ALLOW_FILE_STORE=true; a file
    store is what copies off an air-gapped node, and `mlflow migrate-filestore` moves it into a
    database backend (or a tracking server) there."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.entities import Metric, Param   # slow import: only an export to MLflow needs mlflow
    from mlflow.tracking import MlflowClient   # slow import: as above
    client = MlflowClient(tracking_uri=Path(out).resolve().as_uri())
    experiments = {}
    for run in runs:
        grid = run["grid"]
        if grid not in experiments:
            found = client.get_experiment_by_name(grid)
            experiments[grid] = found.experiment_id if found else client.create_experiment(grid)
        for old in client.search_runs([experiments[grid]], f"tags.`collapse.key` = '{run['key']}'"):
            client.delete_run(old.info.run_id)   # an earlier export of this stage: replaced
        started, ended = _ms(run["started"]), _ms(run["ended"])
        made = client.create_run(experiments[grid], start_time=started, run_name=run["name"], tags=_tags(run))
        params = [Param(k, str(v)) for k, v in run["params"].items()]
        metrics = [Metric(k, v, ended or started or 0, step) for step, values in run["history"] for k, v in values.items()]
        metrics += [Metric(k, v, ended or started or 0, run["last_step"]) for k, v in run["metrics"].items()]
        for i in range(0, max(len(params), len(metrics), 1), 100):   # log_batch takes 100 params at a time
            client.log_batch(made.info.run_id, metrics=metrics[i:i + 100], params=params[i:i + 100])
        status = {"done": "FINISHED", "failed": "FAILED"}.get(run["status"], "KILLED")
        client.set_terminated(made.info.run_id, status, end_time=ended)


def to_tensorboard(runs: list[dict], out: Path) -> None:
    """A TensorBoard tree (tensorboard --logdir OUT): OUT/<grid>/<stage name>/, scalars and hparams."""
    from torch.utils.tensorboard import SummaryWriter   # heavy: torch's event writer, as collapse/train.py
    from torch.utils.tensorboard.summary import hparams   # heavy: as above
    for run in runs:
        folder = Path(out) / folder_name(run["grid"]) / folder_name(run["name"])
        shutil.rmtree(folder, ignore_errors=True)   # an earlier export of this stage: replaced
        writer = SummaryWriter(str(folder))
        wall = run["ended"] or run["started"]
        for step, values in run["history"]:
            for k, v in values.items():
                writer.add_scalar(k, v, step, walltime=wall)
        for k, v in run["metrics"].items():
            writer.add_scalar(k, v, run["last_step"], walltime=wall)
        params = {**run["params"], "kind": run["kind"] or "", "status": run["status"] or ""}
        for summary in hparams(params, run["metrics"]):   # the HParams view: coefficients against metrics
            writer.file_writer.add_summary(summary, walltime=wall)
        writer.close()


def to_wandb(runs: list[dict], out: Path, project: str = "collapse") -> None:
    """W&B offline runs in OUT/wandb/offline-run-*/ (wandb sync OUT/wandb/offline-run-*): group per grid."""
    import wandb   # slow import: only an export to W&B needs wandb
    settings = dict(mode="offline", console="off", x_disable_stats=True, x_disable_machine_info=True,
                    disable_git=True, disable_code=True, silent=True)
    for run in runs:
        run_id = hashlib.sha256(f"{run['grid']}/{run['key']}".encode()).hexdigest()[:16]
        for old in (Path(out) / "wandb").glob(f"offline-run-*-{run_id}"):
            shutil.rmtree(old)   # an earlier export of this stage: replaced (and its id, so a sync updates)
        made = wandb.init(dir=str(out), project=project, id=run_id, name=run["name"], group=run["grid"],
                          job_type=run["kind"], config=run["params"], tags=[run["status"] or "unknown"],
                          settings=wandb.Settings(**settings, x_start_time=run["started"]))
        for step, values in run["history"]:
            made.log(values, step=step)
        made.summary.update({**run["metrics"], "collapse.key": run["key"], "collapse.status": run["status"]})
        made.finish(exit_code=0 if run["status"] == "done" else 1)


def _tags(run: dict) -> dict:
    return {"collapse.key": run["key"], "collapse.kind": run["kind"] or "", "collapse.status": run["status"] or "",
            "collapse.grid": run["grid"]}


def _ms(seconds) -> int | None:
    return int(seconds * 1000) if isinstance(seconds, (int, float)) else None
