"""Experiment configs: dataclass schemas, YAML loading, dotlist overrides, one-line errors.

A config is built from, in order: the dataclass defaults, configs/experiment/<name>.yaml,
configs/profile/<profile>.yaml, configs/cluster/<cluster>.yaml, the grid's `overrides`, and the
command line's `key=value` overrides. Every value is checked against its field's type and range
when the dataclasses are built, so a typo fails before anything is submitted.
"""
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
# configs/ and sweeps/: the checkout's; installed (pip install .), setup.cfg's copy in collapse/_tree/ (as snapshot.py)
TREE = REPO if (REPO / "configs").is_dir() else Path(__file__).resolve().parent / "_tree"
CONFIG_DIR = TREE / "configs"


class ConfigError(ValueError):
    """A user-fixable mistake, as one line naming the key, the value and what is allowed."""


def bad(key: str, value, allowed: str) -> ConfigError:
    shown = repr(value)
    if len(shown) > 300:   # a pasted blob or a number of thousands of digits stays one readable line;
        shown = f"{shown[:40]}...({len(shown)} characters)"   # a path (often 100+ characters) shows whole
    error = ConfigError(f"key '{key}': value {shown} is not allowed; expected {allowed}")
    error.key, error.allowed = key, allowed   # collapse/experiment.py restates a path's error with the path tried
    return error


# Seeds feed torch and numpy generators as seed * 1_000_003 + step (collapse/train.py), which must
# stay inside a signed 64-bit integer; counts (sizes, epochs) are bounded far above any real use.
MAX_SEED = 2**32 - 1
MAX_COUNT = 2**31 - 1
LR_SCHEDULES = ("constant", "cosine")      # collapse/train.py lr_factor


def _check(cond: bool, key: str, value, allowed: str) -> None:
    if not cond:
        raise bad(key, value, allowed)


# A field is in the key of a stage whose kind reads its section (SECTIONS in collapse/kinds.py) unless it
# says otherwise, as Luigi's significant=False: execution() or added_later(). plan.py reads the marks.
def execution(default):
    """How a stage runs, not what it computes (threads, items per call, where the data lives): never in a key."""
    return field(default=default, metadata={"in_key": False})


def added_later(default):
    """A field added after results existed: out of the key at `default`, so those results keep their keys."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"added_later": default})
    return field(default=default, metadata={"added_later": default})


@dataclass
class DataConfig:
    """The real data; a task's own data section subclasses it with its DATASETS and default dataset."""
    DATASETS = ()                    # not a field: each task's data section names its datasets
    dataset: str = ""
    root: str | None = execution(None)   # None: the copy shipped in a package; else a directory (its fingerprint keys)
    train_size: int | None = None    # use the first N real training items (None: all)
    test_size: int | None = None

    def check(self, p):
        if self.DATASETS:   # a task without real data (a simulation) names none
            _check(self.dataset in self.DATASETS, p + "dataset", self.dataset, "one of: " + ", ".join(self.DATASETS))
        for name in ("train_size", "test_size"):
            v = getattr(self, name)
            _check(v is None or 1 <= v <= MAX_COUNT, p + name, v, f"an integer in [1, {MAX_COUNT}] or null")
        if self.root is not None:
            _check(Path(self.root).is_dir(), p + "root", self.root, "an existing directory")


# A task brings its model and distill sections, and its own data, synth and eval sections where it needs
# more than these (its module's CONFIG_SECTIONS, collapse/tasks/base.py), checked the same way.

