"""The GPU path, proven on CPU stand-ins where no GPU is lent.

- bf16 through DeepSpeed's mixed precision (bf16 parameters, fp32 master weights) on the CPU:
  it trains, resumes to the same numbers, and stores fp32 master weights.
- Every tensor a stage hands a model matches the model's device and dtype (a checking model
  with bf16 parameters raises on the first mismatch: float32 inputs fail it).
- Data parallel noise: two ranks' slices of a step's draws are the one-rank draws.
Tests marked `gpu` run the same checks on CUDA (bench/gpu_check.sh runs them on a GPU machine).
"""
from types import SimpleNamespace

import pytest
import torch

from collapse import storage, train
from collapse.experiment import from_dict
from collapse.device import StepNoise, generator
from collapse.models.vae import VAE
from collapse.tasks import vae

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no GPU on this machine")])]


def cfg(epochs, zero_stage=0, bf16=True, **distill):
    return from_dict({"model": {"hidden": 32, "latent": 4}, "distill": distill,
                      "train": {"epochs": epochs, "batch_size": 32, "zero_stage": zero_stage, "bf16": bf16,
                                "reduction": "pixel"}})


def mnist(train_size=256, test_size=64):
    return (vae.real_data(from_dict({"data": {"train_size": train_size}}), "train"),
            vae.real_data(from_dict({"data": {"test_size": test_size}}), "test"))


class CheckedVAE(VAE):
    """A VAE that refuses any input not on its parameters' device and in their dtype."""
    calls = 0

    def _check(self, *tensors):
        p = next(self.parameters())
        for t in tensors:
            if t is not None and (t.device != p.device or t.dtype != p.dtype):
                raise AssertionError(f"input on {t.device} {t.dtype}, parameters on {p.device} {p.dtype}")
        CheckedVAE.calls += 1

    def forward(self, x, noise=None):
        self._check(x, noise)
        return super().forward(x, noise)

    def decode(self, z):
        self._check(z)
        return super().decode(z)


def checked_task():
    """The VAE task with CheckedVAE as its model: everything else is the real task code."""
    fields = {name: getattr(vae, name) for name in dir(vae) if not name.startswith("__")}
    return SimpleNamespace(**{**fields, "build_model": lambda c: CheckedVAE(hidden=c.model.hidden,
                                                                              latent=c.model.latent)})


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_bf16_on_cpu_trains_and_resumes_to_the_same_numbers(tmp_path, zero_stage):
    data, test = mnist()
    straight = train.train(vae, cfg(4, zero_stage), data, test, tmp_path / "a", log=lambda m: None)
    losses = [h["test_loss"] for h in straight.history]
    assert losses[-1] < losses[0] * 0.9, losses   # it learns
    train.train(vae, cfg(2, zero_stage), data, test, tmp_path / "b", log=lambda m: None)
    lines = []
    resumed = train.train(vae, cfg(4, zero_stage), data, test, tmp_path / "b", log=lines.append)
    assert any("resumed at epoch 2" in line for line in lines), lines
    assert [h["test_loss"] for h in resumed.history] == losses
    a = storage.load_tensors(tmp_path / "a" / "best.safetensors")
    b = storage.load_tensors(tmp_path / "b" / "best.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # stored weights are the fp32 master weights, not the bf16 copies the forward used
    assert all(w.dtype == torch.float32 for w in a.values())
    assert any(not torch.equal(w, w.bfloat16().float()) for w in a.values())


def test_bf16_is_off_on_cpu_by_default_and_on_when_asked():
    assert not train.uses_bf16(cfg(1, bf16=None).train) or torch.cuda.is_available()
    assert train.deepspeed_config(cfg(1, bf16=True).train)["bf16"] == {"enabled": True}
    assert train.deepspeed_config(cfg(1, bf16=False).train)["bf16"] == {"enabled": False}


@pytest.mark.parametrize("device", DEVICES)
def test_every_tensor_a_stage_hands_the_model_matches_its_device_and_dtype(tmp_path, device, monkeypatch):
    """Training (distilled, teacher outputs cached), test loss and sampling, with bf16 parameters."""
    if device == "cuda":
        monkeypatch.setenv("LOCAL_RANK", "0")
    task = checked_task()
    data, test = mnist(128, 64)
    c = cfg(1, bf16=True, lam=0.5, beta=1.0, gamma=1.0)
    teacher = task.build_model(c).to(device).to(torch.bfloat16).eval().requires_grad_(False)
    CheckedVAE.calls = 0
    state = train.train(task, c, data, test, tmp_path, teacher=teacher, log=lambda m: None)
    assert state.step == 4 and CheckedVAE.calls > 4   # teacher targets, steps and the test loss all checked
    model = storage.load_weights(tmp_path / "best.safetensors", task.build_model(c)).to(device).to(torch.bfloat16)
    loss = vae.test_loss(model, test, c)
    assert abs(loss - state.best_loss) < 0.01 * state.best_loss   # bf16 weights rounded from the fp32 masters
    c.synth.binarize = True
    images = vae.sample(model, 8, generator(0, torch.device(device)), c)
    assert images.device.type == "cpu" and images.dtype == torch.uint8 and images.shape == (8, 32, 32)


def test_the_check_catches_a_float32_input_to_bf16_parameters():
    model = CheckedVAE(hidden=8, latent=2).to(torch.bfloat16)
    with pytest.raises(AssertionError, match="float32"):
        model(torch.rand(2, 1024), None)


def test_two_ranks_draw_the_one_rank_noise_item_for_item():
    whole = StepNoise(train.step_generator(3, 7), 10).randn(4)
    parts = [StepNoise(train.step_generator(3, 7), 10, rank, 2).randn(4) for rank in (0, 1)]
    assert torch.equal(parts[0], whole[0::2]) and torch.equal(parts[1], whole[1::2])
    ints = [StepNoise(train.step_generator(3, 7), 10, rank, 2).randint(0, 1000) for rank in (0, 1)]
    all_ints = StepNoise(train.step_generator(3, 7), 10).randint(0, 1000)
    assert torch.equal(ints[1], all_ints[1::2])


def test_a_batch_that_does_not_split_over_the_ranks_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="does not split evenly over 3 ranks"):
        train.deepspeed_config(cfg(1).train)


def test_cluster_setup_lines_and_tasks_per_node_reach_the_job_script(tmp_path):
    """cluster.setup goes into every job script after our own exports; tasks_per_node sets the ranks."""
    from collapse.config import ConfigError
    from collapse.executors import slurm
    c = from_dict({"cluster": {"setup": ["module load cuda/12.4", "export NCCL_DEBUG=WARN"],
                               "tasks_per_node": 2}}).cluster
    executor = slurm._executor(tmp_path, c.resources("teacher"), "collapse-teacher", None)
    script = executor._make_submission_file_text("python -m something", "uid")
    assert "#SBATCH --ntasks-per-node=2" in script
    lines = script.splitlines()
    assert lines.index("module load cuda/12.4") > lines.index("unset RANK LOCAL_RANK WORLD_SIZE MASTER_ADDR MASTER_PORT")
    assert "export NCCL_DEBUG=WARN" in lines
    with pytest.raises(ConfigError, match=r"cluster.setup\[0\]"):
        from_dict({"cluster": {"setup": ["module load cuda\nrm -rf /"]}})
    with pytest.raises(ConfigError, match="cluster.stages.teacher.tasks_per_node"):
        from_dict({"cluster": {"gpus_per_node": 4, "stages": {"teacher": {"tasks_per_node": 3}}}})
