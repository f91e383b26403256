"""The SD 1.x single-file (original LDM) layout: infer the architecture from tensor shapes, and list the
keys and shapes an architecture has (used to build random-weight demo and test checkpoints). SD 2.x keeps the same
UNet and VAE layout with linear attention projections (``UNetArch.linear_projection``); its text encoder is in
``open_clip.py``.

Real SD 1.5 has model_channels 320, channel_mult (1, 2, 4, 4), 2 res blocks, context 768, a 12-layer
CLIP ViT-L/14 text encoder and a 128-channel VAE; tiny test models only shrink those numbers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

UNET = "model.diffusion_model."
VAE = "first_stage_model."
TEXT = "cond_stage_model.transformer.text_model."
UNET_HEADS = 8  # SD 1.x uses 8 attention heads everywhere; head count is not visible in the weights
SD2_HEAD_CHANNELS = 64  # SD 2.x: 64 channels per head (tiny models with fewer channels use one head per level)
TEXT_HEAD_DIM = 64  # CLIP ViT-L/14: 768 / 12 heads


class NotSD1Layout(ValueError):
    pass


@dataclass(frozen=True)
class UNetArch:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    context_dim: int = 768
    transformer_depth: int = 1  # transformer blocks per attention layer, on every level and in the middle
    linear_projection: bool = False  # SD 2.x, SDXL: 2-D proj_in/proj_out
    head_channels: int = 0  # SD 2.x, SDXL: channels per attention head (0: SD 1.x's fixed 8 heads)
    level_depths: tuple[int, ...] = ()  # SDXL: blocks per level (0 where a level has no attention)
    middle_depth: int = 0  # SDXL: blocks in the middle (0: transformer_depth)
    adm_in_channels: int = 0  # SDXL: the input width of label_emb (pooled text + size embeddings)

    def depth(self, level: int) -> int:
        return self.level_depths[level] if self.level_depths else self.transformer_depth

    @property
    def middle(self) -> int:
        return self.middle_depth or self.transformer_depth


@dataclass(frozen=True)
class VAEArch:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4


@dataclass(frozen=True)
class TextArch:
    vocab_size: int = 49408
    hidden_size: int = 768
    num_layers: int = 12
    intermediate_size: int = 3072
    max_positions: int = 77

    @property
    def num_heads(self) -> int:
        return max(1, self.hidden_size // TEXT_HEAD_DIM)


@dataclass(frozen=True)
class SD1Arch:
    unet: UNetArch = field(default_factory=UNetArch)
    vae: VAEArch = field(default_factory=VAEArch)
    text: TextArch = field(default_factory=TextArch)


TINY = SD1Arch(
    unet=UNetArch(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(True, True), context_dim=32),
    vae=VAEArch(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1),
    text=TextArch(hidden_size=32, num_layers=2, intermediate_size=64),
)


def normalise_text_keys(state: dict) -> dict:
    """Older checkpoints store the CLIP text model without the ``text_model.`` level; add it."""
    old = "cond_stage_model.transformer."
    out = {}
    for key, value in state.items():
        if key.startswith(old) and not key.startswith(TEXT):
            key = TEXT + key[len(old):]
        out[key] = value
    return out


# ---- inference from shapes -------------------------------------------------------------------------

def clip_text_checkpoint(shapes: dict) -> tuple[int, bool] | None:
    """(UNet input channels, whether its attention projections are linear) of a checkpoint with a CLIP text model
    in the SD 1.x place; None for other layouts. Linear projections with this text model mean SD 2.x."""
    shapes = normalise_text_keys(dict(shapes))
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None or TEXT + "embeddings.token_embedding.weight" not in shapes:
        return None
    proj_in = shapes.get(UNET + "input_blocks.1.1.proj_in.weight")
    return conv_in[1], proj_in is not None and len(proj_in) == 2


def _count(shapes: dict, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := regex.match(k))})


def infer_unet(shapes: dict) -> UNetArch:
    s = shapes
    try:
        model_channels, in_channels = s[UNET + "input_blocks.0.0.weight"][:2]
        out_channels = s[UNET + "out.2.weight"][0]
    except KeyError as e:
        raise NotSD1Layout(f"no LDM UNet key {e}") from e
    levels: list[list[tuple[int, int]]] = [[]]  # per level: (channels, transformer blocks) of each res block
    i = 1
    while True:
        p = f"{UNET}input_blocks.{i}."
        if p + "0.op.weight" in s:
            levels.append([])
        elif p + "0.in_layers.2.weight" in s:
            levels[-1].append((s[p + "0.in_layers.2.weight"][0],
                               _count(s, re.escape(p + "1.transformer_blocks.") + r"(\d+)\.")))
        else:
            break
        i += 1
    if not levels[0]:
        raise NotSD1Layout("UNet input blocks not found")
    context_dim = s.get(UNET + "middle_block.1.transformer_blocks.0.attn2.to_k.weight", (0, 0))[1]
    middle = max(_count(s, re.escape(UNET + "middle_block.1.transformer_blocks.") + r"(\d+)\."), 1)
    linear = len(s.get(UNET + "middle_block.1.proj_in.weight", (0, 0, 1, 1))) == 2
    depths = tuple(level[0][1] for level in levels)
    uniform = {d for d in depths if d} <= {middle}  # SD 1.x and 2.x: one depth everywhere
    return UNetArch(
        linear_projection=linear, head_channels=min(SD2_HEAD_CHANNELS, model_channels) if linear else 0,
        in_channels=in_channels, out_channels=out_channels, model_channels=model_channels,
        channel_mult=tuple(level[0][0] // model_channels for level in levels),
        num_res_blocks=len(levels[0]),
        attention_levels=tuple(depth > 0 for depth in depths),
        context_dim=context_dim, transformer_depth=middle if uniform else 1,
        level_depths=() if uniform else depths, middle_depth=0 if uniform else middle,
        adm_in_channels=s.get(UNET + "label_emb.0.0.weight", (0, 0))[1],
    )


def unet_arch_from_config(config) -> UNetArch:
    """The LDM layout of a diffusers UNet (its config.json), for names that only the LDM layout has."""
    model_channels = config["block_out_channels"][0]
    attention = tuple("CrossAttn" in kind for kind in config["down_block_types"])
    layers = config.get("transformer_layers_per_block", 1)
    per_level = not isinstance(layers, int)
    linear = bool(config.get("use_linear_projection"))
    return UNetArch(
        in_channels=config["in_channels"], out_channels=config["out_channels"], model_channels=model_channels,
        channel_mult=tuple(c // model_channels for c in config["block_out_channels"]),
        num_res_blocks=config["layers_per_block"], attention_levels=attention,
        context_dim=config["cross_attention_dim"], transformer_depth=1 if per_level else layers,
        linear_projection=linear, head_channels=min(SD2_HEAD_CHANNELS, model_channels) if linear else 0,
        level_depths=tuple(d if a else 0 for d, a in zip(layers, attention)) if per_level else (),
        middle_depth=layers[-1] if per_level else 0,
        adm_in_channels=config.get("projection_class_embeddings_input_dim") or 0,
    )


def infer_vae(shapes: dict) -> VAEArch:
    s = shapes
    try:
        ch = s[VAE + "encoder.conv_in.weight"][0]
        z = s[VAE + "decoder.conv_in.weight"][1]
    except KeyError as e:
        raise NotSD1Layout(f"no LDM VAE key {e}") from e
    levels = _count(s, re.escape(VAE + "encoder.down.") + r"(\d+)\.")
    mult = tuple(s[f"{VAE}encoder.down.{i}.block.0.conv2.weight"][0] // ch for i in range(levels))
    blocks = _count(s, re.escape(VAE + "encoder.down.0.block.") + r"(\d+)\.")
    return VAEArch(ch=ch, ch_mult=mult, num_res_blocks=blocks, z_channels=z)


def infer_text(shapes: dict, prefix: str = TEXT) -> TextArch:
    s = shapes
    try:
        vocab, hidden = s[prefix + "embeddings.token_embedding.weight"]
        positions = s[prefix + "embeddings.position_embedding.weight"][0]
        intermediate = s[prefix + "encoder.layers.0.mlp.fc1.weight"][0]
    except KeyError as e:
        raise NotSD1Layout(f"no CLIP text encoder key {e}") from e
    layers = _count(s, re.escape(prefix + "encoder.layers.") + r"(\d+)\.")
    return TextArch(vocab_size=vocab, hidden_size=hidden, num_layers=layers,
                    intermediate_size=intermediate, max_positions=positions)


def infer_architecture(shapes: dict) -> SD1Arch:
    shapes = normalise_text_keys(shapes)
    return SD1Arch(unet=infer_unet(shapes), vae=infer_vae(shapes), text=infer_text(shapes))


# ---- configs for diffusers / transformers ----------------------------------------------------------

def original_config(arch: SD1Arch) -> dict:
    """The parts of the LDM ``v1-inference.yaml`` that diffusers' config builders read."""
    u, v = arch.unet, arch.vae
    return {"model": {"params": {
        "scale_factor": 0.18215,
        "unet_config": {"params": {
            "in_channels": u.in_channels, "out_channels": u.out_channels, "model_channels": u.model_channels,
            "channel_mult": list(u.channel_mult), "num_res_blocks": u.num_res_blocks,
            "attention_resolutions": [2 ** i for i, a in enumerate(u.attention_levels) if a],
            **({"num_head_channels": u.head_channels} if u.head_channels else {"num_heads": UNET_HEADS}),
            "transformer_depth": ([u.depth(level) or 1 for level in range(len(u.channel_mult))] if u.level_depths
                                  else u.transformer_depth),
            "context_dim": u.context_dim, "use_linear_in_transformer": u.linear_projection,
            **({"num_classes": "sequential", "adm_in_channels": u.adm_in_channels} if u.adm_in_channels else {}),
        }},
        "first_stage_config": {"params": {"ddconfig": {
            "ch": v.ch, "ch_mult": list(v.ch_mult), "num_res_blocks": v.num_res_blocks,
            "z_channels": v.z_channels, "in_channels": 3, "out_ch": 3,
        }}},
    }}}


