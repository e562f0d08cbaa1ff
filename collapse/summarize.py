"""Greedy summaries of articles by a seq2seq model (T5), in order of length, resumable part-way.

Articles are generated longest first, batch by batch, so a batch holds little padding. With a `keep`
(collapse/partial.py) chunks of batches in that order are kept as they are finished: a rerun generates
the very batches an uninterrupted run would, so its rows are the same to the token.
"""
import torch

from collapse import partial
from collapse.device import device_of


def summarize(model, source: torch.Tensor, pad_id: int, max_new_tokens: int, batch_size: int,
              keep=None) -> list[list[int]]:
    """Greedy summaries of the articles `source` (int [N, S]): each one's tokens up to and with </s>,
    at most max_new_tokens (never the pad token); `keep`: a partial.Keep whose "summaries" chunks resume."""
    return timed_summaries(model, source, pad_id, max_new_tokens, batch_size, keep)[0]


@torch.no_grad()
def timed_summaries(model, source: torch.Tensor, pad_id: int, max_new_tokens: int, batch_size: int,
                    keep=None) -> tuple[list[list[int]], float]:
    """summarize's rows, and the seconds spent generating them (over every run that made a part)."""
    net = getattr(model, "module", model).eval()
    device, eos = device_of(net), net.config.eos_token_id
    lengths = (source != pad_id).sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)

    def summaries(start, stop):   # articles order[start:stop], one generate() call
        width = max(1, int(lengths[order[start:stop]].max()))
        ids = source[order[start:stop], :width].long().to(device)
        generated = net.generate(input_ids=ids, attention_mask=(ids != pad_id).long(), max_new_tokens=max_new_tokens,
                                 do_sample=False, num_beams=1, pad_token_id=pad_id, eos_token_id=eos,
                                 decoder_start_token_id=net.config.decoder_start_token_id,
                                 suppress_tokens=[pad_id])   # pad marks the end of a stored row: never content
        rows = [row[:row.index(eos) + 1] if eos in row else row for row in generated[:, 1:].tolist()]   # no start token
        return partial.rows_to_tensors(rows)
    made = partial.batched(keep, "summaries", len(order), batch_size, partial.timed(summaries))
    out: list[list[int]] = [[] for _ in range(len(source))]
    for i, row in zip(order.tolist(), partial.rows_from_tensors(made) if made else []):
        out[i] = row
    return out, (float(made["seconds"].sum()) if made else 0.0)
