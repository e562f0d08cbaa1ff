"""The shared training loop under each ZeRO stage: it trains, keeps the best weights, and they reload."""
import pytest
import torch

from collapse import storage, train
from collapse.config import from_dict
from collapse.tasks import vae


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_each_zero_stage_trains_and_its_best_weights_reload(tmp_path, zero_stage):
    cfg = from_dict({"model": {"hidden": 32, "latent": 4},
                     "train": {"epochs": 2, "batch_size": 32, "zero_stage": zero_stage, "checkpoint_every": 3}})
    data = vae.real_data(from_dict({"data": {"train_size": 128}}), "train")
    test = vae.real_data(from_dict({"data": {"test_size": 64}}), "test")
    state = train.train(vae, cfg, data, test, tmp_path, log=lambda m: None)
    assert state.step == 8 and len(state.history) == 2
    assert state.history[-1]["test_loss"] < state.history[0]["train_loss"] * 2  # finite and in range
    model = storage.load_weights(tmp_path / "best.safetensors", vae.build_model(cfg))
    assert vae.test_loss(model, test, cfg) == pytest.approx(state.best_loss, rel=1e-5)
    assert (tmp_path / "checkpoints" / "latest.json").is_file()


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tmp_path, zero_stage):
    def cfg(epochs):
        return from_dict({"model": {"hidden": 32, "latent": 4},
                          "train": {"epochs": epochs, "batch_size": 32, "zero_stage": zero_stage}})
    data = vae.real_data(from_dict({"data": {"train_size": 96}}), "train")
    test = vae.real_data(from_dict({"data": {"test_size": 64}}), "test")
    straight = train.train(vae, cfg(3), data, test, tmp_path / "a", log=lambda m: None)
    train.train(vae, cfg(1), data, test, tmp_path / "b", log=lambda m: None)   # stops after epoch 1 ...
    lines = []
    resumed = train.train(vae, cfg(3), data, test, tmp_path / "b", log=lines.append)  # ... and goes on
    assert any("resumed at epoch 1" in line for line in lines)
    assert [h["test_loss"] for h in resumed.history] == [h["test_loss"] for h in straight.history]
    a = storage.load_tensors(tmp_path / "a" / "best.safetensors")
    b = storage.load_tensors(tmp_path / "b" / "best.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_step_budget_with_step_based_evaluation_resumes_exactly(tmp_path):
    """train.steps and train.eval_every_steps: evaluations at multiples of it and after the last step,
    across epoch boundaries (96 items / batch 32 = 3 steps an epoch); a run stopped mid-budget resumes."""
    def cfg(steps):
        return from_dict({"model": {"hidden": 32, "latent": 4},
                          "train": {"steps": steps, "eval_every_steps": 4, "batch_size": 32, "checkpoint_every": 5}})
    data = vae.real_data(from_dict({"data": {"train_size": 96}}), "train")
    test = vae.real_data(from_dict({"data": {"test_size": 64}}), "test")
    straight = train.train(vae, cfg(10), data, test, tmp_path / "a", log=lambda m: None)
    assert [h["step"] for h in straight.history] == [4, 8, 10] and straight.step == 10
    assert [h["epoch"] for h in straight.history] == [1, 2, 3]
    train.train(vae, cfg(5), data, test, tmp_path / "b", log=lambda m: None)   # stops at step 5, mid-epoch
    lines = []
    resumed = train.train(vae, cfg(10), data, test, tmp_path / "b", log=lines.append)
    assert any("resumed at epoch 1 batch 2 step 5" in line for line in lines), lines
    # the short run also evaluated after its own last step (5): the rest is the straight run's
    assert [h["step"] for h in resumed.history] == [4, 5, 8, 10]
    assert [h["test_loss"] for h in resumed.history if h["step"] != 5] == [h["test_loss"] for h in straight.history]
    a = storage.load_tensors(tmp_path / "a" / "best.safetensors")
    b = storage.load_tensors(tmp_path / "b" / "best.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a) and resumed.best_step == straight.best_step