def text_config_kwargs(t: TextArch, hidden_act: str = "quick_gelu") -> dict:
    """transformers ``CLIPTextConfig`` arguments (``quick_gelu``: OpenAI's CLIP-L; OpenCLIP towers use ``gelu``)."""
    return {
        "vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_layers, "num_attention_heads": t.num_heads,
        "max_position_embeddings": t.max_positions, "hidden_act": hidden_act, "projection_dim": t.hidden_size,
        "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
    }


# ---- key/shape listing (random checkpoints) --------------------------------------------------------

def _norm(p: str, c: int) -> dict:
    return {p + "weight": (c,), p + "bias": (c,)}


def _conv(p: str, cout: int, cin: int, k: int = 3) -> dict:
    return {p + "weight": (cout, cin, k, k), p + "bias": (cout,)}


def _linear(p: str, cout: int, cin: int, bias: bool = True) -> dict:
    return {p + "weight": (cout, cin), **({p + "bias": (cout,)} if bias else {})}


def _unet_resblock(p: str, cin: int, cout: int, emb: int) -> dict:
    d = {**_norm(p + "in_layers.0.", cin), **_conv(p + "in_layers.2.", cout, cin),
         **_linear(p + "emb_layers.1.", cout, emb), **_norm(p + "out_layers.0.", cout),
         **_conv(p + "out_layers.3.", cout, cout)}
    if cin != cout:
        d.update(_conv(p + "skip_connection.", cout, cin, 1))
    return d


