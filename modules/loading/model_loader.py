"""Load a checkpoint's diffusers/transformers components: detect its family, then let the family's loader build
them (single file or diffusers folder) with the configs and tokenizers bundled in ``modules/configs`` (no
network). The helpers here are shared by every family's loader."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

from modules import paths
from modules.errors import UserInputError
from modules.families.detection import detect_family
from modules.families.spec import ModelFamily
from modules.loading import model_files
from modules.runtime import heavy_imports

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
    family: ModelFamily
    extra: dict = field(default_factory=dict)
    text_encoder_2: Any = None  # SDXL: OpenCLIP ViT-bigG (with its projection)
    tokenizer_2: Any = None


def _module_key(key: str, expected: set[str]) -> str:
    """Checkpoint keys say ``text_model.embeddings...``; some transformers versions name them ``embeddings...``."""
    if key not in expected and key.startswith("text_model.") and key[len("text_model."):] in expected:
        return key[len("text_model."):]
    return key


def build_module(make, state: dict, dtype) -> Any:
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


def load_tokenizer(folder: str | None = None, pad_token: str | None = None):
    """The CLIP BPE tokenizer of a diffusers folder, or the bundled one. OpenCLIP text towers pad with ``!`` (id 0)
    instead of the end token: ``pad_token="!"``."""
    heavy_imports.ensure()  # the UI's token counter asks for it from its own thread
    from transformers import CLIPTokenizer

    saved = folder and any(os.path.isfile(os.path.join(folder, name)) for name in ("vocab.json", "tokenizer.json"))
    source = folder if saved else TOKENIZER_DIR
    extra = {"pad_token": pad_token} if pad_token else {}  # over whatever a folder's own files say
    return CLIPTokenizer.from_pretrained(source, local_files_only=True, **extra)


@functools.lru_cache(maxsize=1)
def bundled_tokenizer():
    """The shipped CLIP tokenizer, loaded once (the UI's token counter uses it before any model loads)."""
    return load_tokenizer()


def load_components(path: str, dtype) -> Components:
    """Load any supported checkpoint; unsupported families raise :class:`ModelNotSupported` naming the family."""
    with model_files.loading(path, "Stable Diffusion checkpoint"):
        family = detect_family(path)
        if not family.supported:
            raise ModelNotSupported(f"{os.path.basename(path)} is a {family.label} checkpoint: {family.note}")
        folder = model_files.detect_format(path) == model_files.DIFFUSERS_FOLDER
        loader = family.load_diffusers_folder if folder else family.load_single_file
        if loader is None:
            layout = "diffusers folders" if folder else "single files"
            raise ModelNotSupported(f"{os.path.basename(path)} is a {family.label} checkpoint: {layout} of it are "
                                    f"not supported yet")
        return loader(path, dtype, family)
