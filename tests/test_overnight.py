"""The overnight paper-scale run as its users type it: cluster=auto plans what cluster=slurm (or local)
plans, the paper grids ask for GPUs with sized time limits and print GPU-hours, the dry run warns about
node-local results roots, GPU-sized stages without a GPU and partition limits, the launch lock needs
no flock, a test session never submits to a scheduler the project did not start, and a local launch
outlives its terminal."""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collapse import lease, preflight, tasks
from collapse import slurm_index
from collapse.grid import load_sweep
from collapse.plan import build
from collapse.tasks import gpu_rates
from helpers import REPO, TINY, TINY_VAE, cluster, launch  # noqa: F401

KEY_ARGS = ["grid=vae_coeffs_key", "seeds=[0]", *TINY_VAE[:3]]


def dry(*args, env=None):
    out = subprocess.run([sys.executable, str(REPO / "sweeps" / "launch.py"), *args, "dry_run=true"],
                         capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    assert out.returncode == 0, out.stderr
    return out.stdout


def without_header(text: str) -> str:
    return "\n".join(text.splitlines()[1:])   # the header names the cluster file; the rest must match


@pytest.mark.slurm
def test_auto_on_a_slurm_machine_plans_exactly_what_cluster_slurm_plans(cluster, tmp_path):  # noqa: F811
    root = f"results_root={tmp_path / 'r'}"
    auto, explicit = dry(*KEY_ARGS, root), dry(*KEY_ARGS, root, "cluster=slurm")
    assert "on slurm (configs/cluster/slurm.yaml)" in auto.splitlines()[0]
    assert auto == explicit
    assert re.search(r"<job \d+> teacher x1 \(level 0\): --time=240 ", auto), auto   # slurm.yaml's per-kind time


def test_auto_without_slurm_plans_exactly_what_cluster_local_plans(tmp_path):
    root, off = f"results_root={tmp_path / 'r'}", {"COLLAPSE_SLURM": "off"}
    auto, local = dry(*KEY_ARGS, root, env=off), dry(*KEY_ARGS, root, "cluster=local", env=off)
    assert "on local (configs/cluster/local.yaml)" in auto.splitlines()[0]
    assert auto == local


def celeba_folder(tmp_path: Path) -> Path:
    return tmp_path   # the grid's config checks a directory; the image count is the launch's check


def t5_dirs(tmp_path: Path) -> list[str]:
    for name in ("t5", "gpt2", "cnn"):
        (tmp_path / name).mkdir(exist_ok=True)
        if name != "cnn":
            (tmp_path / name / "config.json").write_text("{}")
    return [f"model.path={tmp_path / 't5'}", f"eval.ppl_model.path={tmp_path / 'gpt2'}", f"data.root={tmp_path / 'cnn'}"]


@pytest.mark.parametrize("grid", ["ddpm_lambda_celeba", "t5_lambda_cnndm"])
def test_paper_grids_ask_for_a_gpu_for_every_stage_but_the_report_with_limits_from_the_step_budgets(grid, tmp_path):
    extra = [f"data.root={tmp_path}"] if grid.startswith("ddpm") else t5_dirs(tmp_path)
    sweep = load_sweep([f"grid={grid}", "cluster=slurm", *extra])
    plan = build(sweep)
    for stage in plan.stages.values():
        res = sweep.base.cluster.resources(stage.kind)
        if stage.kind == "report":
            assert res.gpus_per_node == 0
            continue
        assert res.gpus_per_node >= 1, stage.kind
        stated = tasks.get(stage.config['task']).gpu_seconds(stage.kind, stage.config)
        # the limit covers the stated estimate with room; past it the stage resumes after requeue
        assert stated is not None and stated <= res.time_min * 60, (stage.kind, stated, res.time_min)
    from collapse import dryrun
    todo = list(plan.stages.values())
    import io
    out = io.StringIO()
    dryrun.describe(sweep, plan, todo, tmp_path / "r", "slurm", out)
    text = out.getvalue()
    hours = float(re.search(r"estimate: ([\d.]+) GPU-hours", text).group(1))
    assert hours == pytest.approx(sum(tasks.get(s.config['task']).gpu_seconds(s.kind, s.config) or 0 for s in todo) / 3600, rel=0.01)
    assert "--gpus-per-node=1" in text and "stated rate on 1 A100" in text


def test_the_stated_flops_are_the_paper_models_flops():
    """gpu_rates' FLOPs constants against a count of the models themselves (meta device: no weights)."""
    from torch.utils.flop_counter import FlopCounterMode
    import torch
    from collapse.models.unet import UNet
    from transformers import T5Config, T5ForConditionalGeneration
    with torch.device("meta"):
        unet, t5 = UNet().net, T5ForConditionalGeneration(T5Config(
            d_model=512, d_ff=2048, d_kv=64, num_layers=6, num_decoder_layers=6, num_heads=8, vocab_size=32128,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
        assert sum(p.numel() for p in unet.parameters()) == 38_390_019
        with FlopCounterMode(display=False) as count, torch.no_grad():
            unet(torch.zeros(1, 3, 64, 64), torch.zeros(1, dtype=torch.long))
        assert count.get_total_flops() == pytest.approx(gpu_rates.UNET_FORWARD_FLOPS_64, rel=0.01)
        with FlopCounterMode(display=False) as count, torch.no_grad():
            t5(input_ids=torch.ones(1, 1024, dtype=torch.long), labels=torch.ones(1, 128, dtype=torch.long))
        assert count.get_total_flops() == pytest.approx(gpu_rates.T5_FORWARD_FLOPS, rel=0.01)


def test_gpu_sized_stages_without_a_gpu_are_warned(tmp_path):
    sweep = load_sweep(["grid=ddpm_lambda_celeba", "cluster=slurm", f"data.root={tmp_path}", "cluster.gpus_per_node=0"])
    stages = list(build(sweep).stages.values())
    notes = preflight.warnings(sweep, stages, tmp_path, "slurm", {s.key: 0.0 for s in stages}, limits={})
    gpu = [n for n in notes if n.startswith("GPU-sized stages ask for no GPU")]
    assert len(gpu) == 1 and "teacher x1" in gpu[0] and "cluster.gpus_per_node=1" in gpu[0], notes
    small = load_sweep([*KEY_ARGS, "cluster=slurm"])   # the VAE on MNIST: CPU-sized, nothing to say
    small_stages = list(build(small).stages.values())
    assert not any("GPU" in n for n in preflight.warnings(small, small_stages, tmp_path, "slurm", {}, limits={}))
    standin = load_sweep(["grid=t5_lambda", "profile=t5_cpu", "cluster=slurm"])   # ACLSum's 450 pairs, not CNN/DM's size
    standin_stages = list(build(standin).stages.values())
    assert not any("GPU" in n for n in preflight.warnings(standin, standin_stages, tmp_path, "slurm", {}, limits={}))


def test_results_root_on_a_node_local_filesystem_is_warned(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/vda / ext4 rw 0 0\ntmpfs /scratch/local tmpfs rw 0 0\n"
                      "srv:/export /shared nfs4 rw 0 0\nfs@o2ib:/lustre /lustre lustre rw 0 0\n")
    assert "node-local (tmpfs mounted on /scratch/local)" in preflight.shared_filesystem_note(
        Path("/scratch/local/me/r"), str(mounts))
    assert preflight.shared_filesystem_note(Path("/shared/me/r"), str(mounts)) is None
    assert preflight.shared_filesystem_note(Path("/lustre/me/r"), str(mounts)) is None
    assert "under /tmp" in preflight.shared_filesystem_note(Path("/tmp/me/r"), str(mounts))
    assert "not a filesystem known to be shared" in preflight.shared_filesystem_note(Path("/home/me/r"), str(mounts))


def test_a_dry_run_into_tmp_on_slurm_says_so(tmp_path):
    sweep = load_sweep([*KEY_ARGS, "cluster=slurm"])
    plan = build(sweep)
    import io
    from collapse import dryrun
    out = io.StringIO()
    dryrun.describe(sweep, plan, list(plan.stages.values()), tmp_path / "r", "slurm", out)
    assert re.search(r"results_root /tmp/\S+ is node-local", out.getvalue()), out.getvalue()


def test_time_limits_against_estimates_and_the_partition():
    assert preflight.slurm_minutes("1-00:00:00") == 1440 and preflight.slurm_minutes("2:30:00") == 150
    assert preflight.slurm_minutes("45") == 45 and preflight.slurm_minutes("infinite") is None
    sweep = load_sweep([*KEY_ARGS, "cluster=slurm", "cluster.stages.teacher.time_min=600"])
    stages = list(build(sweep).stages.values())
    teacher = next(s for s in stages if s.kind == "teacher")
    student = next(s for s in stages if s.kind == "student")
    eval_ = next(s for s in stages if s.kind == "eval")
    seconds = {teacher.key: 0.0, student.key: 300 * 60, eval_.key: 5 * 60 * 60 * 10}
    notes = preflight._time_notes(stages, sweep.base.cluster, seconds, {None: 480.0, "debug": 480.0})
    assert any(n.startswith("teacher: cluster time_min 600 min exceeds partition (default)'s limit of 480") for n in notes)
    assert any(n.startswith("student: estimated 300 min > its time limit 240 min: it relies on requeue") for n in notes)
    assert any(n.startswith("eval: estimated 3000 min is more than 4 time limits of 60 min") for n in notes)


def assert_one_launch_at_a_time(root):
    """The lock is this process's lease while held; a second taker times out naming it; it is gone after."""
    with slurm_index.locked(root, timeout_s=5):
        assert lease.read(root, slurm_index.LAUNCH_LEASE).pid == os.getpid()
        with pytest.raises(slurm_index.SubmissionError, match="another launch has held .*launch.json"):
            with slurm_index.locked(root, timeout_s=0.5):
                pass
    assert lease.read(root, slurm_index.LAUNCH_LEASE) is None


def test_launch_lock_needs_no_flock_and_falls_back_to_exclusive_create(tmp_path, monkeypatch):
    import fcntl

    def no_flock(*a, **k):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_flock)    # Lustre mounted without flock
    assert_one_launch_at_a_time(tmp_path)

    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "link", no_link)          # a filesystem without hard links: O_EXCL
    assert_one_launch_at_a_time(tmp_path)

    real_open = os.open

    def no_excl(p, flags, *a):
        if flags & os.O_EXCL and str(p).endswith("launch.json"):
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(p, flags, *a)
    monkeypatch.setattr(os, "open", no_excl)          # neither: one line naming the path and what to do
    with pytest.raises(slurm_index.SubmissionError) as e:
        with slurm_index.locked(tmp_path, timeout_s=1):
            pass
    assert str(tmp_path / "leases" / "launch.json") in str(e.value) and "neither link() nor O_EXCL" in str(e.value)


def fake_site_slurm(bin_dir: Path, site_conf: Path, called: Path) -> dict:
    """sinfo, scontrol and sbatch of a site's scheduler: sbatch records that it was called."""
    site_conf.write_text("ClusterName=site\nSlurmctldHost=login01\n")
    scripts = {"sinfo": "echo 'gpu* up 1-00:00:00 4 idle node[01-04]'",
               "squeue": "exit 0",
               "scontrol": f"echo 'SLURM_CONF = {site_conf}'; echo 'ClusterName = site'",
               "sbatch": f"touch {called}; echo 'Submitted batch job 1'"}
    bin_dir.mkdir()
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}


