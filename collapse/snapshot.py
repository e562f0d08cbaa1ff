"""The code a launch runs: a read-only copy of the project's code under <results_root>/code/<hash>/.

A job that starts at 3 a.m., or requeues after a preemption, must run the code its launch was given,
not whatever the checkout holds by then. So a launch copies collapse/, configs/ and sweeps/ into
<results_root>/code/<hash>/ (the hash is of their content: the same code shares one snapshot; a dirty
tree works, and its diff against the commit is kept beside it as dirty.diff), and every stage process
and SLURM job imports from there. Before importing anything, a job hashes the snapshot again with the
launch's own check (VERIFY_SOURCE, run as `python -I -c`): results roots often sit on group-writable
scratch, so a changed snapshot is one line and a failed job, never someone else's code in this one.

Stage keys do not depend on the snapshot: a relaunch after an edit runs new and failed stages from the
new snapshot, and the records say which snapshot made each done stage.
"""
import compileall
import inspect
import json
import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent   # the checkout this launch runs from
PARTS = ("collapse", "configs", "sweeps")   # what a job may import or read from the project's tree
PACKAGED = "_tree"   # an installed package's configs/ and sweeps/ (collapse/_tree/, setup.cfg): not a part of collapse/
INFO = "SNAPSHOT.json"                       # beside the parts, outside the hash: hash, commit, dirty, when
DIFF = "dirty.diff"


class SnapshotError(RuntimeError):
    pass


def tree_hash(base, parts=("collapse", "configs", "sweeps"), sources=None) -> str:
    """sha256 (16 hex digits) over the relative paths (<part>/...) and contents of every file under
    base/<part> (or sources[part]), byte caches and collapse/_tree left out. Standard library only,
    imported here: the job's check runs this source."""
    import hashlib  # torch-free, inside: the job's check runs this function's source alone
    import os  # torch-free, as above
    digest = hashlib.sha256()
    for part in parts:
        top = os.fspath((sources or {}).get(part) or os.path.join(base, part))
        for folder, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not (folder == top and d == "_tree"))
            for name in sorted(files):
                if name.endswith((".pyc", ".pyo")):
                    continue
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    content = f.read()
                rel = part + "/" + os.path.relpath(path, top).replace(os.sep, "/")
                digest.update(f"{rel}\0{len(content)}\0".encode())
                digest.update(content)
    return digest.hexdigest()[:16]


# The job's check: `python -I -c VERIFY_SOURCE SNAPSHOT HASH` exits CHANGED_EXIT with one line if the content changed.
CHANGED_EXIT = 4   # not lease.HELD_EXIT (3)
VERIFY_SOURCE = inspect.getsource(tree_hash) + """
import sys
_found = tree_hash(sys.argv[1])
if _found != sys.argv[2]:
    sys.stderr.write(f"error: code snapshot {sys.argv[1]} changed since its launch (content {_found}, launch "
                     f"recorded {sys.argv[2]}): not run; relaunch to take a new snapshot\\n")
    sys.exit(4)
"""
RUN_MODULE = """
import runpy
sys.path.insert(0, sys.argv[1])
_module, sys.argv = sys.argv[3], [sys.argv[0], *sys.argv[4:]]
runpy.run_module(_module, run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Snapshot:
    hash: str
    path: Path          # <results_root>/code/<hash>: put it first on PYTHONPATH and run from there
    commit: str | None
    dirty: bool | None

    def describe(self) -> str:
        state = "no git" if self.commit is None else f"commit {self.commit[:10]}" + (", dirty" if self.dirty else "")
        return f"code {self.hash} ({state})"

    def verify_command(self, python: str) -> list[str]:
        """Exits CHANGED_EXIT with one line when the snapshot's content is not the one launched."""
        return [python, "-I", "-c", VERIFY_SOURCE, str(self.path), self.hash]

    def run_command(self, python: str, module: str, args: list[str]) -> list[str]:
        """`python -m module args`, from the snapshot, after the check (run it with cwd=self.path)."""
        return [python, "-c", VERIFY_SOURCE + RUN_MODULE, str(self.path), self.hash, module, *args]


def code_dir(root) -> Path:
    return Path(root) / "code"


def _git(args: list[str], repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def sources(repo: Path = REPO) -> dict:
    """Where each part is copied from: repo/<part> in a checkout; installed (no repo/configs), collapse/
    and the configs/ and sweeps/ shipped beside it as package data in collapse/_tree/."""
    if (repo / "configs").is_dir():
        return {part: repo / part for part in PARTS}
    return {"collapse": repo / "collapse", "configs": repo / "collapse" / PACKAGED / "configs",
            "sweeps": repo / "collapse" / PACKAGED / "sweeps"}


def take(root, repo: Path = REPO) -> Snapshot:
    """The snapshot of `repo`'s code under `root`: made (read-only) the first time, checked when it exists."""
    digest = tree_hash(repo, PARTS, sources(repo))
    final = code_dir(root) / digest
    if not final.is_dir():
        _write(final, repo, digest)
    found = tree_hash(final, PARTS)
    if found != digest:
        raise SnapshotError(f"code snapshot {final} does not hold the code it is named for (content {found}): "
                            f"move it away and launch again")
    return read(final)


def _write(final: Path, repo: Path, digest: str) -> None:
    tmp = final.parent / f".{digest}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for part, source in sources(repo).items():
        skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
        shutil.copytree(source, tmp / part, ignore=lambda d, names, top=source: [
            *skip(d, names), *([PACKAGED] if Path(d) == top and PACKAGED in names else [])])
    commit = (_git(["rev-parse", "HEAD"], repo) or "").strip() or None
    dirty = None
    if commit is not None:
        diff = _git(["diff", "HEAD", "--", *PARTS], repo) or ""
        untracked = (_git(["ls-files", "--others", "--exclude-standard", "--", *PARTS], repo) or "").split()
        dirty = bool(diff or untracked)
        if dirty:
            (tmp / DIFF).write_text(diff + "".join(f"# untracked: {u}\n" for u in untracked))
    (tmp / INFO).write_text(json.dumps({"hash": digest, "commit": commit, "dirty": dirty, "source": str(repo),
                                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1) + "\n")
    compileall.compile_dir(tmp / "collapse", quiet=1)   # byte code the jobs can use (outside the hash)
    _make_read_only(tmp)
    try:
        os.rename(tmp, final)
    except OSError:          # another launch of the same code renamed its copy first: use that one
        _make_writable(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise


def _make_read_only(top: Path) -> None:
    for folder, dirs, files in os.walk(top):
        for name in files:
            os.chmod(os.path.join(folder, name), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    for folder, dirs, files in os.walk(top, topdown=False):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o555)
    os.chmod(top, 0o555)


def _make_writable(top: Path) -> None:
    os.chmod(top, 0o755)
    for folder, dirs, files in os.walk(top):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


def read(path) -> Snapshot:
    info = json.loads((Path(path) / INFO).read_text())
    return Snapshot(info["hash"], Path(path), info.get("commit"), info.get("dirty"))


def running() -> Snapshot | None:
    """The snapshot this process imports collapse from; None when it runs from a checkout."""
    path = Path(__file__).resolve().parent.parent
    try:
        return read(path)
    except (OSError, ValueError, KeyError):
        return None


def job_env(snap: Snapshot, env: dict) -> dict:
    """`env` with the snapshot first on PYTHONPATH (modules named in $COLLAPSE_TASKS may follow)."""
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO]
    return {**env, "PYTHONPATH": os.pathsep.join([str(snap.path), *rest])}
