"""One runner per stage: a heartbeat lease file, <results_root>/leases/<key>.json.

Why a lease and not a lock: fcntl/flock locks are unreliable on NFS, Lustre and GPFS (it depends on
mount options and lock daemons), and die silently with a node. A lease needs only what every
shared filesystem does atomically: link() for exclusive creation, rename(), and a file's mtime.

* Taking it: the holder's facts (host, pid, pid namespace, SLURM job id and restart count, acquired
  time, a random token) are written to a unique temporary file, then link()ed to the lease path.
  link fails if the path exists, so one process wins, and a reader never sees a half-written lease.
  On NFS a lost reply can make a successful link report EEXIST: the temporary file's link count
  (2) says it did succeed (the recipe of open(2)).
* Heartbeat: the holder's background thread touches the lease's mtime every HEARTBEAT_S (10 s,
  COLLAPSE_LEASE_HEARTBEAT_S): nothing per training step, and the file is never rewritten.
* Liveness: a lease is stale when its mtime is older than STALE_S (60 s, COLLAPSE_LEASE_STALE_S)
  on the filesystem's own clock (the mtime of a file just created there), so skew between nodes
  does not matter; on the holder's own host and pid namespace a lease whose pid is gone is dead
  at once; a SLURM job requeued (a higher SLURM_RESTART_COUNT of the same job) takes over its
  own earlier incarnation's lease at once.
* Taking over a dead lease: rename it to a name of one's own (one renamer wins; the others get
  ENOENT) and check that the renamed file carries the token judged dead. If it does not, a newer
  lease was renamed by mistake: it is linked back at once (same inode, so its holder's heartbeat
  goes on); only if a third process created a lease in that instant is the displaced holder out,
  and it stops at its next heartbeat (exit HELD_EXIT).
* A holder that finds at a heartbeat that its lease is no longer its own (it stalled past
  STALE_S and was taken over) stops the process at once with HELD_EXIT: never two writers.

No torch here: collapse.status reads leases and must answer fast.
"""
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HELD_EXIT = 3      # exit status of `python -m collapse.run` when another live runner holds the stage
HEARTBEAT_ENV, STALE_ENV = "COLLAPSE_LEASE_HEARTBEAT_S", "COLLAPSE_LEASE_STALE_S"


def heartbeat_s() -> float:
    return float(os.environ.get(HEARTBEAT_ENV, 10))


def stale_s() -> float:
    return float(os.environ.get(STALE_ENV, 60))


def folder(root) -> Path:
    return Path(root) / "leases"


def path(root, key: str) -> Path:
    return folder(root) / f"{key}.json"


