"""Files that are never seen half-written: atomic writes, checksums, weights, checkpoints.

Everything is written to a temporary name in the same directory, fsynced and renamed into
place. Weights and synthetic data are safetensors (no pickle); records are JSON.
"""
import hashlib
import json
import os
import shutil
import signal
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class CorruptFileError(RuntimeError):
    """A file's bytes do not match the checksum recorded when it was written."""


class WriteError(OSError):
    """A file could not be written (disk full, read-only, permission denied); nothing was left half-written."""


# Test hook for tests/test_faults.py, inert unless set: COLLAPSE_TEST_KILL_IN_WRITE="<substring>[@<n>]"
# makes this process SIGKILL itself in the n-th (default: first) atomic_write whose target path
# contains <substring>, after the temporary file is complete and before it is renamed into place.
KILL_IN_WRITE_ENV = "COLLAPSE_TEST_KILL_IN_WRITE"
_kill_in_write_seen = 0


def _test_kill_in_write(path: Path) -> None:
    spec = os.environ.get(KILL_IN_WRITE_ENV)
    if not spec:
        return
    global _kill_in_write_seen
    pattern, _, nth = spec.rpartition("@") if "@" in spec else (spec, "", "1")
    if pattern in str(path):
        _kill_in_write_seen += 1
        if _kill_in_write_seen == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)


def _write_error(path, e: BaseException) -> WriteError:
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0] if str(e) else type(e).__name__
    err = WriteError(getattr(e, "errno", None) or 0, f"cannot write {path}: {reason}")
    err.filename = str(path)
    return err


def atomic_write(path: Path, write) -> Path:
    """Call write(tmp_path), then rename tmp_path to path. A reader sees the old file or the new one.

    A failure to write (disk full, read-only or unwritable folder) raises WriteError naming `path`,
    after removing the temporary file; whatever was at `path` before is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(path, e) from e
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _test_kill_in_write(path)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) or _looks_like_io_error(e):
            raise _write_error(path, e) from e
        raise
    return path


def _looks_like_io_error(e: BaseException) -> bool:
    """safetensors and torch report a failed write as their own exception types, with the OS's words."""
    text = str(e).lower()
    return isinstance(e, Exception) and any(w in text for w in (
        "no space left", "read-only file system", "permission denied", "disk quota", "file write failed",
        "input/output error"))


def write_json(path: Path, data) -> Path:
    text = json.dumps(data, indent=1, sort_keys=True, default=str)

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    return atomic_write(path, write)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, expected_sha256: str) -> Path:
    if not Path(path).is_file():
        raise CorruptFileError(f"missing file {path}")
    actual = sha256(path)
    if actual != expected_sha256:
        raise CorruptFileError(f"file {path} is corrupt: sha256 {actual[:12]} != recorded {expected_sha256[:12]}")
    return Path(path)


def save_tensors(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_tensors(path: Path) -> dict:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for torn or foreign files
        raise CorruptFileError(f"cannot read tensors from {path}: {e}") from None


def save_weights(path: Path, model: torch.nn.Module) -> Path:
    return save_tensors(path, model.state_dict())


def load_weights(path: Path, model: torch.nn.Module) -> torch.nn.Module:
    model.load_state_dict(load_tensors(path))
    return model


class CheckpointDir:
    """Resumable training state: DeepSpeed checkpoints under step-N/, with a `latest` pointer.

    The pointer is renamed into place only after the step directory is complete, so a crash
    mid-save leaves the previous checkpoint in force. Older step directories are removed.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.pointer = self.root / "latest.json"

    def exists(self) -> bool:
        return self.pointer.is_file()

    def save(self, engine, client_state: dict, step: int) -> None:
        tag = f"step-{step}"
        if self.exists() and self._latest_tag() == tag:
            return
        engine.save_checkpoint(str(self.root), tag=tag, client_state={"train_state": client_state},
                               save_latest=False)
        write_json(self.pointer, {"tag": tag})
        for old in self.root.glob("step-*"):
            if old.name != tag:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, engine) -> dict:
        tag = self._latest_tag()
        path, client = engine.load_checkpoint(str(self.root), tag=tag)
        if path is None:
            raise CorruptFileError(f"checkpoint {self.root / tag} could not be loaded")
        return client["train_state"]

    def _latest_tag(self) -> str:
        with open(self.pointer) as f:
            return json.load(f)["tag"]


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)
