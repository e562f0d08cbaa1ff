"""The tasks (modalities), registered by name: BUILT_IN for the package's own, and any module named in
$COLLAPSE_TASKS as `name=package.module[,...]` (a modality kept outside the package, e.g. a test's).
Each is one module that states what collapse/tasks/base.py requires; `get` hands it out as a
base.Stated, the defaults of what it does not state filled in. Nothing is imported until a task is
asked for by name.
"""
import importlib
import os

from collapse.tasks.base import Stated, missing

DEFAULT = "vae"           # the task of an experiment that names none
ENV = "COLLAPSE_TASKS"
BUILT_IN = {"vae": "collapse.tasks.vae", "ddpm": "collapse.tasks.ddpm", "t5": "collapse.tasks.t5",
            "gaussian": "collapse.tasks.gaussian"}
_stated: dict[str, Stated] = {}   # module name -> its Stated, made once per process


def extra() -> dict[str, str]:
    """name -> module of the tasks named in $COLLAPSE_TASKS."""
    out = {}
    for item in os.environ.get(ENV, "").split(","):
        name, _, module = item.strip().partition("=")
        if name and module:
            out[name.strip()] = module.strip()
    return out


def modules() -> dict[str, str]:
    """name -> module of every task: the package's, then $COLLAPSE_TASKS's."""
    return {**BUILT_IN, **extra()}


def names() -> tuple[str, ...]:
    return tuple(modules())


def get(name: str) -> Stated:
    """The task `name` (ValueError naming the known tasks when there is none; TypeError naming what a
    module that is no task lacks)."""
    known = modules()
    if name not in known:
        raise ValueError(f"key 'task': value {name!r} is not allowed; expected one of: {', '.join(known)}")
    if known[name] not in _stated:
        module = importlib.import_module(known[name])
        lacking = missing(module)
        if lacking:
            raise TypeError(f"task {name!r} ({known[name]}) does not state {', '.join(lacking)} "
                            "(collapse/tasks/base.py REQUIRED)")
        _stated[known[name]] = Stated(module)
    return _stated[known[name]]
