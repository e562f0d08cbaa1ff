"""The tasks (modalities). Each is one module that defines every member of the interface in
collapse/tasks/base.py: collapse/tasks/<name>.py for the built-in ones (a task module's name has no
underscore; the package's helper modules, base, common, gpu_rates and <task>_<part>, are not tasks),
and any module named in $COLLAPSE_TASKS as `name=package.module[,...]` (a modality kept outside the
package, e.g. a test's). Nothing is imported until a task is asked for by name.
"""
import importlib
import os
import pkgutil

DEFAULT = "vae"           # the task of an experiment that names none
ENV = "COLLAPSE_TASKS"
HELPERS = ("base", "common", "gpu_rates")


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
    own = {m.name: f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)
           if not m.ispkg and "_" not in m.name and m.name not in HELPERS}
    return {**own, **extra()}


def names() -> tuple[str, ...]:
    return tuple(modules())


def get(name: str):
    """The task module `name` (ValueError naming the known tasks when there is none)."""
    known = modules()
    if name not in known:
        raise ValueError(f"key 'task': value {name!r} is not allowed; expected one of: {', '.join(known)}")
    return importlib.import_module(known[name])
