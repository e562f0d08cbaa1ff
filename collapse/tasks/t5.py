"""T5 summarization: the paper's section 5 (CNN/DailyMail, t5-small; offline stand-in: ACLSum, a small T5).

L_CE  = cross-entropy of the summary's tokens, teacher-forced, padding left out
L_SD  = L_CE(Ys, Y) + lam * L_CosDist(Zs, Zt)                                      (eq. 3)
where Z are the last decoder layer's hidden states (after its final layer norm) of the student and
of the frozen teacher on the same teacher-forced input, and L_CosDist the mean over the summary's
real tokens of 1 - cos(z_s, z_t). The teacher's states depend only on the batch, but a whole set of
them ([N, 128, 512] floats for CNN/DailyMail) is too big to hold, so the loop computes them per step.

Data are `TextPairs` (collapse/data/text.py): articles cut to data.max_source_tokens, summaries to
data.max_target_tokens, as padded int tensors. D_M0 pairs the real training articles with the
teacher's greedy summaries of them, cut to the same lengths.

A built model (model.path null) may first be pretrained with span corruption (pretrain.steps > 0,
collapse/tasks/t5_pretrain.py): one stage per grid that the teacher and every student start from.
"""
import collections
import contextlib
import functools
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
import transformers

from collapse import storage
from collapse.config import bad
from collapse.data import spans, summaries, text
from collapse.data.text import TextPairs, concat, from_tensors, to_tensors   # noqa: F401  (task hooks)
from collapse.device import StepNoise, device_of
from collapse.metrics import perplexity, rouge
from collapse.models import t5 as t5_model
from collapse.summarize import summarize, timed_summaries   # noqa: F401  (t5.summarize)
from collapse.tasks import gpu_rates, t5_pretrain
from collapse.tasks.base import Term, add_terms
from collapse.tasks.t5_config import CONFIG_SECTIONS, SMOKE, _is_pretrained_dir  # noqa: F401
from collapse.tasks.t5_pretrain import PRETRAIN_KEY, pretrain_config, pretrains  # noqa: F401  (task hooks)
from collapse.tasks.t5_report import PRIMARY, table_notes, write_report  # noqa: F401

EVAL_BATCH_TOKENS = 2 ** 16
transformers.logging.disable_progress_bar()   # a stage's log is read by people: no progress bars
transformers.logging.set_verbosity_error()   # tokens per teacher-forced evaluation batch


DISTILL_MODES = ("none",)
PATH_FIELDS = ("data.root", "model.path", "model.tokenizer", "eval.ppl_model.path",
               "pretrain.corpus")   # fingerprinted in keys
KEY_SECTIONS = ()
CPU_SECONDS_PER_UNIT = {}   # no CPU rate stated: the dry run uses finished stages of this results root
FULL_SIZES = {"aclsum": (450, 300), "cnn_dailymail": (287_113, 13_368)}   # train, test pairs


def check_config(cfg) -> None:
    """Room for pretraining's sentinels in the vocabulary, when it pretrains."""
    t5_pretrain.check_config(cfg)


def full_sizes(data: dict) -> tuple[int, int]:
    return FULL_SIZES.get(data.get("dataset"), FULL_SIZES["cnn_dailymail"])


def gpu_seconds(kind: str, config: dict) -> float | None:
    """A stage's stated seconds on one GPU (gpu_rates), at this dataset's size where data.*_size is null."""
    return gpu_rates.t5_seconds(kind, config, full_sizes(config["data"]))
# The teacher's states depend only on the batch, but all of them are too big to hold: computed per step.
TEACHER_OUTPUTS_DETERMINISTIC = False


# ---------------------------------------------------------------- tokenizer, model, data

def raw_pairs(cfg, split: str) -> tuple[list[str], list[str]]:
    d = cfg.data
    root = d.root and summaries.version_root(d.root, d.version)
    return summaries.load_pairs(d.dataset, split, root, d.source_field, d.target_field,
                                {"train": "train", "test": d.test_split})


