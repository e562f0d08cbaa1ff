"""Warm starts (collapse/executors/warm.py): a stage forked from the warm server is what a spawned stage
is (its own session, log, environment, exit status, the same trained weights), dies with the server,
and a server that cannot start leaves the launch to spawn its stages."""
import os
import signal
import sys

import pytest

from collapse import manifest
from collapse.executors import warm
from collapse.executors.warm import WarmStarter
from helpers import (REPO, child_env, data_root, final, held, launch_toy, plan_stages, reference, teacher_of,  # noqa: F401
                     toy_env, wait_for)


def starter(root) -> WarmStarter:
    return warm.starter(root, None)   # this checkout's code


def test_a_forked_teacher_trains_the_weights_a_spawned_one_does(tmp_path, data_root, reference):
    plan = plan_stages(tmp_path, data_root)
    teacher = teacher_of(plan)
    warm = starter(tmp_path)
    try:
        log = tmp_path / "teacher.log"
        proc = warm.start([str(tmp_path), teacher.key], child_env(COLLAPSE_EXECUTOR="local"), REPO, log)
        assert proc is not None, (tmp_path / "logs" / "warm" / "server.log").read_text()
        assert os.getsid(proc.pid) == proc.pid          # its own session: the launch's killpg reaches it alone
        assert proc.wait() == 0, log.read_text()
        record = manifest.read(tmp_path, teacher.key)
        assert record["pid"] == proc.pid and record["metrics"]["threads"] == 1
        assert final(record) == reference                # bit for bit the spawned run's (helpers.reference)
        assert "starting on" in log.read_text()          # its output went to its own log
    finally:
        warm.close()


def test_a_killed_stage_reports_the_signal_and_closing_the_server_ends_its_stages(tmp_path, data_root):
    teacher = teacher_of(plan_stages(tmp_path, data_root))
    warm = starter(tmp_path)
    slow = child_env(COLLAPSE_EXECUTOR="local", **held(tmp_path / "never"))   # each fork holds at its first step
    first = warm.start([str(tmp_path), teacher.key], slow, REPO, tmp_path / "a.log")
    wait_for("the forked teacher to start training", lambda: "starting on" in (tmp_path / "a.log").read_text())
    os.killpg(first.pid, signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    second = warm.start([str(tmp_path), teacher.key], slow, REPO, tmp_path / "b.log")
    wait_for("the second fork to start", lambda: "starting on" in (tmp_path / "b.log").read_text())
    warm.close()
    wait_for("the server's stage to die with it", lambda: not os.path.exists(f"/proc/{second.pid}"), timeout=30)


def test_a_server_that_does_not_come_up_leaves_the_launch_to_spawn(tmp_path, capsys):
    broken = WarmStarter([sys.executable, "-c", "import sys; sys.exit(3)"], dict(os.environ), REPO,
                         tmp_path / "warm.log")
    assert broken.start([str(tmp_path), "k"], dict(os.environ), REPO, tmp_path / "k.log") is None
    assert "warm starts off: it exited" in capsys.readouterr().err
    assert broken.start([str(tmp_path), "k"], dict(os.environ), REPO, tmp_path / "k.log") is None   # said once
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_warm_and_spawned_launches_record_the_same_results(tmp_path):
    results = {}
    for mode in ("true", "false"):
        root = tmp_path / mode
        out = launch_toy("cluster=local", f"results_root={root}", f"cluster.warm_start={mode}", env=toy_env())
        assert out.returncode == 0, out.stdout + out.stderr
        assert "warm starts off" not in out.stderr
        records = [manifest.read(root, p.stem) for p in (root / "manifest").glob("*.json")]
        results[mode] = {r["key"]: (r["status"], {k: v for k, v in r["metrics"].items() if k != "history"},
                                    r["artifacts"].get("weights"))
                         for r in records if r["kind"] in ("teacher", "synth", "student", "eval")}
    assert (tmp_path / "true" / "logs" / "warm" / "server.log").exists()
    assert not (tmp_path / "false" / "logs" / "warm" / "server.log").exists()
    assert results["true"] == results["false"] and all(s == "done" for s, _, _ in results["true"].values())
