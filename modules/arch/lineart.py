"""The line-art generator of "informative drawings" as lllyasviel's ``sk_model.pth`` (realistic) and
``sk_model2.pth`` (coarse) hold it (lllyasviel/Annotators): a 7x7 convolution, two stride-2 downsamplings, three
residual blocks at 256 channels, two transposed-convolution upsamplings and a 7x7 convolution to one channel through
a sigmoid; instance norms without parameters, reflection padding. Input RGB in 0..1; output: dark lines on white."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modules.arch.weights import load_exactly

RESIDUAL_BLOCKS = 3


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _down(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [nn.Conv2d(channels_in, channels_out, 3, stride=2, padding=1), nn.InstanceNorm2d(channels_out), nn.ReLU()]


def _up(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(channels_in, channels_out, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(channels_out), nn.ReLU()]


class LineArt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), nn.InstanceNorm2d(64), nn.ReLU())
        self.model1 = nn.Sequential(*_down(64, 128), *_down(128, 256))
        self.model2 = nn.Sequential(*[_Residual(256) for _ in range(RESIDUAL_BLOCKS)])
        self.model3 = nn.Sequential(*_up(256, 128), *_up(128, 64))
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 1, H, W) in 0..1 (1 = paper) of ``x``: (1, 3, H, W) RGB in 0..1."""
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))


def load(state: dict[str, Any], name: str) -> LineArt:
    return load_exactly(LineArt(), state, name, "line-art network")