def tokenizer_dir(cfg) -> str:
    """model.tokenizer, else model.path, else a BPE of model.vocab tokens trained on the training texts
    (with T5's sentinels when it pretrains)."""
    m = cfg.model
    if m.tokenizer or m.path:
        return m.tokenizer or m.path
    articles, highlights = raw_pairs(cfg, "train")
    return t5_pretrain.make_tokenizer(list(dict.fromkeys(articles + highlights)), cfg)


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str):
    return text.load_tokenizer(path)


def tokenizer(cfg):
    return _tokenizer(tokenizer_dir(cfg))


def build_model(cfg) -> t5_model.Summarizer:
    m = cfg.model
    if m.path:
        return t5_model.pretrained(m.path, m.dropout)
    tok = tokenizer(cfg)
    return t5_model.built(m.vocab, m.d_model, m.layers, m.heads, m.d_ff, 0.1 if m.dropout is None else m.dropout,
                          tok.pad_token_id, tok.eos_token_id)


def pretraining_data(cfg) -> tuple[spans.Corrupted, TextPairs]:
    """Span-corrupted windows of the corpus to train on, and the held-out documents' for the test loss."""
    return t5_pretrain.corpus_data(cfg, tokenizer(cfg))


def real_data(cfg, split: str) -> TextPairs:
    """Split 'train' or 'test' (data.test_split), tokenized and cut; data.train_size / test_size items."""
    articles, highlights = raw_pairs(cfg, split)
    limit = cfg.data.train_size if split == "train" else cfg.data.test_size
    if limit:
        articles, highlights = articles[:limit], highlights[:limit]
    return text.make_pairs(tokenizer(cfg), articles, highlights, cfg.data.max_source_tokens,
                           cfg.data.max_target_tokens)


def check_data(cfg) -> None:
    """Fail before launch, naming the key, when the data, tokenizer or models cannot work together."""
    d, m = cfg.data, cfg.model
    data_key, data_value = ("data.root", d.root) if d.root is not None else ("data.dataset", d.dataset)
    if d.root is not None:
        try:
            summaries.version_root(d.root, d.version)
        except summaries.DataError as e:
            raise bad("data.version", d.version, f"a version folder under data.root ({e})") from None
    sizes = {}
    for split in ("train", "test"):
        try:
            articles, highlights = raw_pairs(cfg, split)
        except (summaries.DataError, OSError, ValueError) as e:
            raise bad(data_key, data_value, f"a readable {d.dataset} data set ({e})") from None
        limit = d.train_size if split == "train" else d.test_size
        for name, texts in (("article", articles[:limit or None]), ("highlight", highlights[:limit or None])):
            empty = next((i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()), None)
            if empty is not None:
                raise bad(data_key, data_value, f"a data set without empty texts (split {split!r} item {empty} "
                          f"has an empty {name})")
        sizes[split] = len(articles[:limit or None])
        if not sizes[split]:
            raise bad(data_key, data_value, f"a data set with items in split {split!r}")
    if cfg.synth.size is not None and cfg.synth.size > sizes["train"]:
        raise bad("synth.size", cfg.synth.size, f"at most the {sizes['train']} training articles (null: all)")
    if cfg.eval.articles is not None and cfg.eval.articles > sizes["test"]:
        raise bad("eval.articles", cfg.eval.articles, f"at most the {sizes['test']} test articles (null: all)")
    try:
        tok = tokenizer(cfg)
    except Exception as e:
        key = "model.tokenizer" if m.tokenizer else "model.path" if m.path else "model.vocab"
        raise bad(key, m.tokenizer or m.path or m.vocab, f"a loadable tokenizer ({type(e).__name__}: {e})") from None
    vocab, pad = (_pretrained_vocab(m.path) if m.path else (m.vocab, tok.pad_token_id))
    if len(tok) > vocab or tok.pad_token_id != pad:
        key = "model.tokenizer" if m.tokenizer else "model.vocab"
        raise bad(key, m.tokenizer or m.vocab, f"a tokenizer that matches the model (the tokenizer has {len(tok)} "
                  f"tokens and pad id {tok.pad_token_id}; the model {vocab} and pad id {pad})")
    if cfg.eval.ppl_model.path is not None:
        try:
            transformers.AutoTokenizer.from_pretrained(cfg.eval.ppl_model.path)
        except Exception as e:
            raise bad("eval.ppl_model.path", cfg.eval.ppl_model.path,
                      f"a GPT-2 directory with its tokenizer ({type(e).__name__})") from None
    if pretrains(cfg):
        check_pretraining(cfg, tok)


