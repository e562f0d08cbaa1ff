"""Files that are never seen half-written: atomic writes, checksums, weights, checkpoints.

Everything is written to a temporary name in the same directory, fsynced and renamed into
place. Weights and synthetic data are safetensors (no pickle); records are JSON.

No torch at import: the manifest, stage specs and the SLURM job index are written through this module
by commands that must answer fast (status, cancel, the dry run). Tensors and checkpoints import it
where they are read or written.
"""
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import warnings
from pathlib import Path


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


# mkstemp makes its files 0600; a finished file gets the mode any new file would (0666 less the umask).
_UMASK = os.umask(0)
os.umask(_UMASK)


def _write_error(path, e: BaseException) -> WriteError:
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0] if str(e) else type(e).__name__
    errno = getattr(e, "errno", None)
    message = f"cannot write {path}: {reason}"
    if not isinstance(e, OSError):   # a library's own words; say what the disk says
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            message += f" ({shutil.disk_usage(probe).free} bytes free on its filesystem)"
        except OSError:
            pass
    return WriteError(errno, message) if errno else WriteError(message)


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
        os.chmod(tmp, 0o666 & ~_UMASK)
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


def remove_temps(folder: Path, pattern: str = ".*.tmp") -> list[Path]:
    """Delete what atomic_write left in `folder` (recursively) when its process was killed mid-write.

    Call it only where no other process can be writing: a stage's own files, before the stage runs.
    """
    removed = []
    for tmp in Path(folder).rglob(pattern):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


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
    from safetensors.torch import save_file   # torch: JSON writers (status, cancel) never load it
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file   # torch: JSON readers (status, cancel) never load it
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for torn or foreign files
        raise CorruptFileError(f"cannot read tensors from {path}: {e}") from None


def load_weights(path: Path, model):
    """Load the weights at `path` into `model` (a torch.nn.Module) and return it."""
    model.load_state_dict(load_tensors(path))
    return model


class CheckpointDir:
    """Resumable training state: DeepSpeed checkpoints under step-N/, with a `latest.json` pointer.

    The pointer is renamed into place only after the step directory is complete, so a crash
    mid-save leaves the previous checkpoint in force. It records the sha256 of every file of the
    step, so a torn or altered checkpoint is refused (CorruptFileError naming the file) before a
    byte of it is unpickled, and the unpickling itself is weights-only (see `safe_torch_load`).
    `keep` files (the best weights so far) are hard-linked into the step directory at save and
    put back at restore, so the best weights always match the restored state. Older step
    directories are removed.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.pointer = self.root / "latest.json"

    def exists(self) -> bool:
        return self.pointer.is_file()

    def save(self, engine, client_state: dict, step: int, keep: dict | None = None) -> None:
        tag = f"step-{step}"
        if self.exists() and self._latest_tag(default=None) == tag:
            return
        step_dir = self.root / tag
        try:   # a torn step-N/ left by a crash mid-save is overwritten file by file (never by rmtree: other ranks)
            engine.save_checkpoint(str(self.root), tag=tag, client_state={"train_state": client_state},
                                   save_latest=False)
            if _rank() != 0:   # every rank writes its shards; rank 0 alone completes the step
                return
            for name, src in (keep or {}).items():
                if Path(src).is_file():
                    _link_or_copy(Path(src), step_dir / name)
            files = {str(p.relative_to(step_dir)): sha256(p) for p in sorted(step_dir.rglob("*")) if p.is_file()}
        except Exception as e:   # torch reports a full disk as e.g. "unexpected pos 4288 vs 4182"
            shutil.rmtree(step_dir, ignore_errors=True)   # never leave a torn step to fill the disk
            raise _write_error(step_dir, e) from e
        write_json(self.pointer, {"tag": tag, "files": files})
        for old in self.root.glob("step-*"):
            if old.name != tag:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, engine, keep: dict | None = None) -> dict:
        """Verify, then load the latest checkpoint into `engine`; its client state is returned.

        Raises CorruptFileError, naming the file, when the checkpoint is torn, altered or unloadable.
        """
        pointer = self._pointer()
        tag, files = pointer.get("tag"), pointer.get("files")
        if not isinstance(tag, str) or not tag.startswith("step-") or "/" in tag:
            raise CorruptFileError(f"checkpoint pointer {self.pointer} is unreadable or names no step: {pointer!r}")
        step_dir = self.root / tag
        if files is None:
            warnings.warn(f"checkpoint {step_dir} predates checksums; loading it unverified")
        else:
            for rel, digest in files.items():
                verify(step_dir / rel, digest)
        use_safe_loader(engine)
        try:
            path, client = engine.load_checkpoint(str(self.root), tag=tag)
        except Exception as e:
            raise CorruptFileError(f"checkpoint {step_dir} could not be loaded: {type(e).__name__}: "
                                   f"{(str(e).splitlines() or [''])[0][:300]}") from e
        if path is None or not isinstance(client, dict) or "train_state" not in client:
            raise CorruptFileError(f"checkpoint {step_dir} could not be loaded")
        for name, dst in (keep or {}).items():
            src = step_dir / name
            if src.is_file():
                atomic_write(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))
        return client["train_state"]

    def discard(self) -> None:
        """Remove every checkpoint (after a corrupt one was found): the next run starts over."""
        shutil.rmtree(self.root, ignore_errors=True)

    def _pointer(self) -> dict:
        try:
            pointer = read_json(self.pointer)
        except (OSError, ValueError) as e:
            raise CorruptFileError(f"checkpoint pointer {self.pointer} is unreadable: {e}") from None
        if not isinstance(pointer, dict):
            raise CorruptFileError(f"checkpoint pointer {self.pointer} is unreadable: {pointer!r}")
        return pointer

    def _latest_tag(self, **default) -> str | None:
        try:
            return self._pointer()["tag"]
        except (CorruptFileError, KeyError):
            if default:
                return default["default"]
            raise


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)   # never write through an existing link to src
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _rank() -> int:
    torch = sys.modules.get("torch")   # a process that never imported torch has no process group
    if torch is None or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0
    return torch.distributed.get_rank()


# ---------------------------------------------------------------- loading checkpoints without pickle's risks

def _deepspeed_safe_globals() -> list:
    """The plain DeepSpeed classes a ZeRO/fp16 checkpoint holds besides tensors and containers."""
    found = []
    for module, names in (("deepspeed.utils.tensor_fragment", ("fragment_address",)),
                          ("deepspeed.runtime.fp16.loss_scaler", ("LossScaler", "DynamicLossScaler")),
                          ("deepspeed.runtime.zero.config", ("ZeroStageEnum",))):
        try:
            mod = __import__(module, fromlist=list(names))
        except Exception:   # noqa: BLE001 - an older or newer DeepSpeed without the module
            continue
        found += [getattr(mod, n) for n in names if hasattr(mod, n)]
    return found


def safe_torch_load(path, map_location=None):
    """torch.load with weights_only=True: tensors, containers, dtypes and DeepSpeed's few plain classes.

    DeepSpeed's TorchCheckpointEngine.load calls torch.load(weights_only=False), which would run
    any code a crafted checkpoint names; `use_safe_loader` puts this function in its place.
    """
    import torch   # torch: JSON writers (status, cancel) import this module without it
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def use_safe_loader(engine) -> None:
    """Make `engine` (a DeepSpeedEngine) read its checkpoint files through `safe_torch_load`."""
    checkpoint_engine = getattr(engine, "checkpoint_engine", None)
    if checkpoint_engine is not None:
        checkpoint_engine.load = safe_torch_load


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)
