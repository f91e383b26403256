"""DeepDanbooru's ResNet ("resnet_custom_v3") in torch, with the key names of the converted weights file
``model-resnet_custom_v3.pt`` that A1111 uses (``n_Conv_0`` ... ``n_Conv_178``, batch norm folded into the
convolutions, plus a ``tags`` list).

The network (DeepDanbooru's bottleneck ResNet): a 7x7/2 stem and a 3x3/2 max-pool, then stages of one
widening block (1x1 shortcut, 1x1, 3x3 with stride 2 from the second stage on, 1x1) followed by plain
bottleneck blocks (1x1, 3x3, 1x1), a 1x1 convolution to one channel per tag, global average and sigmoid.
Convolutions are numbered in that order, the shortcut first. Padding follows TensorFlow's "same" rule (extra
row and column at the bottom and right), as the weights were trained with it.

The stage widths and block counts are read from the weights, so smaller files of the same layout load too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CUSTOM_V3_FILTERS = (256, 512, 1024, 1024, 2048, 4096)
CUSTOM_V3_REPEATS = (2, 7, 19, 19, 2, 2)


@dataclass(frozen=True)
class Stage:
    filters: int
    repeats: int


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_same(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    top, bottom = _same_padding(x.shape[2], kh, sh)
    left, right = _same_padding(x.shape[3], kw, sw)
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom))
    return conv(x)


class DeepDanbooruModel(nn.Module):
    """Input: (B, H, W, 3) RGB in 0..1 (channels last, as the original); output: (B, tags) probabilities."""

    def __init__(self, stages: tuple[Stage, ...] = tuple(Stage(f, r) for f, r in zip(CUSTOM_V3_FILTERS, CUSTOM_V3_REPEATS)),
                 tag_count: int = 9176) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.stages = stages
        self._strides: dict[int, int] = {}
        convs = [self._conv(3, stages[0].filters // 4, 7, stride=2)]
        width = stages[0].filters // 4
        for index, stage in enumerate(stages):
            inter, stride = stage.filters // 4, 2 if index else 1
            convs += [self._conv(width, stage.filters, 1, stride=stride), self._conv(width, inter, 1),
                      self._conv(inter, inter, 3, stride=stride), self._conv(inter, stage.filters, 1)]
            for _ in range(stage.repeats):
                convs += [self._conv(stage.filters, inter, 1), self._conv(inter, inter, 3), self._conv(inter, stage.filters, 1)]
            width = stage.filters
        convs.append(self._conv(width, tag_count, 1))
        for number, conv in enumerate(convs):
            self.add_module(f"n_Conv_{number}", conv)
        self.conv_count = len(convs)

    @staticmethod
    def _conv(channels_in: int, channels_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
        return nn.Conv2d(channels_in, channels_out, kernel, stride=stride)

    def _c(self, number: int) -> nn.Conv2d:
        return getattr(self, f"n_Conv_{number}")

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs.permute(0, 3, 1, 2)
        x = F.relu(_conv_same(self._c(0), x))
        top, bottom = _same_padding(x.shape[2], 3, 2)
        left, right = _same_padding(x.shape[3], 3, 2)
        x = F.max_pool2d(F.pad(x, (left, right, top, bottom), value=float("-inf")), 3, stride=2)
        n = 1
        for stage in self.stages:
            shortcut = _conv_same(self._c(n), x)
            y = F.relu(_conv_same(self._c(n + 1), x))
            y = F.relu(_conv_same(self._c(n + 2), y))
            x = F.relu(_conv_same(self._c(n + 3), y) + shortcut)
            n += 4
            for _ in range(stage.repeats):
                y = F.relu(_conv_same(self._c(n), x))
                y = F.relu(_conv_same(self._c(n + 1), y))
                x = F.relu(_conv_same(self._c(n + 2), y) + x)
                n += 3
        x = _conv_same(self._c(n), x)
        return torch.sigmoid(x.mean(dim=(2, 3)))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.tags = list(state_dict.get("tags", []))
        return super().load_state_dict({k: v for k, v in state_dict.items() if k != "tags"}, strict=strict, assign=assign)


def stages_from_state_dict(state_dict: dict) -> tuple[tuple[Stage, ...], int]:
    """The stage layout and tag count a weights file was made for: a 1x1 convolution followed by another 1x1
    is a widening block's shortcut (a stage starts); each plain block adds three convolutions."""
    shapes = [state_dict[f"n_Conv_{n}.weight"].shape for n in range(len([k for k in state_dict if k.endswith(".weight")]))]
    stages: list[Stage] = []
    n = 1
    while n < len(shapes) - 1:
        filters = shapes[n][0]
        if not (shapes[n][2] == 1 and shapes[n + 1][2] == 1):
            raise ValueError(f"n_Conv_{n} does not start a DeepDanbooru stage (shape {tuple(shapes[n])})")
        n += 4
        repeats = 0
        while n < len(shapes) - 1 and not (shapes[n][2] == 1 and shapes[n + 1][2] == 1):
            repeats += 1
            n += 3
        stages.append(Stage(filters, repeats))
    return tuple(stages), shapes[-1][0]
