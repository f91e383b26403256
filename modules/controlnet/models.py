"""ControlNet model files: found in ``models/ControlNet`` (and ``--controlnet-dir``), loaded as diffusers
``ControlNetModel``s.

Layouts: the original single files (lllyasviel's ``control_v11p_sd15_canny.pth`` and the rest: LDM
``control_model.*`` keys, or the same keys without the prefix; ``.pth`` only through ``torch.load(weights_only=True)``,
``.safetensors``), their fp16 pruned variants, single files with diffusers' keys and no config (as many SDXL
ControlNets are shared: the config is read from the shapes), and diffusers folders (``config.json`` + weights).
SDXL ControlNets (label embedding / ``add_embedding``) get SDXL's added conditioning. The family is read
from the weights (the cross-attention width) and checked against the checkpoint's by :func:`check_family`.
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Any

from modules import hashes
from modules.errors import UserInputError
from modules.families import sd1_layout
from modules.families.spec import family_of_context_width
from modules.loading import model_files
from modules.loading.model_loader import build_module

EXTENSIONS = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
LDM_PREFIX = "control_model."
HINT_CHANNELS_KEY = "input_hint_block.0.weight"

_lock = threading.Lock()
_loaded: dict[tuple[str, str], tuple[tuple, Any]] = {}  # (path, device) -> (size, mtime and dtype; model)


def folders() -> list[str]:
    from modules import paths, shared

    found = [os.path.join(paths.models_path, "ControlNet")]
    if getattr(shared.cmd_opts, "controlnet_dir", None):
        found.append(os.path.abspath(shared.cmd_opts.controlnet_dir))
    return found


def _is_diffusers_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.isfile(os.path.join(path, name)) for name in
        ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.safetensors"))


def list_models() -> dict[str, str]:
    """name -> path: the file's stem (or the folder's name), as the A1111 extension lists them (it adds the hash)."""
    found: dict[str, str] = {}
    for root in folders():
        if not os.path.isdir(root):
            continue
        for folder, subfolders, names in os.walk(root, followlinks=True):
            for sub in list(subfolders):
                if _is_diffusers_folder(os.path.join(folder, sub)):
                    subfolders.remove(sub)
                    found.setdefault(sub, os.path.join(folder, sub))
            for name in sorted(names, key=str.lower):
                if name.lower().endswith(EXTENSIONS) and not name.startswith("."):
                    found.setdefault(os.path.splitext(name)[0], os.path.join(folder, name))
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def title(name: str, path: str) -> str:
    """``name [hash]`` as the extension shows models (the legacy 8-hex-digit hash of single files)."""
    return name if os.path.isdir(path) else f"{name} [{hashes.legacy_model_hash(path)}]"


def find(name: str) -> str:
    """The path of a model asked for by name, with or without its ``[hash]``."""
    available = list_models()
    bare = name.split(" [")[0].strip()
    if bare in available:
        return available[bare]
    raise UserInputError(f"ControlNet model {name!r} not found in {', '.join(folders())} "
                         f"(available: {', '.join(available) or 'none'})")


SDXL_TIME_EMBED_DIM = 256  # SDXL's size embeddings (not visible in the weights)
SHARED_CONFIG_KEYS = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
                      "attention_head_dim", "use_linear_projection", "transformer_layers_per_block")


def _added_conditioning(adm_in_channels: int, like: Any) -> dict:
    """SDXL's added conditioning (pooled text + size embeddings) for a ControlNet whose label embedding takes
    ``adm_in_channels``; the size embeddings' width is the base UNet's (``like``), else SDXL's."""
    if not adm_in_channels:
        return {"class_embed_type": None, "addition_embed_type": None}
    time_dim = (like or {}).get("addition_time_embed_dim") or SDXL_TIME_EMBED_DIM
    return {"class_embed_type": None, "addition_embed_type": "text_time", "addition_time_embed_dim": time_dim,
            "projection_class_embeddings_input_dim": adm_in_channels}


