"""The stage kinds, one class each: what a stage of the kind reads, what decides its output, what it does.

Each class states
  name      the kind, as specs, records and logs spell it;
  roles     its inputs' roles, as constants (TEACHER = "teacher"), and `deps(...)`, which builds the
            deps of such a stage from its inputs' keys: collapse/plan.py plans every stage through it;
  SECTIONS  the config sections (or "section.field" items) that decide its output, so enter its key
            (plan.key_material; a task adds its own KEY_SECTIONS to the kinds that train a model);
  run       run(ctx, **args) -> (metrics, {artifact name: path}): what collapse/run.py calls once
            the inputs are done; ctx is run.StageContext (task, config, inputs by role, folders, log).

The graph they make: [pretrain ->] teacher -> synth (from synth_shard stages when synth.shards > 1)
-> students -> evals -> report, or chains of generations, or one simulation stage per grid point.
"""
from pathlib import Path

import torch

from collapse import experiment, generations, infer, storage, train
from collapse.device import device_of, generator, this_device
from collapse.slurm_index import record_dead_jobs
from collapse.stages import KINDS
from collapse.tasks.base import Simulation, distills


# ---------------------------------------------------------------- inputs and outputs on disk
# The task says how its items are stored (to_tensors / from_tensors: images are one tensor, text
# pairs two), how items start..stop-1 of its synthetic set are made (synthesize) and how parts join
# (concat): collapse/tasks/base.py.

def artifact(root, record: dict, name: str) -> Path:
    """The path of a dependency's artifact, checked against the checksum recorded with it."""
    entry = record["artifacts"][name]
    path = Path(root) / entry["path"]
    if "bytes" in entry and path.is_file() and path.stat().st_size != entry["bytes"]:
        raise storage.CorruptFileError(f"file {path} is corrupt: {path.stat().st_size} bytes, "
                                       f"recorded {entry['bytes']} (truncated or overwritten)")
    return storage.verify(path, entry["sha256"])


def load_model(task, root, record: dict):
    cfg = experiment.from_stored(record["config"])
    model = task.build_model(cfg)
    storage.load_weights(artifact(root, record, "weights"), model)
    return model.to(this_device()).eval().requires_grad_(False)


def save_data(task, path: Path, data, metadata: dict) -> Path:
    return storage.save_tensors(path, task.to_tensors(data), metadata)


def load_data(task, root, record: dict, name: str = "data"):
    return task.from_tensors(storage.load_tensors(artifact(root, record, name)))


def _weights_sha256(record: dict) -> str:
    return record["artifacts"]["weights"]["sha256"]


def _shown(metrics: dict) -> str:
    """The scalar metrics as a log line's text: "fid 12.3, kid 0.01"."""
    return ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in metrics.items() if not isinstance(v, (list, dict)))


# ---------------------------------------------------------------- the kinds

class Kind:
    """What every kind states (see the module's docstring). TRAINS: it trains a model, so the task's
    KEY_SECTIONS join its key and, where the task pretrains, the pretraining's key material too."""
    name = ""
    SECTIONS: tuple = ()
    TRAINS = False

    def key_sections(self, task) -> tuple:
        """The sections (or "section.field" items) whose values decide a stage of this kind of `task`."""
        return self.SECTIONS + (task.KEY_SECTIONS if self.TRAINS else ())

    def run(self, ctx, **args) -> tuple[dict, dict]:
        raise NotImplementedError


class Pretrain(Kind):
    """A task's pretraining (tasks/base.py, Pretrains), planned once for every seed and row that shares
    its config: its config's train section is the pretraining's (own seed), and the task adds the rest
    of its key (PRETRAIN_KEY). It reads nothing; teachers, students and generations start from it."""
    name = "pretrain"
    SECTIONS = ("task", "model", "train")

    def key_sections(self, task) -> tuple:
        return self.SECTIONS + task.PRETRAIN_KEY

    @staticmethod
    def deps() -> dict:
        return {}

    def run(self, ctx):
        data, held_out = ctx.task.pretraining_data(ctx.cfg)
        ctx.log(f"pretraining on {len(data)} items, {len(held_out)} held out")
        state = train.train(ctx.task, ctx.cfg, data, held_out, ctx.out, log=ctx.log)
        return ctx.trained(state), {"weights": ctx.out / "best.safetensors"}


