"""run_stage: the one entry point every job calls, locally or on SLURM.

    python -m collapse.run <results_root> <stage_key>

Reads the stage's spec (written at plan time), reads its inputs through its dependencies'
manifest records, runs the stage (its kind's `run`, collapse/kinds.py), and writes its record: done
with metrics and artifacts, or failed with the error and the log path. Artifacts live in
<results_root>/stages/<key>/.
"""
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from collapse import distributed, experiment, kinds, lease, manifest, measured, partial, storage, tasks
from collapse.kinds import artifact
from collapse.stages import ANY_OUTCOME, RAN_TO_THE_END, log_path, read_spec, stage_dir, write_spec  # noqa: F401


class StageInputError(RuntimeError):
    pass


def _redoing(spec: dict, previous: dict | None) -> bool:
    """This run redoes `previous` (a done record): the spec names it as the run to replace."""
    redo_of = spec.get("redo_of")
    return (redo_of is not None and previous is not None and previous.get("status") == "done"
            and previous.get("started") == redo_of["started"])


def _replaced(previous: dict) -> list:
    """What the manifest keeps of the runs a redo replaced: newest first."""
    keep = ("started", "ended", "host", "pid", "commit", "slurm_job_id", "metrics", "artifacts")
    summary = {k: previous.get(k) for k in keep}
    if isinstance(summary["metrics"], dict):
        summary["metrics"] = {k: v for k, v in summary["metrics"].items() if k != "history"}
    return [summary] + list(previous.get("replaced") or [])


def _artifact_entry(root, path: Path) -> dict:
    return {"path": str(Path(path).relative_to(root)), "sha256": storage.sha256(path),
            "bytes": Path(path).stat().st_size}


# ---------------------------------------------------------------- what a kind's run gets

@dataclass
class StageContext:
    """What every kind's run reads (collapse/kinds.py): the stage's task and config, its inputs' done records by role, the
    results root, the folder it writes in and its log; and `work`, what the runner did in this run
    (items in the dry run's unit, and whether it resumed part-way), for the record's `measured`."""
    task: object
    cfg: object
    inputs: dict
    root: Path
    out: Path
    log: Callable[[str], None]
    work: measured.Work = field(default_factory=measured.Work)

    def keep(self, **made_from) -> partial.Keep:
        """Where the stage's resumable loops keep their finished chunks: <out>/partial/ (collapse/partial.py)."""
        return partial.Keep(self.out / "partial", made_from, self.log)

    def trained(self, state) -> dict:
        """A training stage's metrics; its work is the steps this run took x the batch."""
        self.work.items = (state.step - state.run_from_step) * self.cfg.train.batch_size
        self.work.resumed = state.run_from_step > 0
        return {"best_test_loss": state.best_loss, "best_epoch": state.best_epoch, "best_step": state.best_step,
                "steps": state.step, "threads": torch.get_num_threads(), "history": state.history}

    def made(self, items: int, keep: partial.Keep) -> None:
        """A synth or eval stage's work: `items`, some of them perhaps read back from an earlier run's chunks."""
        self.work.items, self.work.resumed = items, keep.reused > 0

    def write_reports(self) -> list:
        """The report kind's tables and plots, over every record in the root (collapse/reporting.py). Here,
        not in collapse/kinds.py: reporting reads plan, which reads kinds."""
        from collapse.reporting import write_reports   # heavy: scipy and matplotlib only for the report stage
        return write_reports(self.root)


# ---------------------------------------------------------------- the entry point

def run_stage(root, key: str) -> dict:
    """Run stage `key` under its lease (collapse/lease.py). When another live runner holds it, return
    at once with status 'held', having written nothing; the lease is released at the end, failed or not."""
    root = Path(root)
    spec = read_spec(root, key)
    log_file = log_path(root, spec)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {spec['name']}: {msg}", flush=True)

    primary = distributed.global_rank() == 0     # in a multi-task SLURM job only rank 0 holds the lease, writes the record
    try:
        held = lease.acquire(root, key) if primary else lease.follow(root, key, lambda: manifest.is_done(root, key))
    except lease.Held as e:
        log(f"not run: {e}")
        return {"kind": spec["kind"], "key": key, "name": spec["name"], "status": "held", "error": str(e),
                "log": str(log_file.relative_to(root))}
    try:
        return _run_held(root, key, spec, primary, held, log)
    finally:
        if held is not None:
            held.release()


