"""Faults survived: real SIGKILLs of `python -m collapse.run ROOT KEY`, corrupted files, full and
read-only disks, diverging stages. Each test checks that finished records survive, that a rerun
resumes and ends with the same numbers as an uninterrupted run, and that the errors name the file.

Kills at a chosen point use the test hook in collapse/storage.py (COLLAPSE_TEST_KILL_IN_WRITE: the
process SIGKILLs itself inside an atomic write, after the temporary file is complete and before the
rename); the others are SIGKILLs from outside at random times. Data is a tiny idx folder
(data.root), so a stage is ~5 s of interpreter start and a second of training.
"""
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from collapse import grid, manifest, plan as planning, run, storage

from helpers import (BATCH, EPOCHS, EVERY, KILL, N_TRAIN, REPO, STEPS_PER_EPOCH, child_env,  # noqa: F401
                     data_root, final, killed, plan_stages, pointer_step, reference, resumed_step, run_stage,
                     teacher_of, tiny_args, write_idx)

KILL_WINDOW_S = (0.0, 0.3)   # after a run's first new checkpoint: a kill lands anywhere in the next few


def last_checkpoint_before(step: int) -> int:
    """Checkpoints are saved every EVERY steps and at each epoch's end."""
    return max(s for s in range(1, step) if s % EVERY == 0 or s % STEPS_PER_EPOCH == 0)


def assert_no_torn_records(root):
    records = manifest.read_all(root)
    assert not [r for r in records if r["status"] == "unreadable"], records


# ---------------------------------------------------------------- kills

def test_kills_at_checkpoint_weights_and_manifest_writes_lose_at_most_one_interval(tmp_path, data_root, reference):
    root = tmp_path / "r"
    key = teacher_of(plan_stages(root, data_root)).key

    # 1. Killed writing the pointer of the 2nd checkpoint (step 10; its step-10/ folder is complete):
    #    the 1st (step 5) stays in force, so the rerun loses exactly one interval.
    p = run_stage(root, key, kill_in_write="checkpoints/latest.json@2")
    assert killed(p), p.stderr
    assert pointer_step(root, key) == EVERY
    assert manifest.read(root, key)["status"] == "running"

    # 2. Killed writing the best weights at the end of the 2nd epoch that improves (step s): the
    #    newest checkpoint before s stays in force.
    improving = [h["epoch"] for i, h in enumerate(reference["history"])
                 if h["test_loss"] < min([math.inf] + [g["test_loss"] for g in reference["history"][:i]])]
    assert len(improving) >= 2, reference["history"]
    s = improving[1] * STEPS_PER_EPOCH
    p = run_stage(root, key, kill_in_write="best.safetensors@2")
    assert killed(p), p.stderr
    assert resumed_step(p.stdout) == EVERY
    assert pointer_step(root, key) == last_checkpoint_before(s) and s - pointer_step(root, key) <= EVERY

    # 3. Killed writing the stage's `done` record (the 2nd manifest write of the process): the
    #    record stays whole ('running'); the torn temporary file is invisible to readers.
    p = run_stage(root, key, kill_in_write=f"manifest/{key}.json@2")
    assert killed(p), p.stderr
    assert resumed_step(p.stdout) == last_checkpoint_before(s)
    assert manifest.read(root, key)["status"] == "running"
    assert list((root / "manifest").glob(f".{key}.json.*.tmp")), "the hook should have left its temp file"
    assert_no_torn_records(root)

    # 4. The rerun finds the final checkpoint, trains nothing, records the same numbers, and clears
    #    the temporary file the last kill left (each rerun clears those of the kill before it).
    p = run_stage(root, key)
    assert p.returncode == 0, p.stdout + p.stderr
    assert list(root.rglob(".*.tmp")) == []
    assert resumed_step(p.stdout) == EPOCHS * STEPS_PER_EPOCH
    done = manifest.read(root, key)
    assert final(done) == reference
    run.artifact(root, done, "weights")

    # 5. A finished record survives a kill during its own rewrite (a relaunch killed mid-`running` write).
    before = (root / "manifest" / f"{key}.json").read_bytes()
    p = run_stage(root, key, kill_in_write=f"manifest/{key}.json@1")
    assert killed(p)
    assert (root / "manifest" / f"{key}.json").read_bytes() == before
    assert_no_torn_records(root)


