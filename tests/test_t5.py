"""The T5 summarization modality's parts: eq. (3), truncation, ROUGE, perplexity, loading, bad input."""
import json
import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from collapse import config, experiment, storage, train
from collapse.config import ConfigError
from collapse.data import text
from collapse.device import StepNoise
from collapse.metrics import perplexity, rouge
from collapse.models import t5 as t5_model
from collapse.tasks import t5, t5_report
from helpers import cluster_answers, launch, launch_jobs, show, wait_done

# Real CNN/DailyMail-shaped rows (the tests write them as files in the release's formats)
ARTICLES = [
    "The city council approved a new budget on Tuesday. It raises spending on schools and parks. "
    "Critics said the plan ignores road repairs.",
    "A rare bird was spotted in the national park this week. Volunteers counted twelve of them. "
    "The park will close two trails to protect their nests.",
    "The local football club won the final after a penalty shootout. Fans celebrated in the streets "
    "until late at night.",
    "Scientists found that the river's water is cleaner than ten years ago. Factories now treat "
    "their waste before releasing it.",
] * 4
HIGHLIGHTS = ["Council approves budget with more for schools and parks.",
              "Twelve rare birds counted in the national park.",
              "Local club wins the final on penalties.",
              "River water is cleaner than a decade ago."] * 4


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    """Trained tokenizers and stand-in GPT-2s go to one folder for the whole test session."""
    monkeypatch.setenv("COLLAPSE_CACHE", str(tmp_path_factory.getbasetemp() / "collapse-cache"))


@pytest.fixture
def cnndm(tmp_path):
    """A tiny CNN/DailyMail-shaped data set saved with datasets' save_to_disk."""
    import datasets
    root = tmp_path / "cnndm"
    split = lambda lo, hi: datasets.Dataset.from_dict(  # noqa: E731
        {"article": ARTICLES[lo:hi], "highlights": HIGHLIGHTS[lo:hi], "id": [str(i) for i in range(lo, hi)]})
    datasets.DatasetDict({"train": split(0, 12), "validation": split(12, 16)}).save_to_disk(str(root))
    return root


def tiny(root=None, **overrides):
    data = {"task": "t5",
            "data": {"dataset": "cnn_dailymail", "root": str(root), "max_source_tokens": 48, "max_target_tokens": 16},
            "model": {"vocab": 300, "d_model": 16, "layers": 1, "heads": 2, "d_ff": 32, "dropout": 0.0},
            "train": {"steps": 4, "eval_every_steps": 4, "batch_size": 4, "lr": 3e-3, "weight_decay": 0.0},
            "synth": {"batch_size": 8}, "eval": {"bootstrap": 20, "processes": 1, "examples": 2,
                                                 "ppl_model": {"d_model": 16, "steps": 5, "batch_size": 4}}}
    return experiment.from_dict(config.merge(data, overrides))


def batch_of(cfg, n=4):
    return t5.batch(t5.real_data(cfg, "train"), torch.arange(n))


def noise():
    return StepNoise(torch.Generator().manual_seed(3), 4)


# ---------------------------------------------------------------- eq. (3)

def test_cosine_distance_is_zero_for_equal_states_and_right_on_hand_computed_vectors():
    z = torch.randn(2, 3, 4)
    keep = torch.ones(2, 3, dtype=torch.bool)
    assert t5.cosine_distance(z, z, keep).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [-1.0, 7.0]]])
    # 1 - cos: orthogonal 1; 45 degrees 1 - 1/sqrt(2); the third position is padding and left out
    keep = torch.tensor([[True, True, False]])
    assert t5.cosine_distance(student, teacher, keep).item() == pytest.approx((1 + 1 - 1 / math.sqrt(2)) / 2)
    changed = teacher.clone()
    changed[0, 2] = torch.tensor([123.0, -4.0])   # whatever stands at a padded position
    assert t5.cosine_distance(student, changed, keep).item() == t5.cosine_distance(student, teacher, keep).item()


