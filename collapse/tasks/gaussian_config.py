"""The Gaussian toy model's config section (collapse/tasks/gaussian.py)."""
from dataclasses import dataclass

from collapse.config import _check
from collapse.gaussian import COVARIANCES, ESTIMATORS


@dataclass
class GaussianToyConfig:
    """task: gaussian, the toy model of collapse/gaussian.py; its chains are simulated at once."""
    n: int = 100                  # real samples
    dim: int = 1
    sigma0: float = 1.0
    estimator: str = "mle"        # mle | unbiased
    covariance: str = "isotropic"  # isotropic | full
    chains: int = 5000            # independent chains (seeds) per stage

    def check(self, p):
        _check(self.n >= 2, p + "n", self.n, "an integer >= 2")
        _check(self.dim >= 1, p + "dim", self.dim, "an integer >= 1")
        _check(0 < self.sigma0 < float("inf"), p + "sigma0", self.sigma0, "a finite number > 0")
        _check(self.estimator in ESTIMATORS, p + "estimator", self.estimator, "one of: " + ", ".join(ESTIMATORS))
        _check(self.covariance in COVARIANCES, p + "covariance", self.covariance,
               "one of: " + ", ".join(COVARIANCES))
        _check(self.chains >= 1, p + "chains", self.chains, "an integer >= 1")


CONFIG_SECTIONS = {"gaussian": GaussianToyConfig}

# profile=smoke (collapse/grid.py): nothing to shrink: a stage of 5,000 chains x 50 generations takes
# 1-12 s, and gaussian_generations (8 of them) about a minute, most of it starting processes
SMOKE: dict = {}