class Trained(Kind):
    """A kind that trains a model, from the pretraining's weights where it has a PRETRAIN input."""
    TRAINS = True
    PRETRAIN = "pretrain"

    @classmethod
    def pretrained(cls, pretrain: str | None) -> dict:
        """The dep on the pretraining stage of key `pretrain`; none when None (no pretraining planned)."""
        return {} if pretrain is None else {cls.PRETRAIN: pretrain}

    @classmethod
    def init(cls, ctx) -> Path | None:
        """The weights the model starts from: its pretraining's, if it has one."""
        return artifact(ctx.root, ctx.inputs[cls.PRETRAIN], "weights") if cls.PRETRAIN in ctx.inputs else None


class Teacher(Trained):
    """M0: trained on the real data."""
    name = "teacher"
    SECTIONS = ("task", "data", "model", "train")

    @classmethod
    def deps(cls, pretrain: str | None = None) -> dict:
        return cls.pretrained(pretrain)

    def run(self, ctx):
        task, cfg = ctx.task, ctx.cfg
        state = train.train(task, cfg, task.real_data(cfg, "train"), task.real_data(cfg, "test"), ctx.out,
                            log=ctx.log, init=self.init(ctx))
        return ctx.trained(state), {"weights": ctx.out / "best.safetensors"}


def synth_size(task, cfg) -> int:
    """The items of D_M0: synth.size, or as many as the real training set."""
    return cfg.synth.size or len(task.real_data(cfg, "train"))


def shard_range(n: int, shards: int, i: int) -> tuple[int, int]:
    return i * n // shards, (i + 1) * n // shards


def shard_seed(seed: int, i: int) -> int:
    return seed * 1_000_003 + 1 + i


class SynthShard(Kind):
    """Shard i of synth.shards (args {"shard": i}, in its key): its own range of D_M0's items and its own
    seed, so the shards run side by side (one SLURM array)."""
    name = "synth_shard"
    # infer.precision: what it samples in (collapse/infer.py); auto stays out of the key (added_later)
    SECTIONS = ("task", "synth", "infer.precision")
    TEACHER = "teacher"

    @classmethod
    def deps(cls, teacher: str) -> dict:
        return {cls.TEACHER: teacher}

    @staticmethod
    def args(shard: int) -> dict:
        return {"shard": shard}

    def run(self, ctx, shard: int):
        task, cfg, teacher_record = ctx.task, ctx.cfg, ctx.inputs[self.TEACHER]
        teacher = load_model(task, ctx.root, teacher_record)
        n = synth_size(task, cfg)
        start, stop = shard_range(n, cfg.synth.shards, shard)
        seed = shard_seed(cfg.synth.seed, shard)
        keep = ctx.keep(teacher=_weights_sha256(teacher_record), seed=seed, start=start)
        with infer.inference_precision(cfg.infer.precision, device_of(teacher)) as precision:
            data = task.synthesize(teacher, cfg, start, stop, generator(seed, device_of(teacher)), keep=keep)
        path = save_data(task, ctx.out / "data.safetensors", data,
                         {"teacher": teacher_record["key"], "start": start, "stop": stop, "seed": seed})
        ctx.made(stop - start, keep)
        keep.clear()
        ctx.log(f"sampled items {start}..{stop - 1} of {n} from teacher {teacher_record['key']} "
                f"(seed {seed}, {precision})")
        return {"n": stop - start, "start": start, "stop": stop, "seed": seed, "precision": precision}, {"data": path}


