"""Built-once files (a tokenizer trained on the stand-in, the stand-in GPT-2), keyed by what they are made of.

They live in $COLLAPSE_CACHE, else $XDG_CACHE_HOME/collapse, else ~/.cache/collapse: one folder per
content key. No lock (flock raises or lies on Lustre and many NFS mounts, where $COLLAPSE_CACHE is
often put): each process that finds the folder missing builds it in a temporary folder of its own and
renames it into place. The build is content-keyed, so every builder makes the same files; rename is
atomic, so a reader sees a whole folder or none; a builder that loses the race (the folder is there
when it renames) discards its copy and uses the winner's.
"""
import hashlib
import json
import os
import shutil
import socket
import uuid
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
    tmp = root / f".{name}-{key}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        build(tmp)
        os.rename(tmp, final)          # fails (EEXIST/ENOTEMPTY) when another builder's folder is there
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # gone after a won rename; the loser's (or a failed) copy
    return final
