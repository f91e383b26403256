"""GFPGAN v1.3/v1.4 ("clean" architecture, Wang et al. 2021): a U-Net reads the degraded face, its bottleneck
gives the StyleGAN2 latents, and its decoder features modulate half of the StyleGAN2 channels (SFT).

Module and parameter names follow the official ``GFPGANv1.4.pth`` (``params_ema``) so it loads strictly. The
channel widths are read from the weights, so small test models use the same code; the face size is 512.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from modules.errors import UnsupportedModelFile

OUT_SIZE = 512
LOG_SIZE = int(math.log2(OUT_SIZE))


def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class ResBlock(nn.Module):
    """Conv, bilinear resize by ``factor``, conv; plus a resized 1x1 skip."""

    def __init__(self, in_channels: int, out_channels: int, factor: float):
        super().__init__()
        self.factor = factor
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.conv1(x), 0.2)
        out = F.leaky_relu(self.conv2(_resize(out, self.factor)), 0.2)
        return out + self.skip(_resize(x, self.factor))


class ModulatedConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int, demodulate: bool,
                 upsample: bool = False):
        super().__init__()
        self.demodulate = demodulate
        self.upsample = upsample
        self.modulation = nn.Linear(style_dim, in_channels)
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size)
                                   / math.sqrt(in_channels * kernel_size ** 2))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        batch, in_channels = x.shape[:2]
        weight = self.weight * self.modulation(style).view(batch, 1, in_channels, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        out_channels, kernel = weight.shape[1], weight.shape[-1]
        if self.upsample:
            x = _resize(x, 2)
        height, width = x.shape[2:]
        out = F.conv2d(x.reshape(1, batch * in_channels, height, width),
                       weight.reshape(batch * out_channels, in_channels, kernel, kernel), padding=kernel // 2, groups=batch)
        return out.view(batch, out_channels, height, width)


class StyleConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim, True, upsample)
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        out = self.modulated_conv(x, style) * 2 ** 0.5
        return F.leaky_relu(out + self.weight * noise + self.bias, 0.2)


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, style_dim: int, upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            out = out + (_resize(skip, 2) if self.upsample else skip)
        return out


class ConstantInput(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, 4, 4))


class Noises(nn.Module):
    """Fixed noise maps, one per style conv (kept in the checkpoint)."""

    def __init__(self, layers: int):
        super().__init__()
        for i in range(layers):
            side = 2 ** ((i + 5) // 2)
            self.register_buffer(f"noise{i}", torch.zeros(1, 1, side, side))


class StyleGAN2Decoder(nn.Module):
    """StyleGAN2 synthesis network that takes W+ latents directly and applies SFT conditions to half of the
    channels after the first conv of every resolution."""

    def __init__(self, channels: dict[int, int], style_dim: int, mlp_layers: int = 8):
        super().__init__()
        mlp: list[nn.Module] = [nn.Identity()]  # index 0 is the (parameter-free) style normalisation
        for _ in range(mlp_layers):
            mlp += [nn.Linear(style_dim, style_dim), nn.LeakyReLU(0.2)]
        self.style_mlp = nn.Sequential(*mlp)  # present in the weights; unused, the latents come from the U-Net
        self.constant_input = ConstantInput(channels[4])
        self.style_conv1 = StyleConv(channels[4], channels[4], style_dim)
        self.to_rgb1 = ToRGB(channels[4], style_dim, upsample=False)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_channels = channels[4]
        for level in range(3, LOG_SIZE + 1):
            out_channels = channels[2 ** level]
            self.style_convs.append(StyleConv(in_channels, out_channels, style_dim, upsample=True))
            self.style_convs.append(StyleConv(out_channels, out_channels, style_dim))
            self.to_rgbs.append(ToRGB(out_channels, style_dim))
            in_channels = out_channels
        self.noises = Noises((LOG_SIZE - 2) * 2 + 1)

    def forward(self, latent: torch.Tensor, conditions: list[torch.Tensor]) -> torch.Tensor:
        noise = [getattr(self.noises, f"noise{i}") for i in range((LOG_SIZE - 2) * 2 + 1)]
        out = self.constant_input.weight.repeat(latent.shape[0], 1, 1, 1)
        out = self.style_conv1(out, latent[:, 0], noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for conv1, conv2, noise1, noise2, to_rgb in zip(self.style_convs[::2], self.style_convs[1::2],
                                                        noise[1::2], noise[2::2], self.to_rgbs):
            out = conv1(out, latent[:, i], noise1)
            if i < len(conditions):
                kept, modulated = torch.split(out, out.shape[1] // 2, dim=1)
                out = torch.cat([kept, modulated * conditions[i - 1] + conditions[i]], dim=1)
            out = conv2(out, latent[:, i + 1], noise2)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip


def _condition(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(channels, channels, 3, 1, 1))


class GFPGAN(nn.Module):
    def __init__(self, unet: dict[int, int], decoder: dict[int, int], style_dim: int = 512):
        super().__init__()
        self.style_dim = style_dim
        self.conv_body_first = nn.Conv2d(3, unet[OUT_SIZE], 1)
        self.conv_body_down = nn.ModuleList(
            ResBlock(unet[2 ** level], unet[2 ** (level - 1)], 0.5) for level in range(LOG_SIZE, 2, -1))
        self.final_conv = nn.Conv2d(unet[4], unet[4], 3, 1, 1)
        self.conv_body_up = nn.ModuleList(
            ResBlock(unet[2 ** (level - 1)], unet[2 ** level], 2) for level in range(3, LOG_SIZE + 1))
        self.toRGB = nn.ModuleList(nn.Conv2d(unet[2 ** level], 3, 1) for level in range(3, LOG_SIZE + 1))
        self.final_linear = nn.Linear(unet[4] * 16, (LOG_SIZE * 2 - 2) * style_dim)
        self.stylegan_decoder = StyleGAN2Decoder(decoder, style_dim)
        self.condition_scale = nn.ModuleList(_condition(unet[2 ** level]) for level in range(3, LOG_SIZE + 1))
        self.condition_shift = nn.ModuleList(_condition(unet[2 ** level]) for level in range(3, LOG_SIZE + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A 512x512 face in -1..1 -> the restored face in -1..1."""
        features = F.leaky_relu(self.conv_body_first(x), 0.2)
        skips = []
        for block in self.conv_body_down:
            features = block(features)
            skips.insert(0, features)
        features = F.leaky_relu(self.final_conv(features), 0.2)
        latent = self.final_linear(features.flatten(1)).view(x.shape[0], -1, self.style_dim)
        conditions = []
        for skip, up, scale, shift in zip(skips, self.conv_body_up, self.condition_scale, self.condition_shift):
            features = up(features + skip)
            conditions += [scale(features), shift(features)]
        return self.stylegan_decoder(latent, conditions)


