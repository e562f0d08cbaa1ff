"""A fourth modality that lives in tests/: a diagonal Gaussian fitted to 2-D points, with one
distillation term. It is the proof that adding a modality takes one task module and its configs
(tests/toy/): tests/test_tasks.py runs a grid of it end to end, named through $COLLAPSE_TASKS. It states
what collapse/tasks/base.py requires and, beyond that, only where it differs from base.Defaults: its
teacher's outputs can be computed once, profile=smoke's sizes, and a report part of its own that reads
the sweep's view."""
from dataclasses import dataclass
from typing import NamedTuple

import torch

from collapse.config import DataConfig, EvalConfig, SynthConfig, _check
from collapse.report.metric import Primary
from collapse.report.tables import write_text
from collapse.report.view import SweepView
from collapse.tasks.base import Term, add_terms
from collapse.tasks.common import held_out_loss


@dataclass
class PointsConfig(DataConfig):
    DATASETS = ("points",)
    dataset: str = "points"


@dataclass
class FitConfig:
    dim: int = 2

    def check(self, p):
        _check(self.dim >= 1, p + "dim", self.dim, "an integer >= 1")


@dataclass
class ToyDistillConfig:
    lam: float = 0.0     # MSE between the student's and the teacher's fitted means

    def check(self, p):
        _check(0 <= self.lam < float("inf"), p + "lam", self.lam, "a finite float >= 0")


class Fit(NamedTuple):   # the model's outputs per item (collapse/models/outputs.py)
    mean: torch.Tensor
    log_std: torch.Tensor


class DiagonalGaussian(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mean = torch.nn.Parameter(torch.zeros(dim))
        self.log_std = torch.nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return Fit(self.mean.expand_as(x), self.log_std.expand_as(x))


CONFIG_SECTIONS = {"data": PointsConfig, "model": FitConfig, "distill": ToyDistillConfig, "synth": SynthConfig,
                   "eval": EvalConfig}
TEACHER_OUTPUTS_DETERMINISTIC = True
PRIMARY = Primary("test_loss", "NLL", "lower")
SMOKE = {"data.train_size": 128, "data.test_size": 64, "train.epochs": 1}   # profile=smoke


def full_sizes(data: dict) -> tuple[int, int]:
    return 512, 128


def pull(student, teacher, cfg):
    """The squared distance of the student's fitted mean from the teacher's, per item."""
    return (student.mean - teacher.mean).pow(2).sum(1).mean()


DISTILL_TERMS = (Term("pull", "lam", "lambda", pull),)


def build_model(cfg):
    return DiagonalGaussian(cfg.model.dim)


def real_data(cfg, split: str) -> torch.Tensor:
    """Points around (2, -1) with scales (1, 0.5): a fixed draw per split."""
    n = (cfg.data.train_size or 512) if split == "train" else (cfg.data.test_size or 128)
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    return torch.randn(n, cfg.model.dim, generator=g) * torch.tensor([1.0, 0.5])[:cfg.model.dim] + 2.0


def batch(data, index):
    return data[index]


def loss(model, x, noise, cfg, teacher=None):
    out = model(x)
    nll = (out.log_std + 0.5 * ((x - out.mean) / out.log_std.exp()) ** 2).sum(1).mean()
    if teacher is None:
        return nll, out
    return add_terms(nll, DISTILL_TERMS, cfg.distill, out, teacher, cfg), out


def teacher_outputs(teacher, x, noise=None, cfg=None):
    out = teacher(x)
    return Fit(out.mean.detach(), out.log_std.detach())


def test_loss(model, data, cfg) -> float:
    return held_out_loss(loss, batch, model, data, cfg, 256, 0)


@torch.no_grad()
def synthesize(model, cfg, start, stop, generator, keep=None):
    z = torch.randn(stop - start, cfg.model.dim, generator=generator, device=generator.device)
    return (model.mean + model.log_std.exp() * z).cpu()


def evaluate(model, test_data, cfg, cache=None, keep=None) -> dict:
    return {"test_loss": test_loss(model, test_data, cfg), "std": model.log_std.exp().mean().item()}


def write_report(view: SweepView) -> list:
    """<grid>_toy.md: M0 and each row by role, its mean NLL over seeds (or its status), against M1."""
    def value(mean, seeds, status="done"):
        return f"{mean:.4f} over {seeds} seed(s)" if mean is not None else status

    lines = [f"# {view.name}: {view.metric.label} ({view.metric.better} is better)", "",
             f"- M0: {value(view.m0.mean, len(view.m0.evals), 'no finished eval')}"]
    for row in view.rows:
        diff = f", {row.vs_m1.diff:+.4f} against M1" if row.vs_m1 else ""
        lines.append(f"- {row.role} ({view.columns['distill.lam']} {row.label['distill.lam']:g}): "
                     f"{value(row.mean, row.seeds, row.status)}{diff}")
    return [write_text(view.out / f"{view.name}_toy.md", lines)]
