"""The Gaussian toy model as a task: one stage simulates all `gaussian.chains` chains of a grid
point at once (collapse/gaussian.py) and records, per generation, the measured sigma_t^2 (mean,
standard error, quantiles over chains) beside its closed-form expectation.

It has no network, no real dataset and no distillation: a Simulation (collapse/tasks/base.py). The
plan gives it one "gaussian" stage per grid point and the report overlays measured on closed form
(collapse/tasks/gaussian_report.py).
"""
import time

import numpy as np

from collapse.gaussian import GaussianConfig, expected_sigma2, simulate as simulate_chains
from collapse.tasks.gaussian_config import CONFIG_SECTIONS, SMOKE  # noqa: F401
from collapse.tasks.gaussian_report import PRIMARY, write_report  # noqa: F401

PATH_FIELDS = ()   # no data or weights on disk
KEY_SECTIONS = ()
SIMULATION_KIND = "gaussian"
# One stage simulates every chain of a grid point: its key is the toy model, the chain and the seed.
SIMULATION_KEY = ("task", "gaussian", "generations.count", "generations.data", "generations.mix_ratio",
                  "generations.subsample_size", "train.seed")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


CPU_SECONDS_PER_UNIT = {"gaussian": 2e-6}   # a chain-generation on one CPU core, measured here


def simulation_work(config: dict) -> float:
    """Chain-generations: every chain of the grid point, every generation."""
    return config["gaussian"]["chains"] * (config["generations"]["count"] or 1)


def gpu_seconds(kind: str, config: dict) -> None:
    return None


def check_config(cfg) -> None:
    """Nothing beyond each section's own checks (generations.count is required: collapse/experiment.py)."""


def toy_config(cfg) -> GaussianConfig:
    g, gen = cfg.gaussian, cfg.generations
    return GaussianConfig(dim=g.dim, n=g.n, generations=gen.count, policy=gen.data, mix_ratio=gen.mix_ratio,
                          subsample_size=gen.subsample_size, estimator=g.estimator, covariance=g.covariance,
                          sigma0=g.sigma0, seeds=g.chains, seed=cfg.train.seed)


def simulate(cfg) -> tuple[dict, dict]:
    """(metrics, arrays): per-generation summaries for the record, and sigma2 [chains, G+1] (float32)."""
    toy = toy_config(cfg)
    started = time.perf_counter()
    out = simulate_chains(toy)
    seconds = time.perf_counter() - started
    sigma2 = out["sigma2"]
    chains = sigma2.shape[0]
    metrics = {
        "generation": list(range(toy.generations + 1)),
        "train_size": out["train_size"].tolist(),
        "sigma2_mean": sigma2.mean(axis=0).tolist(),
        "sigma2_se": (sigma2.std(axis=0, ddof=1) / np.sqrt(chains)).tolist() if chains > 1 else None,
        **{f"sigma2_q{round(q * 100):02d}": np.quantile(sigma2, q, axis=0).tolist() for q in QUANTILES},
        "sigma2_closed_form": expected_sigma2(toy).tolist(),
        "mean_err_mean": out["mean_err"].mean(axis=0).tolist(),
        "chains": chains,
        "simulate_seconds": round(seconds, 4),
    }
    return metrics, {"sigma2": sigma2.astype(np.float32)}


def check_data(cfg) -> None:
    """Nothing to find: the toy model draws its own real data."""