def _transformer(p: str, ch: int, ctx: int, depth: int, linear: bool = False) -> dict:
    project = (lambda name: _linear(p + name, ch, ch)) if linear else (lambda name: _conv(p + name, ch, ch, 1))
    d = {**_norm(p + "norm.", ch), **project("proj_in."), **project("proj_out.")}
    for i in range(depth):
        b = f"{p}transformer_blocks.{i}."
        for attn, kv in (("attn1", ch), ("attn2", ctx)):
            d.update(_linear(f"{b}{attn}.to_q.", ch, ch, bias=False))
            d.update(_linear(f"{b}{attn}.to_k.", ch, kv, bias=False))
            d.update(_linear(f"{b}{attn}.to_v.", ch, kv, bias=False))
            d.update(_linear(f"{b}{attn}.to_out.0.", ch, ch))
        d.update(_linear(b + "ff.net.0.proj.", ch * 8, ch))
        d.update(_linear(b + "ff.net.2.", ch, ch * 4))
        for n in ("norm1.", "norm2.", "norm3."):
            d.update(_norm(b + n, ch))
    return d


def unet_shapes(u: UNetArch) -> dict:
    mc, emb = u.model_channels, u.model_channels * 4
    d = {**_linear(UNET + "time_embed.0.", emb, mc), **_linear(UNET + "time_embed.2.", emb, emb),
         **_conv(UNET + "input_blocks.0.0.", mc, u.in_channels)}
    if u.adm_in_channels:
        d.update({**_linear(UNET + "label_emb.0.0.", emb, u.adm_in_channels), **_linear(UNET + "label_emb.0.2.", emb, emb)})
    chans, ch, n = [mc], mc, 1
    last = len(u.channel_mult) - 1
    for level, mult in enumerate(u.channel_mult):
        for _ in range(u.num_res_blocks):
            p = f"{UNET}input_blocks.{n}."
            d.update(_unet_resblock(p + "0.", ch, mult * mc, emb))
            ch = mult * mc
            if u.attention_levels[level]:
                d.update(_transformer(p + "1.", ch, u.context_dim, u.depth(level), u.linear_projection))
            chans.append(ch)
            n += 1
        if level != last:
            d.update(_conv(f"{UNET}input_blocks.{n}.0.op.", ch, ch))
            chans.append(ch)
            n += 1
    d.update(_unet_resblock(UNET + "middle_block.0.", ch, ch, emb))
    d.update(_transformer(UNET + "middle_block.1.", ch, u.context_dim, u.middle, u.linear_projection))
    d.update(_unet_resblock(UNET + "middle_block.2.", ch, ch, emb))
    n = 0
    for level in reversed(range(len(u.channel_mult))):
        for i in range(u.num_res_blocks + 1):
            p = f"{UNET}output_blocks.{n}."
            skip = chans.pop()
            d.update(_unet_resblock(p + "0.", ch + skip, u.channel_mult[level] * mc, emb))
            ch = u.channel_mult[level] * mc
            idx = 1
            if u.attention_levels[level]:
                d.update(_transformer(p + "1.", ch, u.context_dim, u.depth(level), u.linear_projection))
                idx = 2
            if level and i == u.num_res_blocks:
                d.update(_conv(f"{p}{idx}.conv.", ch, ch))
            n += 1
    d.update(_norm(UNET + "out.0.", mc))
    d.update(_conv(UNET + "out.2.", u.out_channels, mc))
    return d


