"""Gaussian toy model of iterative retraining ("model collapse"), vectorised over seeds.

The real distribution is N(mu0, sigma0^2 I_d) with mu0 = 0 (every quantity reported is
translation invariant, so the choice of mu0 does not matter). One *chain* is:

* real data: ``n`` samples from the real distribution, drawn once and kept;
* generation ``t`` fits a Gaussian (mean + covariance) to its training set ``D_t``;
* ``D_0`` is the real data; ``D_{t+1}`` is built from the fitted models of generations
  ``<= t`` according to ``policy``:

  ``replace``               n samples of model t                      (Shumailov et al. 2023)
  ``mix``                   real n  +  floor(lam*n) samples of model t (Bertrand et al. 2024)
  ``accumulate``            real n  +  n samples of every model 0..t   (Gerstgrasser et al. 2024)
  ``accumulate_subsample``  the accumulate pool, subsampled uniformly without replacement
                            to ``min(subsample_size, pool size)`` points, fresh each generation;
                            the full pool keeps growing (Kazdan et al. 2024, "Collapse or
                            Thrive?", arXiv:2410.16713)

``cfg.seeds`` independent chains are simulated at once (arrays ``[seeds, N, d]``).
Indexing: generation 0 is the model fitted on the real data, so ``sigma2[:, t]`` is the
model after ``t + 1`` fits (the real distribution itself is not a column).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from collapse.config import POLICIES   # one list of data policies: GenerationsConfig's

ESTIMATORS = ("mle", "unbiased")
COVARIANCES = ("full", "isotropic")


def _bad(field: str, value, allowed: str) -> ValueError:
    return ValueError(f"GaussianConfig.{field}={value!r} is invalid; allowed: {allowed}")


def _is_int(x) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


@dataclass(frozen=True)
class GaussianConfig:
    """Configuration of one batch of chains; validated at construction."""

    dim: int = 1  # d
    n: int = 100  # number of real samples
    generations: int = 10  # G >= 1: retrained generations after generation 0
    policy: str = "replace"  # replace | mix | accumulate | accumulate_subsample
    mix_ratio: float = 0.5  # lam: `mix` adds floor(lam * n) generated samples to the n real ones
    subsample_size: int | None = None  # accumulate_subsample training-set size (None -> n)
    estimator: str = "mle"  # mle (divide by N) | unbiased (divide by N - 1)
    covariance: str = "isotropic"  # isotropic (sigma^2 I) | full
    sigma0: float = 1.0  # real standard deviation per dimension
    seeds: int = 1000  # independent chains simulated at once
    seed: int = 0  # master seed of the numpy Generator(PCG64)

    def __post_init__(self) -> None:
        for field, lo in (("dim", 1), ("n", 2), ("generations", 1), ("seeds", 1), ("seed", 0)):
            value = getattr(self, field)
            if not _is_int(value) or value < lo:
                raise _bad(field, value, f"an integer >= {lo}")
        if self.policy not in POLICIES:
            raise _bad("policy", self.policy, ", ".join(POLICIES))
        if self.estimator not in ESTIMATORS:
            raise _bad("estimator", self.estimator, ", ".join(ESTIMATORS))
        if self.covariance not in COVARIANCES:
            raise _bad("covariance", self.covariance, ", ".join(COVARIANCES))
        lam = self.mix_ratio
        if not isinstance(lam, Real) or isinstance(lam, bool) or not 0.0 <= lam <= 1.0:
            raise _bad("mix_ratio", lam, "a number in [0, 1]")
        k = self.subsample_size
        if k is not None and (not _is_int(k) or k < 2):
            raise _bad("subsample_size", k, "None or an integer >= 2")
        s0 = self.sigma0
        if not isinstance(s0, Real) or isinstance(s0, bool) or not (0.0 < s0 < math.inf):
            raise _bad("sigma0", s0, "a finite number > 0")

    @property
    def n_generated_mix(self) -> int:
        """m = floor(lam * n), tolerant of float rounding (0.29 * 100 -> 29, not 28)."""
        return int(math.floor(self.mix_ratio * self.n + 1e-9))

    @property
    def subsample(self) -> int:
        return self.n if self.subsample_size is None else self.subsample_size


def train_sizes(cfg: GaussianConfig) -> np.ndarray:
    """Training-set size N_t of generation t = 0..G (int64, shape [G+1])."""
    t = np.arange(cfg.generations + 1)
    if cfg.policy == "replace":
        return np.full(t.shape, cfg.n, dtype=np.int64)
    if cfg.policy == "mix":
        return np.where(t == 0, cfg.n, cfg.n + cfg.n_generated_mix).astype(np.int64)
    pool = cfg.n * (t + 1)
    if cfg.policy == "accumulate":
        return pool.astype(np.int64)
    return np.minimum(pool, cfg.subsample).astype(np.int64)


def _divisor(cfg: GaussianConfig, N: int) -> int:
    return N if cfg.estimator == "mle" else N - 1


# A training set is summarised per seed by (N, mean [S, d], scatter): the sum of squared
# deviations about the mean, as a [S] total (isotropic) or a [S, d, d] matrix (full).


def _moments(x: np.ndarray, cfg: GaussianConfig):
    """(mean, scatter) of each seed's sample x [S, N, d]."""
    mean = x.mean(axis=1)
    dev = x - mean[:, None, :]
    if cfg.covariance == "isotropic":
        return mean, np.einsum("snd,snd->s", dev, dev)
    return mean, dev.transpose(0, 2, 1) @ dev


