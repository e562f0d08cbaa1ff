"""Cells that have no value, and why: a report never fails on a degenerate number (a division by 0, a
column without spread, a value that is not finite, one seed, a row without a finished eval) but writes
`n/a` there. In a csv the cell reads `n/a` (pandas reads it as missing); in markdown it reads `n/a¹`, and
the footnote under the table says the reason in words."""
import math
import sys

SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")

# the reasons that recur across tables
ONE_SEED = "one seed: no spread over seeds, so no interval over seeds"
NOT_FINITE = "the eval recorded a value that is not a finite number (nan or inf); that seed is left out"
NO_EVAL = "no finished eval yet (the status column says which stage is missing, running or failed)"
NO_M0 = "M0 has no finished eval with a finite value yet"
NO_M1 = "M1 has no finished eval with a finite value yet, so there is nothing to compare with"


class NA:
    """A cell without a value: `reason` says why in words."""
    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason

    def __str__(self) -> str:   # what csv.writer writes
        return "n/a"

    def __repr__(self) -> str:
        return f"NA({self.reason!r})"


class Footnotes:
    """The reasons of one markdown file's n/a cells, numbered in the order they first appear."""

    def __init__(self):
        self.reasons: list[str] = []
        self.shown = 0   # reasons whose footnote lines() has already given

    def mark(self, reason: str) -> str:
        """'n/a' with the superscript number of `reason`'s footnote."""
        if reason not in self.reasons:
            self.reasons.append(reason)
        return "n/a" + str(self.reasons.index(reason) + 1).translate(SUPERSCRIPT)

    def cell(self, value) -> str:
        return self.mark(value.reason) if isinstance(value, NA) else str(value)

    def lines(self) -> list[str]:
        """One line per reason not given yet, under a blank line (nothing when there is none): called
        under each table, it gives the footnotes of the n/a cells that table added."""
        notes = [f"{self.mark(r)}: {r.rstrip('.')}." for r in self.reasons[self.shown:]]
        self.shown = len(self.reasons)
        return [""] + notes if notes else []


def finite(value) -> bool:
    """A real number that is neither nan nor inf (bools and None are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def no_spread(values: list[float]) -> bool:
    """Every value the same, to within the round-off at which scipy's moments warn of catastrophic
    cancellation: a t-test or a rank correlation of them is undefined."""
    mean = math.fsum(values) / len(values)
    return max(abs(v - mean) for v in values) <= 100 * sys.float_info.epsilon * abs(mean)
