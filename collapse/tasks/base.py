"""The task interface: everything a modality provides, written down once.

A modality is one module, collapse/tasks/<name>.py (registered in collapse/tasks/__init__.py BUILT_IN) or
any module named in $COLLAPSE_TASKS, that states the members `Task` below requires (a models task:
teacher -> synth -> students -> evals, or chains of generations) or `Simulation` requires (a toy model
whose chains are simulated in one stage per grid point): REQUIRED and SIMULATION_REQUIRED, the rest
only where it differs from `Defaults`. The package sees a task through `Stated` (collapse.tasks.get):
its own members, else the defaults; its report columns always from its DISTILL_TERMS. Nothing else in
the package names a modality: config, plan, run, train, dry run, status, report and the executors ask
the task. tests/test_tasks.py checks each module against these.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from collapse.report.metric import Primary
from collapse.report.view import SweepView


@runtime_checkable
class Common(Protocol):
    """What every task states: its config, its key, its checks, its report."""

    # ---- config: the sections it brings (name -> dataclass with .check(prefix)), replacing the core's
    # defaults of the same name, and the checks that need several sections (before anything runs)
    CONFIG_SECTIONS: dict[str, type]

    def check_config(self, cfg) -> None: ...

    # ---- the stage key: its own sections that decide a model's numbers (added to the training kinds'
    # key), execution details that do not ((section, field)), fields added after results existed
    # (left out of the key at their default), and config fields that name files or folders (they
    # enter the key as a fingerprint of their content, collapse/fingerprint.py)
    KEY_SECTIONS: tuple[str, ...]
    PATH_FIELDS: tuple[str, ...]

    # ---- launch-time checks of data and weights: a one-line ConfigError, before any job
    def check_data(self, cfg) -> None: ...

    # ---- the report (collapse/reporting.py): the primary metric (Primary: the field of an eval's metrics,
    # its label, "lower" or "higher" is better), and its own tables and figures (paths written), beside the
    # generic ones, from the sweep's view (collapse/report/view.py: its rows, M0, the paper's table)
    PRIMARY: Primary

    def write_report(self, view: SweepView) -> list[Path]: ...

    # ---- the dry run's stated rates, where no stage of a kind has finished in the results root:
    # seconds per unit of work (collapse/dryrun.py work()) on one CPU core, by stage kind ({}: none
    # stated), and seconds of a stage on one reference GPU (None: none stated)
    CPU_SECONDS_PER_UNIT: dict[str, float]

    def gpu_seconds(self, kind: str, config: dict) -> float | None: ...

    # ---- `profile=smoke` (collapse/grid.py): dotted key -> value, the sizes that run any grid of this
    # task end to end on a laptop's 2 CPU cores in a few minutes and still give its report numbers
    SMOKE: dict[str, Any]


@runtime_checkable
class Task(Common, Protocol):
    """A modality that trains models: teacher, synthetic data, students, evals (or chains)."""

    # ---- distillation: the named, weighted terms of its L_SD (Term, below), each weighed by a field of
    # the distill section; a student with every weight 0 is the plain M1
    DISTILL_TERMS: tuple["Term", ...]
    DISTILL_MODES: tuple[str, ...]   # generations.distill values a chain may use

    # ---- its rows in the generic report table: each coefficient's column (report_columns(DISTILL_TERMS)),
    # and what the table's heading ends with and its line on units (or None)
    REPORT_COLUMNS: dict[str, str]

    def table_notes(self, view: SweepView) -> tuple[str, str | None]: ...

    # ---- training (collapse/train.py). Model and teacher outputs are typed, each a NamedTuple of tensors
    # (collapse/models/outputs.py); loss returns (L, the student's outputs), the outputs its terms read
    TEACHER_OUTPUTS_DETERMINISTIC: bool   # the frozen teacher's outputs per item can be computed once

    def build_model(self, cfg) -> Any: ...
    def real_data(self, cfg, split: str) -> Any: ...
    def batch(self, data, index) -> Any: ...
    def loss(self, model, x, noise, cfg, teacher: tuple | None = None) -> tuple: ...
    def teacher_outputs(self, teacher, x, noise, cfg) -> tuple: ...
    def test_loss(self, model, data, cfg) -> float: ...
    def curve_metrics(self, model, test_data, cfg) -> dict: ...

    # ---- synthetic data (collapse/run.py): items start..stop-1 of D_M; how they are stored and joined.
    # `keep` (collapse/partial.py, or None): where a long loop keeps finished chunks to resume part-way
    def synthesize(self, model, cfg, start: int, stop: int, generator, keep=None) -> Any: ...
    def to_tensors(self, data) -> dict: ...
    def from_tensors(self, tensors: dict) -> Any: ...
    def concat(self, parts: list) -> Any: ...

    # ---- evaluation on real held-out data, and what an eval leaves to look at
    def evaluate(self, model, test_data, cfg, cache: Path | None = None, keep=None) -> dict: ...
    def write_examples(self, model, cfg, out: Path) -> dict: ...

    # ---- sizes for the dry run: (train, test) items of its dataset used whole (data.*_size null)
    def full_sizes(self, data: dict) -> tuple[int, int]: ...


@runtime_checkable
class Pretrains(Protocol):
    """What a Task adds whose models may start from a pretraining stage (kind "pretrain"): one stage with a
    key of its own (the core's task, model and train of its config, and PRETRAIN_KEY: sections or
    "section.field" items), read by the teacher and every student (or generation) as their initial
    weights, so every seed and row of a grid fine-tunes the same pretrained model. A Task without these
    members plans no such stage."""

    PRETRAIN_KEY: tuple[str, ...]

    # the config dict the pretraining stage runs with (the study's, its train section the pretraining's,
    # with a seed of its own), or None: no pretraining stage for this config (real weights, or it is off)
    def pretrain_config(self, config: dict) -> dict | None: ...

    # (what to train on, held-out data for its test loss), run through collapse/train.py with `batch`, `loss`
    def pretraining_data(self, cfg) -> tuple[Any, Any]: ...


@runtime_checkable
class Simulation(Common, Protocol):
    """A toy model whose every chain of a grid point is simulated in one stage of kind SIMULATION_KIND,
    keyed by SIMULATION_KEY (sections or "section.field" items)."""

    SIMULATION_KIND: str
    SIMULATION_KEY: tuple[str, ...]
    simulate: Callable          # cfg -> (metrics: dict, arrays: dict of numpy arrays)
    simulation_work: Callable   # a stage's config (dict) -> its units of work, for the dry run


# ---------------------------------------------------------------- L_SD as data

@dataclass(frozen=True)
class Term:
    """One weighted term of a task's L_SD (eqs. 1-3), declared once in its DISTILL_TERMS: whether a
    student distills, which row is M1 (every weight 0), the report's coefficient columns and the printed
    loss all come from these declarations.

    name: the term in the printed loss ("L = L_M + 0.5 * distill + 1 * mse_means"); coefficient: the
    distill.* field that weighs it; column: that weight's column in the report's table; of: (the
    student's outputs, the teacher's, cfg) -> the unweighted term, or None where the task's loss
    computes the term together with L_M (the VAE's lam term shares L_VAE's reconstruction pass)."""
    name: str
    coefficient: str
    column: str
    of: Callable | None = None


def weights(terms: tuple[Term, ...], coeffs) -> dict[str, float]:
    """{coefficient: its weight} of `terms` under the distill section `coeffs`."""
    return {t.coefficient: getattr(coeffs, t.coefficient) for t in terms}


def report_columns(terms: tuple[Term, ...]) -> dict[str, str]:
    """The report's coefficient columns: {"distill.lam": "lambda", ...}, in declaration order."""
    return {f"distill.{t.coefficient}": t.column for t in terms}


