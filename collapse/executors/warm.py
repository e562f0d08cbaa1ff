"""Warm starts for the local executor: stage processes forked from one process that imported torch once.

A stage process spends about 2.7 s of a CPU core importing torch, DeepSpeed and the project before it
does any work (measured: torch 2.2 s, the project 0.1 s, DeepSpeed 0.4 s); a grid of tiny stages pays it
dozens of times. So a launch on the local executor starts one warm server (`python -m
collapse.executors.warm`, from the launch's code snapshot), which imports all that once and then forks
each stage on request. The forked stage is what a spawned one is: its own process and session (so the
launch's SIGINT/SIGKILL of its group reaches it and nothing else), its own log on stdout and stderr,
its own environment and working folder, `collapse.run.main` with the same arguments, the same exit
status; it checks the snapshot's content again before it runs, like a spawned job.

Lifetimes: the server dies with the launch (parent-death signal), a stage dies with the server (the
same); the server exits when the launch closes its stdin, after SIGKILLing any stage still running.

Not on a GPU: a process that has touched CUDA cannot fork children that use it, and a GPU stage runs
for minutes, so the server refuses to start where torch sees a GPU (checked through NVML, which leaves
the CUDA runtime untouched), and the launch spawns its stages as before. Any failure of the server
does the same: one line in the launch's output, then plain spawns (`cluster.warm_start=false` asks
for them from the start).

In ps a forked stage shows the server's command line (`... collapse.executors.warm RESULTS_ROOT ...`) and
the name collapse.run.

Protocol, one JSON object a line: the server says {"ready": true} once imported ({"ready": false,
"error"} where it refuses); the launch writes {"id", "argv", "env", "cwd", "log"}; the server answers
{"id", "pid"} once the stage leads its session and {"pid", "exit"} when it has exited (exit as
subprocess's returncode: -N for signal N).
"""
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from collapse.executors.base import stage_env
from collapse.lease import pid_alive

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
READY = "ready"
START_TIMEOUT_S = 120.0    # the server's imports, on a loaded machine


# ---------------------------------------------------------------- the launch's side

MODULE = "collapse.executors.warm"


def starter(root: Path, code, preexec=None) -> "WarmStarter":
    """The launch's warm server (started at its first stage), importing from the stages' own code: `code`, a
    launch's snapshot, or this checkout (None)."""
    env, cwd = stage_env(code, {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})   # it computes nothing itself
    command = ([sys.executable, "-m", MODULE, str(root)] if code is None
               else code.run_command(sys.executable, MODULE, [str(root), str(code.path), code.hash]))
    return WarmStarter(command, env, cwd, Path(root) / "logs" / "warm" / "server.log", preexec)


class WarmStarter:
    """The launch's handle on its warm server: `start(argv, env, cwd, log)` forks a stage and returns a
    Popen-like WarmProcess, or None where the server is not (or no longer) usable."""

    def __init__(self, command: list[str], env: dict, cwd: Path, log: Path, preexec=None):
        self.command, self.env, self.cwd, self.log, self.preexec = command, env, cwd, log, preexec
        self.server: subprocess.Popen | None = None
        self.broken: str | None = None      # why the launch stopped using it
        self.gone: str | None = None        # why it is not there any more (its answers ended)
        self.lock = threading.Condition()
        self.started: dict[int, dict] = {}     # request id -> the server's answer
        self.exits: dict[int, int] = {}        # pid -> exit status
        self.next_id = 0

    def start(self, argv: list[str], env: dict, cwd: Path, log: Path) -> "WarmProcess | None":
        if self.broken is None and self.server is None:
            self._start_server()
        if self.broken is not None:
            return None
        self.next_id += 1   # only the launch's main thread starts stages
        request_id = self.next_id
        request = {"id": request_id, "argv": argv, "env": env, "cwd": str(cwd), "log": str(log)}
        try:
            self.server.stdin.write((json.dumps(request) + "\n").encode())
            self.server.stdin.flush()
        except OSError as e:
            self._give_up(f"cannot reach it: {e}")
            return None
        answer = self._wait(lambda: self.started.get(request_id), START_TIMEOUT_S)
        if answer is None or "pid" not in answer:
            self._give_up((answer or {}).get("error") or self.gone or "no answer to a start")
            return None
        return WarmProcess(self, answer["pid"])

    def _start_server(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as errors:
            try:
                self.server = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               stderr=errors, env=self.env, cwd=self.cwd, start_new_session=True,
                                               preexec_fn=self.preexec)
            except OSError as e:
                self._give_up(f"cannot start it: {e}")
                return
        threading.Thread(target=self._read, daemon=True).start()
        ready = self._wait(lambda: self.started.get(0), START_TIMEOUT_S)
        if not (ready or {}).get(READY):
            self._give_up((ready or {}).get("error") or self.gone or f"it did not come up (see {self.log})")

    def _read(self) -> None:
        """The server's answers, as they come; its end (EOF) ends every stage it had not reported."""
        for line in self.server.stdout:
            message = json.loads(line)
            with self.lock:
                if READY in message:
                    self.started[0] = message
                elif "exit" in message:
                    self.exits[message["pid"]] = message["exit"]
                else:
                    self.started[message["id"]] = message
                self.lock.notify_all()
        with self.lock:
            self.gone = f"it exited (see {self.log})"
            self.lock.notify_all()

    def _wait(self, found, timeout: float):
        deadline = time.monotonic() + timeout
        with self.lock:
            while (value := found()) is None and self.gone is None and time.monotonic() < deadline:
                self.lock.wait(0.5)
            return value

    def _give_up(self, why: str) -> None:
        with self.lock:
            first = self.broken is None
            self.broken = self.broken or why
        if first:
            print(f"warm starts off: {why}; stages start as fresh processes", file=sys.stderr, flush=True)
        self.close()

    def exit_status(self, pid: int) -> int | None:
        """The stage's exit status once it has exited; a stage of a server that is gone died with it."""
        with self.lock:
            if pid in self.exits:
                return self.exits[pid]
            if self.gone is not None and not pid_alive(pid):
                return -signal.SIGKILL
        return None

    def close(self) -> None:
        """Tell the server to end (it SIGKILLs any stage still running) and reap it."""
        server, self.server = self.server, None
        if server is None:
            return
        try:
            server.stdin.close()
        except OSError:
            pass
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class WarmProcess:
    """A forked stage, seen as the executor sees a subprocess.Popen: pid, poll(), wait(), returncode."""

    def __init__(self, starter: WarmStarter, pid: int):
        self.starter, self.pid, self.returncode = starter, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.starter.exit_status(self.pid)
        return self.returncode

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(0.05)
        return self.returncode


