"""The shared training loop under each ZeRO stage: it trains, keeps the best weights, and they reload."""
import types

import pytest
import torch

from collapse import storage, train
from collapse.experiment import from_dict
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


def test_the_learning_rate_warms_up_linearly_then_follows_the_cosine(tmp_path):
    """train.lr_schedule cosine with warm-up: the rate the optimizer applies at each step, against
    values worked by hand (warm-up 2 of 10 steps, half a wave: lr at the middle of the rest, 0 at the end)."""
    tc = from_dict({"train": {"lr": 0.1, "lr_schedule": "cosine", "warmup_steps": 2, "lr_waves": 0.5}}).train
    by_hand = [0.0, 0.5, 1.0, 0.9619398, 0.8535534, 0.6913417, 0.5, 0.3086583, 0.1464466, 0.0380602]
    assert [train.lr_factor(s, 10, tc) for s in range(10)] == pytest.approx(by_hand, abs=1e-6)
    assert train.lr_factor(10, 10, tc) == 0.0
    engine = train.make_engine(torch.nn.Linear(2, 1), tc, total_steps=10)
    applied = []
    for _ in range(10):
        applied.append(engine.optimizer.param_groups[0]["lr"])
        engine.backward(engine(torch.ones(tc.batch_size, 2)).sum())
        engine.step()
    assert applied == pytest.approx([0.1 * f for f in by_hand], abs=1e-8)
    constant = from_dict({"train": {"lr": 0.1}}).train
    assert train.make_engine(torch.nn.Linear(2, 1), constant).lr_scheduler is None   # no schedule, as before


class Interrupted(Exception):
    pass


def test_a_run_under_a_schedule_killed_mid_way_resumes_on_the_same_rates(tmp_path):
    """The schedule's position is in the checkpoint: a run stopped after its step-6 checkpoint
    resumes at the rate of step 6 and ends bit-identical to an uninterrupted run."""
    cfg = from_dict({"model": {"hidden": 32, "latent": 4},
                     "train": {"steps": 12, "eval_every_steps": 4, "batch_size": 32, "checkpoint_every": 3,
                               "lr_schedule": "cosine", "warmup_steps": 3}})
    data = vae.real_data(from_dict({"data": {"train_size": 96}}), "train")
    test = vae.real_data(from_dict({"data": {"test_size": 64}}), "test")
    straight = train.train(vae, cfg, data, test, tmp_path / "a", log=lambda m: None)
    calls = []

    def batch_then_fail(data, index):   # the 8th batch never arrives: the run dies after step 7
        calls.append(1)
        if len(calls) == 8:
            raise Interrupted
        return vae.batch(data, index)
    failing = types.SimpleNamespace(**{k: getattr(vae, k) for k in dir(vae) if not k.startswith("__")})
    failing.batch = batch_then_fail
    with pytest.raises(Interrupted):
        train.train(failing, cfg, data, test, tmp_path / "b", log=lambda m: None)
    lines = []
    resumed = train.train(vae, cfg, data, test, tmp_path / "b", log=lines.append)
    assert any("step 6" in line and "resumed" in line for line in lines), lines
    assert [(h["step"], h["lr"], h["test_loss"]) for h in resumed.history] == \
           [(h["step"], h["lr"], h["test_loss"]) for h in straight.history]
    assert straight.history[-1]["lr"] == 0.0 and straight.history[0]["lr"] < cfg.train.lr
    a = storage.load_tensors(tmp_path / "a" / "best.safetensors")
    b = storage.load_tensors(tmp_path / "b" / "best.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