def add_terms(total, terms: tuple[Term, ...], coeffs, student, teacher, cfg):
    """L_M plus the sum of the weighted terms that have a function and a weight other than 0 (a zero weight
    skips its term: its outputs may not even exist)."""
    weighted = [getattr(coeffs, t.coefficient) * t.of(student, teacher, cfg)
                for t in terms if t.of is not None and getattr(coeffs, t.coefficient)]
    return total + sum(weighted) if weighted else total


def loss_form(terms: tuple[Term, ...], coeffs) -> str:
    """The loss a student of `coeffs` trains on, as text: "L = L_M + 0.5 * distill + 1 * mse_means"."""
    return "L = L_M" + "".join(f" + {getattr(coeffs, t.coefficient):g} * {t.name}" for t in terms
                               if getattr(coeffs, t.coefficient))


def distills(task: Task, coeffs) -> bool:
    """A student of these coefficients is distilled (not the plain M1)."""
    return any(weights(task.DISTILL_TERMS, coeffs).values())


# ---------------------------------------------------------------- what a task must state, what it need not

REQUIRED = ("CONFIG_SECTIONS", "PRIMARY", "DISTILL_TERMS", "build_model", "real_data", "batch", "loss",
            "teacher_outputs", "test_loss", "synthesize", "evaluate", "full_sizes")