def slurm_job() -> str | None:
    """This process's SLURM job as squeue and --dependency name it ('123' or '123_4'), else None."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


HOST, PIDNS = socket.gethostname(), _pid_namespace()


@dataclass
class Holder:
    """What a lease file says, and how long ago its holder last beat (on the filesystem's clock)."""
    host: str
    pid: int
    pidns: str
    job: str | None
    restart: int
    acquired: float
    token: str
    age: float

    def __str__(self) -> str:
        job = f" (job {self.job})" if self.job else ""
        return f"{self.host}:{self.pid}{job}, last heartbeat {self.age:.0f}s ago"

    def dead_because(self) -> str | None:
        """Why this holder can be taken over, or None while it is alive."""
        if self.host == HOST and self.pidns == PIDNS and not pid_alive(self.pid):
            return f"its process {self.pid} is gone"
        if self.age > stale_s():
            return f"no heartbeat for {self.age:.1f}s (stale after {stale_s():g}s)"
        return None


class Held(RuntimeError):
    def __init__(self, holder: Holder):
        super().__init__(f"held by {holder}")
        self.holder = holder


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie (exited, not yet reaped by its parent) is gone too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


_clock: dict = {}     # folder -> (offset of the filesystem's clock from ours, when measured)


def fs_now(where: Path) -> float:
    """Now on `where`'s filesystem clock: the one that stamps heartbeats (server time on NFS)."""
    offset, measured = _clock.get(where, (0.0, -1e9))
    if time.monotonic() - measured > 60:
        probe = where / f".clock.{HOST}.{os.getpid()}.{uuid.uuid4().hex}"
        try:
            before = time.time()
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
            offset = os.stat(probe).st_mtime - (before + time.time()) / 2
            os.unlink(probe)
            _clock[where] = (offset, time.monotonic())
        except OSError:
            pass
    return time.time() + offset


def _parse(p: Path, text: str, mtime: float) -> Holder:
    try:
        d = json.loads(text)
        return Holder(str(d["host"]), int(d["pid"]), str(d.get("pidns", "")), d.get("job"),
                      int(d.get("restart", 0)), float(d["acquired"]), str(d["token"]), fs_now(p.parent) - mtime)
    except (ValueError, KeyError, TypeError):   # not written by this module: only its age can tell
        return Holder("?", -1, "", None, 0, mtime, "?", fs_now(p.parent) - mtime)


def _read_file(p: Path) -> Holder | None:
    try:
        with open(p) as f:
            text = f.read()
            mtime = os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return None
    return _parse(p, text, mtime)


def read(root, key: str) -> Holder | None:
    """The lease of stage `key` as its file says, alive or not; None when there is none."""
    return _read_file(path(root, key))


def live_holder(root, key: str) -> Holder | None:
    """The runner holding stage `key` now, or None when it is free (no lease, or a dead one)."""
    holder = read(root, key)
    return holder if holder is not None and holder.dead_because() is None else None


class Lease:
    """A lease this process holds; `release()` (or leaving the with-block) gives it up."""

    def __init__(self, p: Path, token: str, inode: int, taken_from: str | None):
        self.path, self.token, self.inode = p, token, inode
        self.taken_from = taken_from     # whose dead lease this replaced, and why it was dead
        job = slurm_job()
        self.who = f"{HOST} pid {os.getpid()}" + (f", job {job}" if job else "")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease {p.stem}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(heartbeat_s()):
            try:
                os.utime(self.path)
                mine = os.stat(self.path).st_ino == self.inode
            except FileNotFoundError:
                mine = False
            except OSError:    # a filesystem hiccup: the next beat tries again, staleness is far off
                continue
            if not mine and not self._stop.is_set() and not self._still_mine():
                holder = _read_file(self.path)
                print(f"[{time.strftime('%H:%M:%S')}] lease {self.path} lost (now {holder or 'nobody'}): "
                      f"another runner has the stage; stopping this one", file=sys.stderr, flush=True)
                os._exit(HELD_EXIT)

    def _still_mine(self) -> bool:
        """Second look after a mismatch: a taker may have moved the lease away and is linking it back."""
        for _ in range(20):
            time.sleep(0.05)
            try:
                if os.stat(self.path).st_ino == self.inode:
                    return True
            except FileNotFoundError:
                continue
        return False

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def acquire(root, key: str) -> Lease:
    """Take stage `key`'s lease, taking over a dead holder's; raise Held when a live runner holds it."""
    p = path(root, key)
    token = uuid.uuid4().hex
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    facts = {"host": HOST, "pid": os.getpid(), "pidns": PIDNS, "job": slurm_job(), "restart": restart,
             "acquired": round(time.time(), 3), "token": token, "key": key}
    tmp = p.with_name(f".{p.name}.{token}.tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(facts, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:    # disk full, read-only: say which file, as storage's errors do
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise OSError(e.errno, f"cannot write {p}: {e.strerror or e}") from None
    taken_from = None
    try:
        for _ in range(10):
            inode = _link(tmp, p)
            if inode is not None:
                return Lease(p, token, inode, taken_from)
            holder = read(root, key)
            if holder is None:        # released in between: try again
                continue
            why = holder.dead_because()
            if why is None and holder.job and holder.job == facts["job"] and holder.restart < restart:
                why = f"it is this job's run before requeue {restart}"
            if why is None:
                raise Held(holder)
            if _remove_dead(p, holder.token, token):
                taken_from = f"{holder.host}:{holder.pid}{f' (job {holder.job})' if holder.job else ''}: {why}"
        holder = read(root, key)
        raise Held(holder or Holder("?", -1, "", None, 0, 0.0, "?", 0.0))
    finally:
        tmp.unlink(missing_ok=True)


# link() fails so on filesystems without hard links (some FUSE and object-store mounts)
NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


def _link(tmp: Path, p: Path) -> int | None:
    """Create `p` as `tmp`'s content, exclusively: the new lease's inode, or None when `p` exists."""
    try:
        os.link(tmp, p)
        return os.stat(tmp).st_ino
    except FileExistsError:
        st = os.stat(tmp)
        return st.st_ino if st.st_nlink == 2 else None    # NFS: the link was made, its reply lost
    except OSError as e:
        if e.errno not in NO_LINK:
            raise
    return _create_exclusive(tmp, p)


def _create_exclusive(tmp: Path, p: Path) -> int | None:
    """Without hard links: an O_EXCL create, then the facts (a reader of the empty file in between sees a
    fresh lease of unknown holder: alive, as it is)."""
    try:
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    except OSError as e:
        raise OSError(e.errno, f"cannot create {p} exclusively (neither link() nor O_EXCL works on this "
                               f"filesystem: {e.strerror}); put results_root on a filesystem that has one "
                               "of them (NFS, Lustre, GPFS, ext4 and xfs all do)") from None
    with os.fdopen(fd, "wb") as f:
        f.write(tmp.read_bytes())
        f.flush()
        os.fsync(f.fileno())
    return os.stat(p).st_ino


def _remove_dead(p: Path, dead_token: str, token: str) -> bool:
    """Remove the lease at `p` if it is still the dead one (`dead_token`); True when this call removed it."""
    grabbed = p.with_name(f".{p.name}.{token}.dead")
    try:
        os.rename(p, grabbed)
    except FileNotFoundError:
        return False                          # another taker was first
    holder = _read_file(grabbed)
    if holder is not None and holder.token != dead_token:    # a newer, live lease: put it back
        try:
            os.link(grabbed, p)
        except FileExistsError:
            pass
        grabbed.unlink(missing_ok=True)
        return False
    grabbed.unlink(missing_ok=True)
    return True


def follow(root, key: str, done=lambda: False) -> None:
    """Ranks other than 0 of a multi-task job: wait until rank 0 holds the lease for this very job
    (and restart), or `done()` (the stage is recorded done: rank 0 may find it needs no run); raise
    Held when neither comes within STALE_S (another runner holds the stage)."""
    job, restart = slurm_job(), int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    deadline = time.monotonic() + stale_s()
    while True:
        holder = read(root, key)
        if holder is not None and holder.job == job and holder.restart == restart or done():
            return
        if time.monotonic() > deadline:
            raise Held(holder or Holder("?", -1, "", None, 0, 0.0, "?", 0.0))
        time.sleep(0.2)


def planned_by_launch() -> bool:
    """This runner was started by an executor for a stage its launch found not done (the local
    executor sets COLLAPSE_EXECUTOR; submitit's sbatch script SUBMITIT_EXECUTOR): a stage done and
    intact by the time the lease is taken was finished by another runner meanwhile."""
    return bool(os.environ.get("COLLAPSE_EXECUTOR")) or os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
