"""What a report is written from: one grid's sweep as the report sees it (SweepView), its rows (Row: one
per grid point, seeds pooled) and its reference M0 (Teacher). collapse/reporting.py builds the view
once from the manifest records; the generic tables, figures and scorecard (collapse/report/), the chains
report and each task's table_notes and write_report read it, by attribute."""
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from collapse.report.metric import Primary
from collapse.report.stats import Comparison, Runs

M1 = "M1"             # the plain student: trained on M0's synthetic data, every distillation coefficient 0
STUDENT = "student"   # any other row: a student distilled from M0 (the table's "model" column says which)


@dataclass(frozen=True)
class Row:
    """One student row of the grid's table: a grid point, train.seed left out, with its seeds pooled
    (those of other sweeps that ran the very same configuration too)."""
    label: Mapping[str, Any]                 # its swept values: {"distill.lam": 0.5, "distill.beta": 1.0, ...}
    role: str = STUDENT                      # M1 or STUDENT
    runs: Runs = field(default_factory=Runs)   # its finished evals' values of the metric, by seed
    evals: tuple[dict, ...] = ()             # those eval records, in the order of runs.values
    status: str = "done"                     # "done", or why a seed has no value ("; "-joined)
    not_finite: bool = False                 # an eval recorded the metric as nan or inf
    pooled: Mapping[str, list] = field(default_factory=dict)   # another sweep's name -> the seeds taken from it
    mean: float | None = None                # over its seeds (None: no finished seed)
    ci95: float | None = None                # half-width of the 95% t-interval over seeds (None: one seed)
    vs_m1: Comparison | None = None          # the row - M1 comparison (stats.compare_with_m1; p_holm added)
    paper: float | None = None               # the paper's value of the row with the same coefficients

    @property
    def seeds(self) -> int:
        return len(self.runs.values)


@dataclass(frozen=True)
class Teacher:
    """M0, every row's reference: its finished evals over the seeds the rows have."""
    mean: float | None = None
    ci95: float | None = None
    by_seed: Mapping[Any, float] = field(default_factory=dict)
    evals: tuple[dict, ...] = ()


@dataclass(frozen=True)
class PaperValue:
    """One row of the paper's table: its coefficients by leaf name ({"lam": 0.5, "beta": 1.0}) and its value."""
    coefficients: Mapping[str, float]
    value: float


@dataclass(frozen=True)
class PaperTable:
    """The paper's table of a task (collapse/paper_values.yaml), on the metric it gives."""
    coefficients: tuple[str, ...]      # the leaf names its rows are keyed by (lam, beta, gamma)
    entries: tuple[PaperValue, ...]
    m1: float | None                   # its plain student's value (every coefficient 0; None: not in it)
    best: Mapping[str, float]          # the coefficients of its best row
    zero_costs: Mapping[str, float]    # "setting X to 0 costs", in %, where the paper quotes them

    def value_at(self, coefficients: dict) -> float | None:
        return next((e.value for e in self.entries if same(e.coefficients, coefficients)), None)


def same(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """Two rows' coefficients are the same (to round-off)."""
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], abs_tol=1e-9) for k in a)


@dataclass(frozen=True)
class SweepView:
    """One grid's sweep as its report reads it."""
    name: str                       # the stem of its files: the grid (with .metric=<tag> under report.metric)
    task: str                       # its task's name (collapse/tasks)
    sweep: dict                     # the sweep record; config.points: each grid point's label and stage keys
    by_key: Mapping[str, dict]      # every stage record of the results root, by key
    root: Path                      # the results root (artifact paths are relative to it)
    out: Path                       # the report's folder, <root>/report
    metric: Primary                 # the metric in force: the task's PRIMARY, or report.metric's
    columns: Mapping[str, str] = field(default_factory=dict)   # its coefficients: "distill.lam" -> "lambda"
    rows: tuple[Row, ...] = ()      # one per grid point (none for a chain sweep or a simulation)
    m0: Teacher = field(default_factory=Teacher)
    paper: PaperTable | None = None   # the paper's table of this task (None: collapse/paper_values.yaml has none)

    @property
    def m1_row(self) -> Row | None:
        """The plain student's row, finished or not."""
        return next((r for r in self.rows if r.role == M1), None)

    @property
    def m1(self) -> Row | None:
        """The plain student's row where it has a value: what every other row is compared with."""
        row = self.m1_row
        return row if row is not None and row.mean is not None else None
