"""Fabricated data and weights in the real layouts the paper-scale studies read, made offline:

    python -m collapse.fabricate DIR [--celeba 96] [--articles 48] [--seed 0] [--no-models]

writes
    DIR/celeba/                CelebA as torchvision writes it: img_align_celeba/000001.jpg ... (178x218
                               JPEGs), list_attr_celeba.txt (40 attributes, -1/1), list_eval_partition.txt
                               (0/1/2), identity_CelebA.txt, list_bbox_celeba.txt, list_landmarks_align_celeba.txt
    DIR/cnn_dailymail/3.0.0/   CNN/DailyMail 3.0.0 as the hub repository holds it: train-0000i-of-00003.parquet,
                               validation-00000-of-00001.parquet, test-00000-of-00001.parquet (article,
                               highlights, id)
    DIR/cnn_dailymail_disk/    the same splits as a datasets DatasetDict.save_to_disk folder
    DIR/t5-small/              save_pretrained T5 with t5-small's configuration (60,506,624 parameters),
                               random weights, a tokenizer trained here (pad 0, </s> 1, <unk> 2, 100 sentinels)
    DIR/gpt2/                  save_pretrained GPT-2 with GPT-2 124M's configuration (124,439,808 parameters),
                               random weights, a byte-level BPE trained here (<|endoftext|>)
    DIR/FABRICATED.json        what was made: counts, seed, paths, parameter counts

Nothing is downloaded. The images are smooth random colour fields, the texts sentences of made-up words
drawn from a Zipf law (articles of 900-1,400 words, so that they fill 1,024 tokens; highlights of three or
four sentences, most taken from their article), so every loader, tokenizer and model runs at its real
sizes; the numbers the models reach on them mean nothing. The same seed gives the same files.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()
CELEBA_W, CELEBA_H = 178, 218
SPLITS = {"train": 3, "validation": 1, "test": 1}      # parquet shards per split, as in the hub's 3.0.0/
T5_SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8,
                relative_attention_num_buckets=32, dropout_rate=0.1, feed_forward_proj="relu", pad_token_id=0,
                eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=True, n_positions=512)
T5_SENTINELS = 100


# ---------------------------------------------------------------- CelebA

def celeba(folder: Path, n: int, seed: int = 0) -> Path:
    """n aligned images and the five annotation files, in torchvision's CelebA folder (root/celeba/)."""
    rng = np.random.default_rng(seed)
    images = folder / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for name in names:
        coarse = rng.integers(0, 256, (7, 6, 3), dtype=np.uint8)     # a smooth field: a coarse grid, upsampled
        Image.fromarray(coarse).resize((CELEBA_W, CELEBA_H), Image.BICUBIC).save(images / name, quality=90)
    share = np.arange(n) / n      # CelebA's own split: about 80% train (0), 10% valid (1), 10% test (2)
    partition = np.where(share < 0.8, 0, np.where(share < 0.9, 1, 2))
    rows = lambda values: [f"{name} {' '.join(map(str, v))}" for name, v in zip(names, values)]  # noqa: E731
    attrs = rng.choice([-1, 1], size=(n, len(CELEBA_ATTRIBUTES)))
    bbox = np.column_stack([rng.integers(0, 100, n), rng.integers(0, 100, n), rng.integers(100, 400, (n, 2))])
    landmarks = rng.integers(60, 160, (n, 10))
    _lines(folder / "list_attr_celeba.txt", [str(n), " ".join(CELEBA_ATTRIBUTES), *rows(attrs)])
    _lines(folder / "list_eval_partition.txt", rows(partition[:, None]))
    _lines(folder / "identity_CelebA.txt", rows(rng.integers(1, 10_178, (n, 1))))
    _lines(folder / "list_bbox_celeba.txt", [str(n), "image_id x_1 y_1 width height", *rows(bbox)])
    _lines(folder / "list_landmarks_align_celeba.txt",
           [str(n), "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x "
                    "rightmouth_y", *rows(landmarks)])
    return folder


def _lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- CNN/DailyMail

def words(rng, count: int = 4000) -> list[str]:
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    made = {"".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(count * 2)}
    return sorted(made)[:count]


def sentence(rng, vocabulary: list[str], weights: np.ndarray) -> str:
    picked = rng.choice(len(vocabulary), rng.integers(10, 26), p=weights)
    text = " ".join(vocabulary[i] for i in picked)
    return text[0].upper() + text[1:] + "."


def pairs(n: int, rng, vocabulary: list[str]) -> tuple[list[str], list[str]]:
    """n (article, highlights): 900-1,400 words each; three or four highlight sentences, most from the article."""
    weights = 1.0 / np.arange(1, len(vocabulary) + 1)
    weights /= weights.sum()
    articles, highlights = [], []
    for _ in range(n):
        body, length = [], int(rng.integers(900, 1400))
        while sum(len(s.split()) for s in body) < length:
            body.append(sentence(rng, vocabulary, weights))
        picked = [body[i] if rng.random() < 0.7 else sentence(rng, vocabulary, weights)
                  for i in sorted(rng.choice(len(body), int(rng.integers(3, 5)), replace=False))]
        articles.append(" ".join(body))
        highlights.append("\n".join(picked))
    return articles, highlights


