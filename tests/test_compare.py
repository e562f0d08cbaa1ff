"""Two sweeps side by side (sweeps/compare.py, collapse/compare.py) and collapse.results over several
roots, on real tiny runs of the toy modality: root A runs toy_lambda (lam 0 and 1, seeds 0 and 1); root B
starts as a copy of A and launches a toy_lambda whose rows are lam 0 and 2 with synth.size=256, so its
teachers are A's (reused), its synthetic sets and lam-0 students are new (changed), lam 1 is only in A
and lam 2 only in B."""
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

import collapse
from helpers import toy_env

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow   # two launches of the toy grid: about a minute and a half on 2 cores


def env(grid_dir) -> dict:
    return toy_env(grid_dir)


def run(script: str, *args, grid_dir=TESTS / "toy" / "grids", timeout=600):
    return subprocess.run([sys.executable, str(REPO / "sweeps" / script), *map(str, args)], capture_output=True,
                          text=True, env=env(grid_dir), cwd=REPO, timeout=timeout)


def launched(*args, grid_dir=TESTS / "toy" / "grids"):
    out = run("launch.py", "grid=toy_lambda", "cluster=local", "profile=smoke", "train.threads=1", "seeds=[0,1]",
              *args, grid_dir=grid_dir)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    top = tmp_path_factory.mktemp("compare")
    a, b, grids = top / "a", top / "b", top / "grids"
    launched(f"results_root={a}")
    shutil.copytree(a, b, symlinks=True)   # A's tensorboard/ tree stays links (into B's own stages/: relative)
    grids.mkdir()
    (grids / "toy_lambda.yaml").write_text("experiment: toy\nrows:\n  - {distill.lam: 0.0}\n  - {distill.lam: 2.0}\n")
    launched(f"results_root={b}", "synth.size=256", grid_dir=grids)
    return a, b


def records(root) -> dict:
    """name -> record of the stages of the root's latest toy_lambda sweep."""
    found = [json.loads(p.read_text()) for p in (root / "manifest").glob("*.json")]
    sweep = max((r for r in found if r["kind"] == "sweep"), key=lambda r: r["ended"])
    return {r["name"]: r for r in found if r["key"] in sweep["config"]["stages"]}


def stage_lines(out: str) -> dict:
    """name -> (state, keys, the 'differs:' line under it or '')."""
    lines, found = out.splitlines(), {}
    for i, line in enumerate(lines):
        for state in ("reused", "changed", "only in A", "only in B"):
            if line.startswith(state + " "):
                name, keys = line[len(state):].split(None, 1)
                nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
                found[name] = (state, keys.strip(), nxt if nxt.startswith("differs:") else "")
    return found


def test_two_roots_line_up_by_name_and_key(roots):
    a, b = roots
    out = run("compare.py", a, b)
    assert out.returncode == 0, out.stderr
    ra, rb = records(a), records(b)
    assert "stages: 4 reused, 7 changed, 4 only in A, 4 only in B" in out.stdout
    lines = stage_lines(out.stdout)
    for seed in (0, 1):
        for name in (f"teacher[seed={seed}]", f"eval:teacher[seed={seed}]"):
            assert ra[name]["key"] == rb[name]["key"]
            assert lines[name][:2] == ("reused", ra[name]["key"])
        synth = f"synth[seed={seed}]"
        assert lines[synth][:2] == ("changed", f"{ra[synth]['key']} -> {rb[synth]['key']}")
        assert "synth.size: None -> 256" in lines[synth][2]           # the key's field, A's value -> B's
        assert "results_root" in lines[synth][2].split("not in the key:")[1]   # outside the key: named apart
        student = f"student[lam=0,seed={seed}]"
        assert lines[student][0] == "changed" and "input synth" in lines[student][2]
        assert "synth.size: None" not in lines[student][2]   # a student's key holds its synth's key, not synth.size
        assert lines[f"student[lam=1,seed={seed}]"][0] == "only in A"
        assert lines[f"eval:student[lam=1,seed={seed}]"][0] == "only in A"
        assert lines[f"student[lam=2,seed={seed}]"][0] == "only in B"
    assert set(lines) == set(ra) | set(rb)


def test_per_row_difference_is_paired_over_seeds_with_teacher_and_synth_named(roots):
    from scipy import stats
    a, b = roots
    out = run("compare.py", a, b).stdout
    rows = {line.split(":", 1)[0].strip(): line for line in out.splitlines() if line.startswith("  ")}
    ra, rb = records(a), records(b)
    diffs = [rb[f"eval:student[lam=0,seed={s}]"]["metrics"]["test_loss"]
             - ra[f"eval:student[lam=0,seed={s}]"]["metrics"]["test_loss"] for s in (0, 1)]
    assert all(d != 0 for d in diffs)   # another synthetic set: other numbers
    half = stats.t.ppf(0.975, 1) * statistics.stdev(diffs) / 2 ** 0.5
    assert f"B - A {statistics.fmean(diffs):+.4g} +- {half:.3g} (95%, paired t (n=2)" in rows["lam=0"]
    assert rows["lam=0"].endswith("teacher shared, synthetic set different")
    assert "B - A +0 +- 0" in rows["M0"] and rows["M0"].endswith("teacher shared")   # the same teacher evals
    assert "B no such row; B - A n/a" in rows["lam=1"] and "A no such row" in rows["lam=2"]
    assert "NLL (test_loss, lower is better)" in out


