"""Data and weights are identified by content (collapse/fingerprint.py, collapse/plan.py): a moved copy
keeps every stage key, a changed file changes the keys of exactly the stages that read it, a
FINGERPRINT file states the fingerprint, and a null path leaves the keys as they were before."""
import hashlib
import shutil

import numpy as np
import pytest
from PIL import Image

from collapse import fingerprint as content, launch, plan as planning
from collapse.config import ConfigError
from collapse.grid import load_sweep


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    """Fingerprints are cached per process; these tests change files they fingerprinted."""
    content.cache_clear()
    monkeypatch.setenv("COLLAPSE_CACHE", str(tmp_path / "cache"))
    yield
    content.cache_clear()


def keys(argv) -> dict:
    return {s.name: s.key for s in planning.build(load_sweep(argv)).stages.values()}


def changed(a: dict, b: dict) -> set:
    assert a.keys() == b.keys()
    return {name for name in a if a[name] != b[name]}


# ---------------------------------------------------------------- the keys from before

# Recorded with the code before paths were fingerprinted (commit b1b0031): per grid, the report's key
# (it hashes every stage upstream of it) and a sha256 over all its stage keys, sorted. profile=smoke was
# then the same four sizes for every task (today the VAE's SMOKE; a DDPM's and a T5's are their own).
OLD_SMOKE = ("data.train_size=2000", "data.test_size=500", "train.epochs=2", "eval.grid_samples=16")
FROM_SCRATCH = ("pretrain.steps=0", "train.lr=1e-3")
BEFORE = {
    # vae_coeffs now sets model.kl_weight 0.1 (issue 20's reading (c)); 1.0 is the reading these were recorded with
    ("vae_coeffs", "model.kl_weight=1.0"): ("7c0be829053e0362", "e758dc6f6cf87051"),
    ("vae_coeffs", "profile=smoke", "model.kl_weight=1.0"): ("bad8468540eab60d", "e3908d77bdbc3658"),
    ("ddpm_lambda",): ("70b8bfd61660e832", "b0678adbf60d417e"),
    ("ddpm_lambda", *OLD_SMOKE): ("654106a078564d4a", "5f0049300e342470"),
    # t5_standin now pretrains and fine-tunes at 2e-4; these are the from-scratch run they were recorded with
    ("t5_lambda", *FROM_SCRATCH): ("02e1bfb7139394e7", "ecf5d0420dc8c4c3"),
    ("t5_lambda", *OLD_SMOKE, *FROM_SCRATCH): ("070df625e5d9784f", "898e00d14b0879f8"),
    ("gaussian_generations",): ("8d930e55dcbcb5fb", "a505b732f811fa7d"),
}


@pytest.mark.parametrize("grid", sorted(BEFORE), ids=" ".join)
def test_with_no_path_set_the_keys_are_those_from_before_fingerprints(grid):
    name, *extra = grid
    plan = planning.build(load_sweep([f"grid={name}", "cluster=local", *extra]))
    report = next(s.key for s in plan.stages.values() if s.kind == "report")
    digest = hashlib.sha256(" ".join(sorted(plan.stages)).encode()).hexdigest()[:16]
    assert (report, digest) == BEFORE[grid]
    assert not any(s.fingerprints for s in plan.stages.values())


# ---------------------------------------------------------------- fingerprints

def test_a_small_file_is_its_sha256_wherever_it_lies(tmp_path):
    (tmp_path / "a").mkdir()
    blob = np.random.default_rng(0).bytes(300_000)
    (tmp_path / "a" / "w.bin").write_bytes(blob)
    print_a = content.fingerprint(tmp_path / "a" / "w.bin")
    assert print_a == "sha256:" + hashlib.sha256(blob).hexdigest()
    shutil.copy(tmp_path / "a" / "w.bin", tmp_path / "other-name.bin")
    assert content.fingerprint(tmp_path / "other-name.bin") == print_a


