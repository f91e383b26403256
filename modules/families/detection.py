"""Which model family a checkpoint is, from its tensor names and shapes (never its size or file name)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from modules.loading import model_files
from modules.families.sd1_layout import TEXT, UNET, normalise_text_keys


@dataclass(frozen=True)
class Family:
    key: str
    label: str
    supported: bool
    note: str = ""


SD1 = Family("sd1", "SD 1.x", True)
SD1_INPAINT = Family("sd1-inpaint", "SD 1.x inpainting (9-channel UNet)", True)
SD1_PIX2PIX = Family("sd1-pix2pix", "SD 1.x InstructPix2Pix (8-channel UNet)", False, "support is coming")
SD2 = Family("sd2", "SD 2.x (eps or v-prediction)", False, "SD 2.x support is coming")
SD2_INPAINT = Family("sd2-inpaint", "SD 2.x inpainting", False, "SD 2.x support is coming")
SDXL = Family("sdxl", "SDXL", False, "SDXL support is coming")
SDXL_REFINER = Family("sdxl-refiner", "SDXL refiner", False, "SDXL support is coming")
UNKNOWN = Family("unknown", "unknown", False, "not a Stable Diffusion checkpoint we recognise")


def _unet_family(in_channels: int, sd1: Family, inpaint: Family, pix2pix: Family | None) -> Family:
    if in_channels == 9:
        return inpaint
    if in_channels == 8 and pix2pix is not None:
        return pix2pix
    return sd1


def family_from_shapes(shapes: dict[str, tuple]) -> Family:
    shapes = normalise_text_keys(shapes)
    if any(k.startswith("conditioner.embedders.1.model.") for k in shapes):
        return SDXL
    if any(k.startswith("conditioner.embedders.0.model.") for k in shapes):
        return SDXL_REFINER
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None:
        return UNKNOWN
    in_channels = conv_in[1]
    if any(k.startswith("cond_stage_model.model.") for k in shapes):  # OpenCLIP ViT-H text encoder
        return _unet_family(in_channels, SD2, SD2_INPAINT, None)
    if TEXT + "embeddings.token_embedding.weight" in shapes:
        proj_in = shapes.get(UNET + "input_blocks.1.1.proj_in.weight")
        if proj_in is not None and len(proj_in) == 2:  # linear projections are an SD 2.x trait
            return _unet_family(in_channels, SD2, SD2_INPAINT, None)
        return _unet_family(in_channels, SD1, SD1_INPAINT, SD1_PIX2PIX)
    return UNKNOWN


def family_from_diffusers_folder(path: str) -> Family:
    with open(os.path.join(path, "unet", "config.json"), encoding="utf8") as f:
        unet = json.load(f)
    if unet.get("addition_embed_type") == "text_time":
        return SDXL if unet.get("cross_attention_dim") == 2048 else SDXL_REFINER
    in_channels = unet.get("in_channels", 4)
    if unet.get("cross_attention_dim") == 1024 or unet.get("use_linear_projection"):
        return _unet_family(in_channels, SD2, SD2_INPAINT, None)
    return _unet_family(in_channels, SD1, SD1_INPAINT, SD1_PIX2PIX)


def detect_family(path: str) -> Family:
    if model_files.detect_format(path) == model_files.DIFFUSERS_FOLDER:
        return family_from_diffusers_folder(path)
    return family_from_shapes(model_files.read_shapes(path))
