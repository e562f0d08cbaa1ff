"""collapse/fabricate.py makes the paper studies' data and weights in their real layouts, and profile=rehearsal
runs the paper grids on them at the paper's model sizes (collapse/rehearsal.py; docs/rehearsal.md).

One fabrication (~20 s: two random-weight models of 60M and 124M parameters written and read back) serves
every test here; each loads a layout with the loader that reads it in a run."""
import pytest
import torchvision

from collapse import fabricate, grid, rehearsal, tasks
from collapse.data import celeba, summaries
from collapse.data.text import load_tokenizer
from collapse.metrics import perplexity
from collapse.models import t5 as t5_model

IMAGES, ARTICLES = 40, 12


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("fabricated")
    return out, fabricate.fabricate(out, celeba_images=IMAGES, articles=ARTICLES)


class FabricatedCelebA(torchvision.datasets.CelebA):
    """torchvision's CelebA reader as it is, but for the md5 check of the annotation files: those checksums are
    of the real release's files, which a fabricated copy cannot match."""

    def _check_integrity(self) -> bool:
        return (self.root / self.base_folder / "img_align_celeba").is_dir()


def test_celeba_reads_as_torchvision_and_as_the_ddpm_task_reads_it(made, tmp_path, monkeypatch):
    out, _ = made
    every = FabricatedCelebA(out, split="all", target_type=["attr", "identity", "bbox", "landmarks"])
    assert len(every) == IMAGES and every.attr.shape == (IMAGES, 40) and every.attr_names[-1] == "Young"
    assert set(every.attr.unique().tolist()) == {0, 1}
    image, _ = every[0]
    assert image.size == (178, 218)
    splits = [len(FabricatedCelebA(out, split=s)) for s in ("train", "valid", "test")]
    assert splits == [32, 4, 4]
    monkeypatch.setenv("COLLAPSE_CACHE", str(tmp_path))
    data = grid.load_sweep(["grid=ddpm_lambda_celeba", "profile=rehearsal", f"data.root={out / 'celeba'}",
                            "data.train_size=24", "data.test_size=16"]).base.data
    split = celeba.load_split(data)
    assert split["train"].shape == (24, 3, 64, 64) and split["test"].shape == (16, 3, 64, 64)


@pytest.mark.parametrize("layout", ["cnn_dailymail", "cnn_dailymail_disk"])
def test_cnndm_reads_from_the_parquet_tree_and_from_save_to_disk(made, layout):
    out, info = made
    root = summaries.version_root(str(out / layout), "3.0.0")
    for split, count in info["cnn_dailymail"]["pairs"].items():
        articles, highlights = summaries.load_pairs("cnn_dailymail", split, root)
        assert len(articles) == len(highlights) == count
    assert sorted(p.name for p in (out / "cnn_dailymail" / "3.0.0").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00003.parquet", "train-00001-of-00003.parquet",
        "train-00002-of-00003.parquet", "validation-00000-of-00001.parquet"]


def test_t5_small_and_gpt2_124m_load_from_their_save_pretrained_folders(made):
    out, info = made
    model = t5_model.pretrained(str(out / "t5-small"))
    assert t5_model.parameters(model) == info["t5"]["parameters"] == 60_506_624
    assert (model.config.d_model, model.config.num_layers, model.config.num_heads, model.config.vocab_size) == (
        512, 6, 8, 32128)
    tokenizer = load_tokenizer(str(out / "t5-small"))
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == len(tokenizer) - 1 < 32128
    articles, _ = summaries.load_pairs("cnn_dailymail", "train", str(out / "cnn_dailymail" / "3.0.0"))
    lengths = sorted(len(ids) for ids in tokenizer(articles, add_special_tokens=False)["input_ids"])
    assert lengths[len(lengths) // 2] > 1024       # the articles fill the paper's 1,024 source tokens
    gpt2, gpt2_tokenizer = perplexity.load(str(out / "gpt2"))
    assert sum(p.numel() for p in gpt2.parameters()) == info["gpt2"]["parameters"] == 124_439_808
    assert gpt2_tokenizer.eos_token == "<|endoftext|>" and len(gpt2_tokenizer) <= 50257
    assert all(v is not None for v in perplexity.perplexities(gpt2, gpt2_tokenizer, ["Baimu vi bou.", "Ka lo."]))


def test_the_rehearsal_profile_cuts_counts_and_keeps_the_paper_sizes_and_requests(made):
    out, _ = made
    ddpm = grid.load_sweep(["grid=ddpm_lambda_celeba", "profile=rehearsal", f"data.root={out / 'celeba'}"]).base
    assert sum(p.numel() for p in tasks.get("ddpm").build_model(ddpm).parameters()) == 38_390_019
    assert (ddpm.diffusion.timesteps, ddpm.synth.sampler, ddpm.synth.steps, ddpm.train.steps) == (1000, "ddpm", 4, 6)
    assert (ddpm.cluster.gpus_per_node, ddpm.cluster.mem_gb, ddpm.synth.shards) == (1, 32, 4)   # the grid's own
    argv = [a for a in rehearsal.launch_argv("t5_lambda_cnndm", out, out / "r", [])[2:] if a != "canary=false"]
    t5 = grid.load_sweep(argv).base
    assert (t5.data.max_source_tokens, t5.data.max_target_tokens, t5.train.zero_stage, t5.train.bf16) == (
        1024, 128, 2, None)
    assert (t5.train.steps, t5.synth.shards, t5.cluster.gpus_per_node) == (3, 8, 1)
    assert (t5.cluster.mem_gb, t5.cluster.cpus_per_task) == (11, 4)           # lowered to fit the local node
    assert t5.model.path == str((out / "t5-small").resolve()) and t5.eval.ppl_model.path == str((out / "gpt2").resolve())


def test_seconds_per_step_leaves_out_the_first_step_and_each_evaluation():
    # done -> (first time written, last time written): step 3 evaluated (written again 30 s later)
    times = {"1": (100.0, 100.0), "2": (108.0, 108.0), "3": (116.0, 146.0), "4": (154.0, 154.0), "6": (170.0, 170.0)}
    assert rehearsal.seconds_per_step(times) == 8.0
    assert rehearsal.seconds_per_step({"1": (5.0, 5.0)}) is None
