"""One run per stage (collapse/lease.py): concurrent launches, local and SLURM, and dead runners.

Every stage's run prints one "starting on HOST pid N" line to its log (run_stage, once it holds the
stage's lease), so a log with two such lines is a stage that ran twice. Everything here is real:
launches and runners are subprocesses, the SLURM tests use the real local cluster (skipped, with
the reason, when `sinfo` does not answer), and kills are SIGKILLs.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from collapse import lease, manifest, plan as planning, status
from collapse import slurm_index
from collapse.executors import local
from collapse.executors.slurm_job import StageJob
from collapse.grid import load_sweep
from helpers import (EVERY, TINY_VAE, child_env, cluster, cluster_answers, data_root, final, held,  # noqa: F401
                     launch_jobs, override, plan_stages, pointer_step, reference, resumed_step, teacher_of, wait_done,
                     wait_for)

REPO = Path(__file__).resolve().parent.parent
# threads fixed: which launch runs a stage must not change its thread count, hence its numbers
SMALL = ["grid=vae_smoke3", *override(TINY_VAE, "train.epochs=2"), "train.threads=1"]
STARTS = re.compile(r"^\[[\d:]+\] .+: starting on ", re.M)


def launch_proc(root, *extra, env=None) -> subprocess.Popen:
    env = {**child_env(), **(env or {})}
    return subprocess.Popen([sys.executable, str(REPO / "sweeps" / "launch.py"), *SMALL, f"results_root={root}",
                             *extra], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(proc, timeout=900) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"launch still running after {timeout}s\n{out}\n{err[-3000:]}")
    return proc.returncode, out + "\n--- stderr\n" + err


def finish_after(proc, said: re.Pattern, then, timeout=900) -> tuple[int, str]:
    """finish(proc), calling `then` once its output has a line matching `said` (a launch's lines are read
    as they come, so a test can open a gate once the launch has said what it saw)."""
    out, err, seen = [], [], threading.Event()

    def read(stream, lines):
        for line in stream:
            lines.append(line)
            if said.search(line):
                seen.set()
        seen.set()   # closed: the launch ended without saying it (the assert below shows its output)
    readers = [threading.Thread(target=read, args=(stream, lines), daemon=True)
               for stream, lines in ((proc.stdout, out), (proc.stderr, err))]
    for r in readers:
        r.start()
    try:
        seen.wait(timeout)
        then()
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        then()
    for r in readers:
        r.join(timeout=10)
    text = "".join(out) + "\n--- stderr\n" + "".join(err)
    assert said.search(text), text
    return proc.returncode, text


def runs_per_stage(root) -> dict:
    """{log name: how many runs started in it}."""
    return {p.name: len(STARTS.findall(p.read_text())) for p in sorted((root / "logs").glob("*.log"))}


def stage_records(root) -> dict:
    return {r["key"]: r for r in manifest.read_all(root) if r.get("kind") != "sweep"}


# ---------------------------------------------------------------- the lease itself (no training)

CONTENDER = """
import sys, time
from collapse import lease
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
try:
    held = lease.acquire(sys.argv[1], "k")
except lease.Held as e:
    print(e)
else:
    print("won", held.taken_from)
    time.sleep(2)
    held.release()