def build(state: dict) -> GFPGAN:
    """A GFPGAN for the official v1.3/v1.4 state dict layout (widths read from the weights), in eval mode."""
    if "conv_body_first.weight" not in state or "stylegan_decoder.constant_input.weight" not in state:
        raise UnsupportedModelFile("not a GFPGAN v1.3/v1.4 model (conv_body_first / stylegan_decoder keys missing); "
                                   "GFPGAN v1.0 and v1.2 checkpoints are not supported")
    unet = {OUT_SIZE: state["conv_body_first.weight"].shape[0]}
    for n, level in enumerate(range(LOG_SIZE, 2, -1)):
        unet[2 ** (level - 1)] = state[f"conv_body_down.{n}.conv2.weight"].shape[0]
    decoder = {4: state["stylegan_decoder.constant_input.weight"].shape[1]}
    for n, level in enumerate(range(3, LOG_SIZE + 1)):
        decoder[2 ** level] = state[f"stylegan_decoder.style_convs.{2 * n}.modulated_conv.weight"].shape[1]
    style_dim = state["stylegan_decoder.style_conv1.modulated_conv.modulation.weight"].shape[1]
    model = GFPGAN(unet, decoder, style_dim)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UnsupportedModelFile(f"GFPGAN weights do not match the architecture: {str(e).splitlines()[0]}") from e
    return model.eval().requires_grad_(False)
