"""report.metric: score a grid on another metric than its task's, from the eval records already there.

A metric is a recorded one (test_loss, test_recon, fid, rouge1, ...) or a weighted sum of recorded ones,
`test_recon+0.1*test_kl`: terms joined by `+`, each `name` or `weight*name`. The report then writes its
generic table, figures and scorecard under that metric as <grid>.metric=<tag>.* (tag: the metric with
`*` written `x`), beside the task's own files."""
import copy
import re
from dataclasses import dataclass
from typing import NamedTuple

from collapse.config import bad
from collapse.report.na import finite

class Primary(NamedTuple):
    """The metric a report is on: a task's PRIMARY, or report.metric's. A named tuple, as a task states
    it and as collapse/compare.py and collapse/report/chains.py unpack it."""
    name: str     # its key in an eval's metrics (test_loss; under report.metric, the spec)
    label: str    # what the tables and figures call it (L_M(Test))
    better: str   # "lower" or "higher"

    @property
    def lower_is_better(self) -> bool:
        return self.better == "lower"


def primary_of(task) -> Primary:
    """A task's PRIMARY as a Primary (a task kept outside the package may state a plain tuple)."""
    return Primary(*task.PRIMARY)


TERM = re.compile(r"(?:(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\*)?([A-Za-z_][A-Za-z0-9_]*)")
ALLOWED = "a recorded metric (e.g. test_recon) or a weighted sum of them, e.g. test_recon+0.1*test_kl"


@dataclass(frozen=True)
class Metric:
    spec: str
    terms: tuple[tuple[float, str], ...]   # (weight, recorded metric)

    @property
    def tag(self) -> str:
        return self.spec.replace("*", "x")

    def value(self, metrics: dict) -> float | None:
        """The metric of one eval's metrics, None where a term is missing or not finite."""
        parts = [metrics.get(name) for _, name in self.terms]
        return sum(w * v for (w, _), v in zip(self.terms, parts)) if all(finite(v) for v in parts) else None


def parse(spec: str) -> Metric:
    terms = []
    for term in str(spec).replace(" ", "").split("+"):
        m = TERM.fullmatch(term)
        if m is None:
            raise bad("report.metric", spec, ALLOWED)
        terms.append((float(m.group(1)) if m.group(1) else 1.0, m.group(2)))
    return Metric(str(spec), tuple(terms))


def with_metric(records: list[dict], metric: Metric) -> list[dict]:
    """Copies of `records` whose eval metrics also hold metric.spec (where every term is there)."""
    out = []
    for rec in records:
        if rec.get("kind") == "eval" and isinstance(rec.get("metrics"), dict):
            value = metric.value(rec["metrics"])
            rec = copy.copy(rec)
            rec["metrics"] = {**rec["metrics"], **({metric.spec: value} if value is not None else {})}
        out.append(rec)
    return out