def _run_held(root: Path, key: str, spec: dict, primary: bool, held, log) -> dict:
    """run_stage's work, once this process holds the stage's lease (or, rank > 0, its rank 0 does)."""
    previous = manifest.read(root, key)
    redoing = _redoing(spec, previous)
    if lease.planned_by_launch() and previous is not None and previous["status"] == "done" and not redoing:
        try:   # finished by another runner since this one's launch planned it: not run twice
            for name in previous.get("artifacts") or {}:
                artifact(root, previous, name)
            log(f"not run: done meanwhile by {previous.get('host')}:{previous.get('pid')}")
            return previous
        except (storage.CorruptFileError, OSError, KeyError, TypeError):
            pass   # its artifacts are damaged: this run redoes it
    if held is not None:
        log(f"starting on {held.who}" + (f"; took over the lease of {held.taken_from}" if held.taken_from else ""))
    base = {"kind": spec["kind"], "key": key, "name": spec["name"], "deps": spec["deps"],
            "config": spec["config"], **({"fingerprints": spec["fingerprints"]} if spec.get("fingerprints") else {}),
            "log": str(log_path(root, spec).relative_to(root)), "started": manifest.now(),
            **manifest.provenance()}
    # A redo works in a folder of its own and leaves the done record in force until it is done too.
    out = stage_dir(root, key) / f"redo-{round(spec['redo_of']['started'] * 1000)}" if redoing else stage_dir(root, key)
    if primary:
        # a kill mid-write in an earlier run of this stage leaves temporary files; nothing else writes them
        storage.remove_temps(out)
        storage.remove_temps(root / "manifest", f".{key}.json.*.tmp")
        if not redoing:
            manifest.write(root, {**base, "status": "running"})
    replacing = previous if redoing else None   # the done record this run redoes
    return _record_end(root, _outcome(root, spec, base, out, replacing, log), replacing, primary, log)


def _outcome(root: Path, spec: dict, base: dict, out: Path, replacing: dict | None, log) -> dict:
    """The stage's runner on its inputs, writing in `out`: the record it ends with (done, partial or failed)."""
    try:
        cfg = experiment.from_stored(spec["config"])
        task = tasks.get(cfg.task)
        inputs = {}
        any_outcome = spec["kind"] in ANY_OUTCOME
        for role, dep in spec["deps"].items():
            record = manifest.read(root, dep)
            if not any_outcome and (record is None or record["status"] != "done"):
                raise StageInputError(f"input '{role}' (stage {dep}) is not done: "
                                      f"{'missing' if record is None else record['status']}")
            inputs[role] = record
        ctx = StageContext(task, cfg, inputs, root, out, log)
        began = time.monotonic()
        metrics, artifacts = kinds.get(spec["kind"], task).run(ctx, **spec.get("args", {}))
        seconds = time.monotonic() - began
        # A stage that ran on inputs not all done (a report) is 'partial': the next launch runs it again.
        complete = all(r is not None and r["status"] == "done" for r in inputs.values())
        record = {**base, "status": "done" if complete else "partial", "metrics": metrics, "ended": manifest.now(),
                  "artifacts": {name: _artifact_entry(root, p) for name, p in artifacts.items()},
                  **({"measured": measured.record(ctx.work, seconds)} if spec["kind"] in measured.KINDS else {})}
        if replacing is not None:
            record["replaced"] = _replaced(replacing)
        return record
    except Exception as e:
        traceback.print_exc()
        return {**base, "status": "failed", "error": f"{type(e).__name__}: {e}", "ended": manifest.now()}


def _record_end(root: Path, record: dict, replacing: dict | None, primary: bool, log) -> dict:
    """The stage's end, into the manifest; a failed redo is written beside the done record it leaves in force."""
    written = record
    if replacing is not None and record["status"] != "done":
        log("redo failed; the earlier run stays in force")
        written = {**replacing, "redo_failed": {k: record[k] for k in ("error", "ended", "log")}}
    try:
        if primary:
            manifest.write(root, written)
    except OSError as e:   # disk full, read-only: the record stays 'running'; the executor records the exit
        log(f"error: cannot record the stage's end ({record['status']}): {e}")
        return {**record, "status": "failed", "error": f"{type(e).__name__}: {e}"}
    log(f"{record['status']} in {record['ended'] - record['started']:.1f}s")
    return record


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m collapse.run RESULTS_ROOT STAGE_KEY", file=sys.stderr)
        return 2
    if not manifest.is_safe_key(argv[1]):
        print(f"error: stage key {argv[1]!r} is not allowed; expected a plain name "
              "(letters, digits, '_', '.', '-'; no '/' and no leading '.')", file=sys.stderr)
        return 2
    try:
        status = run_stage(argv[0], argv[1])["status"]
        return 0 if status in RAN_TO_THE_END else lease.HELD_EXIT if status == "held" else 1
    except OSError as e:   # no spec to read, or the 'running' record cannot be written
        print(f"error: stage {argv[1]} in {argv[0]}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