def test_lam_zero_is_plain_cross_entropy_and_the_teacher_gets_no_gradient(cnndm):
    cfg = tiny(cnndm)
    torch.manual_seed(0)
    student, teacher = t5.build_model(cfg), t5.build_model(cfg).eval().requires_grad_(False)
    b = batch_of(cfg)
    plain = t5.loss(student, b, noise(), cfg)[0]
    # transformers' own loss on the same batch, padding as -100
    labels = b["labels"].masked_fill(b["labels"] == 0, -100)
    reference = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=labels).loss
    assert plain.item() == pytest.approx(reference.item(), rel=1e-5)
    states = t5.teacher_outputs(teacher, b, noise(), cfg)
    assert torch.equal(t5.loss(student, b, noise(), cfg, states)[0], plain)   # lam = 0
    distilled = tiny(cnndm, distill={"lam": 2.0})
    total = t5.loss(student, b, noise(), distilled, states)[0]
    out = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                  decoder_input_ids=student._shift_right(b["labels"]), output_hidden_states=True)
    keep = b["labels"] != 0
    by_hand = 1 - F.cosine_similarity(out.decoder_hidden_states[-1], states.states, dim=-1)
    assert total.item() == pytest.approx(plain.item() + 2.0 * by_hand[keep].mean().item(), rel=1e-5)
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_the_teachers_states_are_its_last_decoder_layers_and_ignore_padding_beyond_the_summary(cnndm):
    cfg = tiny(cnndm)
    torch.manual_seed(0)
    teacher = t5.build_model(cfg).eval()
    b = batch_of(cfg)
    states = t5.teacher_outputs(teacher, b, None, cfg).states
    out = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                  decoder_input_ids=teacher._shift_right(b["labels"]), output_hidden_states=True)
    assert torch.allclose(states, out.decoder_hidden_states[-1], atol=1e-6)
    longer = {**b, "labels": text.pad_to(b["labels"], b["labels"].shape[1] + 5, 0)}   # more padding after </s>
    assert t5.loss(teacher, longer, None, cfg)[0].item() == pytest.approx(t5.loss(teacher, b, None, cfg)[0].item(),
                                                                        rel=1e-6)


# ---------------------------------------------------------------- truncation

def test_articles_and_summaries_are_cut_in_training_and_in_generation(cnndm):
    cfg = tiny(cnndm, data={"max_source_tokens": 10, "max_target_tokens": 6})
    data = t5.real_data(cfg, "train")
    tok = t5.tokenizer(cfg)
    full = tok(ARTICLES[0], add_special_tokens=False)["input_ids"]
    assert len(full) > 10 and data.source.shape[1] == 10 and data.target.shape[1] == 6
    assert data.source[0].tolist() == full[:9] + [tok.eos_token_id]   # the first 9 tokens, then </s>
    b = t5.batch(data, torch.arange(4))
    assert b["input_ids"].shape == (4, 10) and b["labels"].shape[1] <= 6
    torch.manual_seed(0)
    model = t5.build_model(cfg).eval()
    rows = t5.summarize(model, data.source, data.pad_id, cfg.data.max_target_tokens, 8)
    assert all(1 <= len(r) <= 6 for r in rows)
    synthetic = t5.synthesize(model, cfg, 2, 7)
    assert len(synthetic) == 5 and torch.equal(synthetic.source, data.source[2:7]) and synthetic.target.shape[1] <= 6


# ---------------------------------------------------------------- metrics

def test_rouge_equals_rouge_scores_own_values_over_processes():
    from rouge_score import rouge_scorer
    refs = ["The cats are running in the garden. They chased a mouse.", "Stocks fell sharply on Monday.",
            "A new bridge opened downtown.", "Rain is expected tomorrow."] * 30
    preds = ["A cat ran in the garden and chased mice.", "Stocks fell on Monday", "", "Expect rain tomorrow!"] * 30
    ours = rouge.rouge(refs, preds, bootstrap=200, processes=2)
    scorer = rouge_scorer.RougeScorer(list(rouge.ROUGE_TYPES), use_stemmer=True)
    theirs = [scorer.score(r.replace(". ", ".\n"), p) for r, p in zip(refs, preds)]
    for i, name in enumerate(rouge.ROUGE_TYPES):
        expected = 100 * sum(s[name].fmeasure for s in theirs) / len(theirs)
        assert ours[name] == pytest.approx(expected, abs=1e-9)
        low, high = ours[f"{name}_ci"]
        assert low <= ours[name] <= high
    assert ours["per_pair"][2].tolist() == [0.0] * 4   # an empty summary scores zero, and is kept
    assert rouge.sentences("He left. She stayed! Why? 3 more.") == "He left.\nShe stayed!\nWhy?\n3 more."
    single = rouge.score_pairs(refs, preds, processes=1)
    assert (single == ours["per_pair"]).all()
    workers = rouge.Workers(2)   # started ahead, as the eval starts them before generating
    workers.wait_ready()
    assert (rouge.score_pairs(refs, preds, workers=workers) == single).all()
    assert workers.procs == []   # each scoring process ended after its batch
    unused = rouge.Workers(1)
    proc = unused.procs[0]
    unused.close()   # a failed generation ends workers that never scored
    assert proc.poll() is not None