def cnndm(out: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, tuple[list[str], list[str]]]:
    """The splits as the hub's 3.0.0/ parquet shards under out/cnn_dailymail and as out/cnn_dailymail_disk."""
    import datasets   # heavy: only the text layouts need it
    datasets.disable_progress_bars()
    rng = np.random.default_rng(seed + 1)
    vocabulary = words(rng)
    made, start = {}, 0
    version = out / "cnn_dailymail" / "3.0.0"
    version.mkdir(parents=True, exist_ok=True)
    tables = {}
    for split, shards in SPLITS.items():
        articles, highlights = pairs(sizes[split], rng, vocabulary)
        ids = [f"{start + i:040x}" for i in range(len(articles))]   # the release's ids are 40 hex digits
        start += len(articles)
        made[split] = (articles, highlights)
        tables[split] = datasets.Dataset.from_dict({"article": articles, "highlights": highlights, "id": ids})
        for s in range(shards):
            tables[split].shard(shards, s, contiguous=True).to_parquet(
                str(version / f"{split}-{s:05d}-of-{shards:05d}.parquet"))
    datasets.DatasetDict(tables).save_to_disk(str(out / "cnn_dailymail_disk"))
    return made


# ---------------------------------------------------------------- models

def _bpe(texts: list[str], vocab: int, special: list[str]):
    """A byte-level BPE (GPT-2's kind of tokenizer) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers   # slow import: only to train one
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=special, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return bpe


def _unigram(texts: list[str], vocab: int) -> list[tuple[str, float]]:
    """(piece, score) of a unigram model (t5-small's kind, SentencePiece's) trained on `texts`: <pad> 0, </s> 1,
    <unk> 2, the pieces, then T5's sentinels <extra_id_99> .. <extra_id_0>, so <extra_id_0> has the last id."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers   # slow import: only to train one
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(texts, trainers.UnigramTrainer(
        vocab_size=vocab, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    pieces = [(p, float(s)) for p, s in json.loads(unigram.to_str())["model"]["vocab"]]
    return pieces + [(f"<extra_id_{i}>", 0.0) for i in reversed(range(T5_SENTINELS))]


def t5_small(folder: Path, texts: list[str], seed: int = 0) -> int:
    """t5-small's configuration with random weights and a tokenizer trained on `texts`; its parameter count."""
    import torch   # heavy: only the model folders need it
    from transformers import T5Config, T5ForConditionalGeneration, T5TokenizerFast   # heavy: transformers
    from transformers.utils import logging   # heavy: transformers
    logging.disable_progress_bar()
    tokenizer = T5TokenizerFast(vocab=_unigram(texts, 32_000), extra_ids=T5_SENTINELS, model_max_length=512)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(**T5_SMALL))
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return sum(p.numel() for p in model.parameters())


def gpt2(folder: Path, texts: list[str], seed: int = 0) -> int:
    """GPT-2 124M's configuration with random weights and a byte-level BPE trained on `texts`; its parameter count."""
    import torch   # heavy: only the model folders need it
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast   # heavy: transformers
    end = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(tokenizer_object=_bpe(texts, 50_257, [end]),
                                  bos_token=end, eos_token=end, unk_token=end, model_max_length=1024)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(bos_token_id=0, eos_token_id=0))   # GPT-2 124M: 12 x 768, 1,024 positions
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- all of it

def fabricate(out, celeba_images: int = 96, articles: int = 48, seed: int = 0, models: bool = True) -> dict:
    """Everything above under `out`; returns (and writes as FABRICATED.json) what was made."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    celeba(out / "celeba", celeba_images, seed)
    sizes = {"train": articles, "validation": max(8, articles // 2), "test": max(4, articles // 4)}
    texts = cnndm(out, sizes, seed)
    made = {"seed": seed, "celeba": {"path": str(out / "celeba"), "images": celeba_images},
            "cnn_dailymail": {"parquet": str(out / "cnn_dailymail"), "save_to_disk": str(out / "cnn_dailymail_disk"),
                              "version": "3.0.0", "pairs": sizes}}
    if models:
        corpus = [t for a, h in texts.values() for t in (*a, *h)]
        made["t5"] = {"path": str(out / "t5-small"), "parameters": t5_small(out / "t5-small", corpus, seed)}
        made["gpt2"] = {"path": str(out / "gpt2"), "parameters": gpt2(out / "gpt2", corpus, seed)}
    (out / "FABRICATED.json").write_text(json.dumps(made, indent=1) + "\n")
    return made


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collapse.fabricate", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="where to write (created)")
    parser.add_argument("--celeba", type=int, default=96, help="CelebA images (default 96)")
    parser.add_argument("--articles", type=int, default=48,
                        help="CNN/DailyMail training pairs (validation half as many, test a quarter; default 48)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-models", action="store_true", help="data only: no T5 or GPT-2 folder")
    args = parser.parse_args(argv)
    if args.celeba < 1 or args.articles < 1:
        parser.error("--celeba and --articles must be at least 1")
    made = fabricate(args.dir, args.celeba, args.articles, args.seed, models=not args.no_models)
    print(json.dumps(made, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
