"""One module per modality, all with the same functions (see collapse/tasks/vae.py)."""
import importlib

TASKS = ("vae", "ddpm", "t5", "gaussian")   # gaussian: the toy model of collapse/gaussian.py, chains only


def get(name: str):
    if name not in TASKS:
        raise ValueError(f"key 'task': value '{name}' is not one of {', '.join(TASKS)}")
    return importlib.import_module(f"collapse.tasks.{name}")
