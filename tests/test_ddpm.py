"""The DDPM modality's parts: the UNet, the noise schedule, the loss and L_SD, sampling."""
import math
from types import SimpleNamespace

import pytest
import torch

from collapse import diffusion, storage, train
from collapse.config import TrainConfig
from collapse.device import StepNoise
from collapse.models.unet import UNet
from collapse.tasks import ddpm
from helpers import TINY_DDPM, cluster_answers, launch, launch_jobs, show, ts, wait_done


def tiny_cfg(lam=0.0, encoder_mse=0.0, steps=60, sampler="ddim", sample_steps=5):
    return SimpleNamespace(
        model=SimpleNamespace(image_size=16, channels=1, block_channels=[8, 16, 16], attention_level=1,
                              layers_per_block=1, dropout=0.0, norm_groups=4),
        diffusion=SimpleNamespace(timesteps=100, beta_start=1e-4, beta_end=0.02),
        synth=SimpleNamespace(sampler=sampler, steps=sample_steps),
        distill=SimpleNamespace(lam=lam, encoder_mse=encoder_mse),
        train=TrainConfig(lr=2e-3, weight_decay=0.0, batch_size=8, zero_stage=0, bf16=False, threads=0,
                          seed=0, epochs=1, steps=steps, eval_every=1, eval_every_steps=steps, checkpoint_every=1000))


def noise(seed, n):
    return StepNoise(torch.Generator().manual_seed(seed), n)


def test_the_papers_unet_has_about_39m_parameters():
    n = sum(p.numel() for p in UNet().parameters())
    assert n == 38_390_019
    assert abs(n - 39e6) / 39e6 < 0.02


def test_q_xt_given_x0_has_the_closed_form_moments():
    scheduler = diffusion.make_scheduler(1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    x0 = torch.full((20_000, 1), 0.7)
    for t in (0, 10, 500, 999):
        abar = torch.prod(1 - betas[:t + 1]).item()
        eps = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(t))
        xt = diffusion.add_noise(scheduler, x0, eps, torch.full((20_000,), t))
        assert xt.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=4 * math.sqrt((1 - abar) / 20_000) + 1e-4)
        assert xt.var().item() == pytest.approx(1 - abar, rel=0.05, abs=1e-4)


def test_zero_coefficients_give_the_plain_loss_and_the_teacher_gets_no_gradient():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    student, teacher = ddpm.build_model(cfg), ddpm.build_model(cfg).requires_grad_(False)
    x0 = torch.rand(4, 1, 16, 16) * 2 - 1
    plain = ddpm.loss(student, x0, noise(3, 4), cfg)[0]
    targets = ddpm.teacher_outputs(teacher, x0, noise(3, 4), cfg)
    assert torch.equal(ddpm.loss(student, x0, noise(3, 4), cfg, targets)[0], plain)
    distilled = tiny_cfg(lam=0.5, encoder_mse=0.5)
    total = ddpm.loss(student, x0, noise(3, 4), distilled, targets)[0]
    out = student(diffusion.add_noise(ddpm.scheduler(cfg), x0, *_draws(cfg)[::-1]), _draws(cfg)[0])
    by_hand = (torch.nn.functional.smooth_l1_loss(out.eps, _draws(cfg)[1].reshape(4, 1, 16, 16))
               + 0.5 * torch.nn.functional.smooth_l1_loss(out.eps, targets.eps)
               + 0.5 * torch.nn.functional.mse_loss(out.encoded, targets.encoded))
    assert total.item() == pytest.approx(by_hand.item(), rel=1e-5)
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def _draws(cfg):
    """t and eps as StepNoise(seed 3) draws them for a batch of 4: t first, then eps."""
    n = noise(3, 4)
    t = n.randint(0, cfg.diffusion.timesteps)
    eps = n.randn(1, 16, 16)
    return t, eps


