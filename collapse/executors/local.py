"""The embedded executor: runs a stage graph here, as real subprocesses, in dependency order.

Up to `max_parallel` stages run at once, each `python -m collapse.run ROOT KEY` with its own
log file. A stage whose input failed is not started (it is reported as blocked; the report, which
runs whatever its inputs' outcome, is the exception); the other
branches of the graph go on.

One run per stage (collapse/lease.py): a stage whose lease a live runner holds (another launch, a
SLURM job, on any node) is not started but waited for, polling its lease every second; so is one
whose subprocess exits with lease.HELD_EXIT (the other runner took the lease first). When the
holder is gone, its record decides: done is done (its dependents start), failed is failed, and a
holder that died without an end (killed, node lost) leaves the stage to be run here, from its
checkpoint.

Stopping: SIGINT (Ctrl-C) or SIGTERM to the launch stops the run. Each stage runs in its own
process group, so a terminal's Ctrl-C reaches only the launch, which then sends SIGINT to every
stage's group (the stage unwinds: its lease is released, its log flushed), SIGKILLs what is left
after STOP_GRACE_S, records the stopped stages as cancelled and raises Cancelled. Every file is
written atomically, so a stopped stage leaves its last checkpoint, from which the next launch
resumes it. A second signal while stopping SIGKILLs the stages at once.

Closing the terminal (SIGHUP) does not stop the run: the launch's output moves to
<results_root>/logs/launch-<time>-<pid>.log and the run goes on (the stages, in their own process
groups, never see the hangup). `nohup` or `setsid` are not needed.
"""
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from collapse import lease, manifest
from collapse.cancel import record_cancelled
from collapse.executors import warm
from collapse.executors.base import Launched, digest, report_files, stage_env
from collapse.executors.warm import WarmStarter, die_with_parent
from collapse.snapshot import CHANGED_EXIT, Snapshot
from collapse.stages import ANY_OUTCOME, RAN_TO_THE_END, log_path


STOP_GRACE_S = 10.0     # how long stopped stages get to exit on SIGINT before they are SIGKILLed


class Cancelled(Exception):
    """The run was stopped by a signal; `stopped`: the stages that were running (now recorded cancelled,
    or done if they finished meanwhile), `not_started`: those that had not started."""

    def __init__(self, signum: int, stopped: dict, not_started: list):
        self.signum, self.stopped, self.not_started = signum, stopped, not_started
        self.exit_code = 128 + signum
        super().__init__(f"{signal.Signals(signum).name}: stopped {len(stopped)} running stages")


def execute(launched: Launched) -> int:
    """The launch's stages here, in dependency order; then the report's files and digest. Ctrl-C (or
    SIGTERM) stops the running stages, records them cancelled and says how to resume."""
    cluster, out = launched.sweep.base.cluster, launched.out
    try:
        result = run(launched.todo, launched.root, cluster.max_parallel, code=launched.code,
                     warm_start=cluster.warm_start)
    except Cancelled as e:
        names = ", ".join(s.name for s in launched.todo if s.key in e.stopped) or "none"
        print(f"cancelled ({signal.Signals(e.signum).name}): stopped {len(e.stopped)} running stages ({names}), "
              f"recorded cancelled; {len(e.not_started)} not started. Resume from their checkpoints: "
              f"python sweeps/launch.py {shlex.join(launched.sweep.argv)}", file=sys.stderr, flush=True)
        return e.exit_code
    failed = sorted(k for k, v in result.items() if v != "done")
    print(f"done: {len(result) - len(failed)} stages ran, {len(failed)} failed or blocked; "
          f"report: {report_files(launched.root, launched.plan)}", file=out)
    print(digest(launched.root, launched.plan), file=out, end="")
    return 1 if failed else 0


