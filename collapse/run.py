"""run_stage: the one entry point every job calls, locally or on SLURM.

    python -m collapse.run <results_root> <stage_key>

Reads the stage's spec (written at plan time), reads its inputs through its dependencies'
manifest records, runs the stage, and writes its record: done with metrics and artifacts, or
failed with the error and the log path. Artifacts live in <results_root>/stages/<key>/.
"""
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from collapse import experiment, generations, infer, lease, manifest, measured, partial, storage, tasks, train
from collapse.device import device_of, generator, this_device
from collapse.slurm_index import record_dead_jobs
from collapse.stages import ANY_OUTCOME, RAN_TO_THE_END, log_path, read_spec, stage_dir, write_spec  # noqa: F401
from collapse.tasks.base import Simulation, distills


class StageInputError(RuntimeError):
    pass


def _redoing(spec: dict, previous: dict | None) -> bool:
    """This run redoes `previous` (a done record): the spec names it as the run to replace."""
    redo_of = spec.get("redo_of")
    return (redo_of is not None and previous is not None and previous.get("status") == "done"
            and previous.get("started") == redo_of["started"])


def _replaced(previous: dict) -> list:
    """What the manifest keeps of the runs a redo replaced: newest first."""
    keep = ("started", "ended", "host", "pid", "commit", "slurm_job_id", "metrics", "artifacts")
    summary = {k: previous.get(k) for k in keep}
    if isinstance(summary["metrics"], dict):
        summary["metrics"] = {k: v for k, v in summary["metrics"].items() if k != "history"}
    return [summary] + list(previous.get("replaced") or [])


def artifact(root, record: dict, name: str) -> Path:
    """The path of a dependency's artifact, checked against the checksum recorded with it."""
    entry = record["artifacts"][name]
    path = Path(root) / entry["path"]
    if "bytes" in entry and path.is_file() and path.stat().st_size != entry["bytes"]:
        raise storage.CorruptFileError(f"file {path} is corrupt: {path.stat().st_size} bytes, "
                                       f"recorded {entry['bytes']} (truncated or overwritten)")
    return storage.verify(path, entry["sha256"])


def _artifact_entry(root, path: Path) -> dict:
    return {"path": str(Path(path).relative_to(root)), "sha256": storage.sha256(path),
            "bytes": Path(path).stat().st_size}


def load_model(task, root, record: dict):
    cfg = experiment.from_stored(record["config"])
    model = task.build_model(cfg)
    storage.load_weights(artifact(root, record, "weights"), model)
    return model.to(this_device()).eval().requires_grad_(False)


# ---------------------------------------------------------------- the stages

@dataclass
class StageContext:
    """What every runner reads: the stage's task and config, its inputs' done records by role, the
    results root, the folder it writes in and its log; and `work`, what the runner did in this run
    (items in the dry run's unit, and whether it resumed part-way), for the record's `measured`."""
    task: object
    cfg: object
    inputs: dict
    root: Path
    out: Path
    log: Callable[[str], None]
    work: measured.Work = field(default_factory=measured.Work)

    def keep(self, **made_from) -> partial.Keep:
        """Where the stage's resumable loops keep their finished chunks: <out>/partial/ (collapse/partial.py)."""
        return partial.Keep(self.out / "partial", made_from, self.log)

    def trained(self, state) -> dict:
        """A training stage's metrics; its work is the steps this run took x the batch."""
        self.work.items = (state.step - state.run_from_step) * self.cfg.train.batch_size
        self.work.resumed = state.run_from_step > 0
        return {"best_test_loss": state.best_loss, "best_epoch": state.best_epoch, "best_step": state.best_step,
                "steps": state.step, "threads": torch.get_num_threads(), "history": state.history}

    def made(self, items: int, keep: partial.Keep) -> None:
        """A synth or eval stage's work: `items`, some of them perhaps read back from an earlier run's chunks."""
        self.work.items, self.work.resumed = items, keep.reused > 0


