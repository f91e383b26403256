"""CodeFormer (Zhou et al. 2022): a VQGAN face codebook, a transformer that predicts code indices from a
degraded face, and controllable feature transforms that mix encoder features back in by fidelity ``w``.

Module and parameter names follow the official ``codeformer.pth`` (``params_ema``) so it loads strictly.
The widths are read from the weights, so small test models use the same code; the resolutions are fixed
(512 input, 16x16 latent grid, six levels).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from modules.errors import UnsupportedModelFile

RESOLUTION = 512
LATENT_SIDE = 16
LEVELS = 6
RES_BLOCKS = 2
ATTENTION_RESOLUTIONS = (16,)
CONNECTIONS = ("32", "64", "128", "256")
# index of the encoder block whose output is kept, and of the generator block after which it is fused
ENCODER_TAPS = {"512": 2, "256": 5, "128": 8, "64": 11, "32": 14, "16": 18}
GENERATOR_TAPS = {"16": 6, "32": 9, "64": 12, "128": 15, "256": 18, "512": 21}


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.conv_out = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.conv_out(x) if hasattr(self, "conv_out") else x)


class AttnBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, height, width = h.shape
        q, k, v = (t.reshape(b, c, height * width).transpose(1, 2) for t in (self.q(h), self.k(h), self.v(h)))
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(attended.transpose(1, 2).reshape(b, c, height, width))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _encoder_blocks(nf: int, ch_mult: tuple[int, ...], emb_dim: int) -> nn.ModuleList:
    blocks: list[nn.Module] = [nn.Conv2d(3, nf, 3, 1, 1)]
    channels, resolution = nf, RESOLUTION
    for level, mult in enumerate(ch_mult):
        for _ in range(RES_BLOCKS):
            blocks.append(ResBlock(channels, nf * mult))
            channels = nf * mult
            if resolution in ATTENTION_RESOLUTIONS:
                blocks.append(AttnBlock(channels))
        if level != len(ch_mult) - 1:
            blocks.append(Downsample(channels))
            resolution //= 2
    blocks += [ResBlock(channels, channels), AttnBlock(channels), ResBlock(channels, channels),
               _norm(channels), nn.Conv2d(channels, emb_dim, 3, 1, 1)]
    return nn.ModuleList(blocks)


def _generator_blocks(nf: int, ch_mult: tuple[int, ...], emb_dim: int) -> nn.ModuleList:
    channels = nf * ch_mult[-1]
    resolution = RESOLUTION // 2 ** (len(ch_mult) - 1)
    blocks: list[nn.Module] = [nn.Conv2d(emb_dim, channels, 3, 1, 1), ResBlock(channels, channels),
                               AttnBlock(channels), ResBlock(channels, channels)]
    for level in reversed(range(len(ch_mult))):
        for _ in range(RES_BLOCKS):
            blocks.append(ResBlock(channels, nf * ch_mult[level]))
            channels = nf * ch_mult[level]
            if resolution in ATTENTION_RESOLUTIONS:
                blocks.append(AttnBlock(channels))
        if level != 0:
            blocks.append(Upsample(channels))
            resolution *= 2
    blocks += [_norm(channels), nn.Conv2d(channels, 3, 3, 1, 1)]
    return nn.ModuleList(blocks)


class _Blocks(nn.Module):
    def __init__(self, blocks: nn.ModuleList):
        super().__init__()
        self.blocks = blocks


class Codebook(nn.Module):
    def __init__(self, size: int, emb_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(size, emb_dim)

    def lookup(self, indices: torch.Tensor, side: int) -> torch.Tensor:
        """(B, side*side) code indices -> (B, emb_dim, side, side) features."""
        features = self.embedding(indices)
        return features.view(indices.shape[0], side, side, -1).permute(0, 3, 1, 2).contiguous()


class TransformerSALayer(nn.Module):
    """Pre-norm self-attention + GELU MLP, positions added to queries and keys only."""

    def __init__(self, dim: int, heads: int, dim_mlp: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=0.0)
        self.linear1 = nn.Linear(dim, dim_mlp)
        self.linear2 = nn.Linear(dim_mlp, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        query = h + position
        x = x + self.self_attn(query, query, value=h, need_weights=False)[0]
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


class FuseSftBlock(nn.Module):
    """Scale and shift predicted from [encoder, decoder] features, applied to the decoder by weight ``w``."""

    def __init__(self, channels: int):
        super().__init__()
        self.encode_enc = ResBlock(2 * channels, channels)
        self.scale = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(channels, channels, 3, 1, 1))
        self.shift = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(channels, channels, 3, 1, 1))

    def forward(self, encoded: torch.Tensor, decoded: torch.Tensor, w: float) -> torch.Tensor:
        features = self.encode_enc(torch.cat([encoded, decoded], dim=1))
        return decoded + w * (decoded * self.scale(features) + self.shift(features))


def _adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Give ``content`` the per-channel mean and standard deviation of ``style``."""
    def stats(t):
        flat = t.flatten(2)
        return flat.mean(-1)[..., None, None], (flat.var(-1) + eps).sqrt()[..., None, None]

    c_mean, c_std = stats(content)
    s_mean, s_std = stats(style)
    return (content - c_mean) / c_std * s_std + s_mean