def run(stages: list, root, max_parallel: int = 0, poll_s: float = 0.2, code: Snapshot | None = None,
        warm_start: bool = True) -> dict:
    """Run `stages` (Stage objects, dependency order); return {key: 'done' | 'failed' | 'blocked'}.

    Each stage process imports the project from `code` (a launch's snapshot, checked before it is
    imported); without one, from this checkout. With `warm_start`, forked from one process that imported
    torch once (collapse/executors/warm.py). Raises Cancelled on SIGINT or SIGTERM (when run in the
    main thread), with no stage process left."""
    starter = warm.starter(Path(root), code, _dies_with_launch(os.getpid())) if warm_start else None
    state = _RunState(stages, Path(root), max_parallel, code, starter)
    stop: list[int] = []      # the signals received: the first stops the run, a second kills at once
    previous = _catch_stop_signals(stop, state.processes, state.root)
    try:
        while state.unfinished() and not stop:
            state.start_ready()
            state.reap()
            state.check_held()
            time.sleep(poll_s)
        if stop:
            state.bar.close()
            raise _cancel_running(state.root, state.running, state.waiting, state.held, stop[0])
    finally:
        _restore_signals(previous)
        if state.warm is not None:
            state.warm.close()
    state.bar.close()
    return state.result


class _RunState:
    """One run of a stage graph: the stages waiting for their inputs (`waiting`), those running here
    (`running`: key -> (stage, process)), those another runner is running (`held`: waited for), and the
    outcome of each that has ended (`result`)."""

    def __init__(self, stages: list, root: Path, max_parallel: int, code: Snapshot | None, warm: WarmStarter | None):
        self.root, self.code, self.warm, self.total = root, code, warm, len(stages)
        self.cores = available_cores()
        self.max_parallel = max_parallel or self.cores
        self.waiting = {s.key: s for s in stages}
        self.running: dict[str, tuple] = {}
        self.held: dict[str, object] = {}
        self.planned = {s.key: _started(root, s.key) for s in stages}   # changed later: another runner ran it
        self.result: dict[str, str] = {}
        self.held_checked = 0.0
        self.interactive = sys.stderr.isatty()
        self.bar = tqdm(total=len(stages), unit="stage", dynamic_ncols=True, file=sys.stderr,
                        disable=not self.interactive)

    def unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.held)

    def processes(self) -> list:
        return [proc for _, proc in self.running.values()]

    def start_ready(self) -> None:
        """Start the waiting stages whose inputs are done, as many as max_parallel allows; mark blocked those
        whose input failed."""
        ready = self._ready()
        # A stage that runs alone (the teacher) gets every core; a full row of students one each.
        threads = max(1, self.cores // max(1, min(self.max_parallel, len(self.running) + len(ready))))
        for stage in ready[:max(0, self.max_parallel - len(self.running))]:
            self._start(stage, threads)

    def _ready(self) -> list:
        ready = []
        for key, stage in list(self.waiting.items()):
            deps = [self._state_of(k) for k in stage.deps.values()]
            if stage.kind in ANY_OUTCOME:   # the report: once every input has ended, however
                if "pending" not in deps:
                    ready.append(stage)
            elif any(d in ("failed", "blocked", "missing") for d in deps):
                self.result[key] = "blocked"
                del self.waiting[key]
                self.bar.update()
                self._say(f"blocked {stage.name}: an input failed")
            elif all(d == "done" for d in deps):
                ready.append(stage)
        return ready

    def _state_of(self, key: str) -> str:
        if key in self.result:
            return self.result[key]
        if key in self.waiting or key in self.running or key in self.held:
            return "pending"
        return "done" if manifest.is_done(self.root, key) else "missing"

    def _start(self, stage, threads: int) -> None:
        key = stage.key
        del self.waiting[key]
        holder = lease.live_holder(self.root, key)
        if holder is not None:
            self._wait_for(stage, holder, "not started")
            return
        if _started(self.root, key) != self.planned[key] and manifest.is_done(self.root, key):
            self._finished(stage, "done", f"done {stage.name} meanwhile, by another runner")
            return
        try:
            self.running[key] = (stage, _spawn(self.root, stage, threads, self.code, self.warm))
        except OSError as e:   # its log cannot be opened (disk full, read-only)
            self.result[key] = "failed"
            self.bar.update()
            print(f"error: cannot start {stage.name} ({key}): {e}", file=sys.stderr, flush=True)
            return
        self._say(f"started {stage.name}")

    def reap(self) -> None:
        """Record the end of each stage process that has exited; one that found its lease held waits for the
        holder."""
        for key, (stage, proc) in list(self.running.items()):
            if proc.poll() is None:
                continue
            del self.running[key]
            holder = lease.live_holder(self.root, key) if proc.returncode else None
            if proc.returncode == lease.HELD_EXIT or holder is not None:
                self._wait_for(stage, holder or lease.read(self.root, key) or "another runner", "held")
                continue
            self.result[key] = _finish(self.root, stage, proc.returncode)
            self.bar.update()
            if self.result[key] == "done":
                self._say(f"done {stage.name} ({len(self.result)}/{self.total})")
            else:
                self._say(f"failed {stage.name}: see {log_path(self.root, stage.spec())}")

    def check_held(self) -> None:
        """At most once a second: for each held stage whose holder is gone, take its recorded end, or run it
        here if the holder died without one."""
        if not self.held or time.monotonic() - self.held_checked < 1.0:
            return
        self.held_checked = time.monotonic()
        for key, stage in list(self.held.items()):
            if lease.live_holder(self.root, key) is not None:
                continue
            del self.held[key]
            record = manifest.read(self.root, key)
            status = record["status"] if record else "missing"
            if status in RAN_TO_THE_END + ("failed",):
                self._finished(stage, "failed" if status == "failed" else "done",
                               f"{status} {stage.name}, run by another runner: see {log_path(self.root, stage.spec())}")
            else:   # its runner died without recording an end: run it here (it resumes)
                self.waiting[key] = stage
                self._say(f"{stage.name}: its runner died without recording an end; running it here")

    def _wait_for(self, stage, holder, why: str) -> None:
        self.held[stage.key] = stage
        self._say(f"{why}: {stage.name} is running under {holder}; waiting for it")

    def _finished(self, stage, state: str, msg: str) -> None:
        self.result[stage.key] = state
        self.bar.update()
        self._say(msg)

    def _say(self, msg: str) -> None:
        if self.interactive:
            self.bar.set_postfix_str(", ".join(s.name for s, _ in self.running.values())[:60])
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _catch_stop_signals(stop: list, procs, root) -> dict:
    """Route SIGINT and SIGTERM into `stop` (the run loop checks it), SIGHUP into moving the output to a
    log file; return the handlers replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        if stop:    # a second signal: do not wait for the stages
            for proc in procs():
                _signal_group(proc, signal.SIGKILL)
        stop.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda signum, frame: _output_to_log(root))
    return previous


def _output_to_log(root) -> None:
    """The terminal is gone: from now on this process writes to a log file instead (a write to the dead
    terminal would fail with EIO and end the run)."""
    log = Path(root) / "logs" / f"launch-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    print(f"[{time.strftime('%H:%M:%S')}] terminal closed (SIGHUP): the launch goes on, its output continues "
          f"here ({log})", flush=True)


def _restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)     # the stage and anything it started
    except (ProcessLookupError, PermissionError):
        pass


def stop_processes(procs: list, grace_s: float = STOP_GRACE_S) -> None:
    """SIGINT each process's group, SIGKILL the groups after `grace_s`; return once every one is reaped."""
    for proc in procs:
        _signal_group(proc, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while any(proc.poll() is None for proc in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in procs:      # the leader may be gone while something it started is not
        _signal_group(proc, signal.SIGKILL)
    for proc in procs:
        proc.wait()


def _cancel_running(root: Path, running: dict, waiting: dict, held: dict, signum: int) -> Cancelled:
    name = signal.Signals(signum).name
    stopped_at = time.monotonic()
    stop_processes([proc for _, proc in running.values()])
    print(f"[{time.strftime('%H:%M:%S')}] {name}: stopped {len(running)} running stages in "
          f"{time.monotonic() - stopped_at:.1f}s", file=sys.stderr, flush=True)
    stopped = {}
    for key, (stage, _) in running.items():
        why = f"cancelled: {name} to the launch (pid {os.getpid()})"
        try:
            stopped[key] = record_cancelled(root, key, why)
        except OSError as e:
            print(f"error: cannot record {stage.name} ({key}) as cancelled: {e}", file=sys.stderr, flush=True)
            stopped[key] = "unrecorded"
        try:
            with open(log_path(root, stage.spec()), "a") as f:
                f.write(f"[{time.strftime('%H:%M:%S')}] {stage.name}: {why}; a relaunch resumes it from its "
                        f"last checkpoint\n")
        except OSError:
            pass
    return Cancelled(signum, stopped, [*waiting, *held])


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one, e.g. under taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _spawn(root: Path, stage, share: int, code: Snapshot | None, warm: WarmStarter | None):
    """Start the stage's process: forked by the warm server where there is one (collapse/executors/warm.py),
    else `python -m collapse.run ROOT KEY` from the snapshot (or this checkout)."""
    log = log_path(root, stage.spec())
    log.parent.mkdir(parents=True, exist_ok=True)
    threads = str(stage.config["train"]["threads"] or share)
    env, cwd = stage_env(code, {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "COLLAPSE_EXECUTOR": "local"})
    args = [str(root), stage.key]
    forked = warm.start(args, env, cwd, log) if warm is not None else None
    if forked is not None:
        return forked
    cmd = ([sys.executable, "-m", "collapse.run", *args] if code is None
           else code.run_command(sys.executable, "collapse.run", args))
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True,
                                preexec_fn=_dies_with_launch(os.getpid()))


def _dies_with_launch(launch_pid: int):
    """Linux: the stage gets SIGKILL when the launch dies, so that a launch killed outright (SIGKILL, which
    it cannot catch) leaves no stage running unsupervised in its own process group. The parent-death
    signal follows the thread that started the child: only from the main thread."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None

    def preexec():
        die_with_parent()
        if os.getppid() != launch_pid:    # the launch died before the line above
            os._exit(1)
    return preexec


def _started(root: Path, key: str):
    """When the stage's recorded run started (None: no record): a change means another runner ran it."""
    record = manifest.read(root, key)
    return record.get("started") if record else None


def _finish(root: Path, stage, returncode: int) -> str:
    record = manifest.read(root, stage.key)
    if record is not None and record["status"] in ("done", "failed") and not (returncode and record["status"] == "done"):
        return record["status"]
    if record is not None and record["status"] in RAN_TO_THE_END and not returncode:
        return "done"   # partial: a report that ran while some input had failed; its record says so
    # The process died without recording its end (killed, out of memory): record it.
    try:
        manifest.write(root, {**(record or {}), "kind": stage.kind, "key": stage.key, "name": stage.name,
                              "status": "failed", "error": _exit_error(returncode),
                              "log": str(log_path(root, stage.spec()).relative_to(root)), "ended": manifest.now()})
    except OSError as e:   # disk full or read-only: say so, and let the other branches go on
        print(f"error: stage {stage.name} ({stage.key}) exited with code {returncode} and its failure "
              f"could not be recorded: {e}", file=sys.stderr, flush=True)
    return "failed"


def _exit_error(returncode: int) -> str:
    if returncode == CHANGED_EXIT:
        return "its code snapshot changed since the launch (the log says how): not run; relaunch to take a new one"
    return f"process exited with code {returncode}"
