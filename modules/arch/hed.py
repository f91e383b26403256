"""HED soft edges as lllyasviel's Apache-2 ``ControlNetHED.pth`` (lllyasviel/Annotators) holds them: a learned
mean (``norm``) subtracted from the 0..255 RGB picture, then five VGG-style blocks (2, 2, 3, 3, 3 convolutions of
64, 128, 256, 512, 512 channels, max-pooled between blocks), each with a 1x1 projection to one edge map."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from modules.arch.weights import load_exactly

BLOCKS = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))  # in, out channels, convolutions


class _Block(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, convolutions: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(channels_in if i == 0 else channels_out, channels_out, 3, padding=1)
                                     for i in range(convolutions)])
        self.projection = nn.Conv2d(channels_out, 1, 1)

    def forward(self, x: torch.Tensor, pool: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if pool:
            x = F.max_pool2d(x, 2, 2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class HED(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        for index, (channels_in, channels_out, convolutions) in enumerate(BLOCKS, start=1):
            setattr(self, f"block{index}", _Block(channels_in, channels_out, convolutions))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five edge maps (logits, each at its block's scale) of ``x``: (1, 3, H, W) RGB in 0..255."""
        h, maps = x - self.norm, []
        for index in range(1, len(BLOCKS) + 1):
            h, edges = getattr(self, f"block{index}")(h, pool=index > 1)
            maps.append(edges)
        return maps


def load(state: dict[str, Any], name: str) -> HED:
    """The network with the weights of ``state`` (the file ``name``), every key present and of its shape."""
    return load_exactly(HED(), state, name, "HED network")