@dataclass
class TrainConfig:
    epochs: int = 70
    steps: int | None = added_later(None)   # a step budget instead of epochs (null: epochs x batches per epoch)
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    eval_every: int = 1             # epochs between test-loss evaluations
    eval_every_steps: int | None = added_later(None)   # steps between them instead (null: every eval_every epochs)
    checkpoint_every: int = execution(2000)   # steps between resumable checkpoints (also at each epoch end)
    zero_stage: int = execution(0)  # configs/deepspeed/zero<N>.json
    bf16: bool | None = None        # mixed precision; null: bf16 on GPU, fp32 on CPU; true: bf16 on CPU too
    threads: int = execution(0)     # torch threads per stage process; 0: the executor's share of the cores
    lr_schedule: str = added_later("constant")   # constant | cosine (linear warm-up, then cosine decay: LR_SCHEDULES)
    warmup_steps: int = added_later(0)   # steps of linear warm-up from 0 to lr
    lr_waves: float = added_later(0.5)   # cosine: waves over the steps after warm-up (0.5: lr down to 0 once)

    def check(self, p):
        for name in ("epochs", "batch_size", "eval_every", "checkpoint_every"):
            _check(getattr(self, name) >= 1, p + name, getattr(self, name), "an integer >= 1")
        for name in ("steps", "eval_every_steps"):
            v = getattr(self, name)
            _check(v is None or 1 <= v <= MAX_COUNT, p + name, v, f"an integer in [1, {MAX_COUNT}] or null")
        _check(self.threads >= 0, p + "threads", self.threads, "an integer >= 0 (0: the executor's share)")
        _check(0 < self.lr < float("inf"), p + "lr", self.lr, "a finite float > 0")
        _check(0 <= self.weight_decay < float("inf"), p + "weight_decay", self.weight_decay, "a finite float >= 0")
        _check(0 <= self.seed <= MAX_SEED, p + "seed", self.seed, f"an integer in [0, {MAX_SEED}]")
        _check(self.epochs <= MAX_COUNT, p + "epochs", self.epochs, f"an integer in [1, {MAX_COUNT}]")
        _check(self.batch_size <= MAX_COUNT, p + "batch_size", self.batch_size, f"an integer in [1, {MAX_COUNT}]")
        _check(self.zero_stage in (0, 1, 2, 3), p + "zero_stage", self.zero_stage, "one of 0, 1, 2, 3")
        _check(self.lr_schedule in LR_SCHEDULES, p + "lr_schedule", self.lr_schedule,
               "one of: " + ", ".join(LR_SCHEDULES))
        _check(0 <= self.warmup_steps <= MAX_COUNT, p + "warmup_steps", self.warmup_steps,
               f"an integer in [0, {MAX_COUNT}]")
        _check(0 < self.lr_waves < float("inf"), p + "lr_waves", self.lr_waves, "a finite number > 0")


@dataclass
class SynthConfig:
    size: int | None = None   # None: as many as the real training set
    seed: int = 0
    shards: int = added_later(1)   # > 1: sampled by that many stages (one SLURM array), shard i with its own seed

    def check(self, p):
        _check(self.size is None or 1 <= self.size <= MAX_COUNT, p + "size", self.size,
               f"an integer in [1, {MAX_COUNT}] or null")
        _check(1 <= self.shards <= 10_000, p + "shards", self.shards, "an integer in [1, 10000]")
        _check(0 <= self.seed <= MAX_SEED, p + "seed", self.seed, f"an integer in [0, {MAX_SEED}]")


@dataclass
class EvalConfig:
    grid_samples: int = 64    # images in the sample-grid PNG

    def check(self, p):
        _check(1 <= self.grid_samples <= 1024, p + "grid_samples", self.grid_samples, "an integer in [1, 1024]")


PRECISIONS = ("auto", "fp32", "tf32", "bf16")   # infer.precision (collapse/infer.py)


@dataclass
class InferConfig:
    """What synth and eval stages compute the model under study in (collapse/infer.py): auto is bf16
    autocast on a GPU and fp32 on a CPU, resolved by the stage's device; the metric networks
    (Inception, GPT-2) always run in fp32."""
    precision: str = added_later("auto")

    def check(self, p):
        _check(self.precision in PRECISIONS, p + "precision", self.precision, "one of: " + ", ".join(PRECISIONS))


DISTILL_MODES = ("none", "teacher", "previous")   # generations.distill
POLICIES = ("replace", "mix", "accumulate", "accumulate_subsample")   # generations.data, collapse/generations.py


@dataclass
class GenerationsConfig:
    """Iterative retraining (collapse/generations.py). Generation 0 is the teacher on real data;
    generation t+1 trains on data built from generations <= t. count null: no chain (one student)."""
    count: int | None = None          # G: generations retrained after the teacher
    data: str = "replace"             # replace | mix | accumulate | accumulate_subsample
    mix_ratio: float = 0.5            # mix: all n real items + floor(mix_ratio * n) of generation t
    subsample_size: int | None = None  # accumulate_subsample: training-set size (null: n)
    distill: str = "none"             # none | teacher (from M0) | previous (from generation t), with distill.*

    def check(self, p):
        _check(self.count is None or self.count >= 1, p + "count", self.count, "an integer >= 1 or null (no chain)")
        _check(self.data in POLICIES, p + "data", self.data, "one of: " + ", ".join(POLICIES))
        _check(0.0 <= self.mix_ratio <= 1.0, p + "mix_ratio", self.mix_ratio, "a number in [0, 1]")
        _check(self.subsample_size is None or self.subsample_size >= 2, p + "subsample_size",
               self.subsample_size, "an integer >= 2 or null")
        _check(self.distill in DISTILL_MODES, p + "distill", self.distill, "one of: " + ", ".join(DISTILL_MODES))


