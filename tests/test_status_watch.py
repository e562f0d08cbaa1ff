"""The live view of a sweep: a running stage's progress (step of steps or epoch of epochs, its latest
test metric, the time to go at its own rate), `watch=true` redrawing until every stage has ended, and
`log=NAME` showing or following a stage's log."""
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from collapse import lease, manifest, progress, status, status_live

REPO = Path(__file__).resolve().parent.parent
NO_SLURM = {"squeue_fn": lambda ids: {}, "sacct_fn": lambda ids: {}}
STAGES = {"t0": ("teacher", "teacher[seed=0]"), "s05": ("student", "student[lam=0.5,beta=1,gamma=1,seed=0]"),
          "s00": ("student", "student[lam=0,beta=0,gamma=0,seed=0]")}


def record(root: Path, key: str, state: str) -> None:
    kind, name = STAGES[key]
    manifest.write(root, {"version": 1, "kind": kind, "key": key, "name": name, "status": state,
                          "started": 100.0, "log": f"logs/{kind}-{key}.log", "config": {}, "deps": {},
                          **({} if state == "running" else {"ended": 160.0})})


def fake_sweep(root: Path, states: dict) -> Path:
    """A launched sweep of STAGES, in `states` (a running stage holds its lease, as a runner does)."""
    (root / "manifest").mkdir(parents=True)
    manifest.write(root, {"version": 1, "kind": "sweep", "key": "sweep-1", "name": "g", "status": "done",
                          "ended": 1.0, "config": {"stages": list(STAGES)}})
    for key, state in states.items():
        record(root, key, state)
    return root


def finish(root: Path, key: str, state: str, held: lease.Lease) -> None:
    record(root, key, state)   # a runner writes its record, then lets its lease go
    held.release()


def test_a_running_stage_shows_its_step_its_metric_and_the_time_to_go_at_its_rate(tmp_path):
    root = fake_sweep(tmp_path, {"t0": "done", "s05": "running"})
    now = time.time()
    clock = iter([now - 100, now])   # started 100 s ago, 100 of 400 steps done: 1 step a second
    shown = progress.Writer(root / "stages" / "s05" / progress.FILE, "step", 400, clock=lambda: next(clock))
    shown.update(100, force=True, metric="test_loss", value=0.0812345)
    with lease.acquire(root, "s05"):
        rows, sweeps = status.collect(root, **NO_SLURM)
        text = status.render(rows, root, sweeps)
    row = next(r for r in rows if r.key == "s05")
    assert (row.state, row.progress, row.metric, row.to_go) == ("running", "step 100/400", "test_loss 0.08123", "0:05:00")
    header = next(line for line in text.splitlines() if line.startswith("name"))
    assert header.split()[5:9] == ["progress", "metric", "to", "go"]
    line = next(line for line in text.splitlines() if line.startswith("student[lam=0.5"))
    assert "step 100/400  test_loss 0.08123  0:05:00  held by" in line
    assert next(r for r in rows if r.key == "t0").progress == ""   # done: no progress


def test_an_epoch_budget_reads_in_epochs_and_an_old_run_from_its_log(tmp_path):
    root = fake_sweep(tmp_path, {"t0": "running", "s05": "running"})
    now = time.time()
    clock = iter([now - 320, now - 20])   # 600 of 700 steps in 300 s, written 20 s ago: 100 / 2 - 20 s to go
    shown = progress.Writer(root / "stages" / "t0" / progress.FILE, "step", 700, clock=lambda: next(clock))
    shown.update(600, force=True, epoch=6, epochs=7, metric="test_loss", value=0.5)
    log = root / "logs" / "student-s05.log"   # a run from before progress files: train.py's log lines
    log.parent.mkdir()
    log.write_text("[23:59:50] student[lam=0.5,beta=1,gamma=1,seed=0]: starting on vm pid 1\n"
                   "[00:00:00] student[lam=0.5,beta=1,gamma=1,seed=0]: epoch 1/10 step 100 train 1.2 test 0.9 best 0.9@1\n"
                   "[00:00:05] student[lam=0.5,beta=1,gamma=1,seed=0]: step 150/1000: checkpoint saved; 0.1 s a step\n"
                   "[00:00:10] student[lam=0.5,beta=1,gamma=1,seed=0]: epoch 2/10 step 200 train 1.1 test 0.8 best 0.8@2\n")
    os.utime(log, (now, now))   # its last line was written now: 200 steps in 20 s, 800 to go
    with lease.acquire(root, "t0"), lease.acquire(root, "s05"):
        rows, _ = status.collect(root, **NO_SLURM)
    by_key = {r.key: r for r in rows}
    assert (by_key["t0"].progress, by_key["t0"].metric, by_key["t0"].to_go) == ("epoch 6/7", "test_loss 0.5", "0:00:30")
    assert (by_key["s05"].progress, by_key["s05"].metric, by_key["s05"].to_go) == ("epoch 2/10", "test_loss 0.8",
                                                                                 "0:01:20")


