"""Experiment configs: dataclass schemas, YAML loading, dotlist overrides, one-line errors.

A config is built from, in order: the dataclass defaults, configs/experiment/<name>.yaml,
configs/profile/<profile>.yaml, configs/cluster/<cluster>.yaml, the grid's `overrides`, and the
command line's `key=value` overrides. Every value is checked against its field's type and range
when the dataclasses are built, so a typo fails before anything is submitted.
"""
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "configs"


class ConfigError(ValueError):
    """A user-fixable mistake, as one line naming the key, the value and what is allowed."""


def bad(key: str, value, allowed: str) -> ConfigError:
    return ConfigError(f"key '{key}': value {value!r} is not allowed; expected {allowed}")


def _check(cond: bool, key: str, value, allowed: str) -> None:
    if not cond:
        raise bad(key, value, allowed)


@dataclass
class DataConfig:
    dataset: str = "mnist"
    root: str | None = None          # None: the copy shipped in a package; else a directory
    train_size: int | None = None    # use the first N real training items (None: all)
    test_size: int | None = None

    def check(self, p):
        _check(self.dataset in ("mnist",), p + "dataset", self.dataset, "one of: mnist")
        for name in ("train_size", "test_size"):
            v = getattr(self, name)
            _check(v is None or v >= 1, p + name, v, "an integer >= 1 or null")
        if self.root is not None:
            _check(Path(self.root).is_dir(), p + "root", self.root, "an existing directory")


@dataclass
class ModelConfig:
    hidden: int = 420
    latent: int = 20

    def check(self, p):
        for name in ("hidden", "latent"):
            _check(getattr(self, name) >= 1, p + name, getattr(self, name), "an integer >= 1")


@dataclass
class TrainConfig:
    epochs: int = 70
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    eval_every: int = 1             # epochs between test-loss evaluations
    checkpoint_every: int = 2000    # steps between resumable checkpoints (also at each epoch end)
    zero_stage: int = 0             # configs/deepspeed/zero<N>.json
    bf16: bool = True               # on GPU only; CPU runs are fp32
    threads: int = 1                # torch intra-op threads per stage process

    def check(self, p):
        for name in ("epochs", "batch_size", "eval_every", "checkpoint_every", "threads"):
            _check(getattr(self, name) >= 1, p + name, getattr(self, name), "an integer >= 1")
        _check(self.lr > 0, p + "lr", self.lr, "a float > 0")
        _check(self.weight_decay >= 0, p + "weight_decay", self.weight_decay, "a float >= 0")
        _check(self.seed >= 0, p + "seed", self.seed, "an integer >= 0")
        _check(self.zero_stage in (0, 1, 2, 3), p + "zero_stage", self.zero_stage, "one of 0, 1, 2, 3")


@dataclass
class DistillConfig:
    """Coefficients of L_SD (eq. 1); all zero is the plain student M1."""
    lam: float = 0.0     # output distillation, L(student output, teacher output)
    beta: float = 0.0    # MSE of encoder means (VAE)
    gamma: float = 0.0   # MSE of encoder variance predictions (VAE)

    def check(self, p):
        for name in ("lam", "beta", "gamma"):
            v = getattr(self, name)
            _check(v >= 0 and v == v, p + name, v, "a float >= 0")


@dataclass
class SynthConfig:
    size: int | None = None   # None: as many as the real training set
    seed: int = 0

    def check(self, p):
        _check(self.size is None or self.size >= 1, p + "size", self.size, "an integer >= 1 or null")


@dataclass
class EvalConfig:
    grid_samples: int = 64    # images in the sample-grid PNG

    def check(self, p):
        _check(1 <= self.grid_samples <= 1024, p + "grid_samples", self.grid_samples, "an integer in [1, 1024]")


@dataclass
class ClusterConfig:
    backend: str = "auto"     # auto: slurm when sbatch answers, else local
    max_parallel: int = 0     # local executor: stages at once (0: one per CPU core)

    def check(self, p):
        _check(self.backend in ("auto", "local", "slurm"), p + "backend", self.backend, "one of: auto, local, slurm")
        _check(self.max_parallel >= 0, p + "max_parallel", self.max_parallel, "an integer >= 0")


@dataclass
class ExperimentConfig:
    task: str = "vae"
    results_root: str = "results"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def check(self, p):
        _check(self.task in ("vae",), p + "task", self.task, "one of: vae")


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
    elif hint is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, value, "a number")
        value = float(value)
    elif hint is str:
        _check(isinstance(value, str), key, value, "a string")
    elif typing.get_origin(hint) is list:
        _check(isinstance(value, list), key, value, "a list")
        value = [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
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


def named_yaml(kind: str, name: str) -> dict:
    """configs/<kind>/<name>.yaml, with the allowed names in the error when it is missing."""
    folder = CONFIG_DIR / kind
    if not isinstance(name, str) or "/" in name or name.startswith(".") or not (folder / f"{name}.yaml").is_file():
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        raise bad(kind, name, "one of: " + ", ".join(names))
    return load_yaml(folder / f"{name}.yaml", kind)


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


def from_dict(data: dict) -> ExperimentConfig:
    return build(ExperimentConfig, data)
