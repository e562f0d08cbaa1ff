"""The paper's MLP VAE for 32x32 MNIST: encoder and decoder are two linear layers each.

hidden=420, latent=20 gives 887,264 parameters, the paper's "about 887K".
"""
from typing import NamedTuple

import torch
from torch import nn


class VAEOutput(NamedTuple):
    logits: torch.Tensor   # [B, pixels]: the decoder's Bernoulli logits
    mean: torch.Tensor     # [B, latent]: the posterior mean
    logvar: torch.Tensor   # [B, latent]: its log-variance


class VAE(nn.Module):
    def __init__(self, pixels: int = 32 * 32, hidden: int = 420, latent: int = 20):
        super().__init__()
        self.pixels, self.latent = pixels, latent
        self.encoder = nn.Sequential(nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, pixels))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, pixels] in [0, 1] -> posterior mean and log-variance, each [B, latent]."""
        mean, logvar = self.encoder(x).chunk(2, dim=-1)
        return mean, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: [B, latent] -> Bernoulli logits [B, pixels]."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> VAEOutput:
        """Reparameterised pass. noise=None decodes the posterior mean (deterministic)."""
        mean, logvar = self.encode(x)
        z = mean if noise is None else mean + noise * torch.exp(0.5 * logvar)
        return VAEOutput(self.decode(z), mean, logvar)
