"""CelebA from a local directory or zip (collapse/data/celeba.py) and its launch-time checks.

The images are real JPEGs the test writes at CelebA's aligned size (178 wide x 218 high): MNIST
digits, coloured and scaled up, so no two are alike.
"""
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from collapse import launch as launch_module
from collapse.config import ConfigError
from collapse.data import celeba
from collapse.data.mnist import load_mnist

W, H = 178, 218


def write_images(folder, n):
    folder.mkdir(parents=True)
    digits = load_mnist("test")[:n].numpy()
    for i, d in enumerate(digits):
        rgb = np.stack([d, 255 - d, np.full_like(d, 20 * (i % 12))], -1)
        Image.fromarray(rgb).resize((W, H), Image.BILINEAR).save(folder / f"{i + 1:06d}.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    base = tmp_path_factory.mktemp("celeba")
    write_images(base / "dir" / "img_align_celeba", 12)
    with zipfile.ZipFile(base / "img_align_celeba.zip", "w") as z:
        for p in sorted((base / "dir" / "img_align_celeba").iterdir()):
            z.write(p, f"img_align_celeba/{p.name}")
    return {"dir": base / "dir", "zip": base / "img_align_celeba.zip"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAPSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def data_cfg(root, train=8, test=4, seed=0):
    return SimpleNamespace(dataset="celeba", root=str(root), train_size=train, test_size=test, subset_seed=seed)


def test_a_directory_and_a_zip_give_the_same_seeded_disjoint_subsets(sources, cache):
    from_dir = celeba.load_split(data_cfg(sources["dir"]))
    assert from_dir["train"].shape == (8, 3, 64, 64) and from_dir["test"].shape == (4, 3, 64, 64)
    assert from_dir["train"].dtype == torch.uint8
    from_zip = celeba.load_split(data_cfg(sources["zip"]))
    assert all(torch.equal(from_dir[k], from_zip[k]) for k in ("train", "test"))
    # disjoint: no hold-out image is a train image (all 12 differ)
    every = torch.cat([from_dir["train"], from_dir["test"]]).reshape(12, -1)
    assert len(torch.unique(every, dim=0)) == 12
    train_index, test_index = celeba.split_indices(12, 8, 4, seed=0)
    assert not set(train_index) & set(test_index)
    other = celeba.load_split(data_cfg(sources["dir"], seed=1))
    assert not torch.equal(other["train"], from_dir["train"])
    # the decoded subsets are cached, one file per source and subset, and read back as they were
    cached = sorted(cache.glob("celeba-*.safetensors"))
    assert len(cached) == 3
    again = celeba.load_split(data_cfg(sources["dir"]))
    assert torch.equal(again["test"], from_dir["test"]) and sorted(cache.glob("celeba-*.safetensors")) == cached


def test_the_crop_is_the_centred_square_resized_to_64():
    # CelebA's 178 x 218: the centred 178 x 178 square is rows 20-197; paint the 20 rows above and below red
    image = np.zeros((H, W, 3), np.uint8)
    image[:, :, 1] = 200
    image[:20, :, 0] = image[198:, :, 0] = 255
    out = celeba.crop_resize(Image.fromarray(image))
    assert out.shape == (3, 64, 64) and out.dtype == np.uint8
    assert out[0].max() == 0 and (out[1] == 200).all()


def ddpm_grid(tmp_path, monkeypatch):
    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "celeba_one.yaml").write_text("experiment: ddpm_celeba\nrows:\n  - {distill.lam: 0.0}\n")
    monkeypatch.setenv("COLLAPSE_GRID_DIR", str(grids))


def snapshot(top):
    return {str(p.relative_to(top)): p.read_bytes() if p.is_file() else None for p in sorted(top.rglob("*"))}


@pytest.mark.parametrize("case", ["missing", "too-small", "unreadable", "fid-samples", "no-inception", "mnist-size"])
def test_bad_celeba_input_is_one_line_before_any_job(case, sources, cache, tmp_path, monkeypatch, capsys):
    ddpm_grid(tmp_path, monkeypatch)
    root = tmp_path / "results"
    root.mkdir()
    (root / "keep.txt").write_text("a results root with history\n")
    broken = tmp_path / "broken"
    write_images(broken, 3)
    (broken / "000004.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    args = {"missing": [f"data.root={tmp_path / 'nowhere'}"],
            "too-small": [f"data.root={sources['dir']}", "data.train_size=10", "data.test_size=4"],
            "unreadable": [f"data.root={broken}", "data.train_size=2", "data.test_size=2", "eval.fid_samples=2"],
            "fid-samples": [f"data.root={sources['dir']}", "eval.fid_samples=5"],
            "no-inception": [f"data.root={sources['dir']}", f"eval.inception={tmp_path / 'no.pt'}"],
            "mnist-size": [f"data.root={sources['dir']}", "model.image_size=32"]}[case]
    expect = {"missing": ["'data.root'", "nowhere", "nothing at"],
              "too-small": ["'data.root'", "10 + 4 = 14 images", "found 12"],
              "unreadable": ["'data.root'", "000004.jpg is not one"],
              "fid-samples": ["'eval.fid_samples'", "5", "at most the 4 real hold-out images"],
              "no-inception": ["'eval.inception'", str(tmp_path / "no.pt")],
              "mnist-size": ["'model.image_size'", "32", "64 with model.channels 3"]}[case]
    from collapse.executors import local
    monkeypatch.setattr(local, "run", lambda *a, **k: pytest.fail("a bad input reached the executor"))
    before = snapshot(root)
    code = launch_module.launch(["grid=celeba_one", "cluster=local", f"results_root={root}", "data.train_size=8",
                                 "data.test_size=4", "eval.fid_samples=4", *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and err.startswith("error: "), (out, err)
    for e in expect:
        assert e in err, (e, err)
    assert snapshot(root) == before


def test_celeba_config_is_checked_at_load():
    from collapse.experiment import from_dict
    cfg = from_dict({"task": "ddpm", "data": {"dataset": "celeba", "root": "/x/celeba.zip", "subset_seed": 3}})
    assert cfg.data.subset_seed == 3 and cfg.data.root == "/x/celeba.zip"   # a zip is checked at launch
    with pytest.raises(ConfigError, match="data.dataset"):
        from_dict({"task": "ddpm", "data": {"dataset": "cifar"}})
    with pytest.raises(ConfigError, match="data.subset_seed"):
        from_dict({"task": "ddpm", "data": {"dataset": "celeba", "subset_seed": -1}})


def test_the_decoded_cache_follows_content_not_the_path(sources, cache, tmp_path):
    """A moved copy reuses the decoded subsets; a copy with other bytes (same names and sizes) does not."""
    import shutil
    from collapse import fingerprint
    first = tmp_path / "a"
    shutil.copytree(sources["dir"], first)
    celeba.load_split(data_cfg(first))
    cached = sorted(cache.glob("celeba-*.safetensors"))
    moved = tmp_path / "b"
    first.rename(moved)
    fingerprint.cache_clear()
    celeba.load_split(data_cfg(moved))
    assert sorted(cache.glob("celeba-*.safetensors")) == cached
    image = moved / "img_align_celeba" / "000001.jpg"
    data = bytearray(image.read_bytes())
    data[15] ^= 1    # the JFIF header's X density: other bytes, same size, same pixels
    image.write_bytes(bytes(data))
    fingerprint.cache_clear()
    celeba.load_split(data_cfg(moved))
    assert len(list(cache.glob("celeba-*.safetensors"))) == len(cached) + 1