def check_pretraining(cfg, tok) -> None:
    """The tokenizer has the sentinels; the corpus folder has text files."""
    p = cfg.pretrain
    try:
        t5_pretrain.sentinel_ids(tok, p.sentinels)
    except ValueError as e:
        raise bad("model.tokenizer", cfg.model.tokenizer, f"a tokenizer with T5's sentinels ({e})") from None
    if p.corpus is not None and not t5_pretrain.corpus_files(p.corpus):
        raise bad("pretrain.corpus", p.corpus, "a folder holding .txt files (one document each)")


def _pretrained_vocab(path: str) -> tuple[int, int]:
    config = transformers.AutoConfig.from_pretrained(path)
    return config.vocab_size, config.pad_token_id


def batch(data: TextPairs | spans.Corrupted, index: torch.Tensor) -> dict:
    """Items `index` as model inputs, cut to the longest source and target among them."""
    if isinstance(data, spans.Corrupted):   # pretraining: each item corrupted as it is drawn
        return data.batch(index)
    source, target = data.source[index].long(), data.target[index].long()
    attention = (source != data.pad_id).long()
    source_width = max(1, int(attention.sum(1).max()))
    target_width = max(1, int((target != data.pad_id).sum(1).max()))
    return {"input_ids": source[:, :source_width], "attention_mask": attention[:, :source_width],
            "labels": target[:, :target_width]}


# ---------------------------------------------------------------- loss

def unwrapped(model):
    return getattr(model, "module", model)


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(z_s, z_t) over the positions where `keep` is true; states [B, T, d], keep [B, T]."""
    distance = 1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)
    keep = keep.to(distance.dtype)
    return (distance * keep).sum() / keep.sum().clamp(min=1)


def _seeded_dropout(noise: StepNoise | None, device: torch.device):
    """Dropout masks drawn from the step's seed (not the global generator), so a resumed run replays them."""
    if noise is None:
        return contextlib.nullcontext()
    seed = int(noise.randint(0, 2 ** 62)[0])
    forked = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])

    @contextlib.contextmanager
    def seeded():
        with forked:
            torch.manual_seed(seed)
            yield
    return seeded()


class DecoderStates(NamedTuple):
    """The decoder's last hidden states [B, T, d_model] in fp32 (what eq. 3 distills), and for the
    student which of them are the target's tokens (not padding): the teacher's are read on the same input."""
    states: torch.Tensor
    keep: torch.Tensor | None = None


def loss(model, batch: dict, noise: StepNoise | None, cfg, teacher: DecoderStates | None = None):
    """L_CE on a batch, or L_SD (eq. 3) given the teacher's last decoder states on the same input."""
    net = unwrapped(model)
    labels = batch["labels"]
    keep = labels != net.config.pad_token_id
    with _seeded_dropout(noise, labels.device):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    decoder_input_ids=net._shift_right(labels), output_hidden_states=teacher is not None)
    total = F.cross_entropy(out.logits.float()[keep], labels[keep])
    if teacher is None:
        return total, out
    student = DecoderStates(out.decoder_hidden_states[-1], keep)
    return add_terms(total, DISTILL_TERMS, cfg.distill, student, teacher, cfg), out