# sbatch options the SLURM backend sets itself (cluster.* fields, dependencies, arrays, logs).
SBATCH_MANAGED = ("array", "dependency", "kill-on-invalid-dep", "output", "error", "open-mode", "signal",
                  "job-name", "wrap", "partition", "account", "qos", "constraint", "time", "nodes",
                  "ntasks-per-node", "gpus-per-node", "cpus-per-task", "mem")


@dataclass
class SlurmResources:
    """What one SLURM job of a stage asks for: cluster.<field>, per stage kind cluster.stages.<kind>.<field>."""
    partition: str | None = None    # None: the cluster's default partition
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int = 60              # wall-clock limit; on timeout the stage is requeued and resumes
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 0         # data-parallel ranks per node; 0: one per GPU (one without GPUs)
    cpus_per_task: int = 1
    mem_gb: float | None = None     # None: the partition's default
    array_parallelism: int = 256    # tasks of one job array running at once
    signal_delay_s: int = 90        # USR2 this long before time_min: checkpoint and requeue
    time_from: str = "given"        # measured: time_min is time_factor x the measured estimate (collapse/limits.py)
    time_factor: float = 1.5
    sbatch: dict = field(default_factory=dict)   # other sbatch options, e.g. {exclusive: true, mail-type: END}
    setup: list[str] = field(default_factory=list)   # shell lines run before each job, e.g. module load cuda/12.4

    def check(self, p):
        for name in ("partition", "account", "qos", "constraint"):
            v = getattr(self, name)
            _check(v is None or (v.strip() != "" and not any(c.isspace() for c in v)), p + name, v,
                   "null or a name without spaces")
        for name in ("time_min", "nodes", "cpus_per_task", "array_parallelism"):
            _check(getattr(self, name) >= 1, p + name, getattr(self, name), "an integer >= 1")
        _check(self.gpus_per_node >= 0, p + "gpus_per_node", self.gpus_per_node, "an integer >= 0")
        _check(self.tasks_per_node >= 0, p + "tasks_per_node", self.tasks_per_node,
               "an integer >= 0 (0: one per GPU)")
        _check(not (self.gpus_per_node and self.tasks_per_node not in (0, self.gpus_per_node)), p + "tasks_per_node",
               self.tasks_per_node, f"0 or gpus_per_node ({self.gpus_per_node}): each task drives one GPU")
        for i, line in enumerate(self.setup):
            # each line goes into the job script as it is: one line, no control characters
            _check(line.strip() != "" and line.isprintable(), p + f"setup[{i}]", line,
                   "a non-empty shell line without newlines or control characters")
        _check(self.mem_gb is None or self.mem_gb > 0, p + "mem_gb", self.mem_gb, "a number > 0 or null")
        _check(self.time_from in ("given", "measured"), p + "time_from", self.time_from,
               "given (time_min as set) or measured (time_factor x the estimate from measured rates)")
        _check(self.time_factor >= 1, p + "time_factor", self.time_factor, "a number >= 1")
        _check(0 <= self.signal_delay_s < self.time_min * 60, p + "signal_delay_s", self.signal_delay_s,
               f"an integer >= 0 and < time_min * 60 = {self.time_min * 60}")
        for k, v in self.sbatch.items():
            opt = str(k).lstrip("-").replace("_", "-")
            _check(re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", opt) is not None, p + "sbatch", k,
                   "sbatch option names (letters, digits and '-', e.g. mail-type)")
            _check(opt not in SBATCH_MANAGED, p + f"sbatch.{k}", v,
                   "an sbatch option not set elsewhere (not one of: " + ", ".join(SBATCH_MANAGED) + ")")
            _check(isinstance(v, (str, int, float, bool)), p + f"sbatch.{k}", v, "a string, number or true/false")
            # each becomes a `#SBATCH --key=value` line of a script bash runs: no way out of that line
            _check(isinstance(k, str) and re.fullmatch(r"-{0,2}[A-Za-z][A-Za-z0-9_-]*", k) is not None,
                   p + "sbatch", k, "option names of letters, digits, '-' and '_'")
            _check(not isinstance(v, str) or v.isprintable(), p + f"sbatch.{k}", v,
                   "a value without newlines or other control characters")