def _ldm_config(state: dict, like: Any) -> dict:
    """The diffusers ControlNet config of an LDM-layout state dict (its UNet half read from the shapes)."""
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    shapes = {sd1_layout.UNET + key: tuple(value.shape) for key, value in state.items()}
    in_channels = shapes[sd1_layout.UNET + "input_blocks.0.0.weight"][1]
    shapes[sd1_layout.UNET + "out.2.weight"] = (in_channels, 0, 3, 3)  # a ControlNet has no output half
    try:
        unet = sd1_layout.infer_unet(shapes)
    except sd1_layout.NotSD1Layout as e:
        raise UserInputError(f"not a ControlNet in the original layout ({e})") from None
    original = sd1_layout.original_config(sd1_layout.SD1Arch(unet=unet, vae=sd1_layout.TINY.vae))
    as_unet = {sd1_layout.UNET + key: value for key, value in state.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # image_size is given to avoid guessing; diffusers flags it as deprecated
        unet_config = create_unet_diffusers_config_from_ldm(original, as_unet, image_size=512)
    # the UNet's encoder half, plus the hint's channels (what diffusers' own ControlNet config builder takes)
    return {"conditioning_channels": state[HINT_CHANNELS_KEY].shape[1],
            **{key: unet_config[key] for key in SHARED_CONFIG_KEYS if key in unet_config},
            **_added_conditioning(unet.adm_in_channels, like)}


def _count(state: dict, prefix: str) -> int:
    """How many numbered children ``prefix<n>.`` the state has."""
    return len({key[len(prefix):].split(".")[0] for key in state if key.startswith(prefix)})


def _diffusers_config(state: dict, like: Any) -> dict:
    """The config of a ControlNet saved as one file with diffusers' own keys (as many SDXL ControlNets are shared):
    read from the shapes. Heads are 64 channels wide with linear projections (SD 2, SDXL), else 8 per layer."""
    levels = _count(state, "down_blocks.")
    channels = [state[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels)]
    attention = [f"down_blocks.{i}.attentions.0.proj_in.weight" in state for i in range(levels)]
    linear = state["mid_block.attentions.0.proj_in.weight"].ndim == 2
    head_channels = min(sd1_layout.SD2_HEAD_CHANNELS, channels[0])
    embedding = [state["controlnet_cond_embedding.conv_in.weight"].shape[0]] + [
        state[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0]
        for i in range(1, _count(state, "controlnet_cond_embedding.blocks."), 2)]
    adm = state["add_embedding.linear_1.weight"].shape[1] if "add_embedding.linear_1.weight" in state else 0
    return {
        "in_channels": state["conv_in.weight"].shape[1],
        "conditioning_channels": state["controlnet_cond_embedding.conv_in.weight"].shape[1],
        "conditioning_embedding_out_channels": embedding,
        "block_out_channels": channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "layers_per_block": _count(state, "down_blocks.0.resnets."),
        "cross_attention_dim": state["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape[1],
        "transformer_layers_per_block": [max(1, _count(state, f"down_blocks.{i}.attentions.0.transformer_blocks."))
                                         for i in range(levels)],
        "use_linear_projection": linear,
        "attention_head_dim": [c // head_channels for c in channels] if linear else 8,
        **_added_conditioning(adm, like),
    }


def _load_single_file(path: str, dtype, like: Any) -> Any:
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    state = model_files.read_state_dict(path)
    if any(key.startswith(LDM_PREFIX) for key in state):
        state = {key[len(LDM_PREFIX):]: value for key, value in state.items() if key.startswith(LDM_PREFIX)}
    if "controlnet_cond_embedding.conv_in.weight" in state:
        config = _diffusers_config(state, like)
        return build_module(lambda: ControlNetModel.from_config(config), state, dtype)
    if HINT_CHANNELS_KEY not in state:
        raise UserInputError(f"{os.path.basename(path)}: not a ControlNet (no {HINT_CHANNELS_KEY})")
    config = _ldm_config(state, like)
    converted = convert_controlnet_checkpoint(state, config)
    for ldm, diffusers_name in (("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2")):
        for part in ("weight", "bias"):  # SDXL's label embedding, which diffusers' converter leaves out
            if f"{ldm}.{part}" in state:
                converted[f"{diffusers_name}.{part}"] = state[f"{ldm}.{part}"]
    return build_module(lambda: ControlNetModel.from_config(config), converted, dtype)


def _load_folder(path: str, dtype) -> Any:
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(path, torch_dtype=dtype, local_files_only=True).eval().requires_grad_(False)


def load(path: str, dtype, like: Any = None, device: Any = None, offloaded_for: Any = None) -> Any:
    """The ControlNet at ``path``, kept while its file is unchanged: one copy per device (``--gpus`` workers each
    get their own; without ``device``, the one in RAM; ``offloaded_for``: a RAM copy of the worker on that device,
    which moves it to its device for each call). ``like``: the base UNet's config, for what a single file does not
    show (SDXL's size-embedding width)."""
    stat = os.stat(path)
    key = (path, str(device or "cpu") + (f" for {offloaded_for}" if offloaded_for is not None else ""))
    signature = (stat.st_size, stat.st_mtime_ns, str(dtype))
    with _lock:
        cached = _loaded.get(key)
        if cached is not None and cached[0] == signature:
            return cached[1]
        with model_files.loading(path, "ControlNet model"):
            model = _load_folder(path, dtype) if os.path.isdir(path) else _load_single_file(path, dtype, like)
        if device is not None:
            model = model.to(device)
        _loaded[key] = (signature, model)
        return model


def family_label(controlnet: Any) -> str:
    return family_of_context_width(controlnet.config.cross_attention_dim)


def check_family(controlnet: Any, sd_model: Any, name: str) -> None:
    """Refuse a ControlNet of another family than the checkpoint, naming both."""
    width, wanted = controlnet.config.cross_attention_dim, sd_model.unet.config.cross_attention_dim
    if width != wanted:
        label = family_label(controlnet)
        what = label if f"{width}-wide" in label else f"{label} ({width}-wide text conditioning)"
        raise UserInputError(f"ControlNet {name} is for {what}, not for this {sd_model.family.label} checkpoint "
                             f"({wanted}-wide)")
