"""The UNet of Ho et al. 2020 (residual blocks, self-attention at one resolution and in the middle,
skip connections), as diffusers' UNet2DModel, returning the predicted noise and its encoder output.

The paper's "39M" model at 64x64: channels (128, 128, 256, 256, 256), two residual blocks per
level, attention at 16x16 and in the middle block: 38,390,019 parameters.
"""
from typing import NamedTuple

import torch
from diffusers import UNet2DModel
from torch import nn


class UNetOutput(NamedTuple):
    eps: torch.Tensor       # [B, C, H, W]: the predicted noise
    encoded: torch.Tensor   # the middle block's output (the "+ MSE" row compares it)


class UNet(nn.Module):
    def __init__(self, image_size: int = 64, channels: int = 3, block_channels: tuple = (128, 128, 256, 256, 256),
                 attention_level: int = 2, layers_per_block: int = 2, dropout: float = 0.1, norm_groups: int = 32):
        super().__init__()
        levels = len(block_channels)
        down = ["AttnDownBlock2D" if i == attention_level else "DownBlock2D" for i in range(levels)]
        up = ["AttnUpBlock2D" if i == levels - 1 - attention_level else "UpBlock2D" for i in range(levels)]
        self.net = UNet2DModel(sample_size=image_size, in_channels=channels, out_channels=channels,
                               layers_per_block=layers_per_block, block_out_channels=tuple(block_channels),
                               down_block_types=tuple(down), up_block_types=tuple(up), dropout=dropout,
                               norm_num_groups=norm_groups, attention_head_dim=None)
        self._encoded = None
        # The "+ MSE" distillation row compares the encoders' (down path + middle block) outputs.
        self.net.mid_block.register_forward_hook(self._keep_encoded)

    def _keep_encoded(self, module, inputs, output):
        self._encoded = output

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> UNetOutput:
        """x: noisy images [B, C, H, W]; t: timesteps [B] -> predicted noise and the middle block's output."""
        eps = self.net(x, t).sample
        encoded, self._encoded = self._encoded, None
        return UNetOutput(eps, encoded)
