"""Content fingerprints of data sets and weights: what a stage key holds in place of a path.

A stage reads its data and weights from paths (data.root, model.path, eval.inception, ...). Its key
holds a fingerprint of what is there rather than the path, so moving a copy elsewhere reruns
nothing, and pointing at a copy with other content reruns what reads it (collapse/plan.py).

- a file: the sha256 of its bytes when it is at most 64 MiB; a larger one is sampled: its size and
  16 chunks of 64 KiB spread evenly over it, the first and the last among them.
- a directory: the sha256 of the sorted (relative name, size) of every file under it, and of the
  first and last 64 KiB of up to 32 of them (those whose names hash lowest: a fixed choice for a
  fixed set of names). Every name and size counts; bytes outside the sample do not.
- a directory holding a file named FINGERPRINT: its one line, as the user states it. For huge
  data sets on slow filesystems, where even listing every file takes minutes: write a version,
  a date or a checksum there, and change it when the content changes.

Fingerprints are computed once per path and process, at plan time (a launch or a dry run); the
stages never compute them. Nothing here imports torch.
"""
import hashlib
import os
from pathlib import Path

PREFIX = "sha256:"
USER_FILE = "FINGERPRINT"
CHUNK = 64 * 1024
WHOLE_FILE_LIMIT = 64 * 1024 * 1024
FILE_SAMPLES = 16        # chunks read from a file over WHOLE_FILE_LIMIT
SAMPLED_FILES = 32       # files of a directory whose bytes are read
MAX_USER_LINE = 200

_cache: dict = {}


class FingerprintError(ValueError):
    """The path cannot be fingerprinted: missing, unreadable, or a bad FINGERPRINT file."""


def fingerprint(path) -> str:
    """The content fingerprint of the file or directory at `path` ("sha256:<hex>", or a directory's
    FINGERPRINT line), computed once per resolved path in this process."""
    where = Path(path).expanduser().resolve()
    if where not in _cache:
        _cache[where] = _compute(where)
    return _cache[where]


def cache_clear() -> None:
    """Forget the fingerprints computed so far (for a process that changes files it has fingerprinted)."""
    _cache.clear()


def _compute(where: Path) -> str:
    try:
        if where.is_file():
            return PREFIX + file_digest(where)
        if where.is_dir():
            stated = where / USER_FILE
            return user_fingerprint(stated) if stated.is_file() else PREFIX + directory_digest(where)
    except OSError as e:
        raise FingerprintError(f"cannot read {where}: {e}") from None
    raise FingerprintError(f"nothing at {where}")


def user_fingerprint(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines()
    line = lines[0].strip() if len(lines) == 1 else ""
    if not line or not line.isprintable() or len(line) > MAX_USER_LINE:
        raise FingerprintError(f"{path} must hold one non-empty line of at most {MAX_USER_LINE} printable "
                               f"characters (it has {len(lines)} lines)")
    return line


def file_digest(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_LIMIT:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(f"sampled {size}\n".encode())
            for i in range(FILE_SAMPLES):   # the first chunk starts at 0, the last ends at the end
                f.seek(i * (size - CHUNK) // (FILE_SAMPLES - 1))
                digest.update(f.read(CHUNK))
    return digest.hexdigest()


def directory_digest(root: Path) -> str:
    files = sorted(_files(root))            # (relative posix name, size)
    digest = hashlib.sha256()
    for name, size in files:
        digest.update(f"{name}\0{size}\n".encode())
    for name, size in sorted(files, key=lambda f: hashlib.sha256(f[0].encode()).digest())[:SAMPLED_FILES]:
        digest.update(f"{name}\0".encode())
        digest.update(_ends(root / name, size))
    return digest.hexdigest()


def _files(root: Path, folder: Path | None = None, seen: set | None = None):
    """(name relative to root, size) of every file under root, following links to directories once."""
    folder, seen = folder or root, seen if seen is not None else set()
    st = folder.stat()
    if (st.st_dev, st.st_ino) in seen:   # a link back up the tree
        return
    seen.add((st.st_dev, st.st_ino))
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                yield from _files(root, Path(entry.path), seen)
            elif entry.is_file():
                yield Path(entry.path).relative_to(root).as_posix(), entry.stat().st_size


def _ends(path: Path, size: int) -> bytes:
    """The first and last CHUNK bytes of a file (the whole file when it is shorter than both)."""
    with open(path, "rb") as f:
        if size <= 2 * CHUNK:
            return f.read()
        head = f.read(CHUNK)
        f.seek(size - CHUNK)
        return head + f.read(CHUNK)
