"""Per-token perplexity of texts under a GPT-2: exp(mean NLL of each text's tokens), one value per text.

Each text is read after a beginning-of-text token (GPT-2's <|endoftext|>, or </s>), so its first token
is predicted too. Empty texts have no perplexity (None); the caller counts them.

On a cluster the GPT-2 comes from a save_pretrained directory (eval.ppl_model.path). Offline there
are no GPT-2 weights, so `standin_gpt2` trains a small one on the stand-in's human-written training
summaries, with a fixed seed, once per content key (collapse/cache.py): every eval stage that asks
for the same one (same texts, tokenizer and settings) reads the same weights.
"""
import math
import statistics

import torch
import torch.nn.functional as F

from collapse import infer, partial
from collapse.cache import cached_dir, content_key
from collapse.data.text import texts_fingerprint


def start_token(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def token_ids(tokenizer, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Each text's tokens after the start token, at most max_tokens in all."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [[start_token(tokenizer)] + r[:max_tokens - 1] for r in ids]


def padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    return ids, mask


@torch.no_grad()
def perplexities(model, tokenizer, texts: list[str], batch_size: int = 32, keep=None) -> list[float | None]:
    """Per-token perplexity of each text (None for an empty one). `keep` (a collapse.partial.Keep): the
    values are kept chunk by chunk as they are scored, and a rerun resumes after the last chunk."""
    model.eval()
    device = next(model.parameters()).device
    rows = token_ids(tokenizer, texts, model.config.n_positions)
    scored = [i for i, r in enumerate(rows) if len(r) > 1 and texts[i].strip()]

    def mean_nll(start, stop):   # of the texts scored[start:stop]
        ids, mask = padded([rows[i] for i in scored[start:stop]], 0)
        ids, mask = ids.to(device), mask.to(device)
        with infer.fp32():   # the scorer in fp32 whatever infer.precision (collapse/infer.py)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        real = mask[:, 1:].float()
        return {"mean_nll": ((nll * real).sum(1) / real.sum(1)).double().cpu()}
    made = partial.batched(keep, "perplexities", len(scored), batch_size, mean_nll, what="scored")
    out: list[float | None] = [None] * len(texts)
    for i, v in zip(scored, made["mean_nll"].tolist() if made else []):
        out[i] = math.exp(v)
    return out


def load(path: str):
    """(GPT-2, its tokenizer) from a save_pretrained directory."""
    from transformers import AutoTokenizer, GPT2LMHeadModel   # slow import: transformers only to score
    return GPT2LMHeadModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def standin_gpt2(texts: list[str], tokenizer, d_model: int, layers: int, heads: int, steps: int, batch_size: int,
                 lr: float, seed: int, max_tokens: int = 256) -> str:
    """The folder of a small GPT-2 (with `tokenizer`) trained on `texts` for `steps` AdamW steps; built once."""
    settings = dict(d_model=d_model, layers=layers, heads=heads, steps=steps, batch_size=batch_size, lr=lr,
                    seed=seed, max_tokens=max_tokens)
    tokenizer_text = tokenizer.backend_tokenizer.to_str()

    def build(folder):
        from transformers import GPT2Config, GPT2LMHeadModel   # slow import: transformers only to train one
        torch.manual_seed(seed)
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=max_tokens, n_embd=d_model, n_layer=layers,
                            n_head=heads, bos_token_id=start_token(tokenizer), eos_token_id=tokenizer.eos_token_id)
        model = GPT2LMHeadModel(config)
        rows = [r + [tokenizer.eos_token_id] for r in token_ids(tokenizer, texts, max_tokens - 1)]
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        order = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(steps):
            pick = torch.randint(0, len(rows), (batch_size,), generator=order).tolist()
            ids, mask = padded([rows[i] for i in pick], 0)
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval().save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
    key = content_key("gpt2", settings, texts_fingerprint([tokenizer_text]), texts_fingerprint(texts))
    return str(cached_dir("gpt2", key, build))


def summary(values: list[float | None]) -> dict:
    """Mean and median over the texts that have a perplexity, and how many were empty."""
    scored = [v for v in values if v is not None]
    return {"ppl_mean": statistics.fmean(scored) if scored else None,
            "ppl_median": statistics.median(scored) if scored else None,
            "ppl_scored": len(scored), "empty_generations": len(values) - len(scored)}
