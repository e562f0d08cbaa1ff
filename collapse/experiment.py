"""An experiment's config: the core sections (collapse/config.py) and its task's own
(CONFIG_SECTIONS, collapse/tasks/base.py), built from a plain dict and checked, with the checks that
need the task: chains against the task's distillation modes, a simulation's need of a chain length,
per-kind cluster overrides against the plan's stage kinds, and the task's own cross-section checks.
"""
import dataclasses
import typing

from collapse import tasks
from collapse.config import ExperimentConfig, GenerationsConfig, _check, bad, build, schema
from collapse.stages import KINDS
from collapse.tasks.base import Simulation, distills


def task_of(cfg):
    return tasks.get(cfg.task)


def from_dict(data: dict) -> ExperimentConfig:
    """Build and check an experiment's config: the task named by data["task"] (default tasks.DEFAULT)."""
    name = data.get("task", tasks.DEFAULT) if isinstance(data, dict) else tasks.DEFAULT
    if not isinstance(name, str) or name not in tasks.names():
        raise bad("task", name, "one of: " + ", ".join(tasks.names()))
    task = tasks.get(name)
    cfg = build(schema(name, task.CONFIG_SECTIONS), {**data, "task": name} if isinstance(data, dict) else data)
    check_generations(cfg, task)
    check_stage_kinds(cfg, task)
    task.check_config(cfg)
    return cfg


def from_stored(data: dict) -> ExperimentConfig:
    """A config as a stage spec or record stored it. Sections and fields this version no longer has
    are dropped first: they were moved to the tasks that read them (a VAE record of before carries the
    Gaussian toy model's section), so they decided nothing for this stage (its key says what did)."""
    name = data.get("task", tasks.DEFAULT)
    return from_dict(known_fields(schema(name, tasks.get(name).CONFIG_SECTIONS), data))


def known_fields(cls, data: dict) -> dict:
    """`data` without the keys `cls` (a config dataclass) has no field for, at every depth."""
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in data.items():
        if key not in hints:
            continue
        hint = hints[key]
        out[key] = known_fields(hint, value) if dataclasses.is_dataclass(hint) and isinstance(value, dict) else value
    return out


def check_generations(cfg, task, p: str = "") -> None:
    gen, g = cfg.generations, p + "generations."
    if gen.count is None:
        _check(not isinstance(task, Simulation), g + "count", None,
               f"an integer >= 1 (task {cfg.task} simulates chains)")
        for name in ("data", "distill"):
            default = getattr(GenerationsConfig, name)
            _check(getattr(gen, name) == default, g + name, getattr(gen, name),
                   f"{default!r} unless generations.count is set")
        return
    modes = ("none",) if isinstance(task, Simulation) else task.DISTILL_MODES   # a simulation distils nothing
    _check(gen.distill in modes, g + "distill", gen.distill, f"one of: {', '.join(modes)} (task {cfg.task})")
    if isinstance(task, Simulation):
        return
    if gen.distill != "none":
        _check(distills(task, cfg.distill), g + "distill", gen.distill, "'none' when every distill.* coefficient is 0")
    _check(cfg.synth.size is None, p + "synth.size", cfg.synth.size,
           "null with generations.count set (each generation samples as many items as the real set)")


def stage_kinds(task) -> tuple[str, ...]:
    """The stage kinds a plan of this task may hold."""
    return (*KINDS, task.SIMULATION_KIND) if isinstance(task, Simulation) else KINDS


def check_stage_kinds(cfg, task) -> None:
    kinds = stage_kinds(task)
    for kind in cfg.cluster.stages:
        if kind not in kinds:
            raise bad("cluster.stages", kind, "stage kinds among: " + ", ".join(kinds))
