"""Pretraining of the built T5 stand-in with T5's span-corruption objective (collapse/data/spans.py), the
stage every teacher and student of a T5 grid starts from (collapse/tasks/base.py, Pretrains).

The paper fine-tunes t5-small, pretrained on C4; a model built here starts from random weights. This
stage gives it a pretraining of its own, offline: on the training split's source documents (ACLSum's
150 paper texts, never the test split) and, optionally, the .txt files under pretrain.corpus. The
tokenizer is the stand-in's byte-level BPE with pretrain.sentinels <extra_id_N> tokens at the last
ids (collapse/data/text.py), as in t5-small. Off, with nothing planned, when pretrain.steps is 0 or
model.path names real weights (t5-small has had its pretraining).
"""
import copy
from pathlib import Path

import torch

from collapse.config import TrainConfig, bad, to_dict
from collapse.data import spans, summaries, text
from collapse.data.text import TextPairs

# What decides the pretrained weights beside the core's task, model and train: the pretraining settings,
# and the data set whose training split gives the corpus and the tokenizer. Never the study's train.seed.
PRETRAIN_KEY = ("pretrain", "data.dataset", "data.root", "data.version", "data.source_field", "data.target_field")
# The fields of the study's train section the pretraining run keeps: how it runs, not what it learns
# (threads, ZeRO stage, checkpoint interval) and its precision.
KEPT_TRAIN_FIELDS = ("threads", "zero_stage", "checkpoint_every", "bf16")


def pretrains(cfg) -> bool:
    return cfg.pretrain.steps > 0 and cfg.model.path is None


def pretrain_config(config: dict) -> dict | None:
    """The config the pretraining stage runs with: the study's, its train section the pretraining's
    (AdamW, cosine with warm-up, pretrain.seed), no ROUGE curves; None when it plans none."""
    p = config.get("pretrain")   # None: a record stored before pretraining existed
    if not p or not p["steps"] or config["model"]["path"]:
        return None
    out = copy.deepcopy(config)
    out["train"] = {**to_dict(TrainConfig()), **{k: config["train"][k] for k in KEPT_TRAIN_FIELDS},
                    "steps": p["steps"], "batch_size": p["batch_size"], "lr": p["lr"], "lr_schedule": "cosine",
                    "warmup_steps": p["warmup_steps"], "eval_every_steps": p["eval_every_steps"], "seed": p["seed"]}
    out["eval"] = {**config["eval"], "curve_articles": 0}
    return out


def check_config(cfg) -> None:
    """Room for the sentinels in model.vocab, and enough of them for a window's spans."""
    p = cfg.pretrain
    if not pretrains(cfg):
        return
    if cfg.model.vocab - p.sentinels < 262:
        raise bad("pretrain.sentinels", p.sentinels, f"at most model.vocab - 262 = {cfg.model.vocab - 262} "
                  "(the BPE keeps the bytes and the special tokens)")
    _, spans_per_window = spans.span_counts(p.tokens, p.noise_density, p.mean_span)
    if p.sentinels < spans_per_window + 1:
        raise bad("pretrain.sentinels", p.sentinels, f"at least {spans_per_window + 1} (a window of "
                  f"{p.tokens} tokens has {spans_per_window} spans, and its target ends with one more sentinel)")


def sentinel_ids(tokenizer, n: int) -> list[int]:
    """The ids of <extra_id_0> .. <extra_id_{n-1}>; a ValueError naming the first the tokenizer lacks."""
    vocab = tokenizer.get_vocab()
    for i in range(n):
        if f"<extra_id_{i}>" not in vocab:
            raise ValueError(f"the tokenizer has no <extra_id_{i}> (span corruption needs {n} sentinels)")
    return [vocab[f"<extra_id_{i}>"] for i in range(n)]


def corpus_files(folder: str | None) -> list[Path]:
    return sorted(path for path in Path(folder).rglob("*.txt") if path.is_file()) if folder else []


def documents(cfg) -> list[str]:
    """The corpus: the training split's source documents, then pretrain.corpus's .txt files in name order."""
    d = cfg.data
    root = d.root and summaries.version_root(d.root, d.version)
    docs = summaries.documents(d.dataset, "train", root, d.source_field, {"train": "train", "test": d.test_split})
    docs += [path.read_text(encoding="utf-8", errors="replace") for path in corpus_files(cfg.pretrain.corpus)]
    return [doc for doc in docs if doc.strip()]


def token_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """int32 [L]: each document's tokens and </s>, one after the other (T5 packs its corpus the same way)."""
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"] if docs else []
    return torch.tensor([t for row in ids for t in row + [tokenizer.eos_token_id]], dtype=torch.int32)


def corpus_data(cfg, tokenizer) -> tuple[spans.Corrupted, TextPairs]:
    """(steps x batch_size span-corrupted windows of the training documents, every window of the
    held-out documents corrupted once): pretrain.held_out of the documents, drawn by pretrain.seed."""
    p = cfg.pretrain
    docs = documents(cfg)
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(p.seed)).tolist()
    cut = min(max(1, round(len(docs) * p.held_out)), len(docs) - 1)
    held, kept = [docs[i] for i in sorted(order[:cut])], [docs[i] for i in sorted(order[cut:])]
    sentinels = sentinel_ids(tokenizer, p.sentinels)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    train = spans.Corrupted(token_stream(tokenizer, kept), p.tokens, p.steps * p.batch_size, p.noise_density,
                            p.mean_span, sentinels, eos, pad, p.seed)
    test = spans.held_out(token_stream(tokenizer, held), p.tokens, p.noise_density, p.mean_span, sentinels, eos, pad,
                          p.seed)
    return train, test


def make_tokenizer(texts: list[str], cfg) -> str:
    """The stand-in's BPE folder: model.vocab tokens, the last pretrain.sentinels of them the sentinels
    when it pretrains (so a study without pretraining keeps the tokenizer it always had)."""
    return text.trained_tokenizer(texts, cfg.model.vocab, cfg.pretrain.sentinels if pretrains(cfg) else 0)
