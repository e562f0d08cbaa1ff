"""CelebA's aligned images as uint8 tensors [N, 3, 64, 64], from a local directory or zip.

The source (`data.root`) is either a directory holding the aligned JPEGs (img_align_celeba/*.jpg,
or the *.jpg in the directory itself), or a zip of them (any folder inside; `img_align_celeba.zip`
as distributed). Nothing is downloaded.

The paper's split: a 15,000-image train subset and a 5,000-image hold-out, disjoint, drawn from
the images sorted by name with numpy's default_rng(data.subset_seed): one permutation, the first
train_size images train, the next test_size the hold-out.

Each image (178 wide x 218 high) is centre-cropped to the largest centred square (178x178, rows
20-197) and resized to 64x64 with PIL's bicubic filter (antialiased when shrinking).

Decoding 20,000 JPEGs takes ~30 s on one core, so the decoded subset is cached: one safetensors
file per (source, its file list and sizes, seed, subset sizes, image size), written atomically
under the cache folder (collapse/cache.py: $COLLAPSE_CACHE, else ~/.cache/collapse), never under results_root. The
launch-time check (`check`) builds it, so an unreadable image fails there and stages only read it.
"""
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from collapse import storage
from collapse.config import bad
from collapse.fingerprint import FingerprintError, fingerprint
from collapse.cache import cache_root

KEY = "data.root"
PAPER_TRAIN, PAPER_TEST = 15_000, 5_000
SIZE = 64
SUFFIXES = (".jpg", ".jpeg", ".png")
CACHE_VERSION = 1   # bump when cropping or resizing changes


@dataclass(frozen=True)
class Source:
    """The image files of data.root: a directory or a zip, names sorted."""
    root: Path
    names: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def is_zip(self) -> bool:
        return self.root.is_file()

    def read(self, name: str, archive: zipfile.ZipFile | None) -> bytes:
        return archive.read(name) if archive is not None else (self.root / name).read_bytes()


def find_source(root) -> Source:
    """The images at `root`, or a one-line ConfigError saying what was looked for where."""
    if root is None:
        raise bad(KEY, None, "a directory or zip of CelebA's aligned images (img_align_celeba/*.jpg): "
                             "no CelebA ships with a package, so data.root must name one")
    where = Path(root).expanduser()
    if where.is_file():
        try:
            with zipfile.ZipFile(where) as archive:
                infos = [i for i in archive.infolist() if not i.is_dir() and _is_image(i.filename)]
        except (zipfile.BadZipFile, OSError) as e:
            raise bad(KEY, root, f"a directory or a readable zip of images ({where} is neither: {e})") from None
        infos.sort(key=lambda i: i.filename)
        return Source(where, tuple(i.filename for i in infos), tuple(i.file_size for i in infos))
    if not where.is_dir():
        raise bad(KEY, root, f"an existing directory or zip of CelebA's aligned images (nothing at {where.resolve()})")
    folder = where / "img_align_celeba" if (where / "img_align_celeba").is_dir() else where
    files = sorted(p for p in folder.iterdir() if p.is_file() and _is_image(p.name))
    return Source(where, tuple(str(p.relative_to(where)) for p in files), tuple(p.stat().st_size for p in files))


def _is_image(name: str) -> bool:
    return name.lower().endswith(SUFFIXES) and not Path(name).name.startswith(".")


def split_indices(count: int, train_size: int, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train and hold-out indices into `count` images sorted by name."""
    order = np.random.default_rng(seed).permutation(count)
    return order[:train_size], order[train_size:train_size + test_size]


def crop_resize(image: Image.Image, size: int = SIZE) -> np.ndarray:
    """The largest centred square, resized to size x size: uint8 [3, size, size]."""
    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.BICUBIC), dtype=np.uint8).transpose(2, 0, 1)


def sizes(data_cfg) -> tuple[int, int]:
    """(train, hold-out) sizes: data.train_size / data.test_size, else the paper's 15,000 / 5,000."""
    return data_cfg.train_size or PAPER_TRAIN, data_cfg.test_size or PAPER_TEST


def cache_path(source: Source, train_size: int, test_size: int, seed: int) -> Path:
    # by content, as stage keys are (collapse/fingerprint.py): a moved copy reuses it, other bytes do not
    try:
        content = fingerprint(source.root)
    except FingerprintError as e:
        raise bad(KEY, str(source.root), f"a readable file or directory ({e})") from None
    blob = json.dumps({"version": CACHE_VERSION, "content": content, "names": source.names,
                       "sizes": source.sizes, "train": train_size, "test": test_size, "seed": seed, "size": SIZE})
    return cache_root() / f"celeba-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.safetensors"


def load_split(data_cfg) -> dict[str, torch.Tensor]:
    """{"train": uint8 [n, 3, 64, 64], "test": ...}: from the cache, else decoded and cached."""
    source = find_source(data_cfg.root)
    train_size, test_size = sizes(data_cfg)
    wanted = train_size + test_size
    if len(source.names) < wanted:
        where = f"in {source.root}" + ("" if source.is_zip else " (img_align_celeba/ or the directory itself)")
        raise bad(KEY, data_cfg.root, f"at least data.train_size + data.test_size = {train_size} + {test_size} = "
                                      f"{wanted} images (*.jpg, *.png); found {len(source.names)} {where}")
    path = cache_path(source, train_size, test_size, data_cfg.subset_seed)
    if path.is_file():
        try:
            return {k: v for k, v in storage.load_tensors(path).items() if k in ("train", "test")}
        except storage.CorruptFileError:
            pass   # torn or foreign: decode again and replace it
    train_index, test_index = split_indices(len(source.names), train_size, test_size, data_cfg.subset_seed)
    split = {"train": decode(source, train_index), "test": decode(source, test_index)}
    try:
        storage.save_tensors(path, {**split, "train_index": torch.from_numpy(train_index),
                                    "test_index": torch.from_numpy(test_index)},
                             {"root": str(source.root.resolve()), "seed": data_cfg.subset_seed, "images": len(source.names),
                              "crop": "centre square, PIL bicubic resize to 64x64"})
    except OSError:
        pass   # a read-only cache only costs the decode each time
    return split


def decode(source: Source, index: np.ndarray) -> torch.Tensor:
    out = np.empty((len(index), 3, SIZE, SIZE), np.uint8)
    archive = zipfile.ZipFile(source.root) if source.is_zip else None
    try:
        for row, i in enumerate(index):
            name = source.names[i]
            try:
                with Image.open(io.BytesIO(source.read(name, archive))) as image:
                    out[row] = crop_resize(image)
            except (UnidentifiedImageError, OSError, SyntaxError, zipfile.BadZipFile) as e:
                raise bad(KEY, str(source.root), f"readable images; {name} is not one ({type(e).__name__}: "
                                                 f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    finally:
        if archive is not None:
            archive.close()
    return torch.from_numpy(out)
