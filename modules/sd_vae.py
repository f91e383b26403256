"""Separate VAE files: discovery (models/VAE, --vae-dir, ``*.vae.*`` next to checkpoints), the ``sd_vae``
setting (Automatic, None or a file name) and swapping the loaded model's VAE weights.

A VAE file is in the original LDM layout (``encoder.*``/``decoder.*``, optionally under ``first_stage_model.``, as
vae-ft-mse-840000-ema-pruned.safetensors) or in diffusers' layout. "None" puts back the checkpoint's own VAE,
which is kept on the CPU the first time another one is loaded.
"""
from __future__ import annotations

import os
from typing import Any

from modules import hashes, paths, sd_models
from modules.loading import model_files

VAE_EXTENSIONS = (".safetensors", ".ckpt", ".pt")
vae_dict: dict[str, str] = {}  # file name -> path (A1111's name)


def vae_dir() -> str:
    return os.path.join(paths.models_path, "VAE")


def refresh_vae_list() -> None:
    """Rescan models/VAE, --vae-dir and the checkpoint folders (``*.vae.*`` files only there)."""
    from modules.shared import cmd_opts

    found: dict[str, str] = {}
    for root, any_file in ((vae_dir(), True), (getattr(cmd_opts, "vae_dir", None), True),
                           *((os.path.dirname(info.filename), False) for info in sd_models.checkpoints_list.values())):
        if not root or not os.path.isdir(root):
            continue
        for dirpath, _, filenames in os.walk(root, followlinks=True):
            for name in sorted(filenames):
                lowered = name.lower()
                if lowered.endswith(VAE_EXTENSIONS) and (any_file or ".vae." in lowered):
                    found.setdefault(name, os.path.join(dirpath, name))
    vae_dict.clear()
    vae_dict.update(sorted(found.items(), key=lambda item: item[0].lower()))


def choices() -> list[str]:
    return ["Automatic", "None", *vae_dict]


def resolve(setting: str | None, checkpoint: sd_models.CheckpointInfo | None) -> str | None:
    """The VAE file the setting asks for with ``checkpoint`` (None: the checkpoint's own). Automatic picks a VAE
    named like the checkpoint (``<name>.vae.safetensors`` ...), if there is one."""
    from modules.errors import UserInputError
    from modules.shared import cmd_opts

    if getattr(cmd_opts, "vae_path", None):
        return cmd_opts.vae_path
    setting = setting or "Automatic"
    if setting == "None":
        return None
    if setting == "Automatic":
        if checkpoint is None or checkpoint.is_folder:
            return None
        stem = os.path.splitext(os.path.basename(checkpoint.filename))[0]
        for ext in VAE_EXTENSIONS:
            if f"{stem}.vae{ext}" in vae_dict:
                return vae_dict[f"{stem}.vae{ext}"]
        return None
    if setting not in vae_dict:
        refresh_vae_list()
    if setting not in vae_dict:
        raise UserInputError(f"SD VAE: no VAE file named {setting!r}; choose Automatic, None or one of: "
                             f"{', '.join(vae_dict) or '(none in models/VAE)'}")
    return vae_dict[setting]


def _diffusers_state(path: str, vae) -> dict:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = model_files.read_state_dict(path)
    expected = set(vae.state_dict())
    if expected <= set(state):  # already diffusers' layout
        return {k: state[k] for k in expected}
    converted = convert_ldm_vae_checkpoint(state, dict(vae.config))
    missing = expected - set(converted)
    if missing:
        raise model_files.UnsupportedModelFile(
            f"{os.path.basename(path)} is not a VAE for this model: it lacks {len(missing)} weights, "
            f"e.g. {sorted(missing)[:3]}")
    return {k: converted[k] for k in expected}


def _check_shapes(state: dict, module: Any, path: str) -> None:
    """Refuse tensors of the wrong shape before any of them replaces a weight (the model stays usable)."""
    for key, tensor in module.state_dict().items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise model_files.UnsupportedModelFile(
                f"{os.path.basename(path)} is not a VAE for this model: {key} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(tensor.shape)}")


def reload_vae_weights(sd_model: Any = None, vae_file: str | None = None) -> Any:
    """Put the VAE of ``vae_file`` (default: what the ``sd_vae`` setting asks for) into ``sd_model`` (default:
    the current model); a file already loaded is not read again."""
    from modules.shared import opts

    model = sd_model or sd_models.get_sd_model()
    if vae_file is None:  # the list is scanned at start-up, by 🔄, and when a named VAE is not in it
        vae_file = resolve(opts.sd_vae, model.sd_checkpoint_info)
    if getattr(model, "loaded_vae_file", None) == vae_file:
        return model
    if getattr(model, "own_vae_state", None) is None:
        model.own_vae_state = {k: v.detach().to("cpu", copy=True) for k, v in model.vae.state_dict().items()}
    parameter = next(model.vae.parameters())
    if vae_file is None:
        model.vae.load_state_dict({k: v.to(device=parameter.device, dtype=parameter.dtype)
                                   for k, v in model.own_vae_state.items()})
    else:
        with model_files.loading(vae_file, "VAE for this model"):
            state = {k: v.to(device=parameter.device, dtype=parameter.dtype)
                     for k, v in _diffusers_state(vae_file, model.vae).items()}
            _check_shapes(state, model.vae, vae_file)
        model.vae.load_state_dict(state)
    model.loaded_vae_file = vae_file
    model.loaded_vae_hash = hashes.sha256(vae_file, f"vae/{os.path.basename(vae_file)}")[:10] if vae_file else None
    return model


def loaded_vae_name(model: Any) -> str | None:
    """The loaded VAE's file name (infotext ``VAE``); None when the model uses its own."""
    path = getattr(model, "loaded_vae_file", None)
    return os.path.basename(path) if path else None


def loaded_vae_hash(model: Any) -> str | None:
    """The first 10 hex digits of the loaded VAE file's sha256 (infotext ``VAE hash``), taken when it was loaded."""
    return getattr(model, "loaded_vae_hash", None)