@dataclass
class ClusterConfig(SlurmResources):
    backend: str = "auto"     # auto: slurm when sbatch answers, else local
    max_parallel: int = 0     # local executor: stages at once (0: one per CPU core)
    warm_start: bool = True   # local executor: fork stages from one process that imported torch (no GPU)
    stages: dict[str, dict] = field(default_factory=dict)   # per stage kind (or 'report'): fields above

    def check(self, p):
        super().check(p)
        _check(self.backend in ("auto", "local", "slurm"), p + "backend", self.backend, "one of: auto, local, slurm")
        _check(self.max_parallel >= 0, p + "max_parallel", self.max_parallel, "an integer >= 0")
        for kind in self.stages:   # the kind names are checked against the plan's (collapse/experiment.py)
            self.resources(kind, p)

    def resources(self, kind: str, p: str = "cluster.") -> SlurmResources:
        """This config's SLURM resources with the overrides of `kind` applied (and checked)."""
        names = [f.name for f in dataclasses.fields(SlurmResources)]
        base = {name: getattr(self, name) for name in names}
        over = self.stages.get(kind) or {}
        for key in over:
            if key not in names:
                raise ConfigError(f"unknown key '{p}stages.{kind}.{key}'; allowed here: {', '.join(names)}")
        merged = {**base, **over, "sbatch": {**base["sbatch"], **(over.get("sbatch") or {})}}
        return build(SlurmResources, merged, f"{p}stages.{kind}.")


@dataclass
class ExperimentConfig:
    """The sections every experiment has; collapse/experiment.py adds its task's (model, distill, ...)."""
    task: str = ""
    results_root: str = "results"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    generations: GenerationsConfig = field(default_factory=GenerationsConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    def check(self, p):
        pass   # the checks that need the task: collapse/experiment.py


# ---------------------------------------------------------------- building and checking

def build(cls, data: dict, prefix: str = ""):
    """Make dataclass `cls` from a plain dict, checking keys, types and ranges."""
    if not isinstance(data, dict):
        raise bad(prefix.rstrip(".") or "<root>", data, "a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(f"unknown key '{prefix}{key}'; allowed here: {', '.join(names)}")
        kwargs[key] = _coerce(hints[key], value, prefix + key)
    obj = cls(**kwargs)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]) and f.name not in kwargs:
            setattr(obj, f.name, build(hints[f.name], {}, f"{prefix}{f.name}."))
    obj.check(prefix)
    return obj


def _coerce(hint, value, key):
    if dataclasses.is_dataclass(hint):
        return build(hint, {} if value is None else value, key + ".")
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        return _coerce(hint, value, key)
    if hint is bool:
        _check(isinstance(value, bool), key, value, "true or false")
    elif hint is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        _check(-2**63 <= value < 2**63, key, value, "an integer that fits in 64 bits")
    elif hint is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, value, "a number")
        value = float(value)
    elif hint is str:
        _check(isinstance(value, str), key, value, "a string")
    elif typing.get_origin(hint) is list:
        _check(isinstance(value, list), key, value, "a list")
        value = [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    elif hint is dict or typing.get_origin(hint) is dict:
        _check(isinstance(value, dict), key, value, "a mapping")
        if args:
            value = {_coerce(args[0], k, key): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    return value


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def load_yaml(path: Path, what: str) -> dict:
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ConfigError(f"{what} '{path}': not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} '{path}': expected a mapping at the top level, got {type(data).__name__}")
    return data


def config_dirs() -> list[Path]:
    """configs/, then any folders in $COLLAPSE_CONFIG_DIR (os.pathsep-separated, each with the same
    experiment/ profile/ cluster/ subfolders): experiments kept outside the repository."""
    extra = [Path(p) for p in os.environ.get("COLLAPSE_CONFIG_DIR", "").split(os.pathsep) if p]
    return [CONFIG_DIR, *extra]


def named_yaml(kind: str, name: str) -> dict:
    """configs/<kind>/<name>.yaml (or a $COLLAPSE_CONFIG_DIR's), with the allowed names in the error."""
    if isinstance(name, str) and "/" not in name and not name.startswith("."):
        for folder in config_dirs():
            if (folder / kind / f"{name}.yaml").is_file():
                return load_yaml(folder / kind / f"{name}.yaml", kind)
    names = sorted({p.stem for folder in config_dirs() for p in (folder / kind).glob("*.yaml")})
    names += ["auto (slurm where sinfo answers, else local)"] if kind == "cluster" else []
    raise bad(kind, name, "one of: " + ", ".join(names))


def parse_dotlist(items: list[str]) -> dict:
    """['a.b=1', 'c=x'] -> nested dict with YAML-typed values."""
    for item in items:
        if "=" not in item or not item.split("=", 1)[0]:
            raise ConfigError(f"argument {item!r} is not an override; expected key=value (e.g. train.epochs=5)")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(items), resolve=True)
    except Exception as e:
        raise ConfigError(f"cannot parse overrides {items}: {str(e).splitlines()[0]}") from None


def merge(*dicts: dict) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def schema(name: str, sections: dict) -> type:
    """ExperimentConfig with a task's own sections added, or in place of the core's of the same name."""
    if not sections:
        return ExperimentConfig
    return dataclasses.make_dataclass(f"{name.capitalize()}ExperimentConfig",
                                      [(key, cls, field(default_factory=cls)) for key, cls in sections.items()],
                                      bases=(ExperimentConfig,))