def test_the_article_by_article_comparison_with_m1_is_scipys_paired_t_test():
    from scipy import stats
    gen = torch.Generator().manual_seed(0)
    m1 = (torch.rand(50, 4, generator=gen) * 40).tolist()
    row = [[v + 1.0 + 3.0 * float(torch.randn(1, generator=gen)) for v in a] for a in m1]

    def scored(per_article, seed):
        return {"metrics": {"rouge_per_article": per_article}, "config": {"train": {"seed": seed}}}

    # seed 1 is in M1 only, and seed 2's articles are not M1's: neither pairs
    diffs = t5_report.article_diffs([scored(row, 0), scored(row[:10], 2)],
                                      [scored(m1, 0), scored(m1, 1), scored(m1[:20], 2)], column=0)
    assert diffs == [a[0] - b[0] for a, b in zip(row, m1)]
    mean, low, high, p = t5_report.paired_test(diffs)
    expected = stats.ttest_rel([a[0] for a in row], [b[0] for b in m1])
    assert p == pytest.approx(expected.pvalue)
    assert (low, high) == pytest.approx(tuple(expected.confidence_interval()))
    assert mean == pytest.approx(statistics.fmean(diffs))


def test_perplexity_is_exp_of_the_mean_token_nll():
    from transformers import GPT2Config, GPT2LMHeadModel
    tok = text.load_tokenizer(text.trained_tokenizer(ARTICLES + HIGHLIGHTS, 300))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2)).eval()
    texts = ["Council approves budget.", "", "Twelve rare birds counted in the national park today."]
    values = perplexity.perplexities(model, tok, texts, batch_size=2)
    assert values[1] is None
    for i in (0, 2):
        ids = torch.tensor([[tok.eos_token_id] + tok(texts[i], add_special_tokens=False)["input_ids"]])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)
        nll = -logp.gather(1, ids[0, 1:, None]).mean()
        assert values[i] == pytest.approx(math.exp(nll.item()), rel=1e-5)
    assert perplexity.summary(values)["empty_generations"] == 1


# ---------------------------------------------------------------- loading

@pytest.mark.parametrize("kind", ["save_to_disk", "parquet", "jsonl"])
def test_the_data_set_loads_from_disk_and_from_the_releases_files(tmp_path, cnndm, kind):
    import datasets
    root = cnndm
    if kind != "save_to_disk":
        root = tmp_path / "release" / "3.0.0"
        root.mkdir(parents=True)
        for split in ("train", "validation"):
            table = datasets.load_from_disk(str(cnndm))[split]
            if kind == "parquet":
                table.to_parquet(str(root / f"{split}-00000-of-00001.parquet"))
            else:
                table.to_json(str(root / f"{split}.jsonl"))
        root = root.parent
    cfg = tiny(root)
    t5.check_data(cfg)
    train_set, test_set = t5.real_data(cfg, "train"), t5.real_data(cfg, "test")
    assert len(train_set) == 12 and len(test_set) == 4 and test_set.summaries == HIGHLIGHTS[12:16]


def test_the_model_and_tokenizer_load_from_a_save_pretrained_directory(tmp_path, cnndm):
    built = tiny(cnndm)
    torch.manual_seed(0)
    model = t5.build_model(built)
    model.save_pretrained(str(tmp_path / "t5"))
    t5.tokenizer(built).save_pretrained(str(tmp_path / "t5"))
    cfg = tiny(cnndm, model={"path": str(tmp_path / "t5")})
    t5.check_data(cfg)
    loaded = t5.build_model(cfg)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert len(t5.tokenizer(cfg)) == len(t5.tokenizer(built))
    # our weights file names each tied matrix once and loads back into the tied model
    path = storage.save_tensors(tmp_path / "w.safetensors", model.state_dict())
    again = storage.load_weights(path, t5.build_model(built))
    assert again.lm_head.weight is again.shared.weight and torch.equal(again.shared.weight, model.shared.weight)


