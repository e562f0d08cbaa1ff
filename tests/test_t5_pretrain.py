"""The T5 stand-in's pretraining stage: span corruption, its place in the plan, the weights the teacher and
students start from, and a loss that falls."""
import statistics

import pytest
import torch

from collapse import experiment, plan, run, stages, storage, train
from collapse.config import to_dict
from collapse.data import spans
from collapse.grid import load_sweep
from collapse.tasks import t5

SENTINELS = [1000 + i for i in range(40)]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    """Trained tokenizers go to one folder for the whole test session."""
    monkeypatch.setenv("COLLAPSE_CACHE", str(tmp_path_factory.getbasetemp() / "collapse-cache"))


def corrupt(tokens, seed, density=0.15, mean_span=3.0):
    return spans.span_corruption(tokens, density, mean_span, SENTINELS, torch.Generator().manual_seed(seed))


def restored(source: list[int], target: list[int]) -> list[int]:
    """The text again: each sentinel of the input replaced by what follows it in the target."""
    filled = {}
    for t in target:
        if t in SENTINELS:
            current = filled.setdefault(t, [])
        else:
            current.append(t)
    return [x for t in source for x in (filled[t] if t in SENTINELS else [t])]


# ---------------------------------------------------------------- span corruption

def test_span_corruption_drops_15_percent_in_spans_each_replaced_by_one_sentinel():
    tokens = list(range(100, 200))
    source, target = corrupt(tokens, seed=0)
    # 100 tokens: round(15) noise tokens in round(15 / 3) = 5 spans, kept tokens first
    assert [t for t in source if t in SENTINELS] == SENTINELS[:5]
    assert [t for t in target if t in SENTINELS] == SENTINELS[:6]   # each span's, then one more to close
    assert target[0] == SENTINELS[0] and target[-1] == SENTINELS[5] and source[0] == 100
    assert len(source) == 85 + 5 and len(target) == 15 + 6
    assert all(target[i - 1] in SENTINELS or target[i] in SENTINELS or target[i] == target[i - 1] + 1
               for i in range(1, len(target)))    # each span is a run of the text
    assert restored(source, target) == tokens
    assert corrupt(tokens, seed=0) == (source, target)    # a seed decides it
    assert corrupt(tokens, seed=1) != (source, target)


def test_noise_density_and_mean_span_length_over_many_windows():
    noise, lengths = [], []
    for seed in range(200):
        source, target = corrupt(list(range(256)), seed)
        dropped = [t for t in target if t not in SENTINELS]
        noise.append(len(dropped) / 256)
        runs = "".join("s" if t in SENTINELS else "x" for t in target).split("s")
        lengths += [len(r) for r in runs if r]
        assert restored(source, target) == list(range(256))
    assert abs(statistics.fmean(noise) - 0.15) < 0.005
    assert abs(statistics.fmean(lengths) - 3.0) < 0.15
    assert 1 in lengths and max(lengths) > 5   # spans of random length, not all 3


def test_the_training_items_are_a_function_of_the_seed_and_item():
    stream = torch.arange(5, 505, dtype=torch.int32)
    make = lambda seed: spans.Corrupted(stream, 64, 100, 0.15, 3.0, SENTINELS, 1, 0, seed)   # noqa: E731
    a, b = make(0).batch(torch.tensor([3, 7])), make(0).batch(torch.tensor([7, 3]))
    assert torch.equal(a["input_ids"][0], b["input_ids"][1]) and torch.equal(a["labels"][1], b["labels"][0])
    assert not torch.equal(make(1).batch(torch.tensor([3]))["labels"], make(0).batch(torch.tensor([3]))["labels"])
    src, tgt = make(0).example(3)
    assert src[-1] == 1 and tgt[-1] == 1 and len(src) + len(tgt) == 64 + 3 + 4 + 2   # 3 spans: 3 + 4 sentinels, 2 </s>


# ---------------------------------------------------------------- the plan

def sweep(*overrides, grid="t5_lambda"):
    return load_sweep([f"grid={grid}", "cluster=local", *overrides])


def test_one_pretrain_stage_for_every_seed_and_row_and_every_trained_model_reads_it():
    built = plan.build(sweep("seeds=[0,1]"))
    pretrain = [s for s in built.stages.values() if s.kind == "pretrain"]
    assert len(pretrain) == 1 and list(built.stages)[0] == pretrain[0].key
    trained = [s for s in built.stages.values() if s.kind in ("teacher", "student")]
    assert len(trained) == 2 + 12 and all(s.deps["pretrain"] == pretrain[0].key for s in trained)
    assert {s.config["train"]["seed"] for s in trained} == {0, 1}
    # its key: its own settings, not the study's seed, rate or step budget
    same = plan.build(sweep("seeds=[5]", "train.lr=1e-4", "train.steps=10", "data.max_source_tokens=64"))
    assert [s.key for s in same.stages.values() if s.kind == "pretrain"] == [pretrain[0].key]
    for change in ("pretrain.steps=7", "pretrain.seed=1", "pretrain.noise_density=0.3", "model.d_model=64"):
        other = plan.build(sweep(change))
        assert [s.key for s in other.stages.values() if s.kind == "pretrain"] != [pretrain[0].key], change