SIMULATION_REQUIRED = ("CONFIG_SECTIONS", "PRIMARY", "SIMULATION_KIND", "SIMULATION_KEY", "simulate",
                       "simulation_work")


class Defaults:
    """Each optional member of the interface as a task has it when it does not state it."""
    KEY_SECTIONS: tuple = ()          # no section of its own decides a model beyond the core's
    PATH_FIELDS: tuple = ()           # its config names no data or weights on disk
    CPU_SECONDS_PER_UNIT: dict = {}   # no CPU rate stated: the dry run uses finished stages of the root
    SMOKE: dict = {}                  # profile=smoke sets nothing of its own
    DISTILL_MODES = ("none", "teacher", "previous")   # a chain may distill from the teacher or the previous model
    TEACHER_OUTPUTS_DETERMINISTIC = False   # the teacher's outputs are computed again at every step

    @staticmethod
    def check_config(cfg) -> None:
        """No check across sections."""

    @staticmethod
    def check_data(cfg) -> None:
        """No data or weights on disk to check at launch."""

    @staticmethod
    def table_notes(view: SweepView) -> tuple[str, str | None]:
        return "", None   # nothing after the table's heading, no line on units

    @staticmethod
    def write_report(view: SweepView) -> list:
        return []   # the generic tables and figures only

    @staticmethod
    def gpu_seconds(kind: str, config: dict) -> float | None:
        return None   # no GPU rate stated

    @staticmethod
    def curve_metrics(model, test_data, cfg) -> dict:
        return {}   # the test loss is the only curve

    @staticmethod
    def write_examples(model, cfg, out: Path) -> dict:
        return {}   # an eval leaves nothing to look at beyond its metrics

    @staticmethod
    def to_tensors(data) -> dict:
        from collapse.tasks import common   # torch: tasks/base.py stays importable without it
        return common.to_tensors(data)

    @staticmethod
    def from_tensors(tensors: dict):
        from collapse.tasks import common   # torch, as above
        return common.from_tensors(tensors)

    @staticmethod
    def concat(parts: list):
        from collapse.tasks import common   # torch, as above
        return common.concat(parts)


OPTIONAL = tuple(m for m in vars(Defaults) if not m.startswith("_"))


class Stated:
    """A task module as the package sees it (collapse.tasks.get): what it states, else Defaults'; its
    REPORT_COLUMNS always derived from its DISTILL_TERMS (the one declaration of its loss)."""

    def __init__(self, module):
        self.module = module

    @property
    def REPORT_COLUMNS(self) -> dict[str, str]:
        return report_columns(self.DISTILL_TERMS)

    def __getattr__(self, member: str):
        if member == "module":   # not set yet (while unpickling): no recursion through self.module
            raise AttributeError(member)
        try:
            return getattr(self.module, member)
        except AttributeError:
            if member in OPTIONAL:
                return getattr(Defaults, member)
            raise AttributeError(f"task module {self.module.__name__} states no {member!r}") from None

    def __repr__(self) -> str:
        return f"<task {self.module.__name__}>"


def missing(module) -> list[str]:
    """The required members `module` does not state (by REQUIRED, or SIMULATION_REQUIRED for a simulation)."""
    required = SIMULATION_REQUIRED if hasattr(module, "SIMULATION_KIND") else REQUIRED
    return [m for m in required if not hasattr(module, m)]
