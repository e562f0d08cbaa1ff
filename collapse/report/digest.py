"""report/digest.txt: how a sweep ended, in a few lines a terminal or a mail can carry.

Per grid (its latest sweep): how many stages are done, failed, blocked (not run because an input failed)
or otherwise not done; each failure with its last error line and its log; the hours the stages measured
against the launch's estimate (collapse/report/timing.py); the exact command that comes next. The states
come from collapse/status.py (the table `sweeps/status.py` prints), so the digest and the status table never
disagree. The report stage writes it last (collapse/reporting.py) and the local executor prints it when
its run ends (collapse/launch.py); collapse/report/page.py shows the same facts in index.html.
"""
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from collapse import stages, status
from collapse.stages import well_formed
from collapse.report.tables import write_text
from collapse.report.timing import HEADER, kind_rows

NOT_DONE = ("failed", "cancelled")   # states whose readers cannot run: those readers are blocked


@dataclass
class Failure:
    name: str
    kind: str
    state: str          # failed, cancelled, or blocked
    error: str          # the last error line; for a blocked stage, the inputs that stopped it
    log: str


@dataclass
class Outcome:
    """One grid's latest sweep, as the morning after asks for it."""
    grid: str
    sweep: dict
    rows: list          # status.Row of every stage, the report stage included
    counts: dict        # state -> stages (the report stage aside); 'blocked' split from status' 'missing'
    failures: list = field(default_factory=list)    # failed and cancelled stages
    blocked: list = field(default_factory=list)     # not run because one of those failed
    timing: list = field(default_factory=list)      # timing.kind_rows
    next_command: str = ""


def last_error(row, record: dict | None) -> str:
    """The last line of the stage's recorded error; else status' reason (a job that died without an end)
    or the log's last error line (status._last_line)."""
    lines = [line.strip() for line in str((record or {}).get("error") or "").splitlines() if line.strip()]
    if lines:
        return lines[-1][:300]
    if row.note.endswith(")") and "(" in row.note:
        return row.note.rsplit("(", 1)[1][:-1]
    return status._last_line(Path(row.log))


def relaunch(root: Path, sweep: dict) -> str:
    """The launch that made the sweep, with its results root as an absolute path (and notify= where it had
    one): it reruns what failed or was blocked and keeps what is done."""
    argv = [a for a in sweep["config"].get("argv") or [] if not a.startswith(("results_root=", "notify="))]
    argv.append(f"results_root={root}")
    if sweep.get("notify"):
        argv.append(f"notify={sweep['notify']}")
    return "python sweeps/launch.py " + shlex.join(argv)


def outcomes(root) -> list[Outcome]:
    """Every grid's latest sweep in `root`, its stages' states as sweeps/status.py shows them."""
    root = Path(root)
    records = status.read_records(root)
    by_key = {r["key"]: r for r in records}
    found = []
    for grid, sweep in sorted(stages.latest_sweeps(records).items()):
        if not well_formed(sweep):   # the report skips it, and says so (collapse/reporting.py)
            continue
        rows, _ = status.collect(root, grid)
        rows = [r for r in rows if r.kind != "canary"]
        state = {r.key: r.state for r in rows}
        reads = {}
        for r in rows:
            try:
                reads[r.key] = list((stages.read_spec(root, r.key).get("deps") or {}).values())
            except (OSError, ValueError):
                reads[r.key] = list(((by_key.get(r.key) or {}).get("deps") or {}).values())
        stopped = {k for k, s in state.items() if s in NOT_DONE}
        held_up = stages.downstream(stopped, reads) - stopped
        out = Outcome(grid, sweep, rows, {})
        for r in rows:
            if r.state in NOT_DONE:
                out.failures.append(Failure(r.name, r.kind, r.state, last_error(r, by_key.get(r.key)), r.log))
            elif r.state == "missing" and r.kind != "report" and r.key in held_up:
                inputs = sorted(stages.upstream({r.key}, reads) & stopped)
                names = ", ".join(next(x.name for x in rows if x.key == k) for k in inputs)
                out.blocked.append(Failure(r.name, r.kind, "blocked", f"not run: an input failed ({names})", r.log))
        blocked = {f.name for f in out.blocked}
        for r in rows:
            if r.kind != "report":
                s = "blocked" if r.name in blocked else r.state
                out.counts[s] = out.counts.get(s, 0) + 1
        out.timing = kind_rows(sweep, by_key)
        out.next_command = relaunch(root, sweep)
        found.append(out)
    return found


def hours(timing: list) -> dict:
    """Totals over timing.kind_rows: estimated, measured and device hours (as the table rounds them)."""
    def total(column):
        i = HEADER.index(column)
        return sum(float(row[i]) for row in timing if row[i] != "")
    return {"estimated": total("estimated h"), "measured": total("measured h"), "device": total("device-hours"),
            "estimated_kinds": sum(1 for row in timing if row[HEADER.index("estimated h")] != "")}


def summary(out: Outcome) -> str:
    """'toy: 7 of 9 stages done, 1 failed, 1 blocked': the line a mail's subject or a terminal's last line takes."""
    n = sum(out.counts.values())
    order = ["failed", "blocked", *status.STATES]
    rest = ", ".join(f"{out.counts[s]} {s}" for s in dict.fromkeys(order) if s != "done" and out.counts.get(s))
    return f"{out.grid}: {out.counts.get('done', 0)} of {n} stages done" + (f", {rest}" if rest else "")


def lines(root: Path, found: list[Outcome]) -> list[str]:
    text = []
    for out in found:
        h = hours(out.timing)
        text.append(f"{summary(out)}  (sweep {out.sweep['key']}, {root})")
        for f in out.failures:
            text += [f"  {f.state:<8} {f.name}: {f.error}", f"           log: {f.log}"]
        for f in out.blocked:
            text.append(f"  blocked  {f.name}: {f.error}")
        estimated = (f"against {h['estimated']:.3g} h estimated" if h["estimated_kinds"]
                     else "no launch estimate to set it against")
        text.append(f"  hours: {h['measured']:.3g} h measured ({h['device']:.3g} device-hours), {estimated}"
                    + ("  (per kind: report/" + f"{out.grid}_timing.md)" if out.timing else ""))
        if out.failures or out.blocked or any(s != "done" for s in out.counts):
            text.append(f"  next: {out.next_command}")
            text.append("        (reruns what failed or was blocked; what is done is kept)")
        else:
            text.append(f"  next: nothing to rerun; open {root / 'report' / 'index.html'}")
    text.append(f"page: {root / 'report' / 'index.html'}")
    return text


def write_digest(root, found: list[Outcome] | None = None) -> list[Path]:
    """<root>/report/digest.txt from `found` (outcomes(root) when None)."""
    root = Path(root)
    found = outcomes(root) if found is None else found
    return [write_text(root / "report" / "digest.txt", lines(root, found))]
