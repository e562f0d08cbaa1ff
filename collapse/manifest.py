"""The manifest: one JSON record per stage under <results_root>/manifest/<key>.json.

One file per key means concurrent writers never contend for the same bytes; each write is
atomic (temp file + rename), so a reader sees a whole record or the previous one. The
report and status read only this folder. No torch here: status reads records through this module and
must answer in well under a second.
"""
import functools
import getpass
import importlib.metadata
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

from collapse import snapshot, storage
from collapse.stages import is_safe_key

VERSION = 1
REQUIRED = ("version", "kind", "key", "name", "status")


def folder(root) -> Path:
    return Path(root) / "manifest"


def _path(root, key) -> Path:
    if not is_safe_key(key):
        raise ValueError(f"manifest key {key!r} is not allowed: expected letters, digits, '_', '.', '-' "
                         "(no '/', no leading '.')")
    return folder(root) / f"{key}.json"


def write(root, record: dict) -> dict:
    record = {"version": VERSION, **record}
    storage.write_json(_path(root, record["key"]), record)
    return record


def _parse(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            text = f.read()
        try:
            record = orjson.loads(text)   # 2.8x json's speed on records with a 70-epoch history
        except orjson.JSONDecodeError:
            record = json.loads(text)     # NaN and Infinity, which json writes and orjson refuses
    except (OSError, ValueError) as e:
        return {"key": path.stem, "status": "unreadable", "error": f"{path}: {e}"}
    missing = [k for k in REQUIRED if not isinstance(record, dict) or k not in record]
    if missing:
        return {"key": path.stem, "status": "unreadable", "error": f"{path}: record lacks {', '.join(missing)}"}
    if record["version"] != VERSION:
        return {**record, "status": "unreadable",
                "error": f"{path}: record version {record['version']!r}, this code reads {VERSION}"}
    return record


def read(root, key: str) -> dict | None:
    path = _path(root, key)
    return _parse(path) if path.exists() else None


def read_all(root) -> list[dict]:
    """Every record, malformed ones flagged as status 'unreadable' rather than raised."""
    d = folder(root)
    if not d.is_dir():
        return []
    return [_parse(d / name) for name in sorted(os.listdir(d)) if name.endswith(".json") and not name.startswith(".")]


def is_done(root, key: str) -> bool:
    record = read(root, key)
    return record is not None and record["status"] == "done"


def provenance() -> dict:
    """Where and with what a stage ran: host, user, pid, SLURM job, git commit and whether the tree had
    uncommitted changes, the versions of python, collapse and every package it requires, and on a GPU
    its CUDA and device name; run from a launch's code snapshot (collapse/snapshot.py), that snapshot, whose
    commit and dirty flag are the launch's checkout's."""
    code = snapshot.running()
    commit, dirty = (code.commit, code.dirty) if code else (git_commit(), git_dirty())
    return {"host": socket.gethostname(), "user": getpass.getuser(), "pid": os.getpid(),
            "git_commit": commit, "git_dirty": dirty, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "code": code.hash if code else None, "versions": versions(), "cuda": cuda()}


@functools.cache
def versions() -> dict:
    """{"python": "3.11.2", "collapse": "0.1.0", "torch": "2.14.1+cu130", "torch_cuda": "13.0", ...}: collapse and
    the packages its install requires (setup.cfg), None for one not installed. From the installed metadata: nothing
    is imported; torch as the process that imported it (the stage runner) reads it, build tag and CUDA build included."""
    out = {"python": platform.python_version()}
    try:
        required = importlib.metadata.requires("collapse") or []
    except importlib.metadata.PackageNotFoundError:   # run from a checkout that was never installed
        required = []
    names = [re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0] for r in required if "extra ==" not in r]
    for name in ["collapse", *names]:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    torch = sys.modules.get("torch")   # 2.14.1+cu130 where the wheel's metadata says 2.14.1
    if torch is not None:
        out.update(torch=torch.__version__, torch_cuda=torch.version.cuda)   # torch_cuda None: a CPU build
    return out


def cuda() -> dict | None:
    """CUDA's version and the device's name where this stage runs on a GPU (torch already imported)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return {"version": torch.version.cuda, "device": torch.cuda.get_device_name(torch.cuda.current_device())}


@functools.cache
def git_dirty() -> bool | None:
    """The checkout has uncommitted changes to tracked files (None: not a git checkout)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def now() -> float:
    return round(time.time(), 3)