# ---------------------------------------------------------------- the server

def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (the parent-death signal)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _name(name: bytes) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, ctypes.c_char_p(name))


def _gpu_seen() -> bool:
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"   # asks NVML, not the CUDA runtime: still fork-safe
    import torch   # heavy: the server's, never the launch's
    try:
        return torch.cuda.is_available()
    finally:
        del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]


def serve(snapshot: str | None, expected_hash: str | None) -> int:
    """The warm server's main: import once, then fork a stage per request until stdin closes."""
    die_with_parent()
    answers = os.fdopen(os.dup(1), "w", buffering=1)   # the protocol; the server's own prints go to stderr
    os.dup2(2, 1)
    if _gpu_seen():
        answers.write(json.dumps({READY: False, "error": "a GPU is visible here"}) + "\n")
        return 1
    from collapse import distributed, run, train   # noqa: F401  heavy: what every stage imports (torch with them), once
    distributed.import_deepspeed()
    answers.write(json.dumps({READY: True, "pid": os.getpid()}) + "\n")
    requests, pending = sys.stdin.fileno(), b""
    children: set[int] = set()
    try:
        while True:
            if select.select([requests], [], [], 0.05)[0]:
                chunk = os.read(requests, 65536)
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    request = json.loads(line)
                    pid = _fork_stage(request, snapshot, expected_hash, answers.fileno(), requests)
                    children.add(pid)
                    answers.write(json.dumps({"id": request["id"], "pid": pid}) + "\n")
            _reap(children, answers)
    finally:
        for pid in children:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
    return 0


def _reap(children: set, answers) -> None:
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            children.discard(pid)
            answers.write(json.dumps({"pid": pid, "exit": os.waitstatus_to_exitcode(status)}) + "\n")


def _fork_stage(request: dict, snapshot, expected_hash, answers, requests) -> int:
    server = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    settled, say_settled = os.pipe()
    pid = os.fork()
    if pid:   # answered once the child leads its own session and writes its log: a signal cannot miss it
        os.close(say_settled)
        os.read(settled, 1)
        os.close(settled)
        return pid
    code = 1
    try:
        os.setsid()
        die_with_parent()
        _name(b"collapse.run")   # what top and ps -o comm show; its command line stays the server's
        if os.getppid() != server:   # the server died before the line above
            os._exit(1)
        os.close(answers)   # the server's pipes: not the stage's
        os.close(requests)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.close(settled)
        os.write(say_settled, b"1")   # its own session and its log: the launch may signal it and read it
        os.close(say_settled)
        code = _run_stage(request, snapshot, expected_hash)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback   # not heavy, but only a failed stage needs it
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _run_stage(request: dict, snapshot, expected_hash) -> int:
    """In the forked child: the spawned stage's environment, then collapse.run.main."""
    import torch   # heavy: imported already, in the server
    from collapse import run   # heavy (torch): imported already, in the server
    from collapse.snapshot import CHANGED_EXIT, tree_hash   # heavy only for the launch, which never calls this
    kept = {k: os.environ[k] for k in ("DS_ACCELERATOR",) if k in os.environ}   # chosen at DeepSpeed's import
    os.environ.clear()
    os.environ.update({**kept, **request["env"]})
    os.chdir(request["cwd"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))   # OpenMP read its variable at import
    if snapshot is not None:
        found = tree_hash(snapshot)
        if found != expected_hash:
            print(f"error: code snapshot {snapshot} changed since its launch (content {found}, launch "
                  f"recorded {expected_hash}): not run; relaunch to take a new snapshot", file=sys.stderr)
            return CHANGED_EXIT
    sys.argv = [run.__file__, *request["argv"]]
    return run.main(request["argv"])


if __name__ == "__main__":   # python -m collapse.executors.warm RESULTS_ROOT [SNAPSHOT HASH]: the root is for ps
    args = sys.argv[2:]
    sys.exit(serve(args[0] if args else None, args[1] if len(args) > 1 else None))
