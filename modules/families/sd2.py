"""Stable Diffusion 2.x (OpenCLIP ViT-H text encoder, 1024-wide context, linear attention projections): recognised
so that the user is told what the checkpoint is; loading comes with the model-families work."""
from __future__ import annotations

from typing import Any, Mapping

from modules.families import sd1_layout
from modules.families.spec import ModelFamily


def checkpoint_in_channels(shapes: Mapping[str, tuple]) -> int | None:
    if any(key.startswith("conditioner.embedders.") for key in shapes):
        return None
    shapes = sd1_layout.normalise_text_keys(dict(shapes))
    conv_in = shapes.get(sd1_layout.UNET + "input_blocks.0.0.weight")
    if conv_in is None:
        return None
    if any(key.startswith("cond_stage_model.model.") for key in shapes):  # OpenCLIP ViT-H
        return conv_in[1]
    proj_in = shapes.get(sd1_layout.UNET + "input_blocks.1.1.proj_in.weight")
    if sd1_layout.TEXT + "embeddings.token_embedding.weight" in shapes and proj_in is not None and len(proj_in) == 2:
        return conv_in[1]  # a CLIP text model in the SD 1.x place, but SD 2.x's linear projections
    return None


def diffusers_in_channels(unet: Mapping[str, Any]) -> int | None:
    if unet.get("addition_embed_type") == "text_time":
        return None
    if unet.get("cross_attention_dim") == 1024 or unet.get("use_linear_projection"):
        return unet.get("in_channels", 4)
    return None


SD2 = ModelFamily(
    key="sd2", label="SD 2.x (eps or v-prediction)", base="sd2", supported=False, note="SD 2.x support is coming",
    matches_checkpoint=lambda shapes: checkpoint_in_channels(shapes) not in (None, 9),
    matches_diffusers=lambda unet: diffusers_in_channels(unet) not in (None, 9),
)
SD2_INPAINT = ModelFamily(
    key="sd2-inpaint", label="SD 2.x inpainting", base="sd2", supported=False, note="SD 2.x support is coming",
    unet_in_channels=9, matches_checkpoint=lambda shapes: checkpoint_in_channels(shapes) == 9,
    matches_diffusers=lambda unet: diffusers_in_channels(unet) == 9,
)
FAMILIES = (SD2, SD2_INPAINT)
