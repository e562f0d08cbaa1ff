"""CNN/DailyMail as the hub repository lays it out (abisee/cnn_dailymail: 1.0.0/ 2.0.0/ 3.0.0/, each with
train/validation/test parquet shards): data.version (default 3.0.0) picks one folder, and a root whose
versions do not include it is refused with one line naming them, before anything runs."""
import subprocess
import sys
from pathlib import Path

import pytest

from collapse import config, experiment
from collapse.config import ConfigError
from collapse.tasks import t5

REPO = Path(__file__).resolve().parent.parent
SIZES = {"train": 12, "validation": 4, "test": 4}


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("COLLAPSE_CACHE", str(tmp_path_factory.getbasetemp() / "collapse-cache"))


def hub_layout(root: Path, versions=("1.0.0", "2.0.0", "3.0.0")) -> Path:
    """The hub repository's files: README.md and, per version, <split>-0000i-of-0000n.parquet shards
    (train in two shards), rows whose article says which version holds them."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    root.mkdir(parents=True)
    (root / "README.md").write_text("---\nconfigs: ...\n---\n# CNN/DailyMail\n")
    for version in versions:
        (root / version).mkdir()
        for split, n in SIZES.items():
            shards = 2 if split == "train" else 1
            for s in range(shards):
                rows = range(s * n // shards, (s + 1) * n // shards)
                table = pa.table({"article": [f"Version {version} {split} article {i}: the council met on a "
                                              f"Tuesday and approved a budget for schools." for i in rows],
                                  "highlights": [f"Council approves budget {i}." for i in rows],
                                  "id": [f"{version}-{split}-{i}" for i in rows]})
                pq.write_table(table, root / version / f"{split}-{s:05d}-of-{shards:05d}.parquet")
    return root


def tiny(root, **data):
    return experiment.from_dict(config.merge({
        "task": "t5",
        "data": {"dataset": "cnn_dailymail", "root": str(root), "max_source_tokens": 48, "max_target_tokens": 16,
                 **data},
        "model": {"vocab": 300, "d_model": 16, "layers": 1, "heads": 2, "d_ff": 32, "dropout": 0.0}}, {}))


def versions_read(cfg, split):
    return {a.split()[1] for a in t5.raw_pairs(cfg, split)[0]}


def test_the_default_reads_only_3_0_0_of_the_hub_layout(tmp_path):
    cfg = tiny(hub_layout(tmp_path / "cnn_dailymail"))
    t5.check_data(cfg)
    articles, _ = t5.raw_pairs(cfg, "train")
    assert len(articles) == 12 and versions_read(cfg, "train") == versions_read(cfg, "test") == {"3.0.0"}
    assert len(t5.real_data(cfg, "test")) == 4


def test_data_version_picks_another_folder(tmp_path):
    cfg = tiny(hub_layout(tmp_path / "cnn_dailymail"), version="2.0.0")
    t5.check_data(cfg)
    assert versions_read(cfg, "train") == {"2.0.0"} and len(t5.raw_pairs(cfg, "train")[0]) == 12


@pytest.mark.parametrize("versions, version, named", [
    (("1.0.0", "2.0.0", "3.0.0"), None, "holds versions 1.0.0, 2.0.0, 3.0.0)"),
    (("1.0.0", "2.0.0"), "3.0.0", "holds versions 1.0.0, 2.0.0, not 3.0.0)"),
])
def test_a_root_without_the_version_is_one_line_naming_the_versions(tmp_path, versions, version, named):
    root = hub_layout(tmp_path / "cnn_dailymail", versions)
    with pytest.raises(ConfigError) as e:
        t5.check_data(tiny(root, version=version))
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"key 'data.version': value {version!r} is not allowed")
    assert message.endswith(f"{root} {named}")


def test_a_version_folder_itself_is_read_and_must_be_that_version(tmp_path):
    root = hub_layout(tmp_path / "cnn_dailymail")
    cfg = tiny(root / "3.0.0")
    t5.check_data(cfg)
    assert versions_read(cfg, "train") == {"3.0.0"}
    with pytest.raises(ConfigError, match=r"key 'data.version'.*2\.0\.0 is the folder of version 2\.0\.0, not 3\.0\.0"):
        t5.check_data(tiny(root / "2.0.0"))
    with pytest.raises(ConfigError, match=r"key 'data.version': value '3\.0' is not allowed; expected a version "):
        tiny(root, version="3.0")


def test_the_launch_refuses_a_multi_version_root_in_one_line(tmp_path):
    root = hub_layout(tmp_path / "cnn_dailymail", ("1.0.0", "2.0.0"))
    out = subprocess.run([sys.executable, "sweeps/launch.py", "grid=t5_lambda", "profile=smoke",
                          "data.dataset=cnn_dailymail", f"data.root={root}", f"results_root={tmp_path / 'r'}",
                          "cluster=local", "dry_run=true"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (f"error: key 'data.version': value '3.0.0' is not allowed; expected a version folder "
                          f"under data.root ({root} holds versions 1.0.0, 2.0.0, not 3.0.0)\n")
    assert not (tmp_path / "r").exists()


def test_data_version_enters_the_keys_only_when_not_the_default(tmp_path):
    from collapse.grid import load_sweep
    from collapse.plan import build, key_material
    root = hub_layout(tmp_path / "cnn_dailymail")
    base = ["grid=t5_lambda", "profile=smoke", "data.dataset=cnn_dailymail", f"data.root={root}", "cluster=local"]
    plans = {v: build(load_sweep(base + ([f"data.version={v}"] if v else []))) for v in (None, "3.0.0", "2.0.0")}
    keys = {v: {s.name: s.key for s in p.stages.values()} for v, p in plans.items()}
    assert keys[None] == keys["3.0.0"]
    stage = next(s for s in plans[None].stages.values() if s.kind == "pretrain")
    changed = {n for n in keys[None] if keys[None][n] != keys["2.0.0"][n]}
    assert changed == set(keys[None]) and stage.name in changed      # every stage reads the other version
    # a record written before data.version existed has the default's key material
    old = {**stage.config, "data": {k: v for k, v in stage.config["data"].items() if k != "version"}}
    assert key_material("pretrain", old) == key_material("pretrain", stage.config)
