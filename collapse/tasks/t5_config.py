"""The T5 task's config sections (collapse/tasks/t5.py), at the paper's settings."""
from dataclasses import dataclass, field
from pathlib import Path

from collapse.config import MAX_COUNT, MAX_SEED, DataConfig, EvalConfig, SynthConfig, _check, added_later, execution
from collapse.data import summaries


def _is_pretrained_dir(path: str) -> bool:
    return Path(path, "config.json").is_file()


@dataclass
class TextDataConfig(DataConfig):
    DATASETS = ("aclsum", "cnn_dailymail")
    dataset: str = "cnn_dailymail"    # aclsum: the offline stand-in in the aclsum wheel; else read from data.root
    max_source_tokens: int = 1024     # articles cut to this many tokens (with </s>), in training and generation
    max_target_tokens: int = 128      # summaries too; generation stops there
    source_field: str = "article"
    target_field: str = "highlights"
    test_split: str = "validation"    # the data set's split the paper evaluates on
    version: str | None = added_later("3.0.0")   # the version folder read where data.root holds several (the hub's
                                      # 1.0.0/ 2.0.0/ 3.0.0/); null: data.root must hold at most one

    def check(self, p):
        super().check(p)
        _check(8 <= self.max_source_tokens <= 65536, p + "max_source_tokens", self.max_source_tokens,
               "an integer in [8, 65536]")
        _check(2 <= self.max_target_tokens <= 4096, p + "max_target_tokens", self.max_target_tokens,
               "an integer in [2, 4096]")
        _check(self.version is None or summaries.VERSION.fullmatch(str(self.version)) is not None, p + "version",
               self.version, "a version folder's name such as 3.0.0, or null")
        if self.dataset == "aclsum":
            _check(self.root is None, p + "root", self.root, "null for data.dataset 'aclsum' (it ships in a wheel)")
        else:
            _check(self.root is not None, p + "root", self.root,
                   f"the directory holding {self.dataset} (a save_to_disk folder or its parquet/json files)")


@dataclass
class T5ModelConfig:
    path: str | None = None           # a save_pretrained directory (t5-small); null: built from the fields below
    tokenizer: str | None = None      # a tokenizer directory; null: model.path's, or a BPE trained on the data
    vocab: int = 32128                # built model: vocabulary (the trained tokenizer's size); t5-small's shape
    d_model: int = 512
    layers: int = 6                   # encoder layers = decoder layers
    heads: int = 8
    d_ff: int = 2048
    dropout: float | None = None      # null: the pretrained model's own, 0.1 for a built one

    def check(self, p):
        if self.path is not None:
            _check(_is_pretrained_dir(self.path), p + "path", self.path,
                   "a save_pretrained directory holding config.json, the weights and the tokenizer")
        if self.tokenizer is not None:
            _check(Path(self.tokenizer).is_dir(), p + "tokenizer", self.tokenizer, "a tokenizer directory")
        _check(259 + 3 <= self.vocab <= 2 ** 20, p + "vocab", self.vocab, "an integer in [262, 1048576]")
        for name in ("d_model", "layers", "heads", "d_ff"):
            _check(1 <= getattr(self, name) <= 65536, p + name, getattr(self, name), "an integer in [1, 65536]")
        _check(self.d_model % self.heads == 0, p + "heads", self.heads, f"a divisor of d_model ({self.d_model})")
        _check(self.dropout is None or 0 <= self.dropout < 1, p + "dropout", self.dropout, "a number in [0, 1) or null")


@dataclass
class T5DistillConfig:
    """eq. (3): lam weighs the cosine distance of the last decoder states; 0 is the plain student M1."""
    lam: float = 0.0

    def check(self, p):
        _check(0 <= self.lam < float("inf"), p + "lam", self.lam, "a finite float >= 0")


@dataclass
class T5SynthConfig(SynthConfig):
    """D_M0: the teacher's greedy summary of each training article (the first synth.size of them)."""
    batch_size: int = execution(32)   # articles per generate() call

    def check(self, p):
        super().check(p)
        _check(1 <= self.batch_size <= 4096, p + "batch_size", self.batch_size, "an integer in [1, 4096]")


@dataclass
class PplModelConfig:
    """The GPT-2 that scores generated summaries: a save_pretrained directory, or (path null) a small
    stand-in trained on the training split's human summaries with these settings."""
    path: str | None = None
    d_model: int = 128
    layers: int = 2
    heads: int = 2
    steps: int = 400
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0

    def check(self, p):
        if self.path is not None:
            _check(_is_pretrained_dir(self.path), p + "path", self.path,
                   "a GPT-2 save_pretrained directory holding config.json, the weights and the tokenizer")
        for name in ("d_model", "layers", "heads", "steps", "batch_size"):
            _check(1 <= getattr(self, name) <= MAX_COUNT, p + name, getattr(self, name), "an integer >= 1")
        _check(self.d_model % self.heads == 0, p + "heads", self.heads, f"a divisor of d_model ({self.d_model})")
        _check(0 < self.lr < 1, p + "lr", self.lr, "a number in (0, 1)")
        _check(0 <= self.seed <= MAX_SEED, p + "seed", self.seed, f"an integer in [0, {MAX_SEED}]")


