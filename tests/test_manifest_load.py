"""Load held: 64 processes x 100 records written to one manifest at once, with readers running.

Every record is a whole file written atomically (temp file, fsync, rename), so nothing may be lost
or torn, and a reader listing the folder mid-storm sees only whole records. The timing of a
status-style read of 1,000 records is in bench/manifest_load.py (a bench, not a timed test).
"""
import json
import multiprocessing as mp
import os
import time

from collapse import manifest

WRITERS, PER_WRITER = 64, 100
SHARED = "shared-key"   # every writer also rewrites this one record: last writer wins, never a mix


def record(w: int, i: int) -> dict:
    # a realistic size: a trained stage's record carries its per-epoch history
    history = [{"epoch": e, "step": 235 * e, "train_loss": 100.0 + e, "test_loss": 99.0 + e} for e in range(70)]
    return {"kind": "student", "key": f"w{w:02d}-{i:03d}", "name": f"student[w={w},i={i}]", "status": "done",
            "deps": {"teacher": "t" * 16}, "metrics": {"writer": w, "index": i, "history": history}}


def writer(root: str, w: int, go) -> None:
    go.wait()
    for i in range(PER_WRITER):
        manifest.write(root, {**record(w, i), "status": "running"})
        manifest.write(root, record(w, i))
        if i % 10 == 0:
            manifest.write(root, {**record(w, i), "key": SHARED, "name": f"shared by {w}"})


def test_64_writers_lose_and_tear_nothing_while_readers_read(tmp_path):
    root = str(tmp_path / "r")
    os.makedirs(manifest.folder(root))
    ctx = mp.get_context("fork")   # the writers touch only json and os; no torch state is used
    go = ctx.Event()
    procs = [ctx.Process(target=writer, args=(root, w, go)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    go.set()
    reads, seen_max, problems = 0, 0, []
    t0 = time.time()
    while any(p.is_alive() for p in procs) and time.time() - t0 < 300:
        try:
            records = manifest.read_all(root)          # listing while files are renamed into place
            shared = manifest.read(root, SHARED)
        except Exception as e:  # noqa: BLE001 - a reader must never crash on a partial file
            problems.append(f"read_all raised {type(e).__name__}: {e}")
            break
        problems += [r["error"] for r in records if r["status"] == "unreadable"]
        if shared is not None and (shared["status"] != "done" or shared["name"] != f"shared by {shared['metrics']['writer']}"):
            problems.append(f"shared record mixed: {shared}")
        seen_max = max(seen_max, len(records))
        reads += 1
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert problems == [], problems[:5]
    assert reads > 0

    records = manifest.read_all(root)
    assert len(records) == WRITERS * PER_WRITER + 1
    by_key = {r["key"]: r for r in records}
    for w in range(WRITERS):
        for i in range(PER_WRITER):
            r = by_key[f"w{w:02d}-{i:03d}"]
            assert r["status"] == "done" and r["metrics"]["writer"] == w and r["metrics"]["index"] == i
    # the only files besides the records would be temporaries, and none may be left behind
    names = os.listdir(manifest.folder(root))
    assert len(names) == WRITERS * PER_WRITER + 1 and all(n.endswith(".json") for n in names)
    json.loads((manifest.folder(root) / f"{SHARED}.json").read_text())
    print(f"{WRITERS * PER_WRITER * 2 + WRITERS * 10} writes, {reads} concurrent read_all passes "
          f"(up to {seen_max} records each) in {time.time() - t0:.1f}s")


def test_reader_survives_partial_and_foreign_files(tmp_path):
    """What a crash or an older version can leave: flagged 'unreadable', never raised."""
    root = tmp_path / "r"
    folder = manifest.folder(root)
    folder.mkdir(parents=True)
    manifest.write(root, record(0, 0))
    (folder / "torn.json").write_text('{"version": 1, "kind": "stu')                 # torn (no rename)
    (folder / "empty.json").write_text("")
    (folder / "list.json").write_text("[1, 2, 3]")
    (folder / "old.json").write_text(json.dumps({"version": 0, "kind": "student", "key": "old",
                                                  "name": "x", "status": "done"}))
    (folder / "nokey.json").write_text(json.dumps({"version": 1, "status": "done"}))
    (folder / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (folder / ".w00-001.json.abc.tmp").write_text('{"version": 1')                  # a writer's temporary
    (folder / "subdir.json").mkdir()                                                 # not even a file
    records = {r["key"]: r for r in manifest.read_all(root)}
    assert records["w00-000"]["status"] == "done"
    bad = {k for k, r in records.items() if r["status"] == "unreadable"}
    assert bad == {"torn", "empty", "list", "old", "nokey", "binary", "subdir"}
    assert all(records[k]["error"] for k in bad)
    assert manifest.is_done(root, "w00-000") and not manifest.is_done(root, "old")
