"""The status command (sweeps/status.py): the table of a sweep (collapse/status.py) once, or live, or a
stage's log.

    python sweeps/status.py results_root=DIR [grid=NAME]                  the table
    python sweeps/status.py results_root=DIR watch=true [every=30]       redrawn until every stage ended
    python sweeps/status.py results_root=DIR log=NAME [lines=40]          the tail of a stage's log
    python sweeps/status.py results_root=DIR log=NAME watch=true          followed until the stage ends

watch=true (or --watch) redraws the table every `every` seconds, in place on a terminal (else a new
table under a time line each time), until every stage has ended (done, failed, cancelled, partial), or
nothing has run or queued for IDLE_S (stages left never started: a launch runs them); it exits 1
when a stage failed, else 0. NAME is a stage's name as the table shows it, a unique prefix of one, or
a stage key; a name several stages share (the same teacher in two grids) means the running one.
"""
import difflib
import sys
import time
from pathlib import Path

from collapse import lease, manifest, status

KEYS = ("results_root", "grid", "watch", "every", "log", "lines")
USAGE = "results_root=DIR [grid=NAME] [watch=true] [every=SECONDS] [log=NAME] [lines=N]"
ENDED = ("done", "failed", "cancelled", "partial")
IDLE_S = 60.0           # nothing running or queued this long: the stages left wait for a launch
FOLLOW_POLL_S = 1.0     # how often a followed log is read
CLEAR = "\x1b[H\x1b[2J"


class UsageError(ValueError):
    """A wrong argument: one line, exit 2."""


# ---------------------------------------------------------------- arguments

def parse(argv: list[str]) -> dict:
    args = {"watch": "true"} if "--watch" in argv else {}
    given = [a for a in argv if a != "--watch"]
    wrong = [a for a in given if "=" not in a or a.split("=", 1)[0] not in KEYS]
    args.update(a.split("=", 1) for a in given if a not in wrong)
    if wrong or "results_root" not in args:
        raise UsageError(f"expected {USAGE}, got {' '.join(argv) or 'nothing'}")
    args["watch"] = _flag("watch", args.get("watch", "false"))
    args["every"] = _number("every", args.get("every", "30"), float)
    args["lines"] = int(_number("lines", args.get("lines", "40"), int))
    return args