class Synth(Kind):
    """D_M0, the synthetic set the students train on: sampled from the teacher, or, with synth.shards > 1,
    its shards' items joined in shard order (inputs shard.0, shard.1, ...)."""
    name = "synth"
    SECTIONS = ("task", "synth", "infer.precision")
    TEACHER = "teacher"

    @staticmethod
    def shard(i: int) -> str:
        """The role of shard `i`'s stage."""
        return f"shard.{i}"

    @classmethod
    def deps(cls, teacher: str, shards=()) -> dict:
        """`shards`: the keys of its shard stages, in shard order (none: it samples D_M0 itself)."""
        return {cls.TEACHER: teacher, **{cls.shard(i): key for i, key in enumerate(shards)}}

    def run(self, ctx):
        task, cfg, teacher_record = ctx.task, ctx.cfg, ctx.inputs[self.TEACHER]
        if cfg.synth.shards > 1:
            return self.join(ctx)
        teacher = load_model(task, ctx.root, teacher_record)
        n = synth_size(task, cfg)
        keep = ctx.keep(teacher=_weights_sha256(teacher_record), seed=cfg.synth.seed)
        with infer.inference_precision(cfg.infer.precision, device_of(teacher)) as precision:
            data = task.synthesize(teacher, cfg, 0, n, generator(cfg.synth.seed, device_of(teacher)), keep=keep)
        path = save_data(task, ctx.out / "data.safetensors", data,
                         {"teacher": teacher_record["key"], "n": n, "seed": cfg.synth.seed})
        ctx.made(n, keep)
        keep.clear()
        ctx.log(f"sampled {n} items from teacher {teacher_record['key']} in {precision}")
        return {"n": n, "precision": precision}, {"data": path}

    def join(self, ctx):
        task, cfg = ctx.task, ctx.cfg
        parts = [load_data(task, ctx.root, ctx.inputs[self.shard(i)]) for i in range(cfg.synth.shards)]
        data = task.concat(parts)
        path = save_data(task, ctx.out / "data.safetensors", data,
                         {"teacher": ctx.inputs[self.TEACHER]["key"], "n": len(data), "shards": cfg.synth.shards})
        ctx.log(f"joined {cfg.synth.shards} shards: {len(data)} items")
        ctx.work.items = len(data)
        return {"n": len(data), "shards": cfg.synth.shards}, {"data": path}


class Student(Trained):
    """A grid point's student: trained on D_M0, distilled from the teacher unless every L_SD weight is 0
    (M1). Its data section is in its key: the real test set picks the best epoch."""
    name = "student"
    SECTIONS = ("task", "data", "model", "train", "distill")
    TEACHER, SYNTH = "teacher", "synth"

    @classmethod
    def deps(cls, teacher: str, synth: str, pretrain: str | None = None) -> dict:
        return {cls.TEACHER: teacher, cls.SYNTH: synth, **cls.pretrained(pretrain)}

    def run(self, ctx):
        task, cfg = ctx.task, ctx.cfg
        synthetic = load_data(task, ctx.root, ctx.inputs[self.SYNTH])
        teacher = load_model(task, ctx.root, ctx.inputs[self.TEACHER]) if distills(task, cfg.distill) else None
        state = train.train(task, cfg, synthetic, task.real_data(cfg, "test"), ctx.out, teacher=teacher,
                            log=ctx.log, init=self.init(ctx))
        return ctx.trained(state), {"weights": ctx.out / "best.safetensors"}


class Generation(Trained):
    """Generation t+1 of a chain (collapse/generations.py): trains on the set its data policy builds from
    the real data and the samples of generations g (inputs data.<g>: the synth stage for g = 0, generation
    g's own stage after), distilling from DISTILL_FROM when given (M0 or generation t), then samples the
    next generation's data. generations.count and .distill stay out of its key: chains that share a
    prefix share its stages (the model distilled from is a dep), whatever their length."""
    name = "generation"
    SECTIONS = ("task", "data", "model", "train", "distill", "synth",
                "generations.data", "generations.mix_ratio", "generations.subsample_size", "infer.precision")
    DATA, DISTILL_FROM = "data.", "distill_from"

    @classmethod
    def deps(cls, data: dict, pretrain: str | None = None, distill_from: str | None = None) -> dict:
        """`data`: {g: the key of the stage holding generation g's samples}."""
        deps = {f"{cls.DATA}{g}": key for g, key in data.items()} | cls.pretrained(pretrain)
        return deps if distill_from is None else {**deps, cls.DISTILL_FROM: distill_from}

    @classmethod
    def samples(cls, ctx) -> dict:
        """{g: generation g's samples}, from the data.<g> inputs."""
        return {int(role.removeprefix(cls.DATA)): load_data(ctx.task, ctx.root, record)
                for role, record in ctx.inputs.items() if role.startswith(cls.DATA)}

    def run(self, ctx):
        task, cfg, inputs, out = ctx.task, ctx.cfg, ctx.inputs, ctx.out
        synthetic = self.samples(ctx)
        t, gen = max(synthetic), cfg.generations
        real = task.real_data(cfg, "train")
        data, source = generations.training_set(gen.data, real, synthetic, t, gen.mix_ratio, gen.subsample_size,
                                                seed=cfg.train.seed)
        made_of = generations.composition(source)
        ctx.log(f"generation {t + 1} ({gen.data}): {len(data)} training items {made_of}")
        distilled = inputs.get(self.DISTILL_FROM)
        teacher = load_model(task, ctx.root, distilled) if distilled is not None else None
        state = train.train(task, cfg, data, task.real_data(cfg, "test"), out, teacher=teacher, log=ctx.log,
                            init=self.init(ctx))
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
                   "distilled_from": distilled["key"] if teacher is not None else None, "precision": precision}
        return metrics, {"weights": out / "best.safetensors", "data": path}