def test_synthetic_data_store_and_concatenate(cnndm):
    cfg = tiny(cnndm)
    real = t5.real_data(cfg, "train")
    parts = [real.select(0, 5), text.TextPairs(real.source[5:9, :20], real.target[5:9, :3], real.pad_id)]
    whole = t5.from_tensors(t5.to_tensors(t5.concat(parts)))
    assert len(whole) == 9 and torch.equal(whole.source[:5], real.source[:5])
    assert torch.equal(whole.source[5:, :20], real.source[5:9, :20]) and (whole.source[5:, 20:] == 0).all()


# ---------------------------------------------------------------- through the shared loop

def test_a_tiny_t5_learns_a_few_summaries_through_the_shared_loop(tmp_path, cnndm):
    cfg = tiny(cnndm, train={"steps": 40, "eval_every_steps": 20, "lr": 1e-2}, distill={"lam": 1.0},
               eval={"curve_articles": 4})
    data = t5.real_data(cfg, "train")
    torch.manual_seed(1)
    teacher = t5.build_model(cfg).eval().requires_grad_(False)
    before = t5.test_loss(t5.build_model(cfg).eval(), data, cfg)
    state = train.train(t5, cfg, data, data, tmp_path, teacher=teacher, log=lambda m: None)
    assert state.step == 40 and state.best_loss < 0.7 * before, (before, state.best_loss)
    assert [h["step"] for h in state.history] == [20, 40] and all(0 <= h["rouge1"] <= 100 for h in state.history)
    model = storage.load_weights(tmp_path / "best.safetensors", t5.build_model(cfg)).eval()
    metrics = t5.evaluate(model, t5.real_data(cfg, "test"), cfg)
    assert metrics["articles"] == 4 and len(metrics["perplexities"]) == 4 and 0 <= metrics["rouge1"] <= 100
    assert metrics["empty_generations"] + metrics["ppl_scored"] == 4
    files = t5.write_examples(model, cfg, tmp_path / "eval")
    assert len(json.loads(files["examples"].read_text())) == 2


def test_bf16_on_cpu_a_distilled_t5_trains_and_generates(tmp_path, cnndm):
    """The GPU default (DeepSpeed bf16, fp32 master weights) on the CPU: token batches, the teacher's
    hidden states (the loop runs it in bf16) and the cosine term meet bf16 parameters; the bf16 model
    generates."""
    cfg = tiny(cnndm, train={"steps": 40, "eval_every_steps": 40, "lr": 1e-2, "bf16": True}, distill={"lam": 1.0},
               eval={"curve_articles": 4})
    data = t5.real_data(cfg, "train")
    torch.manual_seed(1)
    teacher = t5.build_model(cfg).eval().requires_grad_(False)
    before = t5.test_loss(t5.build_model(cfg).eval(), data, cfg)
    lines = []
    state = train.train(t5, cfg, data, data, tmp_path, teacher=teacher, log=lines.append)
    assert any("bf16 (fp32 master weights)" in line for line in lines), lines
    assert next(teacher.parameters()).dtype == torch.bfloat16
    assert state.step == 40 and state.best_loss < 0.8 * before, (before, state.best_loss)
    model = storage.load_weights(tmp_path / "best.safetensors", t5.build_model(cfg)).to(torch.bfloat16).eval()
    metrics = t5.evaluate(model, t5.real_data(cfg, "test"), cfg)
    assert metrics["articles"] == 4 and metrics["empty_generations"] + metrics["ppl_scored"] == 4


# ---------------------------------------------------------------- bad input

def test_bad_input_is_one_line_naming_the_key(tmp_path, cnndm):
    with pytest.raises(ConfigError, match=r"key 'model.path': value .* is not allowed \(absolute path tried: .*\); expected a save_pretrained directory"):
        tiny(cnndm, model={"path": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match=r"key 'distill.lam': value 'big' is not allowed; expected a number"):
        tiny(cnndm, distill={"lam": "big"})
    with pytest.raises(ConfigError, match=r"key 'data.root': value None"):
        tiny(None, data={"root": None})
    with pytest.raises(ConfigError, match=r"key 'data.root'.*no split 'train'"):
        t5.check_data(tiny(tmp_path))
    import datasets
    empty = tmp_path / "empty"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"article": ["a b c", " "], "highlights": ["x", "y"]}),
                          "validation": datasets.Dataset.from_dict({"article": ["a"], "highlights": ["b"]})}
                         ).save_to_disk(str(empty))
    with pytest.raises(ConfigError, match=r"split 'train' item 1 has an empty article"):
        t5.check_data(tiny(empty))
    # a tokenizer that does not match the model: 300 tokens for a model of 262
    with pytest.raises(ConfigError, match=r"key 'model.tokenizer'.*tokenizer that matches the model \(the tokenizer has 300 tokens"):
        t5.check_data(tiny(cnndm, model={"vocab": 262, "tokenizer": t5.tokenizer_dir(tiny(cnndm))}))
    with pytest.raises(ConfigError, match=r"key 'eval.articles'"):
        t5.check_data(tiny(cnndm, eval={"articles": 5}))


