"""What the tests share, in one place: one wait_for, the toy modality's environment and launch, one tiny
config per task, launching sweeps/launch.py, the local SLURM helpers (sacct, squeue, waiting for jobs),
the fault tests' tiny data and stage runs, and the report tests' fabricated sweeps.

No test module imports another test module: what two of them use lives here (tests/test_house.py)."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from collapse import grid, manifest, plan as planning, run, status, storage, train  # noqa: E402
from collapse.config import to_dict  # noqa: E402
from collapse.experiment import from_dict  # noqa: E402
from collapse.reporting import write_reports  # noqa: E402


# ---------------------------------------------------------------- waiting

def wait_for(what: str, cond, timeout: float = 300, poll: float = 0.1, detail=lambda: ""):
    """Poll cond() until it is truthy and return its value; fail after `timeout` s naming `what`, with detail()."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    extra = detail()
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}" + (f"\n{extra}" if extra else ""))


# ---------------------------------------------------------------- one tiny config per task

# VAE: real MNIST rows, one epoch (add the cluster: TINY is the local one, TINY_SLURM the cluster's)
TINY_VAE = ["profile=smoke", "data.train_size=256", "data.test_size=128", "train.epochs=1", "eval.grid_samples=4"]
TINY = ["profile=smoke", "cluster=local", *TINY_VAE[1:]]
TINY_SLURM = ["profile=smoke", "cluster=slurm", *TINY_VAE[1:]]
TINY_DDPM = ["data.train_size=32", "data.test_size=16", "train.steps=2", "train.eval_every_steps=1",
             "train.batch_size=16", "model.block_channels=[8,16,16]", "model.layers_per_block=1",
             "diffusion.timesteps=20", "synth.steps=2", "eval.grid_samples=4", "eval.fid_samples=4"]
TINY_T5 = ["profile=t5_smoke"]       # configs/profile/t5_smoke.yaml: the stand-in model and articles
TINY_TOY = ["grid=toy_lambda", "train.threads=1"]


def override(args: list[str], *changes: str) -> list[str]:
    """args with each `key=value` of changes replacing the same key's entry in place (appended when absent)."""
    out = list(args)
    for change in changes:
        key = change.split("=", 1)[0] + "="
        at = [i for i, a in enumerate(out) if a.startswith(key)]
        if at:
            out[at[0]] = change
        else:
            out.append(change)
    return out


# ---------------------------------------------------------------- launching

def show(out: subprocess.CompletedProcess) -> str:
    return f"exit {out.returncode}\n--- stdout\n{out.stdout}\n--- stderr\n{(out.stderr or '')[-3000:]}"