class Eval(Kind):
    """A trained model (input MODEL: a teacher, student or generation) scored on the real held-out data."""
    name = "eval"
    SECTIONS = ("task", "data", "eval", "infer.precision")
    MODEL = "model"

    @classmethod
    def deps(cls, model: str) -> dict:
        return {cls.MODEL: model}

    def run(self, ctx):
        task, cfg, model_record = ctx.task, ctx.cfg, ctx.inputs[self.MODEL]
        model = load_model(task, ctx.root, model_record)
        keep = ctx.keep(model=_weights_sha256(model_record))
        test = task.real_data(cfg, "test")
        with infer.inference_precision(cfg.infer.precision, device_of(model)) as precision:   # the metric nets: fp32
            metrics = {**task.evaluate(model, test, cfg, cache=Path(ctx.root) / "cache", keep=keep),
                       "precision": precision}
            ctx.log(f"{model_record['name']}: " + _shown(metrics))
            examples = task.write_examples(model, cfg, ctx.out)
        ctx.made(len(test), keep)
        keep.clear()
        return metrics, examples


class Simulate(Kind):
    """A simulation task's one stage per grid point (tasks/base.py, Simulation): every chain of the point
    at once. Its name and key are the task's (SIMULATION_KIND, SIMULATION_KEY); it reads nothing."""
    name = None

    def key_sections(self, task) -> tuple:
        return task.SIMULATION_KEY

    @staticmethod
    def deps() -> dict:
        return {}

    def run(self, ctx):
        """Each array the task returns is stored as <name>.safetensors."""
        metrics, arrays = ctx.task.simulate(ctx.cfg)
        paths = {name: storage.save_tensors(ctx.out / f"{name}.safetensors", {name: torch.from_numpy(a)})
                 for name, a in arrays.items()}
        ctx.log("simulated: " + _shown(metrics))
        return metrics, paths


class Report(Kind):
    """The sweep's tables and plots, last: it reads every eval (or simulation stage) of the sweep (inputs
    input.0, input.1, ...) and runs whatever their outcome (stages.ANY_OUTCOME); written while an
    input had not ended done, it is recorded partial. Its tables come from every record in the root."""
    name = "report"
    SECTIONS = ("task",)
    INPUT = "input."

    @staticmethod
    def reads(kind: str) -> bool:
        """A report reads the stages of `kind`: evals, and a simulation task's own kind."""
        return kind == Eval.name or kind not in CORE

    @classmethod
    def deps(cls, inputs: list[str]) -> dict:
        return {f"{cls.INPUT}{i}": key for i, key in enumerate(inputs)}

    def run(self, ctx):
        """First, stages whose SLURM job died without recording an end (killed, out of memory) are
        recorded failed, so the report shows them as such."""
        root, inputs = ctx.root, ctx.inputs
        for key, why in record_dead_jobs(root).items():
            ctx.log(f"stage {key}: recorded failed ({why})")
        files = [str(Path(p).relative_to(root)) for p in ctx.write_reports()]
        done = sum(1 for record in inputs.values() if record is not None and record["status"] == "done")
        ctx.log(f"report: {len(files)} files, from {done} of {len(inputs)} inputs done")
        return {"files": files, "inputs": len(inputs), "inputs_done": done}, {}


# ---------------------------------------------------------------- finding a kind

CORE = {k.name: k for k in (Pretrain(), Teacher(), SynthShard(), Synth(), Student(), Generation(), Eval(),
                            Report())}
assert set(CORE) == set(KINDS)
SIMULATION = Simulate()


class UnknownKind(KeyError):
    def __str__(self) -> str:
        return self.args[0]   # KeyError's own would quote the message


def get(kind: str, task=None) -> Kind:
    """The kind called `kind`: a core kind, or `task`'s own where it is a simulation that names it."""
    if isinstance(task, Simulation) and kind == task.SIMULATION_KIND:
        return SIMULATION
    if kind not in CORE:
        own = f", or this task's {task.SIMULATION_KIND!r}" if isinstance(task, Simulation) else ""
        raise UnknownKind(f"no stage kind {kind!r}: the kinds are {', '.join(CORE)}{own}")
    return CORE[kind]
