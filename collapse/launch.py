"""Launching a sweep: load and check everything, plan the stage graph, skip what is done, run the rest.

Every check a user can fail happens before anything is written or submitted. Three options are the
launch's own, not the experiment's: `dry_run=true` prints the plan and its estimated cost and
stops (collapse/dryrun.py); `redo=<stage kind or name pattern>` reruns those stages although they
are done, and everything downstream of them; `show=config` prints the composed config, its rows and
seeds (collapse/showconfig.py) and stops before any data is looked at. `notify=ADDRESS` has SLURM mail
ADDRESS when a stage's job fails and when the report's job ends (collapse/executors/slurm.py with_mail);
the local executor sends no mail, and prints the report's digest.txt when it ends, as it does without notify.
"""
import os
import re
import sys
from pathlib import Path

from collapse import dryrun, limits, manifest, plan as planning, preflight, showconfig, snapshot, storage, tasks
from collapse.config import ConfigError, bad
from collapse.cluster import choose_backend, slurm_reachable
from collapse.executors import local, slurm
from collapse.executors.base import Launched
from collapse.grid import load_sweep
from collapse.run import artifact
from collapse.tasks import gpu_rates
from collapse.stages import write_spec

EXECUTORS = {"local": local.execute, "slurm": slurm.execute}   # each runs a Launched (collapse/executors/base.py)
MAIL_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+(@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*)?")   # me@lab.org, or a user name


