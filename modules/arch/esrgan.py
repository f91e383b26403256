"""ESRGAN-family networks built from their official state dicts: RRDBNet (ESRGAN, Real-ESRGAN x4plus, x2plus,
anime 6B) and SRVGGNetCompact (Real-ESRGAN general x4v3, anime video v3).

Both the basicsr key layout (``conv_first``, ``body.N.rdb1.conv1`` ...) and the original ESRGAN layout
(``model.0``, ``model.1.sub.N.RDB1.conv1.0`` ...) load; widths, depth and scale are read from the weights.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn import functional as F

from modules.errors import UnsupportedModelFile


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class ResidualDenseBlock(nn.Module):
    def __init__(self, features: int, growth: int):
        super().__init__()
        for i in range(4):
            setattr(self, f"conv{i + 1}", nn.Conv2d(features + i * growth, growth, 3, 1, 1))
        self.conv5 = nn.Conv2d(features + 4 * growth, features, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            outputs.append(_lrelu(conv(torch.cat(outputs, 1))))
        return x + 0.2 * self.conv5(torch.cat(outputs, 1))


class RRDB(nn.Module):
    def __init__(self, features: int, growth: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(features, growth)
        self.rdb2 = ResidualDenseBlock(features, growth)
        self.rdb3 = ResidualDenseBlock(features, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """Residual-in-residual dense network. ``unshuffle`` > 1 folds the input into channels first (Real-ESRGAN
    x2plus: 12 input channels, 2x overall), then ``upsamples`` nearest-neighbour x2 steps restore the size."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, features: int = 64, blocks: int = 23,
                 growth: int = 32, upsamples: int = 2, unshuffle: int = 1):
        super().__init__()
        self.unshuffle = unshuffle
        self.scale = 2 ** upsamples // unshuffle
        self.conv_first = nn.Conv2d(in_channels * unshuffle * unshuffle, features, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(features, growth) for _ in range(blocks)])
        self.conv_body = nn.Conv2d(features, features, 3, 1, 1)
        self.upsamples = upsamples
        for i in range(upsamples):
            setattr(self, f"conv_up{i + 1}", nn.Conv2d(features, features, 3, 1, 1))
        self.conv_hr = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_last = nn.Conv2d(features, out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        features = self.conv_first(x)
        features = features + self.conv_body(self.body(features))
        for i in range(self.upsamples):
            upsample = getattr(self, f"conv_up{i + 1}")
            features = _lrelu(upsample(F.interpolate(features, scale_factor=2, mode="nearest")))
        return self.conv_last(_lrelu(self.conv_hr(features)))


class SRVGGNetCompact(nn.Module):
    """A plain conv + PReLU stack whose last conv feeds a pixel shuffle; the output is added to a nearest
    upsample of the input. Keys ``body.N``: even N are convs, odd N are PReLUs."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, features: int = 64, convs: int = 32, scale: int = 4):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(in_channels, features, 3, 1, 1), nn.PReLU(features)]
        for _ in range(convs):
            layers += [nn.Conv2d(features, features, 3, 1, 1), nn.PReLU(features)]
        layers.append(nn.Conv2d(features, out_channels * scale * scale, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.pixel_shuffle(self.body(x), self.scale)
        return out + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def _convert_original_esrgan(state: dict) -> dict:
    """Original ESRGAN keys (``model.0``, ``model.1.sub.N.RDBk.convj.0``, ``model.3``...) -> basicsr keys."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB", k))}
    trunk = max(blocks) + 1 if blocks else 0
    indices = sorted({int(m.group(1)) for k in state if (m := re.match(r"model\.(\d+)\.weight$", k))})
    tail = [i for i in indices if i >= 3]  # upsample convs every 3 indices, then HR conv and last conv
    if len(tail) < 2:
        raise UnsupportedModelFile("ESRGAN model: the upsampling layers are missing")
    renamed = {"model.0": "conv_first", f"model.1.sub.{trunk}": "conv_body",
               f"model.{tail[-2]}": "conv_hr", f"model.{tail[-1]}": "conv_last"}
    for n, index in enumerate(tail[:-2]):
        renamed[f"model.{index}"] = f"conv_up{n + 1}"
    converted = {}
    for key, value in state.items():
        match = re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$", key)
        if match:
            block, rdb, conv, kind = match.groups()
            converted[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
            continue
        prefix, _, kind = key.rpartition(".")
        if prefix not in renamed:
            raise UnsupportedModelFile(f"ESRGAN model: unexpected key {key!r}")
        converted[f"{renamed[prefix]}.{kind}"] = value
    return converted


def build(state: dict) -> nn.Module:
    """The network for a state dict (as ``model_files.read_state_dict`` returns it), with its weights, in eval
    mode. ``.scale`` tells its upscale factor."""
    if "model.0.weight" in state:
        state = _convert_original_esrgan(state)
    if "conv_first.weight" in state:
        model = _rrdbnet_for(state)
    elif "body.0.weight" in state and state.get("body.1.weight") is not None and state["body.1.weight"].ndim == 1:
        model = _srvgg_for(state)
    else:
        raise UnsupportedModelFile("not an ESRGAN, Real-ESRGAN or SRVGGNetCompact model "
                                   f"(keys start with {', '.join(list(state)[:3])})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UnsupportedModelFile(f"upscaler weights do not match the architecture: {str(e).splitlines()[0]}") from e
    return model.eval().requires_grad_(False)


def _rrdbnet_for(state: dict) -> RRDBNet:
    first = state["conv_first.weight"]
    features, packed_in = first.shape[0], first.shape[1]
    out_channels = state["conv_last.weight"].shape[0]
    unshuffle = int(math.isqrt(packed_in // out_channels)) if packed_in % out_channels == 0 else 1
    in_channels = packed_in // (unshuffle * unshuffle)
    blocks = len({k.split(".")[1] for k in state if k.startswith("body.")})
    growth = state["body.0.rdb1.conv1.weight"].shape[0] if blocks else 32
    upsamples = len({k.split(".")[0] for k in state if re.match(r"conv_up\d+\.", k)})
    return RRDBNet(in_channels, out_channels, features, blocks, growth, upsamples, unshuffle)


def _srvgg_for(state: dict) -> SRVGGNetCompact:
    convs = sorted(int(k.split(".")[1]) for k in state if re.match(r"body\.\d+\.weight$", k) and state[k].ndim == 4)
    first, last = state[f"body.{convs[0]}.weight"], state[f"body.{convs[-1]}.weight"]
    in_channels, features = first.shape[1], first.shape[0]
    out_total = last.shape[0]
    scale = math.isqrt(out_total // in_channels)
    if scale * scale * in_channels != out_total:
        raise UnsupportedModelFile(f"SRVGGNetCompact: {out_total} output channels is not 3 x scale^2")
    return SRVGGNetCompact(in_channels, in_channels, features, len(convs) - 2, scale)