def test_a_large_file_is_sampled(tmp_path, monkeypatch):
    monkeypatch.setattr(content, "WHOLE_FILE_LIMIT", 1 << 20)
    path = tmp_path / "big.bin"
    blob = bytearray(np.random.default_rng(0).bytes(3 << 20))
    path.write_bytes(blob)
    first = content.fingerprint(path)
    assert first != "sha256:" + hashlib.sha256(blob).hexdigest()
    blob[-1] ^= 1   # the last chunk is always read
    path.write_bytes(blob)
    content.cache_clear()
    assert content.fingerprint(path) != first
    blob[-1] ^= 1
    blob[100_000] ^= 1   # between samples: a sampled fingerprint does not see it (FINGERPRINT is the remedy)
    path.write_bytes(blob)
    content.cache_clear()
    assert content.fingerprint(path) == first


def write_folder(folder, n=6, seed=0):
    """CelebA-like: n aligned-size JPEGs under img_align_celeba/."""
    rng = np.random.default_rng(seed)
    (folder / "img_align_celeba").mkdir(parents=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "img_align_celeba" / f"{i + 1:06d}.jpg", quality=90)
    return folder


def flip_a_byte(path, offset=-10):
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 1
    path.write_bytes(blob)


def test_a_directory_is_its_names_sizes_and_sampled_bytes(tmp_path):
    folder = write_folder(tmp_path / "celeba")
    first = content.fingerprint(folder)
    shutil.move(folder, tmp_path / "elsewhere")
    assert content.fingerprint(tmp_path / "elsewhere") == first
    changes = {
        "a byte": lambda d: flip_a_byte(d / "img_align_celeba" / "000003.jpg"),
        "a name": lambda d: (d / "img_align_celeba" / "000003.jpg").rename(d / "img_align_celeba" / "x.jpg"),
        "a new file": lambda d: (d / "notes.txt").write_text("hi"),
        "a file less": lambda d: (d / "img_align_celeba" / "000003.jpg").unlink(),
    }
    for what, change in changes.items():
        copy = shutil.copytree(tmp_path / "elsewhere", tmp_path / what)
        change(copy)
        assert content.fingerprint(copy) != first, what


def test_a_fingerprint_file_states_the_fingerprint(tmp_path):
    folder = write_folder(tmp_path / "celeba")
    (folder / "FINGERPRINT").write_text("celeba-aligned v2 2015\n")
    assert content.fingerprint(folder) == "celeba-aligned v2 2015"
    flip_a_byte(folder / "img_align_celeba" / "000001.jpg")
    content.cache_clear()
    assert content.fingerprint(folder) == "celeba-aligned v2 2015"   # the user's word, not the bytes
    for bad in ("", "two\nlines\n", "x" * 300):
        (folder / "FINGERPRINT").write_text(bad)
        content.cache_clear()
        with pytest.raises(content.FingerprintError, match="FINGERPRINT must hold one non-empty line"):
            content.fingerprint(folder)
    with pytest.raises(content.FingerprintError, match="nothing at"):
        content.fingerprint(tmp_path / "nowhere")


def test_each_path_is_fingerprinted_once_per_process(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "celeba")
    calls = []
    compute = content._compute
    monkeypatch.setattr(content, "_compute", lambda where: calls.append(where) or compute(where))
    argv = ["grid=ddpm_lambda_celeba", "cluster=local", f"data.root={folder}"]
    plan = planning.build(load_sweep(argv))
    assert len(plan.stages) == 20 and calls == [folder.resolve()]


# ---------------------------------------------------------------- stage keys

CELEBA = ["grid=ddpm_lambda_celeba", "profile=smoke", "cluster=local",
          "data.train_size=4", "data.test_size=2", "eval.fid_samples=2", "dry_run=true"]