def test_random_kills_during_training_resume_to_the_same_result(tmp_path, data_root, reference):
    """SIGKILL from outside at a random moment after each run's first new checkpoint (so the kill lands
    in training whatever the machine's load); each rerun resumes from the newest checkpoint there was."""
    root = tmp_path / "r"
    key = teacher_of(plan_stages(root, data_root)).key
    rng = random.Random(int(os.environ.get("COLLAPSE_FAULT_SEED", "5")))
    at_kill, outs = [], []
    for attempt in range(8):
        start = pointer_step(root, key)
        proc = subprocess.Popen([sys.executable, "-m", "collapse.run", str(root), key], env=child_env(), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if len(at_kill) < 3:
            deadline = time.time() + 180
            while proc.poll() is None and time.time() < deadline and pointer_step(root, key) == start:
                time.sleep(0.01)
            time.sleep(rng.uniform(*KILL_WINDOW_S))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        outs.append(proc.communicate(timeout=300)[0])
        if proc.returncode == 0:
            break
        assert killed(proc)
        at_kill.append(pointer_step(root, key))
        assert_no_torn_records(root)
    assert proc.returncode == 0 and len(at_kill) >= 2, at_kill
    # every rerun resumed from exactly the checkpoint that was newest when the previous run was killed
    assert [resumed_step(out) for out in outs[1:]] == at_kill, (at_kill, outs)
    # under heavy load a late kill can land after the last checkpoint (in eval or the record write),
    # which is a fine fault too; at least one must have interrupted training itself
    assert all(k is not None for k in at_kill) and min(at_kill) < EPOCHS * STEPS_PER_EPOCH, at_kill
    assert final(manifest.read(root, key)) == reference
    print(f"random kills: checkpoint step at each kill {at_kill}")


def test_corrupt_forged_and_legacy_checkpoints_are_discarded_with_a_warning(tmp_path, data_root, reference):
    root = tmp_path / "r"
    key = teacher_of(plan_stages(root, data_root)).key
    ckpt = run.stage_dir(root, key) / "checkpoints"
    model_file = lambda: ckpt / f"step-{pointer_step(root, key)}" / "mp_rank_00_model_states.pt"  # noqa: E731

    p = run_stage(root, key, kill_in_write="checkpoints/latest.json@3")
    assert killed(p) and pointer_step(root, key) == 2 * EVERY

    # truncated: refused by its recorded sha256 before loading, named, discarded; training starts over
    path = model_file()
    os.truncate(path, path.stat().st_size // 2)
    p = run_stage(root, key, kill_in_write="checkpoints/latest.json@3")
    assert killed(p)
    assert "WARNING: discarding the checkpoints" in p.stdout and str(path) in p.stdout and "corrupt" in p.stdout
    assert resumed_step(p.stdout) is None

    # forged: a pickle that runs code, with the pointer's checksum forged to match; weights-only
    # unpickling refuses it and nothing runs
    marker = tmp_path / "PWNED"
    path = model_file()
    path.write_bytes(_evil_pickle(marker))
    pointer = json.loads((ckpt / "latest.json").read_text())
    pointer["files"][path.name] = storage.sha256(path)
    (ckpt / "latest.json").write_text(json.dumps(pointer))
    p = run_stage(root, key, kill_in_write="checkpoints/latest.json@3")
    assert killed(p)
    assert not marker.exists(), "a checkpoint's pickle ran code"
    assert "WARNING: discarding the checkpoints" in p.stdout and "could not be loaded" in p.stdout

    # legacy pointer (written before checksums) over a truncated file: the load fails, is named, discarded
    path = model_file()
    (ckpt / "latest.json").write_text(json.dumps({"tag": path.parent.name}))
    os.truncate(path, 1000)
    p = run_stage(root, key)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "WARNING: discarding the checkpoints" in p.stdout and str(path.parent) in p.stdout
    assert final(manifest.read(root, key)) == reference


def _evil_pickle(marker: Path) -> bytes:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    return pickle.dumps({"module": Evil()})


# ---------------------------------------------------------------- a grid: divergence, corrupt synthetic data

@pytest.mark.slow
def test_diverging_point_fails_alone_and_a_corrupt_synth_shard_is_redone(tmp_path, data_root, monkeypatch):
    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "faults_lr.yaml").write_text(
        "experiment: vae_mnist\nrows:\n  - {train.lr: 0.001}\n  - {train.lr: 1000000.0}\n")
    # a results root no shell could take unquoted
    root = tmp_path / "r $(touch PWNED1); `touch PWNED2` & 'q\""
    env = child_env(COLLAPSE_GRID_DIR=str(grids))
    argv = [sys.executable, "sweeps/launch.py", "grid=faults_lr", f"results_root={root}", *tiny_args(data_root)]
    first = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 1, first.stdout + first.stderr
    assert not list(REPO.glob("PWNED*")) and not list(tmp_path.glob("PWNED*")) and not list(root.glob("PWNED*"))

    records = {r["key"]: r for r in manifest.read_all(root)}
    sweep = next(r for r in records.values() if r["kind"] == "sweep")
    good, bad = sorted(sweep["config"]["points"], key=lambda p: p["label"]["train.lr"])
    # the diverging point: its teacher failed at a named step; nothing downstream of it ran
    t = records[bad["teacher"]]
    assert t["status"] == "failed" and re.match(r"DivergedError: loss is (nan|inf|-inf) at step \d+", t["error"])
    assert bad["student"] not in records and bad["eval"] not in records
    # the other point finished
    for role in ("teacher", "student", "eval", "teacher_eval"):
        assert records[good[role]]["status"] == "done", records[good[role]]
    assert "done: 6 stages ran, 5 failed or blocked" in first.stdout   # the report ran too
    table = (root / "report" / "faults_lr.md").read_text()
    assert "DivergedError" in table

    # corrupt the synthetic-data shard in place: the dependent student fails, naming the file
    student = records[good["student"]]
    synth_key = student["deps"]["synth"]
    shard = root / records[synth_key]["artifacts"]["data"]["path"]
    with open(shard, "r+b") as f:
        f.seek(shard.stat().st_size // 2)
        f.write(b"\xff" * 64)
    p = run_stage(root, student["key"])
    assert p.returncode == 1
    failed = manifest.read(root, student["key"])
    assert failed["status"] == "failed" and "CorruptFileError" in failed["error"] and str(shard) in failed["error"]

    # the relaunch sees the done synth no longer verifies, redoes it, then the student
    again = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert f"stage synth[seed=0] ({synth_key}) is recorded done but file {shard} is corrupt" in again.stderr
    redone = manifest.read(root, synth_key)
    assert redone["status"] == "done" and redone["ended"] > records[synth_key]["ended"]
    run.artifact(root, redone, "data")
    after = manifest.read(root, student["key"])
    assert after["status"] == "done"
    assert final(after) == final(student)   # same synthetic data again, same student
    assert_no_torn_records(root)


# ---------------------------------------------------------------- full and read-only disks

@pytest.fixture
def small_fs(tmp_path):
    """A 48 MiB tmpfs (we are root, so chmod cannot make a folder unwritable; a real filesystem can)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e}); disk-full is not simulated")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_disk_full_and_read_only_give_clear_errors_and_lose_nothing(small_fs, data_root):
    root = small_fs / "results"
    plan = plan_stages(root, data_root, "seeds=[0,1]")
    t0, t1 = [s for s in plan.stages.values() if s.kind == "teacher"]
    assert run_stage(root, t0.key).returncode == 0
    finished = tree(root / "stages" / t0.key) | {"record": (root / "manifest" / f"{t0.key}.json").read_bytes()}

    # fill the disk to ~1 MB free: the running record fits, the first checkpoint (~10 MB) cannot
    free = shutil.disk_usage(small_fs).free
    (small_fs / "filler").write_bytes(b"\0" * (free - 1_000_000))
    p = run_stage(root, t1.key)
    assert p.returncode == 1
    rec = manifest.read(root, t1.key)
    assert rec["status"] == "failed"
    assert rec["error"].startswith("WriteError: cannot write ") and str(run.stage_dir(root, t1.key)) in rec["error"]
    assert "No space left on device" in rec["error"] or "bytes free on its filesystem" in rec["error"], rec["error"]
    print("disk full:", rec["error"])
    # no torn files: no temporaries, no half-written step folder, every record whole
    assert not [p for p in root.rglob("*.tmp")] and not list((run.stage_dir(root, t1.key)).rglob("step-*"))
    assert_no_torn_records(root)
    assert tree(root / "stages" / t0.key) | {"record": (root / "manifest" / f"{t0.key}.json").read_bytes()} == finished

    # read-only: the rerun of a finished stage says so in one line and changes nothing
    (small_fs / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True, timeout=30)
    before = tree(root)
    p = run_stage(root, t0.key)
    assert p.returncode == 1
    assert re.search(rf"error: stage {t0.key} in .*: .*cannot write .*Read-only file system", p.stderr), p.stderr
    assert tree(root) == before


def test_permission_denied_is_a_clear_error_and_changes_nothing(tmp_path):
    """Root ignores permission bits; a child without CAP_DAC_OVERRIDE does not."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not installed: cannot drop CAP_DAC_OVERRIDE")
    root = tmp_path / "r"
    manifest.write(root, {"kind": "teacher", "key": "0123456789abcdef", "name": "t", "status": "done"})
    before = tree(root)
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        d.chmod(0o555)
    code = ("import sys\nfrom collapse import manifest\n"
            "try:\n    manifest.write(sys.argv[1], {'kind': 'teacher', 'key': '0123456789abcdef', 'name': 't', "
            "'status': 'failed'})\nexcept OSError as e:\n    print(e)\n    sys.exit(1)\n")
    p = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps",
                        "-dac_override,-dac_read_search", sys.executable, "-c", code, str(root)],
                       env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        d.chmod(0o755)
    assert p.returncode == 1, p.stdout + p.stderr
    assert re.search(r"cannot write .*0123456789abcdef\.json: Permission denied", p.stdout), p.stdout
    assert tree(root) == before
