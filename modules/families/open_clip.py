"""The OpenCLIP text tower as single-file checkpoints store it (SD 2.x's ViT-H under ``cond_stage_model.model.``,
SDXL's ViT-bigG under ``conditioner.embedders.N.model.``): infer its size from the shapes, list its keys (for
random-weight fixtures) and convert it to transformers' ``CLIPTextModel`` layout.

The layout (reference-model-families.md §2.2): ``token_embedding.weight``, ``positional_embedding``,
``transformer.resblocks.{i}.{ln_1, attn.in_proj_weight/bias (q, k, v stacked), attn.out_proj, ln_2, mlp.c_fc,
mlp.c_proj}``, ``ln_final``, ``text_projection`` (used as ``x @ P``) and ``logit_scale``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

HEAD_CHANNELS = 64  # every OpenCLIP text tower: width / 64 heads (tiny towers: at least one)
SD2_PREFIX = "cond_stage_model.model."


@dataclass(frozen=True)
class OpenClipArch:
    width: int = 1024
    layers: int = 24
    projection_dim: int = 1024
    vocab_size: int = 49408
    max_positions: int = 77

    @property
    def heads(self) -> int:
        return max(1, self.width // HEAD_CHANNELS)


def infer(shapes: dict, prefix: str) -> OpenClipArch:
    vocab, width = shapes[prefix + "token_embedding.weight"]
    layers = len({m.group(1) for key in shapes if (m := re.match(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.", key))})
    if prefix + "text_projection" in shapes:  # used as x @ P: [W, P]
        projection_dim = shapes[prefix + "text_projection"][-1]
    else:  # some converted files store it as a Linear weight: [P, W]
        projection_dim = shapes.get(prefix + "text_projection.weight", (width, width))[0]
    return OpenClipArch(width=width, layers=layers, projection_dim=projection_dim, vocab_size=vocab,
                        max_positions=shapes[prefix + "positional_embedding"][0])


def checkpoint_shapes(arch: OpenClipArch, prefix: str) -> dict:
    w = arch.width
    shapes = {prefix + "token_embedding.weight": (arch.vocab_size, w), prefix + "positional_embedding": (arch.max_positions, w),
              prefix + "ln_final.weight": (w,), prefix + "ln_final.bias": (w,),
              prefix + "text_projection": (w, arch.projection_dim), prefix + "logit_scale": ()}
    for i in range(arch.layers):
        block = f"{prefix}transformer.resblocks.{i}."
        shapes.update({
            block + "ln_1.weight": (w,), block + "ln_1.bias": (w,), block + "ln_2.weight": (w,), block + "ln_2.bias": (w,),
            block + "attn.in_proj_weight": (3 * w, w), block + "attn.in_proj_bias": (3 * w,),
            block + "attn.out_proj.weight": (w, w), block + "attn.out_proj.bias": (w,),
            block + "mlp.c_fc.weight": (4 * w, w), block + "mlp.c_fc.bias": (4 * w,),
            block + "mlp.c_proj.weight": (w, 4 * w), block + "mlp.c_proj.bias": (w,),
        })
    return shapes


def to_transformers(state: dict, prefix: str, layers: int) -> dict:
    """The tower's first ``layers`` blocks, embeddings and final layer norm under transformers' ``CLIPTextModel``
    names (``text_model.`` level included; the loader drops it where the installed version has none)."""
    out = {"text_model.embeddings.token_embedding.weight": state[prefix + "token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": state[prefix + "positional_embedding"],
           "text_model.final_layer_norm.weight": state[prefix + "ln_final.weight"],
           "text_model.final_layer_norm.bias": state[prefix + "ln_final.bias"]}
    for i in range(layers):
        block, layer = f"{prefix}transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for part, tensor in (("weight", state[block + "attn.in_proj_weight"]), ("bias", state[block + "attn.in_proj_bias"])):
            q, k, v = tensor.chunk(3, dim=0)
            out.update({f"{layer}self_attn.q_proj.{part}": q, f"{layer}self_attn.k_proj.{part}": k,
                        f"{layer}self_attn.v_proj.{part}": v})
        for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                             ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            out[f"{layer}{ours}.weight"] = state[f"{block}{theirs}.weight"]
            out[f"{layer}{ours}.bias"] = state[f"{block}{theirs}.bias"]
    return out


def text_config_kwargs(arch: OpenClipArch, layers: int) -> dict:
    """transformers ``CLIPTextConfig`` arguments for ``layers`` of the tower (exact GELU, as OpenCLIP)."""
    return {
        "vocab_size": arch.vocab_size, "hidden_size": arch.width, "intermediate_size": 4 * arch.width,
        "num_hidden_layers": layers, "num_attention_heads": arch.heads, "max_position_embeddings": arch.max_positions,
        "hidden_act": "gelu", "projection_dim": arch.projection_dim, "bos_token_id": 49406, "eos_token_id": 49407,
        "pad_token_id": 1,
    }