def launch_keys(argv, root) -> dict:
    """The stage keys a launch (its checks, then its plan) gives: what a relaunch would look up."""
    _, plan, _, _ = launch.prepare([*argv, f"results_root={root}"])
    return {s.name: s.key for s in plan.stages.values()}, plan


def test_moving_the_data_reruns_nothing_and_changing_an_image_reruns_what_reads_it(tmp_path):
    folder = write_folder(tmp_path / "celeba")
    before, plan = launch_keys([*CELEBA[:-1], f"data.root={folder}"], tmp_path / "r")
    teacher = next(s for s in plan.stages.values() if s.kind == "teacher")
    assert teacher.spec()["fingerprints"] == {"data.root": content.fingerprint(folder)}
    assert teacher.config["data"]["root"] == str(folder)   # the stage reads the path it was given
    moved = shutil.move(folder, tmp_path / "scratch" / "celeba-copy")
    assert launch_keys([*CELEBA[:-1], f"data.root={moved}"], tmp_path / "r")[0] == before
    flip_a_byte(moved / "img_align_celeba" / "000002.jpg")
    content.cache_clear()
    after = launch_keys([*CELEBA[:-1], f"data.root={moved}"], tmp_path / "r")[0]
    assert changed(before, after) == set(before)   # every stage reads the data: the teacher and all downstream


def test_another_inception_file_reruns_the_evals_only(tmp_path):
    weights = tmp_path / "inception.pth"
    weights.write_bytes(np.random.default_rng(0).bytes(10_000))
    folder = write_folder(tmp_path / "celeba")
    argv = ["grid=ddpm_lambda_celeba", "cluster=local", f"data.root={folder}"]
    shipped = keys(argv)
    mine = keys([*argv, f"eval.inception={weights}"])
    assert changed(shipped, mine) == {n for n in shipped if n.startswith(("eval:", "report["))}
    moved = shutil.move(weights, tmp_path / "elsewhere.pth")
    assert keys([*argv, f"eval.inception={moved}"]) == mine
    flip_a_byte(moved, 5000)
    content.cache_clear()
    assert changed(mine, keys([*argv, f"eval.inception={moved}"])) == changed(shipped, mine)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny T5 and a tiny GPT-2, each a save_pretrained directory."""
    import transformers
    base = tmp_path_factory.mktemp("pretrained")
    t5 = transformers.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                               decoder_start_token_id=0)
    transformers.T5ForConditionalGeneration(t5).save_pretrained(base / "t5")
    gpt2 = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(gpt2).save_pretrained(base / "gpt2")
    return base


def test_t5_weights_moved_keep_their_keys_and_changed_weights_rerun_their_readers(pretrained, tmp_path):
    copy = shutil.copytree(pretrained, tmp_path / "copy")
    argv = lambda base: ["grid=t5_lambda", "cluster=local", f"model.path={base / 't5'}",   # noqa: E731
                         f"eval.ppl_model.path={base / 'gpt2'}"]
    first = keys(argv(pretrained))
    assert first == keys(argv(copy)) and first != keys(["grid=t5_lambda", "cluster=local"])
    flip_a_byte(copy / "gpt2" / "model.safetensors")   # the scorer: only the evals read it
    content.cache_clear()
    assert changed(first, keys(argv(copy))) == {n for n in first if n.startswith(("eval:", "report["))}
    flip_a_byte(copy / "t5" / "model.safetensors")     # the model: everything reads it
    content.cache_clear()
    assert changed(first, keys(argv(copy))) == set(first)


def test_a_bad_fingerprint_file_is_one_line_naming_the_key(tmp_path, capsys):
    folder = write_folder(tmp_path / "celeba")
    (folder / "FINGERPRINT").write_text("")
    code = launch.launch([*CELEBA, f"data.root={folder}", f"results_root={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "key 'data.root'" in err and "FINGERPRINT" in err, err
    with pytest.raises(ConfigError):
        launch.prepare([*CELEBA[:-1], f"data.root={folder}", f"results_root={tmp_path / 'r'}"])
