"""collapse/stages.py: the rules every backend shares, and the commands that must answer fast without torch."""
import subprocess
import sys

from collapse import stages
from helpers import REPO


def test_downstream_follows_readers_through_any_depth_and_only_through_what_it_is_given():
    reads = {"t": [], "s": ["t"], "m1": ["t", "s"], "m2": ["t", "s"], "e1": ["m1"], "e2": ["m2"],
             "r": ["e1", "e2"]}
    assert stages.downstream({"s"}, reads) == {"s", "m1", "m2", "e1", "e2", "r"}
    assert stages.downstream({"m1"}, reads) == {"m1", "e1", "r"}
    assert stages.downstream(set(), reads) == set()
    # a stage left out of `reads` (already queued, or a report that runs whatever) passes nothing on
    assert stages.downstream({"m1"}, {k: v for k, v in reads.items() if k != "e1"}) == {"m1"}
    assert stages.downstream({"x"}, reads) == {"x"}


def test_latest_sweeps_keeps_the_last_done_record_of_each_grid():
    records = [{"kind": "sweep", "name": "a", "status": "done", "ended": 1, "key": "a1"},
               {"kind": "sweep", "name": "a", "status": "done", "ended": 3, "key": "a3"},
               {"kind": "sweep", "name": "a", "status": "unreadable", "ended": 9, "key": "a9"},
               {"kind": "sweep", "name": "b", "status": "done", "ended": 2, "key": "b2"},
               {"kind": "student", "name": "a", "status": "done", "ended": 5, "key": "s"}]
    assert {k: r["key"] for k, r in stages.latest_sweeps(records).items()} == {"a": "a3", "b": "b2"}
    assert {k: r["key"] for k, r in stages.latest_sweeps(records, "b").items()} == {"b": "b2"}
    assert stages.latest_sweeps(records, "c") == {}


def test_a_task_kind_sorts_after_the_trained_models_and_before_the_evals():
    order = sorted(["report", "eval", "simulation", "teacher", "generation", "synth"], key=stages.kind_rank)
    assert order == ["teacher", "synth", "generation", "simulation", "eval", "report"]


def test_stage_paths_refuse_a_key_that_leaves_the_results_root(tmp_path):
    assert stages.stage_dir(tmp_path, "abc") == tmp_path / "stages" / "abc"
    assert stages.log_path(tmp_path, {"kind": "eval", "key": "abc"}) == tmp_path / "logs" / "eval-abc.log"
    for bad in ("../x", ".hidden", "a/b", ""):
        try:
            stages.stage_dir(tmp_path, bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was allowed")


def test_status_and_cancel_import_neither_torch_nor_submitit():
    code = ("import sys; import collapse.status, collapse.cancel, collapse.stages, collapse.slurm_index; "
            "print(sorted(m for m in ('torch', 'submitit', 'collapse.plan', 'collapse.run') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
