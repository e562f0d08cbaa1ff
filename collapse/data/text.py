"""Text pairs as padded token tensors, and the tokenizers that make them.

A data set is a `TextPairs`: sources and targets as int32 [N, width] tensors padded with the
tokenizer's pad id, so it stores in safetensors, is indexed by a tensor of item indices like the
image tasks' data, and the training loop only needs len() and the task's batch(). Every sequence
is cut to its limit and ends with the end-of-sequence token, as T5's tokenizer does it.

Tokenizers: a save_pretrained directory (t5-small's, from model.path), or, for the offline
stand-in, a byte-level BPE trained with `tokenizers` on the stand-in's training texts (~1 s for
ACLSum) and cached by content key (collapse/cache.py).
"""
import hashlib
from dataclasses import dataclass

import torch

from collapse.cache import cached_dir, content_key

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")   # ids 0, 1, 2: T5's own order


@dataclass
class TextPairs:
    source: torch.Tensor          # int32 [N, S]: article tokens, </s>, then pad
    target: torch.Tensor          # int32 [N, T]: summary tokens, </s>, then pad
    pad_id: int
    articles: list[str] | None = None    # the texts, where they are real (for ROUGE and side-by-side examples)
    summaries: list[str] | None = None

    def __len__(self) -> int:
        return len(self.source)

    def select(self, start: int, stop: int) -> "TextPairs":
        cut = lambda texts: texts[start:stop] if texts is not None else None   # noqa: E731
        return TextPairs(self.source[start:stop], self.target[start:stop], self.pad_id, cut(self.articles),
                         cut(self.summaries))


def to_tensors(data: TextPairs) -> dict:
    return {"source": data.source, "target": data.target, "pad_id": torch.tensor([data.pad_id])}


def from_tensors(tensors: dict) -> TextPairs:
    return TextPairs(tensors["source"], tensors["target"], int(tensors["pad_id"][0]))


def pad_to(x: torch.Tensor, width: int, pad_id: int) -> torch.Tensor:
    if x.shape[1] >= width:
        return x
    return torch.cat([x, x.new_full((len(x), width - x.shape[1]), pad_id)], dim=1)


def concat(parts: list[TextPairs]) -> TextPairs:
    """One TextPairs of `parts` in order (the synth stage's shards), padded to the widest."""
    pad = parts[0].pad_id
    s, t = max(p.source.shape[1] for p in parts), max(p.target.shape[1] for p in parts)
    texts = lambda name: (sum((getattr(p, name) for p in parts), [])   # noqa: E731
                          if all(getattr(p, name) is not None for p in parts) else None)
    return TextPairs(torch.cat([pad_to(p.source, s, pad) for p in parts]),
                     torch.cat([pad_to(p.target, t, pad) for p in parts]), pad, texts("articles"), texts("summaries"))


def encode(tokenizer, texts: list[str], max_tokens: int, batch: int = 1024) -> torch.Tensor:
    """int32 [N, width]: each text's first max_tokens - 1 tokens and </s>, padded; width is the longest."""
    rows = []
    for i in range(0, len(texts), batch):
        ids = tokenizer(texts[i:i + batch], add_special_tokens=False, truncation=True,
                        max_length=max_tokens - 1)["input_ids"]
        rows.extend(r + [tokenizer.eos_token_id] for r in ids)
    return from_rows(rows, tokenizer.pad_token_id)


def from_rows(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    width = max((len(r) for r in rows), default=1)
    out = torch.full((len(rows), width), pad_id, dtype=torch.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.int32)
    return out


def make_pairs(tokenizer, articles: list[str], summaries: list[str], max_source: int, max_target: int) -> TextPairs:
    return TextPairs(encode(tokenizer, articles, max_source), encode(tokenizer, summaries, max_target),
                     tokenizer.pad_token_id, list(articles), list(summaries))


# ---------------------------------------------------------------- tokenizers

def load_tokenizer(path: str):
    from transformers import AutoTokenizer   # slow import: transformers, for text tasks only
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {path} has no pad or end-of-sequence token")
    return tokenizer


def texts_fingerprint(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def sentinel_tokens(n: int) -> list[str]:
    """T5's sentinels <extra_id_0> .. <extra_id_{n-1}>, in the order that gives <extra_id_0> the highest id."""
    return [f"<extra_id_{i}>" for i in reversed(range(n))]


def trained_tokenizer(texts: list[str], vocab: int, sentinels: int = 0) -> str:
    """The folder of a byte-level BPE of `vocab` tokens trained on `texts`, built once (cached by content).
    sentinels > 0: the BPE gets vocab - sentinels tokens and T5's sentinels take the last ids, as in t5-small
    (span-corruption pretraining, collapse/data/spans.py)."""
    def build(folder):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers   # slow import: only to train a BPE
        from transformers import PreTrainedTokenizerFast   # slow import: transformers, for text tasks only
        bpe = Tokenizer(models.BPE(unk_token="<unk>"))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab - sentinels, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        bpe.train_from_iterator(texts, trainer)
        wrapped = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="</s>",
                                          unk_token="<unk>", model_max_length=1_000_000)
        if sentinels:
            wrapped.add_special_tokens({"additional_special_tokens": sentinel_tokens(sentinels)})
        wrapped.save_pretrained(str(folder))
    made_of = ("bpe", vocab, texts_fingerprint(texts)) + ((f"sentinels={sentinels}",) if sentinels else ())
    return str(cached_dir("tokenizer", content_key(*made_of), build))
