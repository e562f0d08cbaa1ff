"""Sampling and scoring stages resume part-way (collapse/partial.py): a real `python -m collapse.run ROOT KEY`
is SIGKILLed once it has kept a chunk, run again, and must end with the record and the bytes of an
uninterrupted run. For each of DDPM synth, DDPM eval (Inception features), T5 synth (a shard's greedy
summaries) and T5 eval (summaries, ROUGE, perplexities). COLLAPSE_CHUNK_ITEMS makes the tiny sets
several chunks; the uninterrupted run uses the same, so both see the same batches.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from collapse import grid, manifest, partial, plan as planning, run, storage

REPO = Path(__file__).resolve().parent.parent
CHUNK = 4
TIMING = ("generated_tokens_per_s",)   # seconds differ from run to run, resumed or not

DDPM = ["cluster=local", "data.train_size=48", "data.test_size=16", "train.steps=2", "train.eval_every_steps=1",
        "train.batch_size=16", "model.block_channels=[8,16,16]", "model.layers_per_block=1", "diffusion.timesteps=20",
        "synth.steps=20", "eval.grid_samples=4", "eval.fid_samples=16"]
T5 = ["profile=t5_smoke", "cluster=local", "data.train_size=48", "data.test_size=24", "synth.shards=2",
      "synth.batch_size=2", "eval.batch_size=2", "eval.curve_articles=0"]


def child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", storage.KILL_IN_WRITE_ENV)}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", partial.CHUNK_ENV: str(CHUNK), **extra}


def start_stage(root: Path, key: str, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "collapse.run", str(root), key], env=child_env(**env), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_stage(root: Path, key: str, **env) -> str:
    proc = start_stage(root, key, **env)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    return out


def kill_after_first_chunk(root: Path, key: str, loop: str) -> None:
    """Start the stage, SIGKILL it as soon as chunk 0 of its loop `loop` is kept."""
    first = run.stage_dir(root, key) / "partial" / loop / "chunk-00000.safetensors"
    proc = start_stage(root, key)
    deadline = time.time() + 240
    while proc.poll() is None and not first.is_file() and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGKILL, f"the stage ended before it was killed:\n{out}"
    assert first.is_file(), out


def resumed_items(out: str, loop: str) -> tuple[int, int]:
    m = re.search(rf"resuming: (\d+) of (\d+) items already \w+ \(partial/{loop}\)", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def outcome(root: Path, key: str) -> dict:
    """What an interrupted run must share with an uninterrupted one: metrics (less timings), artifacts' contents."""
    record = manifest.read(root, key)
    assert record["status"] == "done", record
    assert not (run.stage_dir(root, key) / "partial").exists()
    return {"metrics": {k: v for k, v in record["metrics"].items() if k not in TIMING},
            "artifacts": {name: contents(root / a["path"]) for name, a in record["artifacts"].items()}}


def contents(path: Path):
    """A file's bytes; a safetensors file's tensors' bytes and metadata (safetensors writes its metadata in
    a hash map's order, which differs from process to process)."""
    if path.suffix != ".safetensors":
        return path.read_bytes()
    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: (str(t.dtype), tuple(t.shape), t.numpy().tobytes())
                              for k, t in storage.load_tensors(path).items()}


def planned(root: Path, grids: Path, name: str, experiment: str, args: list[str]) -> dict:
    """The stages of a one-row grid, their specs written: {kind: stage} (eval: the teacher's)."""
    (grids / f"{name}.yaml").write_text(f"experiment: {experiment}\nrows:\n  - {{distill.lam: 0.0}}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLLAPSE_GRID_DIR", str(grids))
        plan = planning.build(grid.load_sweep([f"grid={name}", f"results_root={root}", *args]))
    for stage in plan.stages.values():
        run.write_spec(root, stage)
    teacher = next(s for s in plan.stages.values() if s.kind == "teacher")
    stages = {s.kind: s for s in plan.stages.values() if s.kind != "eval"}
    stages["eval"] = next(s for s in plan.stages.values() if s.kind == "eval" and s.deps["model"] == teacher.key)
    return stages


TASKS = {"ddpm": ("ddpm_mnist", DDPM), "t5": ("t5_standin", T5)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """trained(task): a results root whose teacher (and pretraining) is done, and its stages; each teacher trained once."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["COLLAPSE_CACHE"] = str(cache)   # the T5 tokenizer and stand-in GPT-2, for the children too
    grids, roots = tmp_path_factory.mktemp("grids"), {}

    def teacher_done(task: str) -> tuple[Path, dict]:
        if task not in roots:
            root = tmp_path_factory.mktemp(task)
            stages = planned(root, grids, f"resume_{task}", *TASKS[task])
            for kind in ("pretrain", "teacher"):   # the T5 stand-in's teacher starts from its pretraining
                if kind in stages:
                    run_stage(root, stages[kind].key)
            roots[task] = root, stages
        return roots[task]
    yield teacher_done
    del os.environ["COLLAPSE_CACHE"]


def clean_and_killed(tmp_path, trained, task: str) -> tuple[Path, Path, dict]:
    base, stages = trained(task)
    return shutil.copytree(base, tmp_path / "clean"), shutil.copytree(base, tmp_path / "killed"), stages


@pytest.mark.parametrize("kind, loop", [("synth", "samples"), ("eval", "fid_features")])
def test_a_killed_ddpm_stage_resumes_to_the_uninterrupted_result(tmp_path, trained, kind, loop):
    clean, killed, stages = clean_and_killed(tmp_path, trained, "ddpm")
    key = stages[kind].key
    run_stage(clean, key)
    kill_after_first_chunk(killed, key, loop)
    done, total = resumed_items(run_stage(killed, key), loop)
    assert CHUNK <= done < total == (48 if kind == "synth" else 16)
    assert outcome(killed, key) == outcome(clean, key)


def test_a_killed_t5_synth_shard_resumes_to_the_uninterrupted_result(tmp_path, trained):
    clean, killed, stages = clean_and_killed(tmp_path, trained, "t5")
    key = stages["synth_shard"].key
    run_stage(clean, key)
    kill_after_first_chunk(killed, key, "summaries")
    done, total = resumed_items(run_stage(killed, key), "summaries")
    assert CHUNK <= done < total == 24
    assert outcome(killed, key) == outcome(clean, key)


def test_a_t5_eval_killed_twice_resumes_to_the_uninterrupted_result(tmp_path, trained):
    """Killed while generating summaries (from outside), then while writing its second chunk of
    perplexities (the write hook of collapse/storage.py): the last run generates nothing again."""
    clean, killed, stages = clean_and_killed(tmp_path, trained, "t5")
    key = stages["eval"].key
    run_stage(clean, key)
    kill_after_first_chunk(killed, key, "summaries")
    proc = start_stage(killed, key, **{storage.KILL_IN_WRITE_ENV: "partial/perplexities/chunk-00001"})
    second = proc.communicate(timeout=300)[0]
    assert proc.returncode == -signal.SIGKILL, second
    assert resumed_items(second, "summaries")[0] >= CHUNK
    last = run_stage(killed, key)
    assert resumed_items(last, "summaries") == (24, 24) and resumed_items(last, "rouge") == (24, 24)
    assert resumed_items(last, "perplexities")[0] == CHUNK
    assert outcome(killed, key) == outcome(clean, key)
