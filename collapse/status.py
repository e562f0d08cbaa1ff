"""Where a sweep stands: one row per stage from the manifest, its SLURM job (one squeue, one sacct).

    python sweeps/status.py results_root=DIR [grid=NAME]    (the command: collapse/status_live.py)

States: done (recorded done), running, pending (queued, or requeued after preemption), failed
(recorded failed, or its job ended without recording an end: killed, timed out, out of memory),
missing (not run: never submitted, or its job was removed because an input failed), cancelled
(stopped by sweeps/cancel.py or by Ctrl-C to a local launch: the next launch resumes it). The manifest
decides done and failed; squeue and sacct (one call each, not one per stage) add the job id,
the queue state and the elapsed time. Without SLURM it shows what the manifest says.
A stage's lease (collapse/lease.py) says who runs it now, on any node and under either executor:
host, pid or SLURM job, and the age of its last heartbeat; a stage recorded running whose lease
is dead (its runner was killed, its node lost) shows as failed, to be rerun by the next launch.
A running stage shows how far it has got (collapse/progress.py): step of steps or epoch of epochs, or
the items its synth or eval loop has made; its latest test metric; the time to go at its own rate.
"""
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from collapse import lease, manifest, progress, snapshot, stages
from collapse.slurm_index import (ACTIVE, RUNNING, TERMINAL_BAD, job_info, job_stdout, queued, read_canary, read_index,
                                   sacct, silent_end, squeue)


STATES = ("done", "running", "pending", "failed", "missing", "cancelled", "partial")


@dataclass
class Row:
    key: str
    name: str
    kind: str
    state: str
    job: str = ""
    elapsed: str = ""
    note: str = ""      # failed: the log path (and the error); pending: the queue's reason
    progress: str = ""  # running: step 120/400, epoch 3/70, samples 512/10000
    metric: str = ""    # running: its latest test metric
    to_go: str = ""     # running: the time to go at its own rate so far
    log: str = ""       # its log file (it may not exist yet)
    code: str = ""      # the code snapshot its record names (collapse/snapshot.py)


def read_records(root) -> list[dict]:
    """Every record, malformed ones as 'unreadable' (manifest.read_all)."""
    return manifest.read_all(root)


# ---------------------------------------------------------------- the table

def _seconds(s: float | None) -> str:
    if s is None:
        return ""
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def collect(root, grid: str | None = None, squeue_fn=squeue, sacct_fn=sacct) -> tuple[list[Row], list[dict]]:
    """(rows, sweeps) for every stage of the latest sweep of `grid` (all grids and stages when None)."""
    root = Path(root)
    records = read_records(root)
    by_key = {r["key"]: r for r in records if r.get("kind") != "sweep"}
    sweeps = list(stages.latest_sweeps(records, grid).values())
    keys = list(dict.fromkeys(k for s in sweeps for k in (s.get("config") or {}).get("stages", [])))
    try:
        index = read_index(root)
    except Exception:   # a damaged index must not hide the manifest
        index = {"stages": {}}
    if grid is None:
        keys = list(dict.fromkeys(keys + list(by_key) + list(index["stages"])))
    jobs = {k: index["stages"][k]["job"] for k in keys if k in index["stages"]}
    launch = _latest_launch(index, sweeps, grid)
    canary_job = (launch.get("canary") or {}).get("job")
    queue = squeue_fn([*jobs.values(), *filter(None, [canary_job])])
    acct = sacct_fn([*jobs.values(), *filter(None, [canary_job])])
    leased = set(os.listdir(lease.folder(root))) if lease.folder(root).is_dir() else set()
    rows = []
    for key in keys:
        row = _named_row(root, key, by_key.get(key) or index["stages"].get(key, {}), jobs.get(key, ""))
        rec = by_key.get(key)
        q = queue.get(row.job) if row.job else None
        _judge(row, root, rec, q, job_info(row.job, acct) if row.job else None)
        holder = lease.read(root, key) if f"{key}.json" in leased else None
        if holder is not None:
            _show_holder(row, holder, rec["status"] if rec else None, q)
        row.log = str(root / rec["log"]) if rec and rec.get("log") else str(stages.log_path(root, row.__dict__))
        row.code = str(rec.get("code") or "") if rec else ""
        if row.state == "running":
            _show_progress(row, root)
        rows.append(row)
    rows.sort(key=lambda r: (len(stages.KINDS) if r.kind == "?" else stages.kind_rank(r.kind), r.name))
    if canary_job:
        rows.insert(0, _canary_row(root, launch, queue, acct))
    return rows, sweeps


