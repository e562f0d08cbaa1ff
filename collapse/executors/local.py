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
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from collapse import lease, manifest
from collapse.cancel import record_cancelled
from collapse.config import REPO
from collapse.snapshot import CHANGED_EXIT, Snapshot, job_env
from collapse.stages import ANY_OUTCOME, RAN_TO_THE_END, log_path


STOP_GRACE_S = 10.0     # how long stopped stages get to exit on SIGINT before they are SIGKILLed
PR_SET_PDEATHSIG = 1


def _linux_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
    except (OSError, AttributeError):
        return None


_prctl = _linux_prctl()


class Cancelled(Exception):
    """The run was stopped by a signal; `stopped`: the stages that were running (now recorded cancelled,
    or done if they finished meanwhile), `not_started`: those that had not started."""

    def __init__(self, signum: int, stopped: dict, not_started: list):
        self.signum, self.stopped, self.not_started = signum, stopped, not_started
        self.exit_code = 128 + signum
        super().__init__(f"{signal.Signals(signum).name}: stopped {len(stopped)} running stages")


def run(stages: list, root, max_parallel: int = 0, poll_s: float = 0.2, code: Snapshot | None = None) -> dict:
    """Run `stages` (Stage objects, dependency order); return {key: 'done' | 'failed' | 'blocked'}.

    Each stage process imports the project from `code` (a launch's snapshot, checked before it is
    imported); without one, from this checkout. Raises Cancelled on SIGINT or SIGTERM (when run in the
    main thread), with no stage process left."""
    root = Path(root)
    cores = available_cores()
    max_parallel = max_parallel or cores
    waiting = {s.key: s for s in stages}
    running: dict[str, tuple] = {}
    held: dict[str, object] = {}      # stages another runner is running: waited for
    planned = {s.key: _started(root, s.key) for s in stages}
    result: dict[str, str] = {}
    checked = 0.0
    interactive = sys.stderr.isatty()
    bar = tqdm(total=len(stages), unit="stage", dynamic_ncols=True, file=sys.stderr, disable=not interactive)

    def say(msg):
        if interactive:
            bar.set_postfix_str(", ".join(s.name for s, _ in running.values())[:60])
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def state_of(key):
        if key in result:
            return result[key]
        if key in waiting or key in running or key in held:
            return "pending"
        return "done" if manifest.is_done(root, key) else "missing"

    def wait_for(stage, holder, why):
        held[stage.key] = stage
        say(f"{why}: {stage.name} is running under {holder}; waiting for it")

    def finished(key, stage, state, msg):
        result[key] = state
        bar.update()
        say(msg)

    stop: list[int] = []      # the signals received: the first stops the run, a second kills at once
    previous = _catch_stop_signals(stop, lambda: [proc for _, proc in running.values()], root)
    try:
        while (waiting or running or held) and not stop:
            ready = []
            for key, stage in list(waiting.items()):
                deps = [state_of(k) for k in stage.deps.values()]
                if stage.kind in ANY_OUTCOME:   # the report: once every input has ended, however
                    if "pending" not in deps:
                        ready.append(stage)
                elif any(d in ("failed", "blocked", "missing") for d in deps):
                    result[key] = "blocked"
                    del waiting[key]
                    bar.update()
                    say(f"blocked {stage.name}: an input failed")
                elif all(d == "done" for d in deps):
                    ready.append(stage)
            # A stage that runs alone (the teacher) gets every core; a full row of students one each.
            threads = max(1, cores // max(1, min(max_parallel, len(running) + len(ready))))
            for stage in ready[:max(0, max_parallel - len(running))]:
                key = stage.key
                del waiting[key]
                holder = lease.live_holder(root, key)
                if holder is not None:
                    wait_for(stage, holder, "not started")
                    continue
                if _started(root, key) != planned[key] and manifest.is_done(root, key):
                    finished(key, stage, "done", f"done {stage.name} meanwhile, by another runner")
                    continue
                try:
                    running[key] = (stage, _start(root, stage, threads, code))
                except OSError as e:   # its log cannot be opened (disk full, read-only)
                    result[key] = "failed"
                    bar.update()
                    print(f"error: cannot start {stage.name} ({key}): {e}", file=sys.stderr, flush=True)
                    continue
                say(f"started {stage.name}")
            for key, (stage, proc) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[key]
                holder = lease.live_holder(root, key) if proc.returncode else None
                if proc.returncode == lease.HELD_EXIT or holder is not None:
                    wait_for(stage, holder or lease.read(root, key) or "another runner", "held")
                    continue
                result[key] = _finish(root, stage, proc.returncode)
                bar.update()
                if result[key] == "done":
                    say(f"done {stage.name} ({len(result)}/{len(stages)})")
                else:
                    say(f"failed {stage.name}: see {log_path(root, stage.spec())}")
            if held and time.monotonic() - checked >= 1.0:
                checked = time.monotonic()
                for key, stage in list(held.items()):
                    if lease.live_holder(root, key) is not None:
                        continue
                    del held[key]
                    record = manifest.read(root, key)
                    status = record["status"] if record else "missing"
                    if status in RAN_TO_THE_END + ("failed",):
                        finished(key, stage, "failed" if status == "failed" else "done",
                                 f"{status} {stage.name}, run by another runner: see {log_path(root, stage.spec())}")
                    else:   # its runner died without recording an end: run it here (it resumes)
                        waiting[key] = stage
                        say(f"{stage.name}: its runner died without recording an end; running it here")
            time.sleep(poll_s)
        if stop:
            bar.close()
            raise _cancel_running(root, running, waiting, held, stop[0])
    finally:
        _restore_signals(previous)
    bar.close()
    return result


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


def _start(root: Path, stage, share: int, code: Snapshot | None) -> subprocess.Popen:
    log = log_path(root, stage.spec())
    log.parent.mkdir(parents=True, exist_ok=True)
    threads = str(stage.config["train"]["threads"] or share)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "COLLAPSE_EXECUTOR": "local"}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # each stage forms its own process group
    args = [str(root), stage.key]
    if code is None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        cmd, cwd = [sys.executable, "-m", "collapse.run", *args], REPO
    else:
        env = job_env(code, env)
        cmd, cwd = code.run_command(sys.executable, "collapse.run", args), code.path
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True,
                                preexec_fn=_dies_with_launch(os.getpid()))


def _dies_with_launch(launch_pid: int):
    """Linux: the stage gets SIGKILL when the launch dies, so that a launch killed outright (SIGKILL, which
    it cannot catch) leaves no stage running unsupervised in its own process group. The parent-death
    signal follows the thread that started the child: only from the main thread."""
    if _prctl is None or threading.current_thread() is not threading.main_thread():
        return None

    def preexec():
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
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