def run_pretrain(ctx: StageContext):
    """A task's pretraining (tasks/base.py, Pretrains): its own data and held-out set, the shared loop."""
    data, held_out = ctx.task.pretraining_data(ctx.cfg)
    ctx.log(f"pretraining on {len(data)} items, {len(held_out)} held out")
    state = train.train(ctx.task, ctx.cfg, data, held_out, ctx.out, log=ctx.log)
    return ctx.trained(state), {"weights": ctx.out / "best.safetensors"}


def pretrained(ctx: StageContext) -> Path | None:
    """The weights a trained model starts from: its "pretrain" input's, if it has one."""
    return artifact(ctx.root, ctx.inputs["pretrain"], "weights") if "pretrain" in ctx.inputs else None


def run_teacher(ctx: StageContext):
    task, cfg = ctx.task, ctx.cfg
    state = train.train(task, cfg, task.real_data(cfg, "train"), task.real_data(cfg, "test"), ctx.out, log=ctx.log,
                        init=pretrained(ctx))
    return ctx.trained(state), {"weights": ctx.out / "best.safetensors"}


# ---------------------------------------------------------------- a task's data on disk
# The task says how its items are stored (to_tensors / from_tensors: images are one tensor, text
# pairs two), how items start..stop-1 of its synthetic set are made (synthesize) and how parts join
# (concat): collapse/tasks/base.py.

def save_data(task, path: Path, data, metadata: dict) -> Path:
    return storage.save_tensors(path, task.to_tensors(data), metadata)


def load_data(task, root, record: dict, name: str = "data"):
    return task.from_tensors(storage.load_tensors(artifact(root, record, name)))


def run_synth(ctx: StageContext):
    task, cfg, teacher_record = ctx.task, ctx.cfg, ctx.inputs["teacher"]
    if cfg.synth.shards > 1:
        return run_synth_merge(ctx)
    teacher = load_model(task, ctx.root, teacher_record)
    n = cfg.synth.size or len(task.real_data(cfg, "train"))
    keep = ctx.keep(teacher=_weights_sha256(teacher_record), seed=cfg.synth.seed)
    with infer.inference_precision(cfg.infer.precision, device_of(teacher)) as precision:
        data = task.synthesize(teacher, cfg, 0, n, generator(cfg.synth.seed, device_of(teacher)), keep=keep)
    path = save_data(task, ctx.out / "data.safetensors", data,
                     {"teacher": teacher_record["key"], "n": n, "seed": cfg.synth.seed})
    ctx.made(n, keep)
    keep.clear()
    ctx.log(f"sampled {n} items from teacher {teacher_record['key']} in {precision}")
    return {"n": n, "precision": precision}, {"data": path}


def _weights_sha256(record: dict) -> str:
    return record["artifacts"]["weights"]["sha256"]


def shard_range(n: int, shards: int, i: int) -> tuple[int, int]:
    return i * n // shards, (i + 1) * n // shards


def shard_seed(seed: int, i: int) -> int:
    return seed * 1_000_003 + 1 + i


def run_synth_shard(ctx: StageContext, shard: int):
    """Items of shard `shard` of synth.shards: its own range of the n items and its own seed."""
    task, cfg, teacher_record = ctx.task, ctx.cfg, ctx.inputs["teacher"]
    teacher = load_model(task, ctx.root, teacher_record)
    n = cfg.synth.size or len(task.real_data(cfg, "train"))
    start, stop = shard_range(n, cfg.synth.shards, shard)
    seed = shard_seed(cfg.synth.seed, shard)
    keep = ctx.keep(teacher=_weights_sha256(teacher_record), seed=seed, start=start)
    with infer.inference_precision(cfg.infer.precision, device_of(teacher)) as precision:
        data = task.synthesize(teacher, cfg, start, stop, generator(seed, device_of(teacher)), keep=keep)
    path = save_data(task, ctx.out / "data.safetensors", data,
                     {"teacher": teacher_record["key"], "start": start, "stop": stop, "seed": seed})
    ctx.made(stop - start, keep)
    keep.clear()
    ctx.log(f"sampled items {start}..{stop - 1} of {n} from teacher {teacher_record['key']} (seed {seed}, {precision})")
    return {"n": stop - start, "start": start, "stop": stop, "seed": seed, "precision": precision}, {"data": path}