def test_two_sweeps_of_one_root_compare_as_the_two_roots_do(roots):
    a, b = roots
    older = next(json.loads(p.read_text()) for p in (a / "manifest").glob("sweep-*.json"))["key"]
    out = run("compare.py", f"{b}:{older}", f"{b}:toy_lambda")
    assert out.returncode == 0, out.stderr
    assert "stages: 4 reused, 7 changed, 4 only in A, 4 only in B" in out.stdout
    assert stage_lines(out.stdout) == stage_lines(run("compare.py", a, b).stdout)


def test_a_wrong_side_is_one_line_naming_what_is_allowed(roots, tmp_path):
    a, b = roots
    out = run("compare.py", tmp_path / "nothing", b)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert f"argument A: value '{tmp_path / 'nothing'}' has no manifest/" in out.stderr
    out = run("compare.py", a, f"{b}:no_such_grid")
    assert out.returncode == 2 and f"names no sweep in {b}; allowed: {b}:toy_lambda" in out.stderr
    out = run("compare.py", a)
    assert out.returncode == 2 and "expected A B [metric=NAME]" in out.stderr
    out = run("compare.py", "--help")
    assert out.returncode == 0 and "usage: python sweeps/compare.py A B" in out.stdout


def test_results_of_two_roots_tags_each_record_with_its_root_and_sweep(roots):
    a, b = roots
    one, both = collapse.results(a), collapse.results(a, b)
    n_b = len([p for p in (b / "manifest").glob("*.json") if not p.name.startswith("sweep-")])
    assert len(both) == len(one) + n_b
    assert list(both["root"].unique()) == [str(a), str(b)]          # in the order given
    assert (both.loc[both["root"] == str(a), "key"].tolist() == one["key"].tolist())
    assert set(both["sweep"].dropna()) == {"toy_lambda"}
    in_b = both[both["root"] == str(b)].set_index("name")
    assert in_b.loc["student[lam=2,seed=0]", "sweep"] == "toy_lambda"


def test_tensorboard_names_runs_by_grid_and_stage_with_their_hparams(roots):
    """collapse/tensorboard_names.py: <root>/tensorboard/<grid>/<stage name> as TensorBoard itself reads it."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata
    from collapse import tensorboard_names
    a, b = roots
    top = b.parent / "b_tensorboard"
    shutil.copytree(b, top, symlinks=True)   # the other tests read b as the launches left it
    stale = top / "tensorboard" / "toy_lambda" / "student[lam=1,seed=0]"   # A's student, not in B's latest sweep
    assert stale.is_symlink()   # A's launch linked it as it trained
    tensorboard_names.link_all(top)
    assert not stale.exists() and not stale.is_symlink()   # removed: no latest sweep lists it
    tensorboard_names.link_all(top)   # again: the same tree, no second hparams
    stale.symlink_to(top / "stages")   # stale again: removed again
    tensorboard_names.link_all(top)
    trained = {r["name"]: r for r in records(top).values() if r["kind"] in ("teacher", "student")}
    assert sorted(trained) == ["student[lam=0,seed=0]", "student[lam=0,seed=1]", "student[lam=2,seed=0]",
                               "student[lam=2,seed=1]", "teacher[seed=0]", "teacher[seed=1]"]   # B's latest sweep
    events = EventMultiplexer()
    events.AddRunsFromDirectory(str(top / "tensorboard"))
    events.Reload()
    assert sorted(events.Runs()) == sorted(f"toy_lambda/{name}" for name in trained)
    content = events.PluginRunToTagToContent("hparams")
    for name, record in trained.items():
        run = f"toy_lambda/{name}"
        start = metadata.parse_session_start_info_plugin_data(content[run][metadata.SESSION_START_INFO_TAG])
        got = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
        want = {"kind": record["kind"], "train.seed": record["config"]["train"]["seed"]}
        if record["kind"] == "student":
            want["distill.lam"] = record["config"]["distill"]["lam"]
        assert got == want, name
        best = events.GetAccumulator(run).Tensors(tensorboard_names.BEST)
        assert len(best) == 1 and best[0].tensor_proto.float_val[0] == pytest.approx(record["metrics"]["best_test_loss"])
        assert events.GetAccumulator(run).Tensors("loss/test")   # the curves train.py wrote, through the link
        run_dir = top / "stages" / record["key"] / "tensorboard"
        assert (run_dir / tensorboard_names.MARKER).is_file()   # train.py wrote its hparams as it ended
        assert not list(run_dir.glob("*.hparams"))              # so link_all (twice) added none
    # a stage trained before train.py wrote hparams (no marker): link_all writes them once, not twice
    old = top / "stages" / trained["teacher[seed=0]"]["key"] / "tensorboard"
    (old / tensorboard_names.MARKER).unlink()
    tensorboard_names.link_all(top)
    tensorboard_names.link_all(top)
    assert len(list(old.glob("*.hparams"))) == 1 and (old / tensorboard_names.MARKER).is_file()