@torch.no_grad()
def teacher_outputs(teacher, batch: dict, noise, cfg) -> DecoderStates:
    """The frozen teacher's last decoder states on the student's teacher-forced input."""
    net = unwrapped(teacher)
    states = net.last_decoder_states(batch["input_ids"], batch["attention_mask"], net._shift_right(batch["labels"]))
    return DecoderStates(states.float())


def distill(student: DecoderStates, teacher: DecoderStates, cfg) -> torch.Tensor:
    """The cosine distance of the decoders' last hidden states, over the target's tokens (not padding)."""
    return cosine_distance(student.states, teacher.states, student.keep)


# Eq. 3's one weighted term: lam on the decoders' last hidden states.
DISTILL_TERMS = (Term("distill", "lam", "lambda", distill),)



@torch.no_grad()
def test_loss(model, data: TextPairs, cfg) -> float:
    """L_M(Test): L_CE per token over the hold-out, teacher-forced (no dropout: the model is in eval mode)."""
    device = device_of(model)
    rows = max(1, EVAL_BATCH_TOKENS // (data.source.shape[1] + data.target.shape[1]))
    total, tokens = 0.0, 0
    for start in range(0, len(data), rows):
        b = {k: v.to(device) for k, v in batch(data, torch.arange(start, min(start + rows, len(data)))).items()}
        n = int((b["labels"] != data.pad_id).sum())
        total += loss(model, b, None, cfg)[0].item() * n
        tokens += n
    return total / max(tokens, 1)


# ---------------------------------------------------------------- generation

def synthesize(teacher, cfg, start: int, stop: int, generator=None, keep=None) -> TextPairs:
    """Synthetic items start..stop-1 of D_M0: real training articles start..stop-1 with the teacher's
    greedy summaries (greedy decoding draws nothing from `generator`); `keep`: see summarize."""
    real = real_data(cfg, "train").select(start, stop)
    rows = summarize(teacher, real.source, real.pad_id, cfg.data.max_target_tokens, cfg.synth.batch_size, keep)
    return TextPairs(real.source, text.from_rows(rows, real.pad_id), real.pad_id)


def sample(model, n: int, generator, cfg, grid: bool = False, keep=None) -> TextPairs:
    """The first n items of D_M0 (the runner's default synth calls this)."""
    return synthesize(model, cfg, 0, n, generator, keep)


def decode(cfg, rows: list[list[int]]) -> list[str]:
    return [t.strip() for t in tokenizer(cfg).batch_decode(rows, skip_special_tokens=True)]


# ---------------------------------------------------------------- evaluation

def ppl_model(cfg):
    """(GPT-2, tokenizer) that scores summaries: eval.ppl_model.path, else the stand-in (see metrics/perplexity)."""
    p = cfg.eval.ppl_model
    if p.path:
        return perplexity.load(p.path)
    _, highlights = raw_pairs(cfg, "train")
    folder = perplexity.standin_gpt2(highlights, tokenizer(cfg), p.d_model, p.layers, p.heads, p.steps,
                                     p.batch_size, p.lr, p.seed, max_tokens=max(64, cfg.data.max_target_tokens + 2))
    return perplexity.load(folder)


def evaluate(model, test_data: TextPairs, cfg, cache=None, keep=None) -> dict:
    """Greedy summaries of eval.articles validation articles: ROUGE-1/2/L/Lsum (%, bootstrap 95% CIs),
    their per-token perplexity under GPT-2 (mean, and every value for the histogram), empty ones counted,
    generation speed, and L_M(Test). `cache` (the image tasks' reference features) is not needed here:
    the stand-in tokenizer and GPT-2 are cached by content in $COLLAPSE_CACHE (collapse/cache.py). With
    `keep` (collapse/partial.py) the summaries, ROUGE scores and perplexities are kept as they are made."""
    data = test_data.select(0, cfg.eval.articles or len(test_data))
    extra = rouge.scoring_processes(len(data), cfg.eval.processes) - 1
    workers = rouge.Workers(extra) if extra else None   # they import while the summaries are generated
    try:
        rows, seconds = timed_summaries(model, data.source, data.pad_id, cfg.data.max_target_tokens,
                                        cfg.eval.batch_size, keep)
        generated = decode(cfg, rows)
        scores = rouge.rouge(data.summaries, generated, cfg.eval.bootstrap, cfg.eval.processes, workers=workers,
                             keep=keep)
    finally:
        if workers:
            workers.close()
    gpt2, gpt2_tokenizer = ppl_model(cfg)
    values = perplexity.perplexities(gpt2.to(device_of(model)), gpt2_tokenizer, generated, keep=keep)
    metrics = {name: scores[name] for name in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    metrics.update({f"{name}_ci": scores[f"{name}_ci"] for name in ("rouge1", "rouge2", "rougeL", "rougeLsum")})
    # every article's ROUGE-1/2/L/Lsum (%), for the report's article-by-article comparison with M1
    metrics["rouge_per_article"] = [[round(100 * v, 3) for v in row] for row in scores["per_pair"].tolist()]
    metrics.update(perplexity.summary(values))
    # a collapsing model writes one summary for many articles: how many distinct ones, and the commonest's share
    commonest = max(collections.Counter(generated).values(), default=0)
    metrics.update({"distinct_summaries": len(set(generated)), "commonest_summary_share": commonest / max(len(data), 1)})
    metrics.update({"articles": len(data), "perplexities": [None if v is None else round(v, 4) for v in values],
                    "mean_summary_tokens": sum(len(r) for r in rows) / max(len(rows), 1),
                    "generated_tokens_per_s": sum(len(r) for r in rows) / max(seconds, 1e-9),
                    "ppl_model": cfg.eval.ppl_model.path or "stand-in GPT-2 trained on the training summaries",
                    "test_loss": test_loss(model, test_data, cfg)})
    return metrics


def curve_metrics(model, test_data: TextPairs, cfg) -> dict:
    """ROUGE-1/2/L (%) of greedy summaries of the first eval.curve_articles validation articles, for the
    ROUGE-vs-step curves (Figures 6-7); {} when eval.curve_articles is 0."""
    n = min(cfg.eval.curve_articles, len(test_data))
    if not n:
        return {}
    data = test_data.select(0, n)
    generated = decode(cfg, summarize(model, data.source, data.pad_id, cfg.data.max_target_tokens,
                                      cfg.eval.batch_size))
    scores = rouge.rouge(data.summaries, generated, bootstrap=0, processes=1)
    return {name: scores[name] for name in ("rouge1", "rouge2", "rougeL")}


def examples(model, cfg, n: int | None = None) -> list[dict]:
    """The model's summaries of the first eval.examples validation articles, beside the human ones."""
    n = cfg.eval.examples if n is None else n
    data = real_data(cfg, "test").select(0, n)
    generated = decode(cfg, summarize(model, data.source, data.pad_id, cfg.data.max_target_tokens,
                                      cfg.eval.batch_size))
    return [{"article": a, "reference": r, "summary": g} for a, r, g in zip(data.articles, data.summaries, generated)]


def write_examples(model, cfg, out_dir: Path) -> dict:
    """examples.json (read by the report for Tables 4-5) and examples.md, in out_dir."""
    items = examples(model, cfg)
    lines = []
    for i, item in enumerate(items):
        lines += [f"## Article {i}", "", item["article"][:1500], "", f"**Reference:** {item['reference']}", "",
                  f"**Generated:** {item['summary'] or '(empty)'}", ""]
    json_path = storage.write_json(Path(out_dir) / "examples.json", items)
    md_path = storage.atomic_write(Path(out_dir) / "examples.md", lambda tmp: Path(tmp).write_text("\n".join(lines)))
    return {"examples": json_path, "examples_md": md_path}