def _pool(a, b, cfg: GaussianConfig):
    """Exact moments of the union of two samples a = (N, mean, scatter) and b (Chan et al.)."""
    (na, ma, sa), (nb, mb, sb) = a, b
    delta = mb - ma
    w = na * nb / (na + nb)
    if cfg.covariance == "isotropic":
        between = w * np.einsum("sd,sd->s", delta, delta)
    else:
        between = w * delta[:, :, None] * delta[:, None, :]
    return na + nb, ma + delta * (nb / (na + nb)), sa + sb + between


def _fit(N: int, scatter: np.ndarray, cfg: GaussianConfig):
    """Model covariance (variance [S] or matrix [S, d, d]) and sigma2 = trace(cov)/d [S]."""
    c = _divisor(cfg, N)
    if cfg.covariance == "isotropic":
        sigma2 = scatter / (c * cfg.dim)
        return sigma2, sigma2
    cov = scatter / c
    return cov, np.trace(cov, axis1=1, axis2=2) / cfg.dim


def _sample(rng: np.random.Generator, mean, cov, count: int, cfg: GaussianConfig) -> np.ndarray:
    """Draw `count` samples per seed from the fitted models -> [S, count, d]."""
    z = rng.standard_normal((mean.shape[0], count, cfg.dim))
    if cfg.covariance == "isotropic":
        return mean[:, None, :] + np.sqrt(cov)[:, None, None] * z
    w, v = np.linalg.eigh(cov)  # robust to rank-deficient fits (N <= d)
    root = v * np.sqrt(np.clip(w, 0.0, None))[:, None, :]  # root @ root.T == cov
    return mean[:, None, :] + z @ root.transpose(0, 2, 1)


def simulate(cfg: GaussianConfig) -> dict[str, np.ndarray]:
    """Run cfg.seeds independent chains of G+1 generations.

    Returns
      ``sigma2``     [seeds, G+1]  trace(Sigma_t)/d of each generation's fitted model
      ``mean_err``   [seeds, G+1]  ||mu_t - mu0||^2
      ``train_size`` [G+1]         training-set size of each generation
    Deterministic given cfg (fresh ``Generator(PCG64(cfg.seed))`` per call). Growing
    training sets (mix, accumulate) are tracked by exact pooled moments, so no pool is
    stored except for accumulate_subsample, which keeps it as [seeds, n(G+1), d].
    """
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    S, n, d, G = cfg.seeds, cfg.n, cfg.dim, cfg.generations
    sizes = train_sizes(cfg)
    sigma2 = np.empty((S, G + 1))
    mean_err = np.empty((S, G + 1))

    real = cfg.sigma0 * rng.standard_normal((S, n, d))  # mu0 = 0
    real_set = (n, *_moments(real, cfg))
    if cfg.policy == "accumulate_subsample":
        pool = np.empty((S, n * (G + 1), d))
        pool[:, :n] = real

    train = pool_set = real_set  # training set of generation t; whole pool (accumulate*)
    for t in range(G + 1):
        N, mean, scatter = train
        assert N == sizes[t]
        cov, sigma2[:, t] = _fit(N, scatter, cfg)
        mean_err[:, t] = np.einsum("sd,sd->s", mean, mean)
        if t == G:
            break
        if cfg.policy == "mix":  # with m = 0 the training set stays the real data
            m = cfg.n_generated_mix
            if m:
                new = (m, *_moments(_sample(rng, mean, cov, m, cfg), cfg))
                train = _pool(real_set, new, cfg)
            continue
        x = _sample(rng, mean, cov, n, cfg)
        new = (n, *_moments(x, cfg))
        if cfg.policy == "replace":
            train = new
        elif cfg.policy == "accumulate":
            train = pool_set = _pool(pool_set, new, cfg)
        else:  # accumulate_subsample: uniform k-subset of the whole pool, fresh per seed
            size, k = n * (t + 2), int(sizes[t + 1])
            pool[:, size - n : size] = x
            if k < size:
                idx = np.argpartition(rng.random((S, size)), k - 1, axis=1)[:, :k]
                rows = idx + (np.arange(S) * pool.shape[1])[:, None]  # into pool's flat rows
                x = pool.reshape(-1, d)[rows]
            else:
                x = pool[:, :size]
            train = (k, *_moments(x, cfg))

    return {"sigma2": sigma2, "mean_err": mean_err, "train_size": sizes}