def test_the_training_loop_and_a_chunk_loop_leave_their_progress(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from collapse import partial, train   # torch: only this test trains
    from collapse.experiment import from_dict
    from collapse.tasks import vae
    cfg = from_dict({"model": {"hidden": 16, "latent": 2}, "train": {"epochs": 2, "batch_size": 32}})
    data = vae.real_data(from_dict({"data": {"train_size": 64}}), "train")
    test = vae.real_data(from_dict({"data": {"test_size": 32}}), "test")
    state = train.train(vae, cfg, data, test, tmp_path / "t", log=lambda m: None)
    written = json.loads((tmp_path / "t" / progress.FILE).read_text())
    assert (written["done"], written["total"], written["epoch"], written["epochs"]) == (4, 4, 2, 2)
    assert written["value"] == state.history[-1]["test_loss"] and written["metric"] == "test_loss"

    monkeypatch.setenv(partial.CHUNK_ENV, "4")
    keep = partial.Keep(tmp_path / "e" / "partial", {"seed": 0}, log=lambda m: None)
    partial.batched(keep, "samples", 10, 4, lambda a, b: {"x": torch.arange(a, b)})
    shown = progress.read(tmp_path / "e")
    assert (shown.where(), shown.latest()) == ("samples 10/10", "")


def run_later(seconds: float, action) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()))
    thread.start()
    return thread


def test_watch_redraws_until_every_stage_has_ended_and_says_how_it_went(tmp_path):
    root = fake_sweep(tmp_path, {"t0": "done", "s05": "running", "s00": "running"})
    held = {k: lease.acquire(root, k) for k in ("s05", "s00")}
    out = io.StringIO()
    ending = run_later(1.0, lambda: (finish(root, "s05", "done", held["s05"]), finish(root, "s00", "done", held["s00"])))
    started = time.monotonic()
    code = status_live.watch(root, None, every=0.2, out=out)
    ending.join()
    assert code == 0 and time.monotonic() - started < 5
    tables = out.getvalue().split("--- ")[1:]   # not a terminal: a time line above each table
    assert len(tables) >= 2 and "2 running" in tables[0] and "every 0.2s until every stage has ended" in tables[0]
    assert "3 done, 0 running" in tables[-1] and "the sweep has ended: 3 done" in tables[-1]

    on_terminal = io.StringIO()
    on_terminal.isatty = lambda: True
    status_live.show(on_terminal, True, "the table", "footer")
    assert on_terminal.getvalue().startswith(status_live.CLEAR + "the table")


def test_the_watch_command_exits_1_when_a_stage_failed(tmp_path):
    root = fake_sweep(tmp_path, {"t0": "done", "s05": "running", "s00": "done"})
    held = lease.acquire(root, "s05")
    ending = run_later(1.5, lambda: finish(root, "s05", "failed", held))
    out = subprocess.run([sys.executable, str(REPO / "sweeps" / "status.py"), f"results_root={root}", "--watch",
                          "every=0.3"], capture_output=True, text=True, timeout=30)
    ending.join()
    assert out.returncode == 1, out.stderr
    assert "the sweep has ended: 2 done, 1 failed" in out.stdout and out.stdout.count("--- ") >= 2


def test_watch_stops_when_nothing_has_run_for_a_while(tmp_path):
    root = fake_sweep(tmp_path, {"t0": "done"})   # two stages never started, nothing running
    ticks = iter(range(0, 1000, 10))
    out = io.StringIO()
    code = status_live.watch(root, None, every=10, out=out, sleep=lambda s: None, clock=lambda: next(ticks), idle_s=30)
    assert code == 0 and out.getvalue().count("--- ") == 3
    assert "nothing ran for 30s, the 2 missing stages wait for a launch" in out.getvalue()


def test_log_shows_a_stages_tail_by_name_prefix_or_key_and_follows_it_to_its_end(tmp_path, capsys):
    root = fake_sweep(tmp_path, {"t0": "done", "s05": "running"})
    log = root / "logs" / "student-s05.log"
    log.parent.mkdir()
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    for name in ("student[lam=0.5,beta=1,gamma=1,seed=0]", "student[lam=0.5", "s05"):
        assert status_live.main([f"results_root={root}", f"log={name}", "lines=3"]) == 0
        assert capsys.readouterr().out == "line 97\nline 98\nline 99\n"

    held = lease.acquire(root, "s05")
    rows, _ = status.collect(root, **NO_SLURM)
    row = next(r for r in rows if r.key == "s05")

    def go_on():
        with open(log, "a") as f:
            f.write("line 100\nline 101: done\n")
        finish(root, "s05", "done", held)
    ending = run_later(1.0, go_on)
    out = io.StringIO()
    assert status_live.follow(root, row, 2, every=0.2, out=out) == 0
    ending.join()
    assert out.getvalue() == "line 98\nline 99\nline 100\nline 101: done\n"


def test_an_unknown_or_shared_name_is_one_line_with_close_matches(tmp_path):
    root = fake_sweep(tmp_path, {"t0": "done", "s05": "done", "s00": "done"})
    for name, said in [("studnet[lam=0.5", "close: student[lam=0.5,beta=1,gamma=1,seed=0]"),
                       ("student[", "it names 2 stages, give grid=NAME, a key or a longer name: student[lam=0,beta=0")]:
        out = subprocess.run([sys.executable, str(REPO / "sweeps" / "status.py"), f"results_root={root}",
                              f"log={name}"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr.startswith(f"error: key 'log': value '{name}' is not allowed") and said in out.stderr
        assert out.stderr.count("\n") == 1, out.stderr