def _flag(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise UsageError(f"key '{key}': value '{value}' is not allowed; expected true or false")
    return value.lower() in ("true", "1", "yes")


def _number(key: str, value: str, kind) -> float:
    try:
        number = kind(value)
    except ValueError:
        number = 0
    if not number > 0:
        raise UsageError(f"key '{key}': value '{value}' is not allowed; expected a number > 0")
    return number


def main(argv: list[str]) -> int:
    try:
        args = parse(argv)
        root = status.launched_root(args["results_root"])
        if root is None:
            return 2
        if "log" in args:
            row = find_stage(collected(root, args.get("grid"))[0], args["log"])
            return follow(root, row, args["lines"], args["every"]) if args["watch"] else show_tail(row, args["lines"])
        if args["watch"]:
            return watch(root, args.get("grid"), args["every"])
        started = time.monotonic()
        print(table(root, args.get("grid"))[1])
        print(f"\n({time.monotonic() - started:.2f}s)", file=sys.stderr)
        return 0
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def collected(root: Path, grid: str | None) -> tuple[list, list]:
    """(rows, sweeps) of `grid`'s latest sweep, every stage when None (status.collect)."""
    rows, sweeps = status.collect(root, grid)
    if grid and not sweeps:
        names = sorted({r["name"] for r in status.read_records(root) if r.get("kind") == "sweep"})
        raise UsageError(f"key 'grid': value '{grid}' is not allowed; expected a grid launched in {root} "
                         f"(one of: {', '.join(names) or 'none'})")
    return rows, sweeps


def table(root: Path, grid: str | None) -> tuple[list, str]:
    """(rows, the rendered table)."""
    rows, sweeps = collected(root, grid)
    return rows, status.render(rows, root, sweeps)


# ---------------------------------------------------------------- the live table

def watch(root: Path, grid: str | None, every: float, out=None, sleep=time.sleep, clock=time.monotonic,
          idle_s: float = IDLE_S) -> int:
    """Redraw the table every `every` seconds until the sweep has ended; 1 when a stage failed, else 0."""
    out = out or sys.stdout
    on_terminal = out.isatty()
    idle_since = None
    while True:
        rows, text = table(root, grid)
        busy = any(r.state in ("running", "pending") for r in rows)
        idle_since = None if busy else (clock() if idle_since is None else idle_since)
        ended = all(r.state in ENDED for r in rows) or (idle_since is not None and clock() - idle_since >= idle_s)
        footer = (ended_line(rows, idle_s) if ended
                  else f"every {every:g}s until every stage has ended; Ctrl-C stops watching")
        show(out, on_terminal, text, footer)
        if ended:
            return 1 if any(r.state == "failed" for r in rows) else 0
        sleep(every)


def show(out, on_terminal: bool, text: str, footer: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    head = CLEAR if on_terminal else f"--- {stamp} ---\n"
    out.write(f"{head}{text}\n\n{stamp}: {footer}\n")
    out.flush()


def ended_line(rows: list, idle_s: float) -> str:
    counts = {s: sum(r.state == s for r in rows) for s in status.STATES}
    said = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    left = counts["missing"]
    return (f"the sweep has ended: {said or 'no stages'}"
            + (f"; nothing ran for {idle_s:g}s, the {left} missing stages wait for a launch" if left else ""))


# ---------------------------------------------------------------- a stage's log

def find_stage(rows: list, name: str):
    """The row `name` means: a stage key, a name as the table shows it (the running one of several),
    or a unique prefix of a name or key."""
    exact = [r for r in rows if name in (r.key, r.name)]
    running = [r for r in exact if r.state == "running"]
    prefixed = [r for r in rows if r.name.startswith(name) or r.key.startswith(name)]
    for found in (exact, running) if exact else (prefixed,):
        if len(found) == 1:
            return found[0]
    many = exact or prefixed
    if many:
        listed = "; ".join(f"{r.name} ({r.key}, {r.state})" for r in many[:8]) + ("; ..." if len(many) > 8 else "")
        raise UsageError(f"key 'log': value '{name}' is not allowed; it names {len(many)} stages, give grid=NAME, "
                         f"a key or a longer name: {listed}")
    close = difflib.get_close_matches(name, sorted({r.name for r in rows}), n=5, cutoff=0.5)
    raise UsageError(f"key 'log': value '{name}' is not allowed; expected a stage's name as the table shows it, "
                     f"a unique prefix or its key; close: {', '.join(close) or 'none'}")


def tail(path: Path, lines: int, end: int | None = None) -> list[str]:
    """The last `lines` lines of `path` (of its first `end` bytes), read from the end."""
    with open(path, "rb") as f:
        end = f.seek(0, 2) if end is None else end
        size = min(end, 4096)
        while True:
            f.seek(end - size)
            text = f.read(size).decode(errors="replace")
            if text.count("\n") > lines or size == end:
                return text.splitlines()[-lines:]
            size = min(end, size * 4)


def show_tail(row, lines: int) -> int:
    try:
        print("\n".join(tail(Path(row.log), lines)))
    except FileNotFoundError:
        print(f"error: {row.name} ({row.key}, {row.state}) has no log yet: {row.log}", file=sys.stderr)
        return 1
    return 0


def follow(root: Path, row, lines: int, every: float, out=None, sleep=time.sleep) -> int:
    """The log's tail, then what it gains (like tail -f) until the stage ends; 1 when it failed, else 0.
    A stage that has ended shows its tail alone; one not started yet is waited for."""
    out = out or sys.stdout
    path, at = Path(row.log), None
    if row.state in ENDED:
        return show_tail(row, lines)
    if not path.exists():
        print(f"waiting for {row.name} ({row.key}, {row.state}) to start: {path}", file=sys.stderr)
    earlier_run = None if row.state == "running" else _started(root, row.key)   # a failed run's record, rerun
    while True:
        outcome = stage_outcome(root, row.key, earlier_run)   # before the read: its last lines are shown
        if at is None and path.exists():
            at = path.stat().st_size
            out.write("".join(line + "\n" for line in tail(path, lines, at)))
        elif at is not None:
            at = _write_new(path, at, out)
        out.flush()
        if outcome is not None:
            return 1 if outcome == "failed" else 0
        sleep(min(every, FOLLOW_POLL_S))


def _write_new(path: Path, at: int, out) -> int:
    with open(path, "rb") as f:
        if f.seek(0, 2) < at:   # truncated or replaced: from its start
            at = 0
        f.seek(at)
        new = f.read()
    out.write(new.decode(errors="replace"))
    return at + len(new)


def _started(root: Path, key: str):
    record = manifest.read(root, key)
    return record.get("started") if record else None


def stage_outcome(root: Path, key: str, earlier_run=None) -> str | None:
    """How the stage ended (its record, with no live runner), or None while it runs or waits to run.
    `earlier_run`: the start time of a record from before (a failed run queued again): not this end."""
    record = manifest.read(root, key)
    if record is None or lease.live_holder(root, key) is not None:
        return None
    if earlier_run is not None and record.get("started") == earlier_run:
        return None
    if record["status"] in ENDED:
        return record["status"]
    return "failed" if record["status"] in ("running", "unreadable") else None
