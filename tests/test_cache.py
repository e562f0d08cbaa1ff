"""collapse/cache.py without a lock: two processes that build the same folder at once, where flock raises
(Lustre mounted without flock), both end with the one complete folder; a loser's copy is discarded."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collapse import cache

REPO = Path(__file__).resolve().parent.parent

# A builder process: fcntl.flock and lockf raise ENOLCK (as on Lustre without flock) before collapse is
# imported; both builders start their build together (a barrier of files) and write slowly, so both
# find the folder missing and build it; each reports the folder it got and what it read there.
BUILDER = """
import errno, fcntl, json, os, sys, time
from pathlib import Path
def no_locks(*args, **kwargs):
    raise OSError(errno.ENOLCK, "No locks available")
fcntl.flock = fcntl.lockf = no_locks
from collapse import cache
me, barrier = sys.argv[1], Path(sys.argv[2])
def build(folder):
    (barrier / me).touch()
    while len(list(barrier.iterdir())) < 2:
        time.sleep(0.01)
    for i in range(5):
        (folder / f"part{i}.txt").write_text(f"part {i} of the same content\\n")
        time.sleep(0.1)
    (folder / "built_by").write_text(me)
got = cache.cached_dir("thing", "k1", build)
print(json.dumps({"folder": str(got), "files": {p.name: p.read_text() for p in sorted(got.iterdir())}}))
"""


def test_two_builders_at_once_where_flock_raises_both_get_the_same_complete_folder(tmp_path):
    env = {"COLLAPSE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, name, str(barrier)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    got = [json.loads(out) for out, _ in outs]
    assert sorted(p.name for p in barrier.iterdir()) == ["a", "b"]          # both really built it
    assert got[0] == got[1]                                                  # one folder, one content
    assert got[0]["folder"] == str(tmp_path / "cache" / "thing-k1")
    assert sorted(got[0]["files"]) == ["built_by", *(f"part{i}.txt" for i in range(5))]
    assert got[0]["files"]["built_by"] in ("a", "b")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["thing-k1"]   # no copy, no lock file left


def test_no_lock_is_taken_and_a_failed_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAPSE_CACHE", str(tmp_path))
    def boom(folder):
        (folder / "half").write_text("x")
        raise RuntimeError("build failed")
    with pytest.raises(RuntimeError):
        cache.cached_dir("thing", "k2", boom)
    assert list(tmp_path.iterdir()) == []
    calls = []
    def build(folder):
        calls.append(folder)
        (folder / "f").write_text("ok")
    first = cache.cached_dir("thing", "k2", build)
    assert cache.cached_dir("thing", "k2", build) == first and len(calls) == 1 and (first / "f").read_text() == "ok"


def test_no_flock_or_lockf_under_collapse():
    used = [str(p.relative_to(REPO)) for p in (REPO / "collapse").rglob("*.py")
            if any(f"fcntl.{name}(" in p.read_text() or f"import fcntl" in p.read_text()
                   for name in ("flock", "lockf"))]
    assert used == []
