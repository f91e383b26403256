"""Stable Diffusion 2.x: the SD 1.x UNet and VAE layout with linear attention projections and a 1024-wide context,
the OpenCLIP ViT-H text encoder (A1111 takes its penultimate block's output, then the final layer norm; clip skip
does not apply), 512 epsilon and 768 v-prediction checkpoints, and the 9-channel inpainting model.

v-prediction is decided as reference-model-families.md §1.4 says: a ``<checkpoint stem>.yaml`` next to the file
(``parameterization: "v"``, or an SGM ``VScaling``), else the ``v_pred`` marker key, else inpainting models are
epsilon and other 4-channel models take A1111's one-step test of the UNet. A ``ztsnr`` marker selects the
zero-terminal-SNR noise schedule (diffusers' ``rescale_betas_zero_snr``).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

from modules.engine import conditioning
from modules.families import open_clip, sd1, sd1_layout
from modules.families.spec import ModelFamily
from modules.loading import model_files
from modules.loading.model_loader import Components, build_module, load_tokenizer

SGM_PREFIX = "conditioner.embedders.0.model."  # SD 2.x saved in the SDXL code's layout (SD-Turbo)
V_PREDICTION_CONFIG = (re.compile(r"^\s*parameterization:\s*['\"]?v['\"]?\s*$", re.M), re.compile(r"VScaling"))


def _from_sgm(shapes_or_state: Mapping) -> dict:
    return {(open_clip.SD2_PREFIX + key[len(SGM_PREFIX):] if key.startswith(SGM_PREFIX) else key): value
            for key, value in shapes_or_state.items()}


def checkpoint_in_channels(shapes: Mapping[str, tuple]) -> int | None:
    """The UNet's input channels when the single-file checkpoint is SD 2.x, else None."""
    if any(key.startswith("conditioner.embedders.1.") for key in shapes):
        return None  # SDXL base
    if any(key.startswith(SGM_PREFIX) for key in shapes):
        if sd1_layout.UNET + "label_emb.0.0.weight" in shapes:
            return None  # the SDXL refiner
        shapes = _from_sgm(shapes)
    conv_in = shapes.get(sd1_layout.UNET + "input_blocks.0.0.weight")
    if conv_in is not None and any(key.startswith(open_clip.SD2_PREFIX) for key in shapes):
        return conv_in[1]
    found = sd1_layout.clip_text_checkpoint(shapes)  # a CLIP text model in the SD 1.x place, with SD 2.x's
    return found[0] if found is not None and found[1] else None  # linear projections



def diffusers_in_channels(unet: Mapping[str, Any]) -> int | None:
    if unet.get("addition_embed_type") == "text_time":
        return None
    if unet.get("cross_attention_dim") == 1024 or unet.get("use_linear_projection"):
        return unet.get("in_channels", 4)
    return None


def _predicts_velocity(unet) -> bool:
    """A1111's test (``is_using_v_parameterization_for_sd2``): one UNet call on constant inputs at t=999; a
    v-prediction model's output falls far below its input."""
    import torch

    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5)

    def run() -> float:
        with torch.inference_mode():
            out = unet(x.to(unet.dtype), 999, encoder_hidden_states=context.to(unet.dtype), return_dict=False)[0]
        return float((out.float() - x).mean())

    try:
        return run() < -1
    except RuntimeError:  # half precision on a CPU without half kernels: test in float32
        dtype = unet.dtype
        unet.float()
        try:
            return run() < -1
        finally:
            unet.to(dtype)


def declared_config(path: str) -> str:
    """The text of the ``<checkpoint stem>.yaml`` next to the file (A1111 reads it in place of its own guess); ""
    when there is none."""
    config_file = os.path.splitext(path)[0] + ".yaml"
    if not os.path.isfile(config_file):
        return ""
    with open(config_file, encoding="utf8", errors="replace") as f:
        return f.read()


def prediction_type(path: str, shapes: Mapping[str, tuple], unet) -> str:
    text = declared_config(path)
    if text:
        return "v_prediction" if any(pattern.search(text) for pattern in V_PREDICTION_CONFIG) else "epsilon"
    if "v_pred" in shapes:
        return "v_prediction"
    if unet.config.in_channels in (5, 9):  # inpainting and depth: A1111's configs for them are epsilon
        return "epsilon"
    return "v_prediction" if _predicts_velocity(unet) else "epsilon"