def test_sampling_is_a_pure_function_of_the_seed():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = ddpm.build_model(cfg).eval()
    a = ddpm.sample(model, 3, torch.Generator().manual_seed(1), cfg)
    b = ddpm.sample(model, 3, torch.Generator().manual_seed(1), cfg)
    c = ddpm.sample(model, 3, torch.Generator().manual_seed(2), cfg)
    assert a.dtype == torch.uint8 and a.shape == (3, 1, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    ancestral = ddpm.sample(model, 2, torch.Generator().manual_seed(1), tiny_cfg(sampler="ddpm", sample_steps=None))
    assert ancestral.shape == (2, 1, 16, 16)


def test_a_small_unet_overfits_a_handful_of_images_through_the_shared_loop(tmp_path):
    """Eight fixed images, the real DeepSpeed loop with a step budget: the test loss (on the same
    images) falls well below its start."""
    cfg = tiny_cfg(steps=150)
    images = (torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.5).to(torch.uint8) * 255
    torch.manual_seed(0)
    before = ddpm.test_loss(ddpm.build_model(cfg), images, cfg)
    state = train.train(ddpm, cfg, images, images, tmp_path, log=lambda m: None)
    assert state.step == 150
    assert state.best_loss < 0.5 * before, (before, state.best_loss)


def test_bf16_on_cpu_a_distilled_student_trains_and_its_bf16_weights_sample(tmp_path):
    """The GPU default (DeepSpeed bf16, fp32 master weights) on the CPU: the UNet's inputs, the step's
    noise, the teacher's targets and the encoder MSE all meet bf16 parameters without a dtype error;
    the loop runs the fp32 teacher it is given in bf16, as the student computes."""
    cfg = tiny_cfg(lam=0.5, encoder_mse=0.5, steps=60)
    cfg.train.bf16 = True
    images = (torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.5).to(torch.uint8) * 255
    torch.manual_seed(0)
    teacher = ddpm.build_model(cfg).eval().requires_grad_(False)
    before = ddpm.test_loss(ddpm.build_model(cfg), images, cfg)
    lines = []
    state = train.train(ddpm, cfg, images, images, tmp_path, teacher=teacher, log=lines.append)
    assert any("bf16 (fp32 master weights)" in line for line in lines), lines
    assert next(teacher.parameters()).dtype == torch.bfloat16
    assert state.step == 60 and state.best_loss < 0.8 * before, (before, state.best_loss)
    weights = storage.load_tensors(tmp_path / "best.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())
    model = storage.load_weights(tmp_path / "best.safetensors", ddpm.build_model(cfg)).to(torch.bfloat16).eval()
    images = ddpm.sample(model, 3, torch.Generator().manual_seed(1), cfg)
    assert images.dtype == torch.uint8 and images.shape == (3, 1, 16, 16) and images.device.type == "cpu"


def test_distilled_training_sees_the_same_noisy_input_as_its_teacher(tmp_path):
    """L_SD towards a teacher identical to the student's start: at step 0 the lam-term is zero only
    if the teacher saw the student's own x_t and t (fresh copies of the step's noise)."""
    cfg = tiny_cfg(lam=1.0, steps=1)
    torch.manual_seed(cfg.train.seed)
    teacher = ddpm.build_model(cfg).eval().requires_grad_(False)   # same seed: the student's initial weights
    x0 = torch.rand(8, 1, 16, 16) * 2 - 1
    student = ddpm.build_model(cfg).eval()
    student.load_state_dict(teacher.state_dict())
    n = lambda: StepNoise(train.step_generator(0, 0), 8)   # noqa: E731
    targets = ddpm.teacher_outputs(teacher, x0, n(), cfg)
    plain = ddpm.loss(student, x0, n(), tiny_cfg())[0]
    distilled = ddpm.loss(student, x0, n(), cfg, targets)[0]
    assert distilled.item() == pytest.approx(plain.item(), abs=1e-7)


def test_a_tiny_ddpm_grid_runs_end_to_end_on_the_local_executor(tmp_path, monkeypatch):
    """Teacher, synth (DDIM), M1 and a distilled student, their evals and the report, as real
    subprocesses through the same plan, runner and executor as the VAE."""
    import json

    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "ddpm_two.yaml").write_text(
        "experiment: ddpm_mnist\nrows:\n  - {distill.lam: 0.0}\n  - {distill.lam: 0.5, distill.encoder_mse: 0.5}\n")
    monkeypatch.setenv("COLLAPSE_GRID_DIR", str(grids))
    root = tmp_path / "r"
    out = launch("grid=ddpm_two", "cluster=local", f"results_root={root}", *TINY_DDPM)
    assert "8 stages" in out.stdout and "done: 8 stages ran, 0 failed" in out.stdout, out.stdout
    records = [json.loads(p.read_text()) for p in (root / "manifest").glob("*.json")]
    stages = [r for r in records if r["kind"] != "sweep"]
    assert len(stages) == 8 and all(r["status"] == "done" for r in stages)
    synth = next(r for r in stages if r["kind"] == "synth")
    assert synth["metrics"]["n"] == 32
    teacher = next(r for r in stages if r["kind"] == "teacher")
    assert [h["step"] for h in teacher["metrics"]["history"]] == [1, 2]
    evals = [r for r in stages if r["kind"] == "eval"]
    assert all(r["metrics"]["fid"] > 0 and r["metrics"]["fid_samples"] == 4 for r in evals), evals
    table = (root / "report" / "ddpm_two.md").read_text()
    assert "| M0 (teacher) |" in table and "| M1 |" in table and "| student | 0.500 | 0.500 |" in table
    assert table.startswith("# ddpm_two on MNIST 32x32, the offline stand-in for CelebA 64x64")
    # Table 2: ours beside the paper's, the gap closed, the sample counts; Figures 4 and 5
    table2 = (root / "report" / "ddpm_two_table2.md").read_text()
    assert table2.startswith("# ddpm_two: Table 2 on MNIST 32x32, the offline stand-in")
    rows = {line.split(" | ")[1]: line.split(" | ") for line in table2.splitlines() if line.startswith("| ")}
    assert rows["M1 (0)"][5] == "59.94" and rows["M1 (0)"][3] == "0.0009349" and rows["M1 (0)"][8] == "0 (reference)"
    assert rows["0.5 + MSE (0.5)"][8] == "60.7"   # the paper's (59.94 - 50.12) / (59.94 - 43.77)
    assert rows["0.5 + MSE (0.5)"][5] == "50.12" and rows["0.5 + MSE (0.5)"][9] == "4 vs 4"
    assert rows[""][0] == "| M0 (teacher)" and rows[""][5] == "43.77"
    m0_fid = next(r for r in evals if r["name"].startswith("eval:teacher"))["metrics"]["fid"]
    assert rows[""][4] == f"{m0_fid:.2f}"
    assert (root / "report" / "ddpm_two_figure5.png").is_file() and (root / "report" / "ddpm_two_curves.png").is_file()
    # the hold-out's Inception features: computed once for the three evals, under <results_root>/cache
    assert len(list((root / "cache").glob("fid-ref-mnist-4-*.safetensors"))) == 1


def test_the_cpu_profile_sizes_the_stand_in_grid():
    """profile=ddpm_cpu: the six Table 2 rows on MNIST, one thread a stage, FID on 1,000 of the 1,000 hold-out images."""
    from collapse.grid import load_sweep
    sweep = load_sweep(["grid=ddpm_lambda", "profile=ddpm_cpu"])
    cfg = sweep.points[0].config
    assert len(sweep.points) == 6 and cfg.data.dataset == "mnist"
    assert (cfg.train.threads, cfg.cluster.max_parallel, cfg.synth.sampler) == (1, 2, "ddim")
    assert cfg.eval.fid_samples == cfg.data.test_size == 1000 and cfg.train.steps * cfg.train.batch_size < 50_000
    ddpm.check_data(cfg)


@pytest.mark.slurm
def test_a_tiny_ddpm_grid_runs_on_slurm_shards_after_the_teacher_evals_after_their_students(tmp_path):
    """The same spine on the real local SLURM: D_M0 in two shards (one array after the teacher, joined
    after both), each eval after its own student, the report after everything; Table 2 written."""
    if why := cluster_answers():
        pytest.skip(why)
    from collapse import manifest
    from collapse import slurm_index
    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "ddpm_two.yaml").write_text("experiment: ddpm_mnist\nrows:\n  - {distill.lam: 0.0}\n  - {distill.lam: 0.5}\n")
    root = tmp_path / "r"
    out = launch("grid=ddpm_two", "cluster=slurm", f"results_root={root}", "synth.shards=2", *TINY_DDPM,
                 env={"COLLAPSE_GRID_DIR": str(grids)})
    assert out.returncode == 0, show(out)
    launch_ = slurm_index.read_index(root)["launches"][-1]
    assert [(a["level"], a["kind"], a["size"]) for a in launch_["arrays"]] == [
        (0, "teacher", 1), (1, "synth_shard", 2), (1, "eval", 1), (2, "synth", 1), (3, "student", 2), (4, "eval", 2),
        (5, "report", 1)]
    rows = wait_done(launch_jobs(launch_), timeout=600)
    assert all(r["State"] == "COMPLETED" for r in rows.values()), rows
    job = {k: e["job"] for k, e in slurm_index.read_index(root)["stages"].items()}
    recs = {r["key"]: r for r in manifest.read_all(root) if r["kind"] != "sweep"}
    assert all(r["status"] == "done" for r in recs.values()), recs
    start, end = (lambda k: ts(rows[job[k]]["Start"])), (lambda k: ts(rows[job[k]]["End"]))
    (teacher,) = [k for k, r in recs.items() if r["kind"] == "teacher"]
    shards = [k for k, r in recs.items() if r["kind"] == "synth_shard"]
    assert len(shards) == 2 and all(start(k) >= end(teacher) for k in shards)
    # D_M0 is the shards' images in shard order, each shard its own range and seed
    from collapse.run import artifact
    from collapse.storage import load_tensors
    (synth,) = [r for r in recs.values() if r["kind"] == "synth"]
    parts = [load_tensors(artifact(root, recs[synth["deps"][f"shard.{i}"]], "data"))["data"] for i in range(2)]
    assert [recs[synth["deps"][f"shard.{i}"]]["metrics"]["start"] for i in range(2)] == [0, 16]
    joined = load_tensors(artifact(root, synth, "data"))["data"]
    assert joined.shape == (32, 1, 32, 32) and torch.equal(joined, torch.cat(parts))
    assert not torch.equal(parts[0], parts[1])
    for k, r in recs.items():
        if r["kind"] == "eval" and recs[r["deps"]["model"]]["kind"] == "student":
            assert start(k) >= end(r["deps"]["model"]), r["name"]
    table2 = (root / "report" / "ddpm_two_table2.md").read_text()
    rows = {line.split(" | ")[1]: line.split(" | ") for line in table2.splitlines() if line.startswith("| ")}
    assert "M1 (0)" in rows and rows["0.5"][5] == "48.81", table2   # the paper's FID of lam 0.5 beside ours