def expected_sigma2(cfg: GaussianConfig) -> np.ndarray:
    """Exact E[sigma2_t], t = 0..G (shape [G+1]), for every policy/estimator/covariance.

    Derivation (all policies): let T_t = total squared deviation of D_t about its mean, so the
    fitted sigma2_t = T_t / (c_t d) with c_t = N_t (mle) or N_t - 1 (unbiased), and the
    full-covariance trace obeys the same identity. Conditional on the history, samples of
    model t have E[scatter of m samples] = (m-1) d sigma2_t and E||sample mean - mu_t||^2 =
    d sigma2_t / m, and pooling two groups adds n1 n2/(n1+n2) ||mean1 - mean2||^2. All
    updates are linear in the conditional moments, so the tower property gives exact
    recursions; E T_0 = (n-1) d sigma0^2. Isotropic and full covariance share them.

    * replace (Shumailov et al. 2023, "The Curse of Recursion"):
        E sigma2_t = sigma0^2 ((n-1)/c)^(t+1): mle -> ((n-1)/n)^(t+1) (the isotropic estimate
        pooled over d dims is sum sq dev/(n d), E = (n-1)/n sigma^2, the same factor as 1-D);
        unbiased -> sigma0^2 for all t (a martingale), although sigma2_t -> 0 almost surely.
        (t+1 fits: generation 0 is already fitted to the real data.)
    * accumulate (Gerstgrasser et al. 2024, "Is Model Collapse Inevitable?"; boundedness
      derived here for the Gaussian): with P_t = n(t+1),
        mle:      E sigma2_t = sigma0^2 prod_{k=1}^{t+1} (1 - 1/(n k^2))
                  -> sigma0^2 sin(pi/sqrt n)/(pi/sqrt n) as t -> inf (bounded away from 0)
        unbiased: E sigma2_{t+1} / E sigma2_t = 1 - n / (P_{t+1} (P_{t+1} - 1)).
    * mix (Bertrand et al. ICLR 2024, "On the Stability of Iterative Retraining"): with the
      real scatter fixed, m = floor(lam n), D_t = E||mu_t - mean(real)||^2 (units d sigma0^2):
        A_{t+1} = (n-1) + (m - 1 + n/(n+m)) A_t/c_t + n m/(n+m) D_t,
        D_{t+1} = (m/(n+m))^2 (A_t/(c_t m) + D_t),   E sigma2_t = sigma0^2 A_t / c_t.
    * accumulate_subsample: pool scatter B_t (units d sigma0^2), pool size P_t, K_t = min(K, P_t);
      a uniform K-subset has E scatter = (K-1)/(P-1) B and E||subset mean - pool mean||^2 =
      (1 - K/P) B / ((P-1) K), so with V_t = (K_t-1) B_t / ((P_t-1) c_t) = E sigma2_t/sigma0^2:
        B_{t+1} = B_t + (n-1) V_t + P_t n/P_{t+1} (V_t/n + (1 - K_t/P_t) B_t/((P_t-1) K_t)).
    """
    N = train_sizes(cfg)
    c = np.array([_divisor(cfg, int(k)) for k in N], dtype=float)
    recursion = {"replace": _replace, "mix": _mix, "accumulate": _accumulate}.get(cfg.policy, _accumulate_subsample)
    return cfg.sigma0**2 * recursion(cfg, N, c)


# E[sigma2_t] / sigma0^2 for t = 0..G under each policy (the recursions of expected_sigma2's docstring);
# N: the training-set sizes, c: the estimator's divisors.

def _replace(cfg: GaussianConfig, N: np.ndarray, c: np.ndarray) -> np.ndarray:
    return ((cfg.n - 1) / c[0]) ** np.arange(1, cfg.generations + 2)


def _mix(cfg: GaussianConfig, N: np.ndarray, c: np.ndarray) -> np.ndarray:
    n, m, out = cfg.n, cfg.n_generated_mix, np.empty(cfg.generations + 1)
    A, D = float(n - 1), 0.0
    for t in range(cfg.generations + 1):
        out[t] = A / c[t]
        if m == 0:
            A, D = float(n - 1), 0.0
        else:
            A, D = (
                (n - 1) + (m - 1 + n / (n + m)) * A / c[t] + n * m / (n + m) * D,
                (m / (n + m)) ** 2 * (A / (c[t] * m) + D),
            )
    return out


def _accumulate(cfg: GaussianConfig, N: np.ndarray, c: np.ndarray) -> np.ndarray:
    n, out = cfg.n, np.empty(cfg.generations + 1)
    A = float(n - 1)
    for t in range(cfg.generations + 1):
        out[t] = A / c[t]
        P = n * (t + 1)
        A *= 1.0 + (n - 1 + P / (P + n)) / c[t]
    return out


def _accumulate_subsample(cfg: GaussianConfig, N: np.ndarray, c: np.ndarray) -> np.ndarray:
    n, out = cfg.n, np.empty(cfg.generations + 1)
    B = float(n - 1)
    for t in range(cfg.generations + 1):
        P, K = n * (t + 1), int(N[t])
        V = (K - 1) * B / ((P - 1) * c[t])
        out[t] = V
        B += (n - 1) * V + P * n / (P + n) * (V / n + (1 - K / P) * B / ((P - 1) * K))
    return out