def test_a_test_session_on_a_login_node_submits_nothing_to_the_site_scheduler(tmp_path):
    called = tmp_path / "sbatch-was-called"
    env = fake_site_slurm(tmp_path / "bin", tmp_path / "site.conf", called)
    env.pop("COLLAPSE_SLURM", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:xdist",
                          "tests/test_local_slurm.py", "-k", "sbatch or array"], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=300)
    assert "is not the project's own local cluster" in out.stdout, out.stdout[-3000:]
    assert re.search(r"\d+ skipped", out.stdout) and " passed" not in out.stdout, out.stdout[-3000:]
    assert not called.exists()


def test_a_local_launch_outlives_its_terminal(tmp_path):
    root = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(REPO / "sweeps" / "launch.py"), "grid=vae_smoke3", *TINY,
                             "train.threads=1", f"results_root={root}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((root / "logs").glob("teacher-*.log")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGHUP)    # what a closing terminal sends the launch's process group
    proc.stdout.close()                   # and its output has nowhere to go
    assert proc.wait(timeout=600) == 0
    records = [json.loads(p.read_text()) for p in (root / "manifest").glob("*.json")]
    assert {r["status"] for r in records if r["kind"] != "sweep"} == {"done"}
    log = next((root / "logs").glob("launch-*.log")).read_text()
    assert "terminal closed (SIGHUP): the launch goes on" in log and "done: " in log


def test_status_and_cancel_follow_the_same_switch(tmp_path):
    """COLLAPSE_SLURM=off (a login node under the tests): status reads the manifest alone, cancel says why not."""
    root = tmp_path / "r"
    (root / "manifest").mkdir(parents=True)
    env = {"COLLAPSE_SLURM": "off"}
    run = lambda script: subprocess.run(  # noqa: E731
        [sys.executable, str(REPO / "sweeps" / script), f"results_root={root}"], capture_output=True, text=True,
        cwd=REPO, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), **env})
    assert run("status.py").returncode == 0
    cancelled = run("cancel.py")
    assert cancelled.returncode == 2 and "COLLAPSE_SLURM=off" in cancelled.stderr, cancelled.stderr