def _vae_resblock(p: str, cin: int, cout: int) -> dict:
    d = {**_norm(p + "norm1.", cin), **_conv(p + "conv1.", cout, cin),
         **_norm(p + "norm2.", cout), **_conv(p + "conv2.", cout, cout)}
    if cin != cout:
        d.update(_conv(p + "nin_shortcut.", cout, cin, 1))
    return d


def _vae_mid(p: str, c: int) -> dict:
    d = {**_vae_resblock(p + "mid.block_1.", c, c), **_vae_resblock(p + "mid.block_2.", c, c),
         **_norm(p + "mid.attn_1.norm.", c)}
    for name in ("q", "k", "v", "proj_out"):
        d.update(_conv(f"{p}mid.attn_1.{name}.", c, c, 1))
    return d


def vae_shapes(v: VAEArch) -> dict:
    e, dec = VAE + "encoder.", VAE + "decoder."
    d = _conv(e + "conv_in.", v.ch, 3)
    block_in = v.ch
    for i, mult in enumerate(v.ch_mult):
        for j in range(v.num_res_blocks):
            d.update(_vae_resblock(f"{e}down.{i}.block.{j}.", block_in, v.ch * mult))
            block_in = v.ch * mult
        if i != len(v.ch_mult) - 1:
            d.update(_conv(f"{e}down.{i}.downsample.conv.", block_in, block_in))
    d.update(_vae_mid(e, block_in))
    d.update(_norm(e + "norm_out.", block_in))
    d.update(_conv(e + "conv_out.", 2 * v.z_channels, block_in))
    d.update(_conv(VAE + "quant_conv.", 2 * v.z_channels, 2 * v.z_channels, 1))
    d.update(_conv(VAE + "post_quant_conv.", v.z_channels, v.z_channels, 1))
    block_in = v.ch * v.ch_mult[-1]
    d.update(_conv(dec + "conv_in.", block_in, v.z_channels))
    d.update(_vae_mid(dec, block_in))
    for i in reversed(range(len(v.ch_mult))):
        for j in range(v.num_res_blocks + 1):
            d.update(_vae_resblock(f"{dec}up.{i}.block.{j}.", block_in, v.ch * v.ch_mult[i]))
            block_in = v.ch * v.ch_mult[i]
        if i != 0:
            d.update(_conv(f"{dec}up.{i}.upsample.conv.", block_in, block_in))
    d.update(_norm(dec + "norm_out.", block_in))
    d.update(_conv(dec + "conv_out.", 3, block_in))
    return d


def text_shapes(t: TextArch, prefix: str = TEXT) -> dict:
    h, i = t.hidden_size, t.intermediate_size
    d = {prefix + "embeddings.token_embedding.weight": (t.vocab_size, h),
         prefix + "embeddings.position_embedding.weight": (t.max_positions, h),
         **_norm(prefix + "final_layer_norm.", h)}
    for n in range(t.num_layers):
        p = f"{prefix}encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            d.update(_linear(f"{p}self_attn.{proj}.", h, h))
        d.update(_norm(p + "layer_norm1.", h))
        d.update(_norm(p + "layer_norm2.", h))
        d.update(_linear(p + "mlp.fc1.", i, h))
        d.update(_linear(p + "mlp.fc2.", h, i))
    return d


def checkpoint_shapes(arch: SD1Arch) -> dict:
    return {**unet_shapes(arch.unet), **vae_shapes(arch.vae), **text_shapes(arch.text)}
