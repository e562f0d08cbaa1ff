"""Iterative retraining: which data each generation of a chain trains on.

Generation 0 is the teacher, trained on the n real training items; generation t+1 trains on a
set built from the real data and the samples of generations <= t, by the `generations.data` policy:

  replace               the n samples of generation t                        (Shumailov et al.)
  mix                   all n real items + the first floor(mix_ratio * n) samples of generation t
                                                                             (Bertrand et al.)
  accumulate            all n real items + the samples of every generation 0..t  (Gerstgrasser et al.)
  accumulate_subsample  the accumulate pool, subsampled uniformly without replacement to
                        min(subsample_size (null: n), pool size) items, fresh each generation

Each generation samples n items (as many as the real set). The same policies, in closed form and
vectorised over seeds, are the Gaussian toy model of collapse/gaussian.py.
"""
import dataclasses
import math

import torch

from collapse.config import POLICIES, ExperimentConfig, GenerationsConfig

REAL = -1   # source id of a real item in training_set's `source`


def sources(policy: str, t: int) -> list[int]:
    """The generations whose samples go into generation t+1's training set."""
    if policy not in POLICIES:
        raise ValueError(f"unknown data policy {policy!r}; expected one of: {', '.join(POLICIES)}")
    return [t] if policy in ("replace", "mix") else list(range(t + 1))


def mix_count(n: int, mix_ratio: float) -> int:
    """floor(mix_ratio * n), tolerant of float rounding (0.29 * 100 -> 29), as in collapse/gaussian.py."""
    return int(math.floor(mix_ratio * n + 1e-9))


def subsample_generator(seed: int, t: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + t)


def training_set(policy: str, real: torch.Tensor, synthetic_by_generation: dict, t: int,
                 mix_ratio: float = 0.5, subsample_size: int | None = None,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The training set of generation t+1: (items, source), source[i] = REAL or the generation of item i.

    `synthetic_by_generation` maps a generation g to its samples; only `sources(policy, t)` are read.
    Items keep their order: real first, then generations in increasing order (the training loop
    shuffles every epoch); accumulate_subsample keeps that order among the chosen items.
    """
    need = sources(policy, t)
    missing = [g for g in need if g not in synthetic_by_generation]
    if missing:
        raise ValueError(f"policy {policy!r} at generation {t + 1} needs the samples of generations {need}; "
                         f"missing {missing}")
    n = len(real)

    def tagged(items, source_id):
        return items, torch.full((len(items),), source_id, dtype=torch.long)

    if policy == "replace":
        parts = [tagged(synthetic_by_generation[t], t)]
    elif policy == "mix":
        parts = [tagged(real, REAL), tagged(synthetic_by_generation[t][:mix_count(n, mix_ratio)], t)]
    else:
        parts = [tagged(real, REAL)] + [tagged(synthetic_by_generation[g], g) for g in need]
    items = torch.cat([p[0] for p in parts])
    source = torch.cat([p[1] for p in parts])
    if policy == "accumulate_subsample":
        k = min(subsample_size or n, len(items))
        keep = torch.randperm(len(items), generator=subsample_generator(seed, t))[:k].sort().values
        items, source = items[keep], source[keep]
    return items, source


def composition(source: torch.Tensor) -> dict:
    """{"real": count, "0": count of generation 0's samples, ...} for a stage's record."""
    ids, counts = torch.unique(source, return_counts=True)
    return {("real" if i == REAL else str(i)): c for i, c in zip(ids.tolist(), counts.tolist())}


def sample_seed(synth_seed: int, generation: int) -> int:
    """The sampling seed of generation g >= 1 (generation 0's synth stage uses synth.seed itself)."""
    return synth_seed * 1_000_003 + generation


def canonical_chain(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with the chain knobs its data policy does not use reset to their defaults, so that
    chains that differ only in those (mix_ratio under replace) share keys."""
    gen, default = cfg.generations, GenerationsConfig()
    gen = dataclasses.replace(
        gen,
        mix_ratio=gen.mix_ratio if gen.data == "mix" else default.mix_ratio,
        subsample_size=gen.subsample_size if gen.data == "accumulate_subsample" else default.subsample_size)
    return dataclasses.replace(cfg, generations=gen)


def canonical(cfg: ExperimentConfig) -> ExperimentConfig:
    """canonical_chain, and distill.* reset under generations.distill none."""
    cfg = canonical_chain(cfg)
    distill = cfg.distill if cfg.generations.distill != "none" else type(cfg.distill)()
    return dataclasses.replace(cfg, distill=distill)