def _named_row(root: Path, key: str, known: dict, job: str) -> Row:
    """A stage's row, 'missing' until judged: its name and kind from its record or job entry, else its spec."""
    name, kind = known.get("name"), known.get("kind")
    if name is None:
        try:
            spec = stages.read_spec(root, key)
            name, kind = spec["name"], spec["kind"]
        except (OSError, ValueError, KeyError):
            name, kind = key, "?"
    return Row(key, name, kind or "?", "missing", job)


def _judge(row: Row, root: Path, rec: dict | None, q: tuple | None, a: tuple | None) -> None:
    """The row's state, elapsed time and note from its record (the manifest decides done and failed),
    its queue state `q` (squeue) and its accounting `a` (sacct)."""
    status = rec["status"] if rec else None
    recorded = (_seconds(rec["ended"] - rec["started"])
                if rec and isinstance(rec.get("ended"), (int, float)) and isinstance(rec.get("started"), (int, float))
                else "")
    sacct_state, sacct_elapsed = a if a else (None, "")
    dead = silent_end(status, q, a)
    if status == "done":
        row.state, row.elapsed = "done", recorded or sacct_elapsed
    elif queued(q):
        row.state = "running" if q[0] in RUNNING else "pending"
        row.elapsed = q[1] if row.state == "running" else ""
        row.note = q[2] if q[2] not in ("None", "(null)") else ""
        if status == "failed":
            row.note = (row.note + "; " if row.note else "") + "rerun of a failed stage"
    elif status == "cancelled":   # sweeps/cancel.py or a stopped local launch; the next launch resumes it
        row.state, row.elapsed, row.note = "cancelled", recorded, str(rec.get("error") or "")[:100]
    elif status == "partial":     # a report written while some input was not done: the next launch redoes it
        m = rec.get("metrics") or {}
        row.state, row.elapsed = "partial", recorded
        row.note = f"from {m.get('inputs_done', '?')} of {m.get('inputs', '?')} inputs done; the next launch writes it again"
    elif status == "failed":
        row.state, row.elapsed = "failed", recorded or sacct_elapsed
        row.note = f"{root / rec['log']}" if rec.get("log") else ""
        if rec.get("error"):
            row.note += f"  ({str(rec['error']).splitlines()[0][:100]})"
    elif status == "running" and not dead:
        row.state, row.elapsed = "running", sacct_elapsed
    elif dead or status == "unreadable" or sacct_state in TERMINAL_BAD and sacct_state != "CANCELLED":
        row.state, row.elapsed = "failed", sacct_elapsed
        log = root / rec["log"] if rec and rec.get("log") else None
        logs = ", ".join(str(p) for p in (log, job_stdout(root, row.job) if row.job else None) if p)
        why = dead or (rec.get("error") if status == "unreadable" else f"job {sacct_state} before the stage started")
        row.note = f"{logs}  ({why})"
    elif sacct_state == "PENDING":
        row.state = "pending"
    elif sacct_state == "CANCELLED":
        row.note = f"job {row.job} cancelled before it ran (an input failed, or scancel)"
    elif row.job:
        row.note = f"job {row.job} {sacct_state or 'unknown to SLURM'}, nothing recorded"
    else:
        row.note = "not submitted"


def _latest_launch(index: dict, sweeps: list[dict], grid: str | None) -> dict:
    """The newest SLURM launch of the sweeps shown ({} when none)."""
    keys = {s.get("key") for s in sweeps}
    mine = [la for la in index.get("launches") or [] if grid is None or la.get("sweep") in keys]
    return mine[-1] if mine else {}