def run_synth_merge(ctx: StageContext):
    """synth.shards > 1: D_M0 is the shards' items in shard order."""
    task, cfg = ctx.task, ctx.cfg
    parts = [load_data(task, ctx.root, ctx.inputs[f"shard.{i}"]) for i in range(cfg.synth.shards)]
    data = task.concat(parts)
    path = save_data(task, ctx.out / "data.safetensors", data,
                     {"teacher": ctx.inputs["teacher"]["key"], "n": len(data), "shards": cfg.synth.shards})
    ctx.log(f"joined {cfg.synth.shards} shards: {len(data)} items")
    ctx.work.items = len(data)
    return {"n": len(data), "shards": cfg.synth.shards}, {"data": path}


def run_student(ctx: StageContext):
    task, cfg = ctx.task, ctx.cfg
    synthetic = load_data(task, ctx.root, ctx.inputs["synth"])
    teacher = load_model(task, ctx.root, ctx.inputs["teacher"]) if distills(task, cfg.distill) else None
    state = train.train(task, cfg, synthetic, task.real_data(cfg, "test"), ctx.out, teacher=teacher, log=ctx.log,
                        init=pretrained(ctx))
    return ctx.trained(state), {"weights": ctx.out / "best.safetensors"}


def run_generation(ctx: StageContext):
    """Generation t+1 of a chain: train on the set built by the data policy from the real data and
    the "data.<g>" deps' samples (distilling from "distill_from" when given), then sample n items."""
    task, cfg, inputs, out = ctx.task, ctx.cfg, ctx.inputs, ctx.out
    synthetic = {int(role.split(".", 1)[1]): load_data(task, ctx.root, record)
                 for role, record in inputs.items() if role.startswith("data.")}
    t, gen = max(synthetic), cfg.generations
    real = task.real_data(cfg, "train")
    data, source = generations.training_set(gen.data, real, synthetic, t, gen.mix_ratio, gen.subsample_size,
                                            seed=cfg.train.seed)
    made_of = generations.composition(source)
    ctx.log(f"generation {t + 1} ({gen.data}): {len(data)} training items {made_of}")
    teacher = load_model(task, ctx.root, inputs["distill_from"]) if "distill_from" in inputs else None
    state = train.train(task, cfg, data, task.real_data(cfg, "test"), out, teacher=teacher, log=ctx.log,
                        init=pretrained(ctx))
    trained = ctx.trained(state)   # its work: the training's (the dry run's unit for a generation)
    model = storage.load_weights(out / "best.safetensors", task.build_model(cfg)).to(this_device())
    seed = generations.sample_seed(cfg.synth.seed, t + 1)
    keep = ctx.keep(model=storage.sha256(out / "best.safetensors"), seed=seed)
    with infer.inference_precision(cfg.infer.precision, device_of(model)) as precision:
        samples = task.synthesize(model.eval().requires_grad_(False), cfg, 0, len(real),
                                  generator(seed, device_of(model)), keep=keep)
    path = save_data(task, out / "data.safetensors", samples, {"generation": t + 1, "n": len(real), "seed": seed})
    ctx.work.resumed = ctx.work.resumed or keep.reused > 0
    keep.clear()
    metrics = {**trained, "generation": t + 1, "train_size": len(data), "composition": made_of,
               "distilled_from": inputs["distill_from"]["key"] if teacher is not None else None, "precision": precision}
    return metrics, {"weights": out / "best.safetensors", "data": path}


def run_simulation(ctx: StageContext):
    """A simulation task's stage: every chain of one grid point at once; each array it returns is
    stored as <name>.safetensors."""
    metrics, arrays = ctx.task.simulate(ctx.cfg)
    paths = {name: storage.save_tensors(ctx.out / f"{name}.safetensors", {name: torch.from_numpy(a)})
             for name, a in arrays.items()}
    ctx.log("simulated: " + ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in metrics.items() if not isinstance(v, (list, dict))))
    return metrics, paths