def test_a_corpus_folder_enters_the_key_by_its_content(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("Some text to pretrain on.")
    key = lambda: next(s.key for s in plan.build(sweep(f"pretrain.corpus={folder}")).stages.values()   # noqa: E731
                       if s.kind == "pretrain")
    first = key()
    (folder / "a.txt").write_text("Other text.")
    from collapse import fingerprint
    fingerprint.cache_clear()
    assert key() != first


def test_no_pretrain_stage_with_real_weights_or_with_steps_0(tmp_path):
    folder = tmp_path / "t5-small"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    cnndm = plan.build(sweep(f"model.path={folder}", f"data.root={folder}", f"eval.ppl_model.path={folder}",
                             grid="t5_lambda_cnndm"))
    assert "pretrain" not in {s.kind for s in cnndm.stages.values()}
    assert all("pretrain" not in s.deps for s in cnndm.stages.values())
    scratch = plan.build(sweep("pretrain.steps=0", "train.lr=1e-3"))
    assert "pretrain" not in {s.kind for s in scratch.stages.values()}
    # the from-scratch run of before keeps its keys (tests/stage_keys.json before pretraining existed)
    keys = {s.name: s.key for s in scratch.stages.values()}
    assert keys["teacher[seed=0]"] == "4b81fb1fedc1fcf1" and keys["student[lam=0,seed=0]"] == "a20ad2a9cb82692b"


def test_a_records_config_alone_tells_a_pretrained_model_from_one_trained_from_scratch():
    """The report pools seeds whose key material matches (collapse/report/rows.py): that material holds
    the pretraining's, not only the dep's key."""
    on, off = (to_dict(sweep(*o).points[0].config) for o in ((), ("pretrain.steps=0",)))
    assert plan.key_material("student", on)["pretrained_from"] == plan.key_material("pretrain", t5.pretrain_config(on))
    assert "pretrained_from" not in plan.key_material("student", off)


def test_the_tokenizer_reserves_the_sentinels_only_when_it_pretrains():
    on = sweep("profile=t5_smoke").points[0].config
    off = sweep("profile=t5_smoke", "pretrain.steps=0").points[0].config
    tok_on, tok_off = t5.tokenizer(on), t5.tokenizer(off)
    ids = [tok_on.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(8)]
    assert ids == list(range(511, 503, -1)) and len(tok_on) == 512 and on.model.vocab == 512   # t5-small's layout
    assert "<extra_id_0>" not in tok_off.get_vocab() and len(tok_off) == 512
    assert tok_on.decode(ids[:2] + [tok_on.eos_token_id], skip_special_tokens=True) == ""


# ---------------------------------------------------------------- the stages

def test_the_teacher_and_students_start_from_the_pretrained_weights(tmp_path, monkeypatch):
    """pretrain -> teacher -> synth -> student run in process at t5_smoke's sizes; the weights each trained
    model starts from are the pretraining stage's output."""
    built = plan.build(sweep("profile=t5_smoke", "train.threads=1", f"results_root={tmp_path}", grid="t5_lambda_key"))
    starts = []
    make_engine = train.make_engine
    monkeypatch.setattr(train, "make_engine", lambda model, *a, **k: (
        starts.append({n: p.detach().clone() for n, p in model.state_dict().items()}), make_engine(model, *a, **k))[1])
    order = [s for s in built.stages.values() if s.kind in ("pretrain", "teacher", "synth", "student")]
    for stage in order:
        stages.write_spec(tmp_path, stage)
    for stage in order:
        assert run.run_stage(tmp_path, stage.key)["status"] == "done", stage.name
    pretrained = storage.load_tensors(stages.stage_dir(tmp_path, order[0].key) / "best.safetensors")
    assert len(starts) == 1 + 1 + 2   # pretrain, teacher, the two students
    for start in starts[1:]:
        assert start.keys() == pretrained.keys()
        assert all(torch.equal(start[n], pretrained[n]) for n in pretrained)
    assert not all(torch.equal(starts[0][n], pretrained[n]) for n in pretrained)   # pretraining moved them


def test_the_pretraining_loss_falls(tmp_path):
    config = to_dict(sweep("profile=t5_smoke", "pretrain.steps=40", "pretrain.eval_every_steps=20",
                           "pretrain.lr=1e-2", "pretrain.warmup_steps=4", "train.threads=1").points[0].config)
    cfg = experiment.from_stored(t5.pretrain_config(config))
    assert cfg.train.steps == 40 and cfg.train.seed == cfg.pretrain.seed and cfg.eval.curve_articles == 0
    data, held_out = t5.pretraining_data(cfg)
    torch.manual_seed(0)
    before = t5.test_loss(t5.build_model(cfg).eval(), held_out, cfg)
    state = train.train(t5, cfg, data, held_out, tmp_path, log=lambda m: None)
    losses = [h["test_loss"] for h in state.history]
    assert state.step == 40 and losses[1] < losses[0] < before and losses[1] < 0.8 * before, (before, losses)