def _canary_row(root: Path, launch: dict, queue: dict, acct: dict) -> Row:
    """The launch's canary job (collapse/canary.py) as the table's first row: its record, else SLURM's word."""
    job = launch["canary"]["job"]
    row = Row(f"canary-{launch['id']}", "canary", "canary", "pending", job, log=str(job_stdout(root, job)))
    record = read_canary(root, launch["id"])
    q, a = queue.get(job), job_info(job, acct)
    if record is not None:
        row.state = "done" if record.get("status") == "done" else "failed"
        row.elapsed = _seconds(record.get("seconds"))
        row.note = ("checks passed on " + str(record.get("host")) if row.state == "done"
                    else f"canary failed: {record.get('error')}  (log: {row.log})")
    elif q is not None and q[0] in RUNNING:
        row.state, row.elapsed = "running", q[1]
    elif q is not None and q[0] in ACTIVE:
        row.note = q[2] if q[2] not in ("None", "(null)") else ""
    elif a is not None and (a[0] in TERMINAL_BAD or a[0] == "COMPLETED"):
        row.state, row.elapsed = "failed", a[1]
        row.note = f"canary failed: job {a[0]} before writing its record: {_last_line(Path(row.log))}  (log: {row.log})"
    return row


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    errors = [line for line in lines if "error" in line.lower()]
    return ((errors or lines or ["no output"])[-1])[:300]


def _show_holder(row: Row, holder, status: str | None, queued) -> None:
    """Who runs the stage now (a live lease), or that its runner died (a dead one)."""
    why = holder.dead_because()
    if why is None:
        row.state = "running"
        row.job = row.job or (holder.job or "")
        row.elapsed = row.elapsed or _seconds(time.time() - holder.acquired)
        row.note = f"held by {holder}"
    elif status == "running" and row.state == "running" and not (queued and queued[0] in RUNNING):
        row.state = "failed"
        row.note = f"its runner {holder.host}:{holder.pid} died ({why}); the next launch reruns it"


def _show_progress(row: Row, root: Path) -> None:
    try:
        shown = progress.read(stages.stage_dir(root, row.key), Path(row.log))
    except ValueError:   # a key that names no folder of its own: nothing to read
        return
    if shown is not None:
        row.progress, row.metric, row.to_go = shown.where(), shown.latest(), _seconds(shown.to_go_s)


def render(rows: list[Row], root, sweeps: list[dict]) -> str:
    stage_rows = [r for r in rows if r.kind != "canary"]
    counts = {s: sum(r.state == s for r in stage_rows) for s in STATES}
    names = ", ".join(f"grid {s['name']} ({s['key']})" for s in sweeps) or "no sweep record"
    head = f"{root}: {names}: {len(stage_rows)} stages: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    head += "".join(f"; canary {r.state}" for r in rows if r.kind == "canary")
    code = code_summary(root, rows)
    head += f"\n{code}" if code else ""
    if any(r.progress for r in rows):
        cols = ("name", "kind", "state", "job", "elapsed", "progress", "metric", "to go", "log / reason")
        table = [cols] + [(r.name, r.kind, r.state, r.job, r.elapsed, r.progress, r.metric, r.to_go, r.note)
                          for r in rows]
    else:
        cols = ("name", "kind", "state", "job", "elapsed", "log / reason")
        table = [cols] + [(r.name, r.kind, r.state, r.job, r.elapsed, r.note) for r in rows]
    widths = [max(len(str(t[i])) for t in table) for i in range(len(cols) - 1)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(t[:-1], widths)) + "  " + str(t[-1]) for t in table]
    return "\n".join([head, ""] + [line.rstrip() for line in lines])


def code_summary(root: Path, rows: list[Row]) -> str:
    """'code: 3f2a9c01d4e5b6a7 (commit 1a2b3c4d5e, dirty) for 14 stages; ...': which snapshot made what."""
    made: dict[str, int] = {}
    for row in rows:
        if row.code:
            made[row.code] = made.get(row.code, 0) + 1
    parts = []
    for digest, n in sorted(made.items(), key=lambda kv: -kv[1]):
        try:
            what = snapshot.read(snapshot.code_dir(root) / digest).describe().removeprefix("code ")
        except (OSError, ValueError, KeyError):
            what = f"{digest} (snapshot missing)"
        parts.append(f"{what} for {n} stage{'s' if n > 1 else ''}")
    return ("code: " + "; ".join(parts) + f"  (snapshots in {snapshot.code_dir(root)})") if parts else ""


def launched_root(value: str) -> Path | None:
    """results_root=VALUE as a path, when something was launched there; else None, said on stderr."""
    root = Path(value).expanduser().resolve()
    if not (root / "manifest").is_dir():
        print(f"error: key 'results_root': value '{value}' is not allowed; expected a results "
              f"root with a manifest/ folder (nothing was launched there yet)", file=sys.stderr)
        return None
    return root