def run_eval(ctx: StageContext):
    task, cfg, model_record = ctx.task, ctx.cfg, ctx.inputs["model"]
    model = load_model(task, ctx.root, model_record)
    keep = ctx.keep(model=_weights_sha256(model_record))
    test = task.real_data(cfg, "test")
    with infer.inference_precision(cfg.infer.precision, device_of(model)) as precision:   # the metric nets: fp32
        metrics = {**task.evaluate(model, test, cfg, cache=Path(ctx.root) / "cache", keep=keep),
                   "precision": precision}
        ctx.log(f"{model_record['name']}: " + ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                                                         for k, v in metrics.items() if not isinstance(v, (list, dict))))
        examples = task.write_examples(model, cfg, ctx.out)
    ctx.made(len(test), keep)
    keep.clear()
    return metrics, examples


def run_report(ctx: StageContext):
    """The sweep's tables and plots, over every record in the root. It runs whatever its inputs'
    outcome (stages.ANY_OUTCOME); first, stages whose SLURM job died without recording an end
    (killed, out of memory) are recorded failed, so the report shows them as such."""
    from collapse.reporting import write_reports   # heavy: scipy and matplotlib only for the report stage
    root, inputs = ctx.root, ctx.inputs
    for key, why in record_dead_jobs(root).items():
        ctx.log(f"stage {key}: recorded failed ({why})")
    files = [str(Path(p).relative_to(root)) for p in write_reports(root)]
    done = sum(1 for record in inputs.values() if record is not None and record["status"] == "done")
    ctx.log(f"report: {len(files)} files, from {done} of {len(inputs)} inputs done")
    return {"files": files, "inputs": len(inputs), "inputs_done": done}, {}


RUNNERS = {"pretrain": run_pretrain, "teacher": run_teacher, "synth": run_synth, "synth_shard": run_synth_shard,
           "student": run_student, "eval": run_eval, "generation": run_generation, "report": run_report}


def runner(task, kind: str):
    """The function that runs a stage of `kind` (a simulation task's one kind: run_simulation)."""
    return run_simulation if isinstance(task, Simulation) and kind == task.SIMULATION_KIND else RUNNERS[kind]


# ---------------------------------------------------------------- the entry point

def run_stage(root, key: str) -> dict:
    """Run stage `key` under its lease (collapse/lease.py). When another live runner holds it, return
    at once with status 'held', having written nothing; the lease is released at the end, failed or not."""
    root = Path(root)
    spec = read_spec(root, key)
    log_file = log_path(root, spec)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {spec['name']}: {msg}", flush=True)

    primary = train.global_rank() == 0     # in a multi-task SLURM job only rank 0 holds the lease, writes the record
    try:
        held = lease.acquire(root, key) if primary else lease.follow(root, key, lambda: manifest.is_done(root, key))
    except lease.Held as e:
        log(f"not run: {e}")
        return {"kind": spec["kind"], "key": key, "name": spec["name"], "status": "held", "error": str(e),
                "log": str(log_file.relative_to(root))}
    try:
        return _run_held(root, key, spec, primary, held, log)
    finally:
        if held is not None:
            held.release()