@dataclass
class T5EvalConfig(EvalConfig):
    articles: int | None = None       # validation articles summarised for ROUGE and perplexity (null: all)
    batch_size: int = execution(32)   # articles per generate() call
    bootstrap: int = 1000             # resamples for the ROUGE intervals (0: none)
    processes: int = execution(0)     # ROUGE scoring processes (0: one per available core)
    examples: int = 4                 # validation articles whose summaries are shown side by side
    curve_articles: int = 0           # ROUGE of this many at every evaluation during training (0: none)
    ppl_model: PplModelConfig = field(default_factory=PplModelConfig)

    def check(self, p):
        super().check(p)
        _check(self.articles is None or 1 <= self.articles <= MAX_COUNT, p + "articles", self.articles,
               "an integer >= 1 or null")
        _check(1 <= self.batch_size <= 4096, p + "batch_size", self.batch_size, "an integer in [1, 4096]")
        _check(0 <= self.bootstrap <= 100_000, p + "bootstrap", self.bootstrap, "an integer in [0, 100000]")
        _check(0 <= self.processes <= 1024, p + "processes", self.processes, "an integer in [0, 1024]")
        _check(0 <= self.examples <= 100, p + "examples", self.examples, "an integer in [0, 100]")
        _check(0 <= self.curve_articles <= MAX_COUNT, p + "curve_articles", self.curve_articles, "an integer >= 0")


@dataclass
class T5PretrainConfig:
    """Span-corruption pretraining of the built model (collapse/tasks/t5_pretrain.py), one stage that every
    teacher and student of a grid starts from, as the paper's start from t5-small. Off (no stage) when
    steps is 0 or model.path is set. Its corpus: the training split's source documents, and the .txt files
    under `corpus`; its own seed, so every study seed fine-tunes the same weights."""
    steps: int = 0
    batch_size: int = 32
    lr: float = 1e-3                  # AdamW, cosine with linear warm-up
    warmup_steps: int = 200
    eval_every_steps: int = 500       # held-out span-corruption loss, best weights kept
    tokens: int = 256                 # a window of the corpus, before corruption
    noise_density: float = 0.15       # share of a window's tokens dropped (T5: 0.15)
    mean_span: float = 3.0            # mean length of a dropped span (T5: 3)
    sentinels: int = 100              # <extra_id_N> tokens, the last ids of model.vocab (t5-small: 100)
    held_out: float = 0.05            # share of the corpus's documents kept out for the held-out loss
    corpus: str | None = None         # a folder of .txt files (one document each) added to the corpus
    seed: int = 0

    def check(self, p):
        for name in ("batch_size", "eval_every_steps", "sentinels"):
            _check(1 <= getattr(self, name) <= MAX_COUNT, p + name, getattr(self, name), "an integer >= 1")
        _check(0 <= self.steps <= MAX_COUNT, p + "steps", self.steps, "an integer >= 0 (0: no pretraining)")
        _check(0 <= self.warmup_steps <= MAX_COUNT, p + "warmup_steps", self.warmup_steps, "an integer >= 0")
        _check(8 <= self.tokens <= 65536, p + "tokens", self.tokens, "an integer in [8, 65536]")
        _check(0 < self.lr < 1, p + "lr", self.lr, "a number in (0, 1)")
        _check(0 < self.noise_density < 1, p + "noise_density", self.noise_density, "a number in (0, 1)")
        _check(1 <= self.mean_span <= self.tokens, p + "mean_span", self.mean_span, "a number in [1, tokens]")
        _check(0 < self.held_out < 1, p + "held_out", self.held_out, "a number in (0, 1)")
        _check(self.corpus is None or Path(self.corpus).is_dir(), p + "corpus", self.corpus,
               "null or a folder of .txt files")
        _check(0 <= self.seed <= MAX_SEED, p + "seed", self.seed, f"an integer in [0, {MAX_SEED}]")


CONFIG_SECTIONS = {"data": TextDataConfig, "model": T5ModelConfig, "distill": T5DistillConfig,
                   "synth": T5SynthConfig, "eval": T5EvalConfig, "pretrain": T5PretrainConfig}

# profile=smoke (collapse/grid.py): a 2-layer T5 of width 64 on 200 ACLSum pairs at 128/32 tokens, 300
# steps after 100 of span corruption: the teacher's summaries differ by article (a smaller model or fewer
# steps gives every article one summary, and every row the same ROUGE). ROUGE on 32 held-out pairs. One
# thread per stage: a 2-thread stage beside anything else on 2 cores runs several times slower.
SMOKE = {"data.train_size": 200, "data.test_size": 32, "data.max_source_tokens": 128, "data.max_target_tokens": 32,
         "model.vocab": 1024, "model.d_model": 64, "model.layers": 2, "model.heads": 4, "model.d_ff": 128,
         "train.steps": 300, "train.eval_every_steps": 100, "train.checkpoint_every": 100, "train.batch_size": 16,
         "train.lr": 1.0e-3, "train.warmup_steps": 30, "train.threads": 1, "synth.batch_size": 100,
         "eval.bootstrap": 100, "eval.processes": 1, "eval.examples": 2, "eval.curve_articles": 8,
         "eval.ppl_model.d_model": 32, "eval.ppl_model.steps": 40, "eval.ppl_model.batch_size": 16,
         "pretrain.steps": 100, "pretrain.batch_size": 16, "pretrain.warmup_steps": 10, "pretrain.eval_every_steps": 50,
         "pretrain.tokens": 64, "pretrain.sentinels": 16}
