"""Stable Diffusion 1.x: the first family written as a spec. SD 1.x checkpoints (CLIP ViT-L/14 text encoder,
768-wide context, convolutional attention projections), their 9-channel inpainting variant, and InstructPix2Pix
(recognised, not supported yet)."""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from types import MappingProxyType
from typing import Any, Mapping

from modules.engine import conditioning
from modules.families import sd1_layout
from modules.families.spec import LatentFormat, LoraLayout, ModelFamily, OfficialCheckpoint
from modules.loading import model_files
from modules.loading.model_loader import Components, build_module, load_tokenizer

# The SD 1.x training noise schedule (the scheduler_config.json of the SD 1.5 release).
SCHEDULER_CONFIG = MappingProxyType({
    "_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "clip_sample": False, "prediction_type": "epsilon", "timestep_spacing": "leading",
})
LATENT = LatentFormat(channels=4, downscale=8, scale_factor=0.18215, preview_decoder="TAESD",
                      preview_rgb=(  # A1111's "Approx cheap"
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
))


def checkpoint_in_channels(shapes: Mapping[str, tuple]) -> int | None:
    """The UNet's input channels when the single-file checkpoint has the SD 1.x layout, else None."""
    if any(key.startswith(("conditioner.embedders.", "cond_stage_model.model.")) for key in shapes):
        return None  # SDXL's two encoders / SD 2.x's OpenCLIP
    found = sd1_layout.clip_text_checkpoint(shapes)
    return found[0] if found is not None and not found[1] else None  # linear projections: SD 2.x


def diffusers_in_channels(unet: Mapping[str, Any]) -> int | None:
    if unet.get("addition_embed_type") == "text_time" or unet.get("cross_attention_dim") == 1024 \
            or unet.get("use_linear_projection"):
        return None
    return unet.get("in_channels", 4)


def build_unet(state: dict, unet_arch: sd1_layout.UNetArch, vae_arch: sd1_layout.VAEArch, dtype,
               config_changes: dict | None = None):
    """The diffusers UNet of an LDM-layout checkpoint (SD 1.x, SD 2.x, SDXL); ``config_changes`` amend the config
    diffusers derives from the layout."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm

    original = sd1_layout.original_config(sd1_layout.SD1Arch(unet=unet_arch, vae=vae_arch))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # image_size is passed to avoid guessing; diffusers flags it as deprecated
        config = create_unet_diffusers_config_from_ldm(original, state, image_size=512)
    config.update(config_changes or {})
    return build_module(lambda: UNet2DConditionModel.from_config(config), convert_ldm_unet_checkpoint(state, config), dtype)


def build_vae(state: dict, vae_arch: sd1_layout.VAEArch, dtype, scale_factor: float):
    """The diffusers VAE of an LDM-layout checkpoint, with the family's latent scale in its config."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    original = sd1_layout.original_config(sd1_layout.SD1Arch(vae=vae_arch))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = create_vae_diffusers_config_from_ldm(original, state, image_size=512, scaling_factor=scale_factor)
    return build_module(lambda: AutoencoderKL.from_config(config), convert_ldm_vae_checkpoint(state, config), dtype)


def load_single_file(path: str, dtype, family: ModelFamily) -> Components:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    state = sd1_layout.normalise_text_keys(model_files.read_state_dict(path))
    arch = sd1_layout.infer_architecture({k: tuple(v.shape) for k, v in state.items()})
    unet = build_unet(state, arch.unet, arch.vae, dtype)
    vae = build_vae(state, arch.vae, dtype, family.latent.scale_factor)
    text_config = CLIPTextConfig(**sd1_layout.text_config_kwargs(arch.text))
    text_encoder = build_module(lambda: CLIPTextModel(text_config), convert_ldm_clip_checkpoint(state), dtype)
    return Components(unet, vae, text_encoder, load_tokenizer(), dict(family.scheduler_config), family, {"arch": arch})


def load_diffusers_folder(path: str, dtype, family: ModelFamily) -> Components:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    common = {"torch_dtype": dtype, "local_files_only": True}
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **common).eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **common).eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(os.path.join(path, "text_encoder"), **common).eval().requires_grad_(False)
    return Components(unet, vae, text_encoder, load_tokenizer(os.path.join(path, "tokenizer")),
                      folder_scheduler_config(path, family), family)


def folder_scheduler_config(path: str, family: ModelFamily) -> dict:
    """The family's noise schedule, updated by the folder's scheduler/scheduler_config.json when it has one."""
    scheduler_file = os.path.join(path, "scheduler", "scheduler_config.json")
    scheduler_config = dict(family.scheduler_config)
    if os.path.isfile(scheduler_file):
        with open(scheduler_file, encoding="utf8") as f:
            scheduler_config.update(json.load(f))
    return scheduler_config


def unet_inputs(model, cond) -> dict:
    return {"encoder_hidden_states": cond}


SD1 = ModelFamily(
    key="sd1", label="SD 1.x", base="sd1",
    matches_checkpoint=lambda shapes: checkpoint_in_channels(shapes) not in (None, 8, 9),
    matches_diffusers=lambda unet: diffusers_in_channels(unet) not in (None, 8, 9),
    latent=LATENT, default_size=512, scheduler_config=SCHEDULER_CONFIG,
    components=("unet", "vae", "text_encoder"), text_encoders=(("text_encoder", ""),),
    lora_layout=(LoraLayout("lora_unet_", "unet", "unet."),
                 LoraLayout("lora_te_", "text_encoder", "text_encoder.", text_encoder=True)),
    load_single_file=load_single_file, load_diffusers_folder=load_diffusers_folder,
    text_conditioner=conditioning.PromptEncoder, unet_inputs=unet_inputs,
    official_checkpoint=OfficialCheckpoint("SD 1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5",
                                           "v1-5-pruned-emaonly.safetensors"),
)
SD1_INPAINT = dataclasses.replace(
    SD1, key="sd1-inpaint", label="SD 1.x inpainting (9-channel UNet)", unet_in_channels=9,
    matches_checkpoint=lambda shapes: checkpoint_in_channels(shapes) == 9,
    matches_diffusers=lambda unet: diffusers_in_channels(unet) == 9,
)
SD1_PIX2PIX = dataclasses.replace(
    SD1, key="sd1-pix2pix", label="SD 1.x InstructPix2Pix (8-channel UNet)", unet_in_channels=8, supported=False,
    note="support is coming", matches_checkpoint=lambda shapes: checkpoint_in_channels(shapes) == 8,
    matches_diffusers=lambda unet: diffusers_in_channels(unet) == 8,
)
FAMILIES = (SD1, SD1_INPAINT, SD1_PIX2PIX)
