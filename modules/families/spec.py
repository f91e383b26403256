"""What a model family declares: everything the engine would otherwise hard-code for one kind of model.

A family is plain data plus a few functions (loading, the text conditioner, the UNet's inputs). The engine reads
them from the loaded model (``model.family``), so adding a family means writing one module under
``modules/families`` and registering it in ``modules.initialize``; nothing in the sampling loop changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping


CONTEXT_WIDTH_FAMILIES: Mapping[int, str] = MappingProxyType({768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL",
                                                            1280: "SDXL refiner"})
"""The width of the real models' text conditioning (the UNet's cross-attention context; for one text encoder also its
token embeddings), which tells which family a LoRA or an embedding file was trained for."""


def family_of_context_width(width: int | None) -> str:
    return CONTEXT_WIDTH_FAMILIES.get(width, f"a model with {width}-wide text conditioning") if width else "another model"


@dataclass(frozen=True)
class LatentFormat:
    """The VAE's latent space: ``channels`` per latent pixel, each covering ``downscale`` x ``downscale`` image
    pixels (A1111's ``opt_C`` and ``opt_f``); ``latent = (vae_output - shift_factor) * scale_factor``."""
    channels: int
    downscale: int
    scale_factor: float
    shift_factor: float = 0.0
    preview_rgb: tuple[tuple[float, float, float], ...] = ()  # one RGB row per channel: the cheap live preview
    preview_decoder: str = ""  # the TAESD live-preview decoder of this latent space (model_catalog.PREVIEW_DECODERS)


@dataclass(frozen=True)
class LoraLayout:
    """One model component that LoRA files address: the key prefix in kohya files (``lora_unet_``), the component
    attribute (``unet``), the prefix of diffusers/PEFT files (``unet.``) and whether it is a text encoder (which
    takes the text-encoder multiplier)."""
    kohya_prefix: str
    component: str
    peft_prefix: str
    text_encoder: bool = False


@dataclass(frozen=True)
class OfficialCheckpoint:
    """The family's reference checkpoint on the Hugging Face hub, which the first-start download offers."""
    label: str  # as the page names it: "SD 1.5"
    repo: str
    filename: str


@dataclass(frozen=True)
class ModelFamily:
    key: str
    label: str
    # detection, from a single-file checkpoint's tensor names -> shapes, or a diffusers folder's unet/config.json
    # (with "_subfolders": the folder's component names)
    matches_checkpoint: Callable[[Mapping[str, tuple]], bool]
    matches_diffusers: Callable[[Mapping[str, Any]], bool]
    supported: bool = True
    note: str = ""  # why an unsupported family cannot be loaded
    base: str = ""  # "sd1", "sd2", "sdxl": what A1111's is_sd1 / is_sd2 / is_sdxl say
    latent: LatentFormat | None = None
    default_size: int = 512
    unet_in_channels: int = 4  # 9: inpainting models, which take the masked image as extra input channels
    scheduler_config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    components: tuple[str, ...] = ()  # the torch modules of a loaded model, moved together between devices
    # (component attribute, key of its vectors in an embedding file; "" for single-tensor layouts)
    text_encoders: tuple[tuple[str, str], ...] = ()
    lora_layout: tuple[LoraLayout, ...] = ()
    # (path, dtype, family) -> loading.model_loader.Components
    load_single_file: Callable[..., Any] | None = None
    load_diffusers_folder: Callable[..., Any] | None = None
    # (model, clip_skip=, emphasis=, comma_padding_backtrack=, embeddings=) -> an encoder with
    # encode(texts, negative=False), chunks(text) and used_embeddings, as engine.conditioning.PromptEncoder
    text_conditioner: Callable[..., Any] | None = None
    size_conditioning: bool = False  # the conditioner also takes image_size=(w, h), crop=(top, left), aesthetic_scores
    # and clip_l_skip (SDXL)
    # (model, a batch of conditioning: a tensor, or a dict of tensors for families with several) -> the UNet's
    # keyword arguments besides the latents and the timestep (encoder_hidden_states, added_cond_kwargs ...)
    unet_inputs: Callable[[Any, Any], dict] | None = None
    official_checkpoint: OfficialCheckpoint | None = None

    @property
    def is_inpainting(self) -> bool:
        return self.unet_in_channels == 9
