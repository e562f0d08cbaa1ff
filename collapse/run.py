"""run_stage: the one entry point every job calls, locally or on SLURM.

    python -m collapse.run <results_root> <stage_key>

Reads the stage's spec (written at plan time), reads its inputs through its dependencies'
manifest records, runs the stage, and writes its record: done with metrics and artifacts, or
failed with the error and the log path. Artifacts live in <results_root>/stages/<key>/.
"""
import math
import sys
import time
import traceback
from pathlib import Path

import torch

from collapse import config, manifest, storage, tasks, train


class StageInputError(RuntimeError):
    pass


def stage_dir(root, key: str) -> Path:
    return Path(root) / "stages" / key


def log_path(root, stage) -> Path:
    return Path(root) / "logs" / f"{stage['kind']}-{stage['key']}.log"


def write_spec(root, stage) -> None:
    storage.write_json(stage_dir(root, stage.key) / "stage.json", stage.spec())


def read_spec(root, key: str) -> dict:
    return storage.read_json(stage_dir(root, key) / "stage.json")


def artifact(root, record: dict, name: str) -> Path:
    """The path of a dependency's artifact, checked against the checksum recorded with it."""
    entry = record["artifacts"][name]
    return storage.verify(Path(root) / entry["path"], entry["sha256"])


def _artifact_entry(root, path: Path) -> dict:
    return {"path": str(Path(path).relative_to(root)), "sha256": storage.sha256(path)}


def load_model(task, root, record: dict):
    cfg = config.from_dict(record["config"])
    model = task.build_model(cfg)
    storage.load_weights(artifact(root, record, "weights"), model)
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------- the stages

def run_teacher(task, cfg, inputs, root, out: Path, log):
    state = train.train(task, cfg, task.real_data(cfg, "train"), task.real_data(cfg, "test"), out, log=log)
    return _trained(state), {"weights": out / "best.safetensors"}


def run_synth(task, cfg, inputs, root, out: Path, log):
    teacher = load_model(task, root, inputs["teacher"])
    n = cfg.synth.size or len(task.real_data(cfg, "train"))
    data = task.sample(teacher, n, torch.Generator().manual_seed(cfg.synth.seed))
    path = storage.save_tensors(out / "data.safetensors", {"data": data},
                                {"teacher": inputs["teacher"]["key"], "n": n, "seed": cfg.synth.seed})
    log(f"sampled {n} items from teacher {inputs['teacher']['key']}")
    return {"n": n}, {"data": path}


def run_student(task, cfg, inputs, root, out: Path, log):
    synthetic = storage.load_tensors(artifact(root, inputs["synth"], "data"))["data"]
    teacher = load_model(task, root, inputs["teacher"]) if task.distills(cfg.distill) else None
    state = train.train(task, cfg, synthetic, task.real_data(cfg, "test"), out, teacher=teacher, log=log)
    return _trained(state), {"weights": out / "best.safetensors"}


def run_eval(task, cfg, inputs, root, out: Path, log):
    model_record = inputs["model"]
    model = load_model(task, root, model_record)
    metrics = task.evaluate(model, task.real_data(cfg, "test"), cfg)
    samples = task.sample(model, cfg.eval.grid_samples, torch.Generator().manual_seed(0))
    png = save_grid(task.as_images(samples), out / "samples.png")
    log(f"{model_record['name']}: {metrics}")
    return metrics, {"samples": png}


def save_grid(images: torch.Tensor, path: Path) -> Path:
    from torchvision.utils import save_image
    nrow = max(1, int(math.sqrt(len(images))))
    return storage.atomic_write(path, lambda tmp: save_image(images, tmp, nrow=nrow, format="png"))


def _trained(state) -> dict:
    return {"best_test_loss": state.best_loss, "best_epoch": state.best_epoch, "steps": state.step,
            "history": state.history}


RUNNERS = {"teacher": run_teacher, "synth": run_synth, "student": run_student, "eval": run_eval}


# ---------------------------------------------------------------- the entry point

def run_stage(root, key: str) -> dict:
    root = Path(root)
    spec = read_spec(root, key)
    log_file = log_path(root, spec)
    started = manifest.now()
    base = {"kind": spec["kind"], "key": key, "name": spec["name"], "deps": spec["deps"],
            "config": spec["config"], "log": str(log_file.relative_to(root)), "started": started,
            **manifest.provenance()}
    manifest.write(root, {**base, "status": "running"})

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {spec['name']}: {msg}", flush=True)

    try:
        cfg = config.from_dict(spec["config"])
        task = tasks.get(cfg.task)
        inputs = {}
        for role, dep in spec["deps"].items():
            record = manifest.read(root, dep)
            if record is None or record["status"] != "done":
                raise StageInputError(f"input '{role}' (stage {dep}) is not done: "
                                      f"{'missing' if record is None else record['status']}")
            inputs[role] = record
        out = stage_dir(root, key)
        metrics, artifacts = RUNNERS[spec["kind"]](task, cfg, inputs, root, out, log)
        record = {**base, "status": "done", "metrics": metrics, "ended": manifest.now(),
                  "artifacts": {name: _artifact_entry(root, p) for name, p in artifacts.items()}}
    except Exception as e:
        traceback.print_exc()
        record = {**base, "status": "failed", "error": f"{type(e).__name__}: {e}", "ended": manifest.now()}
    manifest.write(root, record)
    log(f"{record['status']} in {record['ended'] - started:.1f}s")
    return record


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m collapse.run RESULTS_ROOT STAGE_KEY", file=sys.stderr)
        return 2
    return 0 if run_stage(argv[0], argv[1])["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