def load_single_file(path: str, dtype, family: ModelFamily) -> Components:
    from transformers import CLIPTextConfig, CLIPTextModel

    state = _from_sgm(model_files.read_state_dict(path))
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    unet_arch, vae_arch = sd1_layout.infer_unet(shapes), sd1_layout.infer_vae(shapes)
    unet = sd1.build_unet(state, unet_arch, vae_arch, dtype)
    vae = sd1.build_vae(state, vae_arch, dtype, family.latent.scale_factor)
    text_arch = open_clip.infer(shapes, open_clip.SD2_PREFIX)
    layers = text_arch.layers - 1  # the last block is never used (diffusers' SD 2 text_encoder has 23 of 24)
    text_config = CLIPTextConfig(**open_clip.text_config_kwargs(text_arch, layers))
    text_encoder = build_module(lambda: CLIPTextModel(text_config),
                                open_clip.to_transformers(state, open_clip.SD2_PREFIX, layers), dtype)
    scheduler_config = dict(family.scheduler_config, prediction_type=prediction_type(path, shapes, unet))
    if "ztsnr" in shapes:
        scheduler_config["rescale_betas_zero_snr"] = True
    return Components(unet, vae, text_encoder, load_tokenizer(pad_token="!"), scheduler_config, family,
                      {"unet": unet_arch, "vae": vae_arch, "text": text_arch})


class PromptEncoder(conditioning.PromptEncoder):
    """A1111's OpenCLIP embedder always uses the penultimate block (the 23-layer encoder's last output, after the
    final layer norm): clip skip does not change SD 2.x conditioning. The infotext still records it."""

    def __init__(self, model: Any, *, clip_skip: int = 1, **options):
        super().__init__(model, clip_skip=1, **options)


SD2 = dataclasses.replace(
    sd1.SD1, key="sd2", label="SD 2.x", base="sd2", unet_in_channels=4,
    matches_checkpoint=lambda shapes: checkpoint_in_channels(shapes) not in (None, 5, 8, 9),
    matches_diffusers=lambda unet: diffusers_in_channels(unet) not in (None, 5, 8, 9),
    load_single_file=load_single_file, text_conditioner=PromptEncoder, official_checkpoint=None,
)
SD2_INPAINT = dataclasses.replace(
    SD2, key="sd2-inpaint", label="SD 2.x inpainting", unet_in_channels=9,
    matches_checkpoint=lambda shapes: checkpoint_in_channels(shapes) == 9,
    matches_diffusers=lambda unet: diffusers_in_channels(unet) == 9,
)
SD2_DEPTH = dataclasses.replace(  # img2img only: the 5th input channel is the input image's depth (depth2img)
    SD2, key="sd2-depth", label="SD 2.x depth-to-image (5-channel UNet)", unet_in_channels=5,
    matches_checkpoint=lambda shapes: checkpoint_in_channels(shapes) == 5,
    matches_diffusers=lambda unet: diffusers_in_channels(unet) == 5,
)
FAMILIES = (SD2, SD2_INPAINT, SD2_DEPTH)


def checkpoint_shapes(unet: sd1_layout.UNetArch, vae: sd1_layout.VAEArch, text: open_clip.OpenClipArch) -> dict:
    """Every key and shape of an SD 2.x single-file checkpoint (LDM layout) of this size."""
    return {**sd1_layout.unet_shapes(unet), **sd1_layout.vae_shapes(vae),
            **open_clip.checkpoint_shapes(text, open_clip.SD2_PREFIX)}


FULL_SIZE = (sd1_layout.UNetArch(context_dim=1024, attention_levels=(True, True, True, False), linear_projection=True,
                                 head_channels=64), sd1_layout.VAEArch(), open_clip.OpenClipArch())
TINY = (dataclasses.replace(sd1_layout.TINY.unet, context_dim=32, linear_projection=True, head_channels=32),
        sd1_layout.TINY.vae, open_clip.OpenClipArch(width=32, layers=3, projection_dim=24))


def is_depth_model(model: Any) -> bool:
    return getattr(model.unet.config, "in_channels", 4) == SD2_DEPTH.unet_in_channels