# ---------------------------------------------------------------- a tiny t5_lambda grid end to end

TWO_ROWS = "experiment: t5_standin\nrows:\n  - {distill.lam: 0.0}\n  - {distill.lam: 2.0}\n"


def _check_grid_results(root):
    records = [json.loads(p.read_text()) for p in (root / "manifest").glob("*.json")]
    stages = {r["key"]: r for r in records if r["kind"] not in ("sweep",)}
    assert all(r["status"] == "done" for r in stages.values()), [(r["name"], r.get("error")) for r in stages.values()]
    synth = next(r for r in stages.values() if r["kind"] == "synth")
    assert synth["metrics"]["n"] == 24
    teacher = next(r for r in stages.values() if r["kind"] == "teacher")
    assert [h["step"] for h in teacher["metrics"]["history"]] == [2, 4] and "rouge1" in teacher["metrics"]["history"][0]
    evals = [r for r in stages.values() if r["kind"] == "eval"]
    assert len(evals) == 3 and all(r["metrics"]["articles"] == 8 and len(r["metrics"]["perplexities"]) == 8
                                   for r in evals)
    assert all("examples" in r["artifacts"] for r in evals)
    table = (root / "report" / "t5_two_table3.md").read_text()
    assert "| M0 (teacher) |" in table and "| M1 | 0 |" in table and "| student | 2 |" in table
    assert "41.3647" in table   # the paper's ROUGE-1 at lambda 2 beside ours
    assert all(len(r["metrics"]["rouge_per_article"]) == 8 for r in evals)
    for r in evals:   # distinct summaries counted from the examples' generations where they overlap
        assert 1 <= r["metrics"]["distinct_summaries"] <= 8
        assert r["metrics"]["commonest_summary_share"] >= 1 / 8
        shown = [x["summary"] for x in json.loads((root / r["artifacts"]["examples"]["path"]).read_text())]
        assert r["metrics"]["distinct_summaries"] >= len(set(shown))
    by_article = table.split("## Against M1, article by article")[1]
    assert "| M0 (teacher) | 8 |" in by_article and "| student (lambda 2) | 8 |" in by_article
    assert (root / "report" / "t5_two_rouge_curves.png").is_file()
    assert (root / "report" / "t5_two_perplexity.png").is_file()
    examples = (root / "report" / "t5_two_examples.md").read_text()
    assert "**M0:**" in examples and "**M1:**" in examples and "**best student (lambda=2):**" in examples


def test_a_tiny_t5_grid_runs_end_to_end_on_the_local_executor(tmp_path, monkeypatch):
    """Teacher, synth (greedy summaries in 2 shards), M1 and a distilled student, three evals and the
    report with Table 3, as real subprocesses through the same plan, runner and executor as the VAE."""
    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "t5_two.yaml").write_text(TWO_ROWS)
    monkeypatch.setenv("COLLAPSE_GRID_DIR", str(grids))
    root = tmp_path / "r"
    out = launch("grid=t5_two", "profile=t5_smoke", "cluster=local", f"results_root={root}", "synth.shards=2",
                 "eval.processes=2")   # scoring processes started before generation, in a real stage runner
    assert "0 failed" in out.stdout, out.stdout
    _check_grid_results(root)


@pytest.mark.slurm
def test_a_tiny_t5_grid_runs_end_to_end_on_slurm(tmp_path, monkeypatch):
    if why := cluster_answers():
        pytest.skip(why)
    from collapse import slurm_index
    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "t5_two.yaml").write_text(TWO_ROWS)
    root = tmp_path / "r"
    out = launch("grid=t5_two", "profile=t5_smoke", "cluster=slurm", f"results_root={root}",
                 env={"COLLAPSE_GRID_DIR": str(grids)})
    assert out.returncode == 0, show(out)
    wait_done(launch_jobs(slurm_index.read_index(root)["launches"][-1]), timeout=600)
    _check_grid_results(root)