"""


def test_only_one_of_eight_processes_takes_over_a_dead_lease(tmp_path):
    for dead in ({"host": "other-node", "pid": 1, "age": 3600}, {"host": lease.HOST, "pid": 999_999_999, "age": 0}):
        (tmp_path / "leases").mkdir(exist_ok=True)
        forged = lease.path(tmp_path, "k")
        forged.write_text(json.dumps({"host": dead["host"], "pid": dead["pid"], "pidns": lease.PIDNS, "job": None,
                                      "restart": 0, "acquired": 0.0, "token": "dead"}))
        os.utime(forged, (time.time() - dead["age"],) * 2)
        at = time.time() + 1.5     # every contender past its imports, then all at once
        procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(tmp_path), str(at)], env=child_env(),
                                  cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(8)]
        outs = [p.communicate(timeout=60)[0] for p in procs]
        winners = [o for o in outs if o.startswith("won")]
        assert len(winners) == 1 and all(o.startswith("held by ") for o in outs if o not in winners), outs
        # the winner took over the dead lease, or created its own in the instant after another
        # contender had moved the dead one aside (that contender then lost): one winner either way
        assert f"{dead['host']}:{dead['pid']}" in winners[0] or winners[0] == "won None\n", winners
        assert lease.read(tmp_path, "k") is None and os.listdir(tmp_path / "leases") == []


def test_a_runner_that_stalls_past_the_stale_interval_loses_its_lease_and_stops(tmp_path, monkeypatch):
    monkeypatch.setenv(lease.HEARTBEAT_ENV, "0.2")
    monkeypatch.setenv(lease.STALE_ENV, "1")
    holder = subprocess.Popen([sys.executable, "-c", "from collapse import lease; import sys, time; "
                               "lease.acquire(sys.argv[1], 'k'); print('acquired', flush=True); time.sleep(60)",
                               str(tmp_path)], env=child_env(), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "acquired"
        beat = lease.path(tmp_path, "k").stat().st_mtime_ns   # a heartbeat seen, not a time slept
        wait_for("a heartbeat", lambda: lease.path(tmp_path, "k").stat().st_mtime_ns > beat, timeout=10, poll=0.02)
        with pytest.raises(lease.Held):      # alive and beating
            lease.acquire(tmp_path, "k")
        holder.send_signal(signal.SIGSTOP)   # frozen (its pid is alive): only the missing heartbeat tells
        wait_for("the lease to go stale", lambda: lease.live_holder(tmp_path, "k") is None, timeout=10)
        mine = lease.acquire(tmp_path, "k")
        assert "no heartbeat for" in mine.taken_from
        holder.send_signal(signal.SIGCONT)
        assert holder.wait(timeout=10) == lease.HELD_EXIT
        assert "lost" in holder.stderr.read()
        assert lease.read(tmp_path, "k").token == mine.token     # the stopped runner left it alone
        mine.release()
    finally:
        if holder.poll() is None:
            holder.send_signal(signal.SIGCONT)
            holder.kill()
            holder.wait()


# ---------------------------------------------------------------- two local launches

@pytest.mark.slow
def test_two_local_launches_run_every_stage_once_and_report_as_one(tmp_path):
    both, alone = tmp_path / "both", tmp_path / "alone"
    first = launch_proc(both, "cluster=local")
    time.sleep(1)
    second = launch_proc(both, "cluster=local")
    reference_launch = launch_proc(alone, "cluster=local")
    outs = [finish(p) for p in (first, second, reference_launch)]
    for code, text in outs:
        assert code == 0, text
    runs = runs_per_stage(both)
    assert len(runs) == 10 and set(runs.values()) == {1}, runs   # the report too
    assert set(runs_per_stage(alone).values()) == {1}
    recs = stage_records(both)
    assert len(recs) == 10 and all(r["status"] == "done" for r in recs.values()), recs
    assert "waiting for it" in outs[0][1] + outs[1][1], outs      # the teacher at least was contended
    for name in ("vae_smoke3.csv", "vae_smoke3.md"):
        assert (both / "report" / name).read_text() == (alone / "report" / name).read_text(), name
    assert list(lease.folder(both).iterdir()) == []
    print(f"two launches: runs per stage {sorted(set(runs.values()))}; "
          f"waits: {(outs[0][1] + outs[1][1]).count('waiting for it')}")


# ---------------------------------------------------------------- local and SLURM in one root

@pytest.mark.slurm
@pytest.mark.slow
def test_local_launch_waits_for_stages_running_as_slurm_jobs(cluster, tmp_path):  # noqa: F811
    root, gate = tmp_path / "r", tmp_path / "gate"
    # the jobs inherit the gate: the teacher job holds at its first step until the local launch has looked
    submitted = launch_proc(root, "cluster=slurm", "train.batch_size=32", env=held(gate))
    code, text = finish(submitted, timeout=120)
    assert code == 0, text
    index = slurm_index.read_index(root)
    teacher_key, teacher_job = next((k, e["job"]) for k, e in index["stages"].items() if e["kind"] == "teacher")
    holder = wait_for("the teacher job to take its lease", lambda: lease.live_holder(root, teacher_key), timeout=120)
    assert holder.job == teacher_job, holder
    table = subprocess.run([sys.executable, str(REPO / "sweeps" / "status.py"), f"results_root={root}"],
                           capture_output=True, text=True, timeout=60).stdout
    assert re.search(rf"held by {re.escape(lease.HOST)}:\d+ \(job {teacher_job}\), last heartbeat \d+s ago",
                     table), table

    said = re.compile(rf"not started: teacher\[seed=0\] is running under .*\(job {teacher_job}\)")
    code, text = finish_after(launch_proc(root, "cluster=local", "train.batch_size=32"), said, gate.touch)
    assert code == 0, text
    wait_done(launch_jobs(index["launches"][-1]))
    runs = runs_per_stage(root)
    assert len(runs) == 10 and set(runs.values()) == {1}, runs   # the report too
    recs = stage_records(root)
    assert all(r["status"] == "done" for r in recs.values()), recs
    assert recs[teacher_key]["slurm_job_id"] is not None
    print("ran in SLURM jobs: " + ", ".join(sorted(r["name"] for r in recs.values() if r["slurm_job_id"])))


@pytest.mark.slurm
def test_slurm_launch_skips_what_a_local_launch_runs_and_says_so(cluster, tmp_path):  # noqa: F811
    root = tmp_path / "r"
    # its teacher holds at its first step for good (the launch is killed at the end)
    running = launch_proc(root, "cluster=local", "train.batch_size=16", env=held(tmp_path / "never"))
    try:
        sweep = load_sweep([*SMALL, "cluster=local", f"results_root={root}", "train.batch_size=16"])
        teacher = teacher_of(planning.build(sweep))
        holder = wait_for("the local teacher to take its lease", lambda: lease.live_holder(root, teacher.key),
                          timeout=120)
        assert holder.job is None
        rows, _ = status.collect(root)
        row = next(r for r in rows if r.key == teacher.key)
        assert row.state == "running" and row.note.startswith(f"held by {lease.HOST}:{holder.pid}, last heartbeat")
        code, text = finish(launch_proc(root, "cluster=slurm", "train.batch_size=16"), timeout=120)
        assert code == 0, text
        assert (f"not submitted: 1 stage running under a local launch, which SLURM cannot wait on "
                f"(teacher[seed=0] ({teacher.key}) held by {lease.HOST}:{holder.pid}") in text, text
        assert "and 9 stages that depend on them" in text and "nothing submitted" in text, text
        last = slurm_index.read_index(root)["launches"][-1]
        assert last["arrays"] == [] and len(last["held_locally"]) == 10, last
    finally:
        os.killpg(running.pid, signal.SIGKILL)
        running.communicate()


# ---------------------------------------------------------------- a runner killed mid-training

def start_runner(root, key, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "collapse.run", str(root), key], env=child_env(**env), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_after_first_checkpoint(root, key) -> tuple[int, int, float]:
    """(pid, checkpoint step, time of death) of a runner SIGKILLed while training."""
    runner = start_runner(root, key, **held(root.parent / "never", EVERY))   # holds after the first checkpoint
    wait_for("a first checkpoint", lambda: pointer_step(root, key) or runner.poll() is not None, timeout=300)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    killed_at = time.time()
    assert runner.returncode == -signal.SIGKILL
    assert manifest.read(root, key)["status"] == "running" and lease.read(root, key).pid == runner.pid
    return runner.pid, pointer_step(root, key), killed_at


def test_runner_killed_on_this_host_is_taken_over_at_once_and_resumes(tmp_path, data_root, reference):  # noqa: F811
    root = tmp_path / "r"
    teacher = teacher_of(plan_stages(root, data_root, "train.threads=1"))  # as the reference ran
    pid, step, killed_at = kill_after_first_checkpoint(root, teacher.key)
    rows, _ = status.collect(root)
    row = next(r for r in rows if r.key == teacher.key)
    assert row.state == "failed" and f"its runner {lease.HOST}:{pid} died (its process {pid} is gone)" in row.note

    result = local.run([teacher], root)       # the next launch
    assert result == {teacher.key: "done"}
    log = (root / "logs" / f"teacher-{teacher.key}.log").read_text()
    assert f"took over the lease of {lease.HOST}:{pid}: its process {pid} is gone" in log, log
    assert resumed_step(log) == step
    record = manifest.read(root, teacher.key)
    assert final(record) == reference
    took_over = record["started"] - killed_at
    print(f"same host: killed -> taken over by the next launch in {took_over:.1f}s (a new process's start)")


def test_runner_killed_on_another_host_is_taken_over_when_its_lease_goes_stale(
        tmp_path, data_root, reference, monkeypatch):  # noqa: F811
    stale = 4
    monkeypatch.setenv(lease.STALE_ENV, str(stale))
    root = tmp_path / "r"
    teacher = teacher_of(plan_stages(root, data_root, "train.threads=1"))  # as the reference ran
    pid, step, _ = kill_after_first_checkpoint(root, teacher.key)
    # as if it ran on another node: that node's pid, and a heartbeat this thread keeps up until the node is lost
    path = lease.path(root, teacher.key)
    path.write_text(json.dumps({**json.loads(path.read_text()), "host": "other-node"}))
    node_lost = threading.Event()
    beats = []

    def heartbeat():
        while not node_lost.is_set():
            os.utime(path)
            beats.append(time.time())
            node_lost.wait(0.5)

    beating = threading.Thread(target=heartbeat)
    beating.start()
    try:
        record_before = (root / "manifest" / f"{teacher.key}.json").read_bytes()
        files_before = sorted((p, p.stat().st_mtime) for p in (root / "stages" / teacher.key).rglob("*"))
        # held by a live runner elsewhere: a runner exits HELD_EXIT at once, having written nothing
        held = subprocess.run([sys.executable, "-m", "collapse.run", str(root), teacher.key], env=child_env(),
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert held.returncode == lease.HELD_EXIT, held.stdout + held.stderr
        assert f"not run: held by other-node:{pid}, last heartbeat" in held.stdout, held.stdout
        assert (root / "manifest" / f"{teacher.key}.json").read_bytes() == record_before
        assert sorted((p, p.stat().st_mtime) for p in (root / "stages" / teacher.key).rglob("*")) == files_before
    finally:
        node_lost.set()
        beating.join()
    last_beat = beats[-1]

    result = local.run([teacher], root)       # the next launch waits for staleness, then reruns it
    assert result == {teacher.key: "done"}
    log = (root / "logs" / f"teacher-{teacher.key}.log").read_text()
    assert re.search(rf"took over the lease of other-node:{pid}: no heartbeat for [\d.]+s \(stale after {stale}s\)",
                     log), log
    assert resumed_step(log) == step
    record = manifest.read(root, teacher.key)
    assert final(record) == reference
    waited = record["started"] - last_beat
    assert waited >= stale
    print(f"another host: last heartbeat -> taken over in {waited:.1f}s (stale after {stale}s, "
          f"polled every 1s, plus a new process's start)")


HOLDER = """
import sys, time
from collapse import lease
held = lease.acquire(sys.argv[1], sys.argv[2])
print("holding", flush=True)
time.sleep(float(sys.argv[3]))
held.release()
"""


def test_a_slurm_job_that_finds_its_stage_held_waits_for_the_holder_then_finishes_it(tmp_path, data_root,  # noqa: F811
                                                                                    capsys):
    """The race a submission cannot see: a local runner takes the stage between sbatch and the job's
    start. The job (StageJob, here called in this process) waits for the holder to end instead of
    failing, which would cancel its dependents, then runs the stage (nothing was recorded done)."""
    root = tmp_path / "r"
    teacher = teacher_of(plan_stages(root, data_root, "train.threads=1"))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), teacher.key, "3"], env=child_env(),
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    started = time.monotonic()
    result = StageJob(str(root), teacher.key, teacher.name)()
    assert result == {"key": teacher.key, "status": "done"}
    assert holder.wait(timeout=60) == 0 and time.monotonic() - started >= 2.5
    out = capsys.readouterr().out
    assert "not run: held by" in out and out.index("not run: held by") < out.index("starting on"), out
    assert manifest.read(root, teacher.key)["status"] == "done"
