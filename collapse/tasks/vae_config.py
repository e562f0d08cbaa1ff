"""The VAE's config sections (collapse/tasks/vae.py): MNIST, the MLP VAE's size and the loss readings
the paper leaves open, the coefficients of eq. 1, and Bernoulli-drawn synthetic data."""
from dataclasses import dataclass, field

from collapse.config import DataConfig, EvalConfig, SynthConfig, TrainConfig, _check, added_later

LIKELIHOODS = ("bernoulli", "gaussian")   # the decoder's likelihood (model.likelihood)
VARIANCE_TERMS = ("logvar", "var")         # what the gamma term compares (distill.variance_term)
KL_WEIGHTS = ("model", "lambda")           # the distilled students' KL weight (distill.kl_weight)
RANGES = ([0.0, 1.0], [-1.0, 1.0])         # what the pixels are scaled to (data.range)
REDUCTIONS = ("sum", "pixel", "element")   # how L_VAE combines one image's elements (train.reduction: vae.vae_loss)


@dataclass
class MnistDataConfig(DataConfig):
    DATASETS = ("mnist",)
    dataset: str = "mnist"
    range: list[float] = added_later([0.0, 1.0])   # pixels on [0, 1], or [-1, 1] (reading R3)

    def check(self, p):
        super().check(p)
        _check(self.range in RANGES, p + "range", self.range, "[0, 1] or [-1, 1]")


@dataclass
class VaeTrainConfig(TrainConfig):
    reduction: str = added_later("sum")   # L_VAE per image (sum), per pixel, or per element (vae.vae_loss)

    def check(self, p):
        super().check(p)
        _check(self.reduction in REDUCTIONS, p + "reduction", self.reduction, "one of: " + ", ".join(REDUCTIONS))


@dataclass
class ModelConfig:
    hidden: int = 420
    latent: int = 20
    likelihood: str = added_later("bernoulli")   # the decoder's: bernoulli (BCE) | gaussian (0.5 x squared error, unit variance)
    kl_weight: float = added_later(1.0)   # L_VAE = reconstruction + kl_weight * KL (the paper's L_rec + lambda * D_KL)

    def check(self, p):
        for name in ("hidden", "latent"):
            _check(getattr(self, name) >= 1, p + name, getattr(self, name), "an integer >= 1")
        _check(self.likelihood in LIKELIHOODS, p + "likelihood", self.likelihood, "one of: " + ", ".join(LIKELIHOODS))
        _check(0 <= self.kl_weight < float("inf"), p + "kl_weight", self.kl_weight, "a finite float >= 0")


@dataclass
class DistillConfig:
    """Coefficients of L_SD (eq. 1); all zero is the plain student M1."""
    lam: float = 0.0     # output distillation, L(student output, teacher output)
    beta: float = 0.0    # MSE of encoder means
    gamma: float = 0.0   # MSE of encoder variance predictions
    variance_term: str = added_later("logvar")   # what gamma's MSE compares: the predicted log-variances, or var = their exp
    kl_weight: str = added_later("model")   # a distilled student's KL weight: model.kl_weight, or lambda = its lam (R1)

    def check(self, p):
        for name in ("lam", "beta", "gamma"):
            v = getattr(self, name)
            _check(0 <= v < float("inf"), p + name, v, "a finite float >= 0")
        _check(self.variance_term in VARIANCE_TERMS, p + "variance_term", self.variance_term,
               "one of: " + ", ".join(VARIANCE_TERMS))
        _check(self.kl_weight in KL_WEIGHTS, p + "kl_weight", self.kl_weight, "one of: " + ", ".join(KL_WEIGHTS))


@dataclass
class VaeSynthConfig(SynthConfig):
    binarize: bool = added_later(False)   # Bernoulli draws of the decoder's pixel probabilities, not the probabilities


CONFIG_SECTIONS = {"data": MnistDataConfig, "model": ModelConfig, "train": VaeTrainConfig, "distill": DistillConfig,
                   "synth": VaeSynthConfig, "eval": EvalConfig}

# profile=smoke (collapse/grid.py): 2,000 training and 500 held-out images, 2 epochs
SMOKE = {"data.train_size": 2000, "data.test_size": 500, "train.epochs": 2, "eval.grid_samples": 16}