class CodeFormer(nn.Module):
    def __init__(self, nf: int = 64, ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4, 8), emb_dim: int = 256,
                 codebook_size: int = 1024, dim_embd: int = 512, n_head: int = 8, n_layers: int = 9, dim_mlp: int = 1024):
        super().__init__()
        if len(ch_mult) != LEVELS:
            raise ValueError(f"CodeFormer has {LEVELS} levels, got channel multipliers {ch_mult}")
        self.encoder = _Blocks(_encoder_blocks(nf, ch_mult, emb_dim))
        self.quantize = Codebook(codebook_size, emb_dim)
        self.generator = _Blocks(_generator_blocks(nf, ch_mult, emb_dim))
        self.position_emb = nn.Parameter(torch.zeros(LATENT_SIDE * LATENT_SIDE, dim_embd))
        self.feat_emb = nn.Linear(emb_dim, dim_embd)
        self.ft_layers = nn.Sequential(*[TransformerSALayer(dim_embd, n_head, dim_mlp) for _ in range(n_layers)])
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(dim_embd), nn.Linear(dim_embd, codebook_size, bias=False))
        side_channels = {str(RESOLUTION // 2 ** level): nf * ch_mult[level] for level in range(LEVELS)}
        self.fuse_convs_dict = nn.ModuleDict({size: FuseSftBlock(side_channels[size]) for size in CONNECTIONS})

    def forward(self, x: torch.Tensor, w: float = 0.5, adain: bool = True) -> torch.Tensor:
        """A 512x512 face in -1..1 -> the restored face in -1..1. ``w`` 0 trusts the codebook fully,
        1 keeps the most of the input."""
        taps = {ENCODER_TAPS[size]: size for size in CONNECTIONS}
        encoded = {}
        for i, block in enumerate(self.encoder.blocks):
            x = block(x)
            if i in taps:
                encoded[taps[i]] = x
        low_quality = x
        position = self.position_emb.unsqueeze(1).expand(-1, x.shape[0], -1)
        query = self.feat_emb(low_quality.flatten(2).permute(2, 0, 1))
        for layer in self.ft_layers:
            query = layer(query, position)
        logits = self.idx_pred_layer(query).permute(1, 0, 2)
        features = self.quantize.lookup(logits.argmax(dim=2), LATENT_SIDE)
        if adain:
            features = _adain(features, low_quality)
        fuse_at = {GENERATOR_TAPS[size]: size for size in CONNECTIONS}
        x = features
        for i, block in enumerate(self.generator.blocks):
            x = block(x)
            if i in fuse_at and w > 0:
                size = fuse_at[i]
                x = self.fuse_convs_dict[size](encoded[size], x, w)
        return x


def build(state: dict) -> CodeFormer:
    """A CodeFormer for the official state dict layout (widths read from the weights), in eval mode."""
    try:
        nf = state["encoder.blocks.0.weight"].shape[0]
        codebook_size, emb_dim = state["quantize.embedding.weight"].shape
        dim_embd = state["feat_emb.weight"].shape[0]
        dim_mlp = state["ft_layers.0.linear1.weight"].shape[0]
    except KeyError as e:
        raise UnsupportedModelFile(f"not a CodeFormer model: key {e} is missing") from e
    n_layers = len({k.split(".")[1] for k in state if k.startswith("ft_layers.")})
    # the first ResBlock of each encoder level sits after conv_in (1) and the previous levels' blocks
    ch_mult, index = [], 1
    for level in range(LEVELS):
        ch_mult.append(state[f"encoder.blocks.{index}.conv1.weight"].shape[0] // nf)
        index += RES_BLOCKS * (2 if RESOLUTION // 2 ** level in ATTENTION_RESOLUTIONS else 1) + 1
    model = CodeFormer(nf, tuple(ch_mult), emb_dim, codebook_size, dim_embd, max(dim_embd // 64, 1), n_layers, dim_mlp)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UnsupportedModelFile(f"CodeFormer weights do not match the architecture: {str(e).splitlines()[0]}") from e
    return model.eval().requires_grad_(False)
