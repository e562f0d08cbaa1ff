"""An experiment's config: the core sections (collapse/config.py) and its task's own
(CONFIG_SECTIONS, collapse/tasks/base.py), built from a plain dict and checked, with the checks that
need the task: chains against the task's distillation modes, a simulation's need of a chain length,
per-kind cluster overrides against the plan's stage kinds, and the task's own cross-section checks.

Paths (results_root and the task's PATH_FIELDS) are made absolute at load, against the launch's working
directory, before any check and before any stage key: a stage runs in another directory, or on another
node, and reads the path as its spec states it. A stage key holds a path's content fingerprint, not
the path (collapse/plan.py), so the absolute spelling changes no key.
"""
import dataclasses
import os
import typing

from collapse import tasks
from collapse.config import ConfigError, ExperimentConfig, GenerationsConfig, _check, bad, build, schema
from collapse.stages import KINDS
from collapse.tasks.base import Simulation, distills


def task_of(cfg):
    return tasks.get(cfg.task)


def from_dict(data: dict, paths: bool = True) -> ExperimentConfig:
    """Build and check an experiment's config: the task named by data["task"] (default tasks.DEFAULT).
    paths: make its paths absolute against the working directory and check that each set one exists
    (a launch); False for a config a stage spec or record stored (its paths as they were planned)."""
    name = data.get("task", tasks.DEFAULT) if isinstance(data, dict) else tasks.DEFAULT
    if not isinstance(name, str) or name not in tasks.names():
        raise bad("task", name, "one of: " + ", ".join(tasks.names()))
    task = tasks.get(name)
    given = {}
    if paths and isinstance(data, dict):
        data, given = absolute_paths(data, ("results_root", *task.PATH_FIELDS))
    try:
        cfg = build(schema(name, task.CONFIG_SECTIONS), {**data, "task": name} if isinstance(data, dict) else data)
    except ConfigError as e:
        if getattr(e, "key", None) in given:   # a path's own check failed: say what was given and what was tried
            raise path_error(e.key, *given[e.key], e.allowed) from None
        raise
    for key, (value, absolute) in given.items():
        # a path given relative (or from ~) must be there now; one given absolute is the task's to check
        # (check_data at launch: a stored config is read without it), and results_root is made by the launch
        if key != "results_root" and value != absolute and not os.path.exists(absolute):
            raise path_error(key, value, absolute, "an existing file or directory")
    check_generations(cfg, task)
    check_stage_kinds(cfg, task)
    task.check_config(cfg)
    return cfg


def from_stored(data: dict) -> ExperimentConfig:
    """A config as a stage spec or record stored it. Sections and fields this version no longer has
    are dropped first: they were moved to the tasks that read them (a VAE record of before carries the
    Gaussian toy model's section), so they decided nothing for this stage (its key says what did)."""
    name = data.get("task", tasks.DEFAULT)
    return from_dict(known_fields(schema(name, tasks.get(name).CONFIG_SECTIONS), data), paths=False)


def absolute_paths(data: dict, fields: tuple) -> tuple[dict, dict]:
    """`data` with each set path field (dotted) absolute: ~ expanded, a relative path taken from the
    working directory, and {field: (the value given, the absolute path)}. Values that are no path (not
    a string, blank, with control characters) are left for the checks to name."""
    data, given = dict(data), {}
    for dotted in fields:
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            if not isinstance(node.get(part), dict):
                node = None   # a section that is no mapping: build() names it
                break
            inner = dict(node[part])   # a copy: the caller's dicts stay as they were
            node[part] = inner
            node = inner
        value = node.get(leaf) if node is not None else None
        if isinstance(value, str) and value.strip() and value.isprintable():
            node[leaf] = os.path.abspath(os.path.expanduser(value))
            given[dotted] = (value, node[leaf])
    return data, given


def path_error(key: str, value: str, absolute: str, allowed: str) -> ConfigError:
    """One line: the key, the value given, the absolute path tried (relative paths are taken from the
    launch's working directory) and what must be there."""
    error = ConfigError(f"key '{key}': value {value!r} is not allowed (absolute path tried: {absolute}); "
                        f"expected {allowed}")
    error.key, error.allowed = key, allowed
    return error


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
