"""T5's span-corruption objective (Raffel et al. 2020, section 3.3.4): drop noise_density of a text's
tokens in spans of mean length mean_span; the input keeps the rest with each dropped span replaced by
one sentinel, the target is each sentinel followed by the span it stands for, then one last sentinel.

    text    Thank you for inviting me to your party last week .
    input   Thank you <extra_id_0> me to your party <extra_id_1> week . </s>
    target  <extra_id_0> for inviting <extra_id_1> last <extra_id_2> </s>

As in T5's random_spans_noise_mask, a text of n tokens has round(n * density) noise tokens in
round(noise / mean_span) spans; the noise and the kept tokens are each cut into that many non-empty
runs at random, and the runs alternate, kept first. `Corrupted` draws a window of the token stream
and its corruption from (seed, item) alone, so a training run of steps x batch items sees each item
once, and a resumed run sees the very items an uninterrupted one would.
"""
import torch

from collapse.data.text import TextPairs, from_rows


def lengths(total: int, parts: int, generator: torch.Generator) -> list[int]:
    """`total` cut into `parts` non-empty runs at random: their lengths."""
    cuts = sorted((torch.randperm(total - 1, generator=generator)[:parts - 1] + 1).tolist())
    return [b - a for a, b in zip([0, *cuts], [*cuts, total])]


def span_counts(n: int, density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a text of n >= 2 tokens."""
    noise = min(max(round(n * density), 1), n - 1)
    return noise, min(max(round(noise / mean_span), 1), noise, n - noise)


def span_corruption(tokens: list[int], density: float, mean_span: float, sentinels: list[int],
                    generator: torch.Generator) -> tuple[list[int], list[int]]:
    """(input, target) of `tokens` (n >= 2, without </s>) under span corruption; sentinels[i] is the id
    of <extra_id_i> (spans + 1 of them are used). Neither ends with </s>: the caller adds it."""
    noise, spans = span_counts(len(tokens), density, mean_span)
    dropped, kept = lengths(noise, spans, generator), lengths(len(tokens) - noise, spans, generator)
    source, target, at = [], [], 0
    for i, (k, d) in enumerate(zip(kept, dropped)):
        source += tokens[at:at + k] + [sentinels[i]]
        target += [sentinels[i]] + tokens[at + k:at + k + d]
        at += k + d
    return source, target + [sentinels[spans]]


class Corrupted:
    """`items` training examples, each a window of `window` tokens of `stream` (int [L]) at an offset
    drawn from (seed, item), span-corrupted with draws from the same generator."""

    def __init__(self, stream: torch.Tensor, window: int, items: int, density: float, mean_span: float,
                 sentinels: list[int], eos_id: int, pad_id: int, seed: int):
        self.stream, self.window, self.items = stream, min(window, len(stream)), items
        self.density, self.mean_span, self.sentinels = density, mean_span, sentinels
        self.eos_id, self.pad_id, self.seed = eos_id, pad_id, seed

    def __len__(self) -> int:
        return self.items

    def example(self, item: int) -> tuple[list[int], list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + item)
        start = int(torch.randint(0, len(self.stream) - self.window + 1, (1,), generator=generator))
        tokens = self.stream[start:start + self.window].tolist()
        source, target = span_corruption(tokens, self.density, self.mean_span, self.sentinels, generator)
        return source + [self.eos_id], target + [self.eos_id]

    def batch(self, index: torch.Tensor) -> dict:
        """Items `index` as T5 inputs: input_ids, attention_mask, labels, padded to the longest."""
        pairs = [self.example(int(i)) for i in index]
        source = from_rows([s for s, _ in pairs], self.pad_id).long()
        return {"input_ids": source, "attention_mask": (source != self.pad_id).long(),
                "labels": from_rows([t for _, t in pairs], self.pad_id).long()}


def held_out(stream: torch.Tensor, window: int, density: float, mean_span: float, sentinels: list[int],
             eos_id: int, pad_id: int, seed: int) -> TextPairs:
    """Every whole window of `stream`, corrupted once (the items are fixed): a held-out set for the test loss."""
    windows = [stream[i:i + window].tolist() for i in range(0, max(len(stream) - window, 0) + 1, window)]
    pairs = [span_corruption(w, density, mean_span, sentinels, torch.Generator().manual_seed(seed * 1_000_003 + i))
             for i, w in enumerate(windows)]
    return TextPairs(from_rows([s + [eos_id] for s, _ in pairs], pad_id),
                     from_rows([t + [eos_id] for _, t in pairs], pad_id), pad_id)
