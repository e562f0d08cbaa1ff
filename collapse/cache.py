"""Built-once files (a tokenizer trained on the stand-in, the stand-in GPT-2), keyed by what they are made of.

They live in $COLLAPSE_CACHE, else $XDG_CACHE_HOME/collapse, else ~/.cache/collapse: one folder per
content key, built under a lock by the first process that needs it and renamed into place, so the
stages of a grid (and of other grids) that need the same one build it once and all read the same files.
"""
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable


def cache_root() -> Path:
    if os.environ.get("COLLAPSE_CACHE"):
        return Path(os.environ["COLLAPSE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "collapse"


def content_key(*parts) -> str:
    """sha256 (16 hex digits) of the JSON of `parts` (strings, numbers, lists, dicts)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def cached_dir(name: str, key: str, build: Callable[[Path], None]) -> Path:
    """The folder <cache>/<name>-<key>, made by `build(tmp_folder)` the first time it is asked for."""
    root = cache_root()
    final = root / f"{name}-{key}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # another process building it: wait, then use its result
        if not final.is_dir():
            tmp = root / f".{name}-{key}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            build(tmp)
            os.replace(tmp, final)
    return final