def _run_held(root: Path, key: str, spec: dict, primary: bool, held, log) -> dict:
    """run_stage's work, once this process holds the stage's lease (or, rank > 0, its rank 0 does)."""
    previous = manifest.read(root, key)
    redoing = _redoing(spec, previous)
    if lease.planned_by_launch() and previous is not None and previous["status"] == "done" and not redoing:
        try:   # finished by another runner since this one's launch planned it: not run twice
            for name in previous.get("artifacts") or {}:
                artifact(root, previous, name)
            log(f"not run: done meanwhile by {previous.get('host')}:{previous.get('pid')}")
            return previous
        except (storage.CorruptFileError, OSError, KeyError, TypeError):
            pass   # its artifacts are damaged: this run redoes it
    if held is not None:
        log(f"starting on {held.who}" + (f"; took over the lease of {held.taken_from}" if held.taken_from else ""))
    base = {"kind": spec["kind"], "key": key, "name": spec["name"], "deps": spec["deps"],
            "config": spec["config"], **({"fingerprints": spec["fingerprints"]} if spec.get("fingerprints") else {}),
            "log": str(log_path(root, spec).relative_to(root)), "started": manifest.now(),
            **manifest.provenance()}
    # A redo works in a folder of its own and leaves the done record in force until it is done too.
    out = stage_dir(root, key) / f"redo-{round(spec['redo_of']['started'] * 1000)}" if redoing else stage_dir(root, key)
    if primary:
        # a kill mid-write in an earlier run of this stage leaves temporary files; nothing else writes them
        storage.remove_temps(out)
        storage.remove_temps(root / "manifest", f".{key}.json.*.tmp")
        if not redoing:
            manifest.write(root, {**base, "status": "running"})
    replacing = previous if redoing else None   # the done record this run redoes
    return _record_end(root, _outcome(root, spec, base, out, replacing, log), replacing, primary, log)


def _outcome(root: Path, spec: dict, base: dict, out: Path, replacing: dict | None, log) -> dict:
    """The stage's runner on its inputs, writing in `out`: the record it ends with (done, partial or failed)."""
    try:
        cfg = experiment.from_stored(spec["config"])
        task = tasks.get(cfg.task)
        inputs = {}
        any_outcome = spec["kind"] in ANY_OUTCOME
        for role, dep in spec["deps"].items():
            record = manifest.read(root, dep)
            if not any_outcome and (record is None or record["status"] != "done"):
                raise StageInputError(f"input '{role}' (stage {dep}) is not done: "
                                      f"{'missing' if record is None else record['status']}")
            inputs[role] = record
        ctx = StageContext(task, cfg, inputs, root, out, log)
        began = time.monotonic()
        metrics, artifacts = runner(task, spec["kind"])(ctx, **spec.get("args", {}))
        seconds = time.monotonic() - began
        # A stage that ran on inputs not all done (a report) is 'partial': the next launch runs it again.
        complete = all(r is not None and r["status"] == "done" for r in inputs.values())
        record = {**base, "status": "done" if complete else "partial", "metrics": metrics, "ended": manifest.now(),
                  "artifacts": {name: _artifact_entry(root, p) for name, p in artifacts.items()},
                  **({"measured": measured.record(ctx.work, seconds)} if spec["kind"] in measured.KINDS else {})}
        if replacing is not None:
            record["replaced"] = _replaced(replacing)
        return record
    except Exception as e:
        traceback.print_exc()
        return {**base, "status": "failed", "error": f"{type(e).__name__}: {e}", "ended": manifest.now()}


def _record_end(root: Path, record: dict, replacing: dict | None, primary: bool, log) -> dict:
    """The stage's end, into the manifest; a failed redo is written beside the done record it leaves in force."""
    written = record
    if replacing is not None and record["status"] != "done":
        log("redo failed; the earlier run stays in force")
        written = {**replacing, "redo_failed": {k: record[k] for k in ("error", "ended", "log")}}
    try:
        if primary:
            manifest.write(root, written)
    except OSError as e:   # disk full, read-only: the record stays 'running'; the executor records the exit
        log(f"error: cannot record the stage's end ({record['status']}): {e}")
        return {**record, "status": "failed", "error": f"{type(e).__name__}: {e}"}
    log(f"{record['status']} in {record['ended'] - record['started']:.1f}s")
    return record


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m collapse.run RESULTS_ROOT STAGE_KEY", file=sys.stderr)
        return 2
    if not manifest.is_safe_key(argv[1]):
        print(f"error: stage key {argv[1]!r} is not allowed; expected a plain name "
              "(letters, digits, '_', '.', '-'; no '/' and no leading '.')", file=sys.stderr)
        return 2
    try:
        status = run_stage(argv[0], argv[1])["status"]
        return 0 if status in RAN_TO_THE_END else lease.HELD_EXIT if status == "held" else 1
    except OSError as e:   # no spec to read, or the 'running' record cannot be written
        print(f"error: stage {argv[1]} in {argv[0]}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