def check_results_root(value: str) -> Path:
    if not value.strip() or not value.isprintable():
        raise bad("results_root", value, "a directory path, not empty, without newlines or control characters")
    path = Path(value).expanduser().resolve()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise bad("results_root", value, f"a directory ({probe} is a file)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise bad("results_root", value, f"a writable directory ({probe} is not writable)")
    return path


def reusable(root: Path, stage) -> bool:
    """Done, and every artifact it recorded is still there with its recorded size and sha256.

    A done stage whose artifact was lost, truncated or altered is planned again (with a warning)
    rather than handed to its dependents. This reads each artifact once per launch.
    """
    record = manifest.read(root, stage.key)
    if record is None or record["status"] != "done":
        return False
    try:
        for name in record.get("artifacts") or {}:
            artifact(root, record, name)
    except (storage.CorruptFileError, OSError, KeyError, TypeError) as e:
        print(f"warning: stage {stage.name} ({stage.key}) is recorded done but {e}; it will be redone",
              file=sys.stderr, flush=True)
        return False
    return True


def launch_options(argv: list[str]) -> tuple[dict, list[str]]:
    """Pull dry_run=, redo=, show=, canary= and notify= out of the arguments: ({"dry_run": bool, "redo": str | None,
    "show": str | None, "canary": bool, "notify": str | None}, the rest)."""
    options, rest = {"dry_run": False, "redo": None, "show": None, "canary": True, "notify": None}, []
    for item in argv:
        key, eq, value = item.partition("=")
        if key in ("dry_run", "canary") and eq:
            if value.lower() not in ("true", "false"):
                raise bad(key, value, "true or false")
            options[key] = value.lower() == "true"
        elif key == "redo" and eq:
            if not value.strip() or not value.isprintable():
                raise bad("redo", value, "a stage kind or a stage name pattern, e.g. redo=student or "
                          "'redo=student[lam=0.5*'")
            options["redo"] = value
        elif key == "show" and eq:
            if value not in showconfig.SHOWABLE:
                raise bad("show", value, "one of: " + ", ".join(showconfig.SHOWABLE))
            options["show"] = value
        elif key == "notify" and eq:
            if not MAIL_ADDRESS.fullmatch(value):
                raise bad("notify", value, "one e-mail address (me@lab.org) or a user name on the cluster, "
                          "for SLURM's --mail-user")
            options["notify"] = value
        else:
            rest.append(item)
    return options, rest


def use_rates(argv: list[str]) -> list[str]:
    """rates=FILE, the GPU rates bench/gpu_check.sh measured: this launch's estimates (dry run, warnings)
    use them in place of the stated ones (collapse/tasks/gpu_rates.py). The other arguments."""
    rest = [item for item in argv if not item.startswith("rates=")]
    for item in argv:
        if item.startswith("rates="):
            gpu_rates.use(gpu_rates.load(item.partition("=")[2]))
    return rest


def prepare(argv: list[str]):
    """Everything that can fail on bad input, with nothing written: (sweep, plan, root, backend)."""
    sweep = load_sweep(argv)
    root = check_results_root(sweep.base.results_root)
    for point in sweep.points:
        tasks.get(point.config.task).check_data(point.config)
    plan = planning.build(sweep)
    backend = choose_backend(sweep.base.cluster)
    if backend == "slurm" and not slurm_reachable():
        raise bad("cluster.backend", "slurm", "a reachable SLURM cluster (sinfo does not answer: start the "
                  "local one with `bash slurm/start.sh`, or use cluster=local)")
    return sweep, plan, root, backend


def launch(argv: list[str], out=sys.stdout) -> int:
    try:
        options, argv = launch_options(use_rates(argv))
        if options["show"] == "config":
            print(showconfig.show(argv), file=out, end="")
            return 0
        sweep, plan, root, backend = prepare(argv)
        redo = redone(plan, options["redo"])
        todo = [s for s in plan.stages.values() if s.key in redo or not reusable(root, s)]
        costs = dryrun.estimate(todo, manifest.read_all(root) if root.exists() else [],
                                dryrun.stage_gpus(todo, sweep.base.cluster, backend))
        set_limits = []
        if backend == "slurm":
            sweep, set_limits = limits.resolve(sweep, todo, costs, preflight.partition_limits())
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if options["notify"] and backend == "slurm":   # SLURM mails: a stage's job failed, the report's job ended
        sweep = slurm.notifying(sweep, options["notify"])
    elif options["notify"]:
        print(f"notify={options['notify']}: the local executor sends no mail (SLURM does); it prints the "
              "report's digest when it ends", file=out, flush=True)
    if options["dry_run"]:
        dryrun.describe(sweep, plan, todo, root, backend, out, redo=redo, canary=options["canary"],
                        limits=set_limits)
        return 0
    if backend == "slurm":   # the same warnings as the dry run's, said before submitting
        for note in preflight.warnings(sweep, todo, root, backend, {k: v[0] for k, v in costs.items()}):
            print(f"warning: {note}", file=sys.stderr, flush=True)
    try:
        code, record = write_launch(root, sweep, plan, todo, redo, options["notify"], costs)
    except snapshot.SnapshotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:   # disk full, read-only, permission denied: nothing finished is touched
        print(f"error: cannot write to results_root {root}: {e}", file=sys.stderr)
        return 1
    print(f"sweep {record['key']} (grid {sweep.grid}): {len(plan.stages)} stages, "
          f"{len(plan.stages) - len(todo)} already done, {len(todo)} to run on {backend}"
          + (f" ({len(redo)} redone: {options['redo']} and what reads it)" if redo else "")
          + f"; results in {root}", file=out, flush=True)
    print(f"{code.describe()}: the stages run {code.path}" + older_code(root, plan, todo, code), file=out, flush=True)
    return EXECUTORS[backend](Launched(sweep, plan, todo, root, code, record["key"], options["canary"], out))


def redone(plan, pattern: str | None) -> set:
    """redo=PATTERN: the stages it names and every stage that reads them (set() when not given)."""
    if pattern is None:
        return set()
    named = planning.matching(plan, pattern)
    if not named:
        raise bad("redo", pattern, "a stage kind (" + ", ".join(sorted({s.kind for s in plan.stages.values()}))
                  + ") or a pattern (* and ?) matching stage names of this sweep, e.g. 'student[lam=0.5*'")
    return planning.downstream(plan, named)


def write_launch(root: Path, sweep, plan, todo: list, redo: set, notify: str | None, costs: dict):
    """What a launch writes before any stage runs: the code snapshot, each stage's spec (a redone done
    stage's spec names the record it replaces), the sweep record with its estimate. (code, record)."""
    code = snapshot.take(root)
    for stage in todo:
        previous = manifest.read(root, stage.key) if stage.key in redo else None
        write_spec(root, stage, redo_of=previous if previous and previous["status"] == "done" else None)
    record = planning.sweep_record(sweep, plan)
    if notify:   # the digest's relaunch command (collapse/report/digest.py) says it again
        record["notify"] = notify
    return code, manifest.write(root, with_estimate(root, record, costs))


def with_estimate(root: Path, record: dict, costs: dict) -> dict:
    """The sweep record with the estimate of each stage this launch runs (the report sets it beside what
    the stage measured, collapse/report/timing.py); earlier launches' estimates of the other stages kept."""
    previous = (manifest.read(root, record["key"]) or {}).get("estimate") or {}
    now = {key: {"seconds": round(seconds, 1), "source": source} for key, (seconds, _, source) in costs.items()}
    return {**record, "estimate": {**previous, **now}}


def older_code(root: Path, plan, todo: list, code) -> str:
    """'; 12 done stages came from older code (3f2a... x 12)': the done stages another snapshot made."""
    running = {s.key for s in todo}
    made = {}
    for stage in plan.stages.values():
        record = manifest.read(root, stage.key) if stage.key not in running else None
        if record is not None and record.get("code") != code.hash:
            made[record.get("code") or "none recorded"] = made.get(record.get("code") or "none recorded", 0) + 1
    if not made:
        return ""
    n = sum(made.values())
    return (f"; {n} done stage{'s' if n > 1 else ''} came from older code ("
            + ", ".join(f"{h} x {c}" for h, c in sorted(made.items())) + ")")
