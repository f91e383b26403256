"""Build the diffusers/transformers components of an SD 1.x model from a single-file checkpoint or a
diffusers folder, using only the configs and tokenizer bundled in ``modules/configs`` (no network)."""
from __future__ import annotations

import functools
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from modules import paths
from modules.families import sd1_layout
from modules.loading import model_files
from modules.errors import UserInputError
from modules.families.detection import Family, detect_family
from modules.runtime import heavy_imports

# The SD 1.x training noise schedule (the scheduler_config.json of the SD 1.5 release).
SD1_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "clip_sample": False, "prediction_type": "epsilon", "timestep_spacing": "leading",
}
TOKENIZER_DIR = os.path.join(paths.configs_path, "clip_tokenizer")


class ModelNotSupported(UserInputError):
    """A checkpoint of a family we recognise but cannot load yet, or do not recognise at all."""


@dataclass
class Components:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    family: Family
    extra: dict = field(default_factory=dict)


def _module_key(key: str, expected: set[str]) -> str:
    """Checkpoint keys say ``text_model.embeddings...``; some transformers versions name them ``embeddings...``."""
    if key not in expected and key.startswith("text_model.") and key[len("text_model."):] in expected:
        return key[len("text_model."):]
    return key


def _build(make, state: dict, dtype) -> Any:
    """Instantiate a module with empty weights and assign the checkpoint tensors (no random init cost)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        module = make()
    expected = set(module.state_dict().keys())
    state = {_module_key(k, expected): v.to(dtype) for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in expected}
    missing = expected - set(state)
    if missing:
        raise ModelNotSupported(f"checkpoint lacks {len(missing)} weights of {type(module).__name__}, e.g. {sorted(missing)[:3]}")
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def load_tokenizer(folder: str | None = None):
    heavy_imports.ensure()  # the UI's token counter asks for it from its own thread
    from transformers import CLIPTokenizer

    source = folder if folder and os.path.isfile(os.path.join(folder, "vocab.json")) else TOKENIZER_DIR
    return CLIPTokenizer.from_pretrained(source, local_files_only=True)


@functools.lru_cache(maxsize=1)
def bundled_tokenizer():
    """The shipped CLIP tokenizer, loaded once (the UI's token counter uses it before any model loads)."""
    return load_tokenizer()


def load_single_file(path: str, dtype, family: Family | None = None) -> Components:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
        create_unet_diffusers_config_from_ldm, create_vae_diffusers_config_from_ldm)
    from transformers import CLIPTextConfig, CLIPTextModel

    state = sd1_layout.normalise_text_keys(model_files.read_state_dict(path))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    arch = sd1_layout.infer_architecture(shapes)
    original = sd1_layout.original_config(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # image_size is passed to avoid guessing; diffusers flags it as deprecated
        unet_config = create_unet_diffusers_config_from_ldm(original, state, image_size=512)
        vae_config = create_vae_diffusers_config_from_ldm(original, state, image_size=512)
    unet = _build(lambda: UNet2DConditionModel.from_config(unet_config), convert_ldm_unet_checkpoint(state, unet_config), dtype)
    vae = _build(lambda: AutoencoderKL.from_config(vae_config), convert_ldm_vae_checkpoint(state, vae_config), dtype)
    text_config = CLIPTextConfig(**sd1_layout.text_config_kwargs(arch.text))
    text_encoder = _build(lambda: CLIPTextModel(text_config), convert_ldm_clip_checkpoint(state), dtype)
    from modules.families.detection import SD1

    return Components(unet, vae, text_encoder, load_tokenizer(), dict(SD1_SCHEDULER_CONFIG), family or SD1, {"arch": arch})


def load_diffusers_folder(path: str, dtype, family: Family) -> Components:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    common = {"torch_dtype": dtype, "local_files_only": True}
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **common).eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **common).eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(os.path.join(path, "text_encoder"), **common).eval().requires_grad_(False)
    scheduler_file = os.path.join(path, "scheduler", "scheduler_config.json")
    scheduler_config = dict(SD1_SCHEDULER_CONFIG)
    if os.path.isfile(scheduler_file):
        with open(scheduler_file, encoding="utf8") as f:
            scheduler_config.update(json.load(f))
    return Components(unet, vae, text_encoder, load_tokenizer(os.path.join(path, "tokenizer")), scheduler_config, family)


def load_components(path: str, dtype) -> Components:
    """Load any supported checkpoint; unsupported families raise :class:`ModelNotSupported` naming the family."""
    with model_files.loading(path, "Stable Diffusion checkpoint"):
        family = detect_family(path)
        if not family.supported:
            raise ModelNotSupported(f"{os.path.basename(path)} is a {family.label} checkpoint: {family.note}")
        if model_files.detect_format(path) == model_files.DIFFUSERS_FOLDER:
            return load_diffusers_folder(path, dtype, family)
        return load_single_file(path, dtype, family)
