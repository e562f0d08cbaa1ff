"""(article, summary) text pairs: CNN/DailyMail (or any data set of the same shape) from a directory,
or the offline stand-in ACLSum that ships in a pip package.

CNN/DailyMail from `data.root`: a `datasets` dataset saved with `save_to_disk` (a DatasetDict with
train/validation/test, or one split per sub-folder), or the release's files: `<split>*.parquet`,
`<split>*.jsonl` / `<split>*.json` anywhere under the root (e.g. 3.0.0/train-00000-of-00003.parquet).
A root holding the hub repository's version folders (1.0.0/, 2.0.0/, 3.0.0/) is read from the one
`data.version` names (version_root), never from all of them at once.
Columns `article` and `highlights` (data.source_field / data.target_field name others).

ACLSum (PyPI `aclsum`, MIT; Takeshita et al. 2024): 250 ACL papers (abstract, introduction and
conclusion, pre-tokenised) each with three one-sentence human summaries of an aspect: challenge,
approach, outcome. A pair is ("<aspect> | <paper text>", the aspect's summary): 300 train + 150
validation pairs for training, 300 test pairs held out.
"""
import json
import re
from importlib import resources
from pathlib import Path

ACLSUM_ASPECTS = ("challenge", "approach", "outcome")
ACLSUM_SPLITS = {"train": ("train", "val"), "test": ("test",)}
FILE_KINDS = ("parquet", "jsonl", "json")
VERSION = re.compile(r"\d+\.\d+\.\d+")   # a version folder of the hub repository: 1.0.0, 2.0.0, 3.0.0


class DataError(ValueError):
    """The data cannot be read or is not usable; the message names the file or column."""


def aclsum_dir() -> Path:
    try:
        return Path(str(resources.files("aclsum") / "dataset"))
    except ModuleNotFoundError:
        raise DataError("the ACLSum stand-in needs the pip package aclsum (make setup installs it: "
                        "pip install aclsum==0.1.2)") from None


def load_aclsum(split: str) -> tuple[list[str], list[str]]:
    articles, summaries = [], []
    for name in ACLSUM_SPLITS[split]:
        with open(aclsum_dir() / f"{name}.jsonl", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                paper = json.loads(line)
                text = " ".join(s for part in ("abstract", "introduction", "conclusion")
                                for s in paper["sentences"][part])
                for aspect in ACLSUM_ASPECTS:
                    articles.append(f"{aspect} | {text}")
                    summaries.append(paper["summary"][aspect])
    return articles, summaries


def documents(dataset: str, split: str, root: str | None, source_field: str = "article",
              split_names: dict | None = None) -> list[str]:
    """The distinct source documents of a split (a pretraining corpus): ACLSum's paper texts (each one
    once, not once per aspect), else the split's articles with repeats dropped."""
    if dataset == "aclsum" and root is None:
        return list(dict.fromkeys(article.split(" | ", 1)[1] for article in load_aclsum(split)[0]))
    articles, _ = load_pairs(dataset, split, root, source_field, source_field, split_names)
    return list(dict.fromkeys(articles))


def version_root(root: str, version: str | None) -> str:
    """The folder of `version` when `root` holds version folders (1.0.0/ 2.0.0/ 3.0.0/), else `root`.
    Raises DataError naming the versions there when `version` is not one of them (null: when there
    are several), or when `root` is itself a version folder of another version."""
    here = sorted((p.name for p in Path(root).iterdir() if p.is_dir() and VERSION.fullmatch(p.name)),
                  key=lambda v: tuple(map(int, v.split("."))))
    if not here:
        if version is not None and VERSION.fullmatch(Path(root).name) and Path(root).name != version:
            raise DataError(f"{root} is the folder of version {Path(root).name}, not {version}")
        return root
    if version in here or (version is None and len(here) == 1):
        return str(Path(root, version or here[0]))
    raise DataError(f"{root} holds versions {', '.join(here)}" + ("" if version is None else f", not {version}"))


def split_files(root: Path, split: str) -> list[Path]:
    """The release's files of `split` under `root`: parquet first, else JSON lines, else JSON."""
    for kind in FILE_KINDS:
        files = sorted(p for p in root.rglob(f"{split}*.{kind}") if p.is_file())
        if files:
            return files
    return []


def load_split(root: str | Path, split: str):
    """A `datasets.Dataset` of `split` from a save_to_disk folder or the release's files under `root`."""
    import datasets   # heavy: only a data set read from disk needs it
    root = Path(root)
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        loaded = datasets.load_from_disk(str(root))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"dataset {root} has splits {sorted(loaded)}, not {split!r}")
            return loaded[split]
        return loaded
    if (root / split / "state.json").is_file():
        return datasets.load_from_disk(str(root / split))
    files = split_files(root, split)
    if not files:
        raise DataError(f"no split {split!r} under {root}: expected a save_to_disk folder or "
                        f"{split}*.parquet / {split}*.jsonl / {split}*.json files")
    kind = "parquet" if files[0].suffix == ".parquet" else "json"
    return datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")


def load_pairs(dataset: str, split: str, root: str | None, source_field: str = "article",
               target_field: str = "highlights", split_names: dict | None = None) -> tuple[list[str], list[str]]:
    """(articles, summaries) of split 'train' or 'test' (`split_names` maps them to the data set's names)."""
    if dataset == "aclsum" and root is None:
        return load_aclsum(split)
    if root is None:
        raise DataError(f"data set {dataset!r} is read from data.root, which is not set")
    name = (split_names or {}).get(split, split)
    table = load_split(root, name)
    for column in (source_field, target_field):
        if column not in table.column_names:
            raise DataError(f"split {name!r} under {root} has no column {column!r} (columns: {table.column_names})")
    return list(table[source_field]), list(table[target_field])