def launch(*args, env=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    """sweeps/launch.py ARGS from the checkout; with check, a non-zero exit fails the test with its output."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    out = subprocess.run([sys.executable, str(REPO / "sweeps" / "launch.py"), *args], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"launch {args} exited {out.returncode}\n{out.stdout}\n{out.stderr[-4000:]}")
    return out


# ---------------------------------------------------------------- the toy modality (tests/toy_task.py)

TOY_ENV = {"COLLAPSE_TASKS": "toy=toy_task", "COLLAPSE_CONFIG_DIR": str(TESTS / "toy"),
           "COLLAPSE_GRID_DIR": str(TESTS / "toy" / "grids"), "OMP_NUM_THREADS": "1"}


def toy_env(grids=None, **extra) -> dict:
    """This environment with the toy modality named, its grids from `grids` (default tests/toy/grids)."""
    env = {**os.environ, **TOY_ENV, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    if grids is not None:
        env["COLLAPSE_GRID_DIR"] = str(grids)
    return {**env, **extra}


def launch_toy(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """sweeps/launch.py grid=toy_lambda ARGS with the toy environment (or `env`); never checks the exit."""
    return subprocess.run([sys.executable, str(REPO / "sweeps" / "launch.py"), *TINY_TOY, *args],
                          capture_output=True, text=True, env=env or toy_env(), cwd=REPO, timeout=timeout)


# ---------------------------------------------------------------- the local SLURM cluster

GRID_TIMEOUT_S = 240     # a whole tiny grid: ~70 s on 2 busy cores
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}


def cluster_answers() -> str | None:
    """None when a SLURM cluster with accounting answers, else why not."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM cluster: sinfo/sbatch not on PATH (start one with `bash slurm/start.sh`)"
    for cmd in (["sinfo", "-h"], ["sacct", "-n", "-X", "-S", "now-1minute"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError) as e:
            return f"no SLURM cluster: {cmd[0]} does not answer ({e}); start one with `bash slurm/start.sh`"
        if out.returncode != 0:
            return (f"no SLURM cluster: {cmd[0]} failed ({out.stderr.strip()[:200]}); "
                    "start one with `bash slurm/start.sh`")
    return None


@pytest.fixture(scope="module")
def cluster():
    why = cluster_answers()
    if why:
        pytest.skip(why)


def sacct(job_ids, fields=("JobID", "JobName", "State", "Start", "End")) -> dict[str, dict]:
    """{job id: {field: value}} of the jobs (and array tasks) of job_ids; State is its first word."""
    ids = ",".join(sorted({str(j).split("_")[0] for j in job_ids}))
    fields = list(fields)
    out = subprocess.run(["sacct", "-X", "-P", "-n", "-j", ids, "-o", ",".join(fields)], capture_output=True,
                         text=True, timeout=20).stdout
    rows = {}
    for line in out.splitlines():
        row = dict(zip(fields, line.split("|")))
        row["State"] = row["State"].split()[0] if row.get("State") else ""
        rows[row["JobID"]] = row
    return rows


def squeued(fmt: str = "%i") -> set[str]:
    """The queue's jobs, one squeue -r line each in `fmt`; with the default, the jobs' base ids."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", fmt], capture_output=True, text=True, timeout=20).stdout
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return {line.split("_")[0] for line in lines} if fmt == "%i" else set(lines)


def wait_done(job_ids, timeout=GRID_TIMEOUT_S) -> dict[str, dict]:
    """Poll sacct until every job (and array task) of `job_ids` has ended; cancel them on timeout."""
    deadline = time.monotonic() + timeout
    rows = {}
    while time.monotonic() < deadline:
        rows = sacct(job_ids)
        bases = {str(j).split("_")[0] for j in job_ids}
        seen = {r.split("_")[0] for r in rows}
        if bases <= seen and all(r["State"] in TERMINAL for r in rows.values()):
            return rows
        time.sleep(1)
    subprocess.run(["scancel", *sorted({str(j).split("_")[0] for j in job_ids})], timeout=20)
    pytest.fail(f"jobs {sorted(job_ids)} not finished after {timeout}s; sacct: {rows}")


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def launch_jobs(launch: dict) -> list[str]:
    """The jobs one launch submitted: its arrays and its canary."""
    return [a["job"] for a in launch["arrays"]] + ([launch["canary"]["job"]] if launch.get("canary") else [])


def records(root) -> dict:
    return {r["key"]: r for r in status.read_records(root) if r.get("kind") != "sweep"}


def status_table(root, *extra, timeout=60) -> str:
    out = subprocess.run([sys.executable, str(REPO / "sweeps" / "status.py"), f"results_root={root}", *extra],
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout


def table_row(table: str, name: str) -> str:
    lines = [line for line in table.splitlines() if line.startswith(name + " ")]
    assert len(lines) == 1, f"{name} not once in\n{table}"
    return lines[0]


# ---------------------------------------------------------------- faults: a tiny idx data set, stages run alone

EPOCHS, BATCH, EVERY, N_TRAIN = 3, 16, 5, 256        # 16 steps an epoch, 48 in all; checkpoints every 5
STEPS_PER_EPOCH = N_TRAIN // BATCH
KILL = storage.KILL_IN_WRITE_ENV


def write_idx(folder: Path, name: str, images: np.ndarray) -> None:
    header = np.array([2051, len(images), 28, 28], dtype=">i4").tobytes()
    (folder / name).write_bytes(header + images.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A torchvision-layout MNIST stand-in: blurred random blobs, 256 train and 128 test images."""
    folder = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    images = (rng.random((N_TRAIN + 128, 28, 28)) > 0.85).astype(np.float32)
    images = (images + np.roll(images, 1, 1) + np.roll(images, 1, 2)).clip(0, 1) * 255
    write_idx(folder, "train-images-idx3-ubyte", images[:N_TRAIN])
    write_idx(folder, "t10k-images-idx3-ubyte", images[N_TRAIN:])
    return folder


def tiny_args(data_root, *extra) -> list[str]:
    return ["profile=smoke", "cluster=local", f"data.root={data_root}", f"data.train_size={N_TRAIN}",
            "data.test_size=128", f"train.epochs={EPOCHS}", f"train.batch_size={BATCH}",
            f"train.checkpoint_every={EVERY}", "eval.grid_samples=4", *extra]


def plan_stages(root: Path, data_root, *extra, grid_name="vae_smoke3"):
    sweep = grid.load_sweep([f"grid={grid_name}", f"results_root={root}", *tiny_args(data_root, *extra)])
    plan = planning.build(sweep)
    for stage in plan.stages.values():
        run.write_spec(root, stage)
    return plan


def teacher_of(plan):
    return next(s for s in plan.stages.values() if s.kind == "teacher")


def child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", KILL)}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    return env


def held(gate: Path, from_step: int = 0) -> dict:
    """The environment that holds every training step from `from_step` on until `gate` exists (collapse/train.py):
    a stage stays mid-run, however fast or loaded the machine, until the test touches the gate (or for good)."""
    return {train.STEP_GATE_ENV: str(gate), train.STEP_GATE_FROM_ENV: str(from_step)}


def run_stage(root, key, kill_in_write=None, prefix=(), timeout=300) -> subprocess.CompletedProcess:
    env = child_env(**({KILL: kill_in_write} if kill_in_write else {}))
    return subprocess.run([*prefix, sys.executable, "-m", "collapse.run", str(root), key], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def killed(proc) -> bool:
    return proc.returncode == -signal.SIGKILL


def pointer_step(root, key) -> int | None:
    pointer = run.stage_dir(root, key) / "checkpoints" / "latest.json"
    return int(json.loads(pointer.read_text())["tag"].split("-")[1]) if pointer.exists() else None


def resumed_step(stdout: str) -> int | None:
    m = re.search(r"resumed at epoch \d+ batch \d+ step (\d+)", stdout)
    return int(m.group(1)) if m else None


def final(record) -> dict:
    """What must be identical between an interrupted and an uninterrupted run (not the timings)."""
    m = record["metrics"]
    return {"best_test_loss": m["best_test_loss"], "best_epoch": m["best_epoch"], "steps": m["steps"],
            "history": [{k: v for k, v in h.items() if k != "seconds"} for h in m["history"]],
            "weights_sha256": record["artifacts"]["weights"]["sha256"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    """The teacher stage run once, uninterrupted."""
    root = tmp_path_factory.mktemp("reference")
    teacher = teacher_of(plan_stages(root, data_root))
    proc = run_stage(root, teacher.key)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = manifest.read(root, teacher.key)
    assert record["metrics"]["steps"] == EPOCHS * STEPS_PER_EPOCH
    return final(record)


# ---------------------------------------------------------------- the report: fabricated finished sweeps

# write_sweep's rows: (lam, beta, gamma) -> {seed: L_M(Test)}
M1_COEFFS = (0.0, 0.0, 0.0)
TEACHER = {0: 95.0, 1: 96.0, 2: 94.5, 3: 95.5, 4: 96.5, 5: 95.2, 6: 95.8, 7: 96.1}


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def config_of(coeffs, seed, overrides) -> dict:
    cfg = to_dict(from_dict({"task": "vae"}))
    cfg["distill"].update(zip(("lam", "beta", "gamma"), coeffs))
    cfg["train"]["seed"] = seed
    for dotted, value in overrides.items():
        section, field = dotted.split(".")
        cfg[section][field] = value
    return cfg


def write_sweep(root, name, rows, teacher=TEACHER, overrides=None, ended=1.0, with_config=True):
    """A finished one-generation sweep `name`: rows (lam, beta, gamma) -> {seed: L_M(Test)}, teacher {seed: M0}.
    Stage keys depend on the row, seed and overrides only, so sweeps that repeat a point share its records."""
    overrides = overrides or {}
    points = []
    for coeffs, by_seed in rows.items():
        for seed, value in by_seed.items():
            cfg = config_of(coeffs, seed, overrides) if with_config else None
            ev, st = _key("eval", coeffs, seed, overrides), _key("student", coeffs, seed, overrides)
            te, t = _key("teval", seed, overrides), _key("teacher", seed, overrides)
            manifest.write(root, {"kind": "eval", "key": ev, "name": f"eval:{coeffs}{seed}", "status": "done",
                                  "metrics": {"test_loss": value}, "artifacts": {}, "config": cfg})
            manifest.write(root, {"kind": "student", "key": st, "name": "s", "status": "done", "config": cfg})
            manifest.write(root, {"kind": "eval", "key": te, "name": "eval:teacher", "status": "done",
                                  "metrics": {"test_loss": teacher[seed]}, "artifacts": {}, "config": cfg})
            manifest.write(root, {"kind": "teacher", "key": t, "name": "t", "status": "done"})
            points.append({"label": {"distill.lam": coeffs[0], "distill.beta": coeffs[1],
                                     "distill.gamma": coeffs[2], "train.seed": seed},
                           "student": st, "eval": ev, "teacher": t, "teacher_eval": te})
    manifest.write(root, {"kind": "sweep", "key": f"sweep-{name}", "name": name, "status": "done", "ended": ended,
                          "config": {"grid": name, "task": "vae", "plan": "one_generation", "points": points}})


def read_report(root, name):
    write_reports(root)
    with open(root / "report" / f"{name}.csv") as f:
        rows = list(csv.DictReader(f))
    return rows, (root / "report" / f"{name}.md").read_text()


def row_of(rows, coeffs):
    return next(r for r in rows if r["model"] != "M0 (teacher)" and
                (float(r["lambda"]), float(r["beta"]), float(r["gamma"])) == coeffs)


# write_grid's rows: [({dotted coefficient: value}, {seed: metrics})]
M1 = {"distill.lam": 0.0, "distill.beta": 0.0, "distill.gamma": 0.0}
BEST = {"distill.lam": 0.5, "distill.beta": 1.0, "distill.gamma": 1.0}
MISSING = object()   # a grid point or teacher whose eval has no record yet


def key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_grid(root, name: str, rows: list[tuple[dict, dict]], teacher: dict, task: str = "vae",
               metric: str = "test_loss") -> None:
    """A finished one-generation sweep: rows [(coefficients, {seed: metrics dict, a bare value of `metric`,
    or MISSING})], teacher {seed: the same}; an eval MISSING has no record (the point is not run yet)."""
    points = []
    for coeffs, by_seed in rows:
        for seed, scored in by_seed.items():
            cfg = to_dict(from_dict({"task": task}))
            cfg["distill"].update({k.split(".")[1]: v for k, v in coeffs.items()})
            cfg["train"].update(seed=seed, reduction="pixel")
            ev, st = key("eval", coeffs, seed, task), key("student", coeffs, seed, task)
            te, t = key("teval", seed, task), key("teacher", seed, task)   # one teacher a seed
            manifest.write(root, {"kind": "student", "key": st, "name": "s", "status": "done", "config": cfg})
            manifest.write(root, {"kind": "teacher", "key": t, "name": "t", "status": "done", "config": cfg})
            for k, value in ((ev, scored), (te, teacher[seed])):
                if value is not MISSING:
                    metrics = value if isinstance(value, dict) else {metric: value}
                    manifest.write(root, {"kind": "eval", "key": k, "name": "eval", "status": "done",
                                          "metrics": metrics, "artifacts": {}, "config": cfg})
            points.append({"label": {**coeffs, "train.seed": seed}, "student": st, "eval": ev, "teacher": t,
                           "teacher_eval": te})
    manifest.write(root, {"kind": "sweep", "key": f"sweep-{name}", "name": name, "status": "done", "ended": 1.0,
                          "config": {"grid": name, "task": task, "plan": "one_generation", "points": points}})


def report(root, name: str, capsys, part: str = "") -> tuple[list[dict], str]:
    """The report written with every warning an error; (the csv's rows, the markdown)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_reports(root)
    assert capsys.readouterr().err == ""
    with open(root / "report" / f"{name}{part}.csv") as f:
        return list(csv.DictReader(f)), (root / "report" / f"{name}{part}.md").read_text()


# ---------------------------------------------------------------- stage keys: stand-in data and weight folders

PATHS = {"celeba": "data.root", "t5-small": "model.path", "gpt2": "eval.ppl_model.path", "cnn": "data.root"}
NEEDS = {"ddpm_lambda_celeba": ["celeba"], "t5_lambda_cnndm": ["t5-small", "gpt2", "cnn"]}


def folders(base: Path) -> dict:
    out = {}
    for name in PATHS:
        folder = base / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "FINGERPRINT").write_text(f"{name}-v1\n")
        (folder / "config.json").write_text("{}")
        out[name] = folder
    return out
