"""The shared objects the Script API exposes: ``opts``, ``cmd_opts``, ``state``, ``sd_model`` ...

These are the only process-wide mutable objects; everything else is passed explicitly.
"""
from __future__ import annotations

import os
from typing import Any

from modules import cmd_args, paths
from modules.options import OptionHTML, OptionInfo, Options, options_section  # noqa: F401  (re-exported for scripts)
from modules.shared_options import options_templates
from modules.shared_state import State
from modules.shared_total_tqdm import TotalTQDM

cmd_opts = cmd_args.parse([])
opts = Options(options_templates)
state = State()
total_tqdm = TotalTQDM()

latent_upscale_modes = {
    "Latent": {"mode": "bilinear", "antialias": False},
    "Latent (antialiased)": {"mode": "bilinear", "antialias": True},
    "Latent (bicubic)": {"mode": "bicubic", "antialias": False},
    "Latent (bicubic antialiased)": {"mode": "bicubic", "antialias": True},
    "Latent (nearest)": {"mode": "nearest", "antialias": False},
    "Latent (nearest-exact)": {"mode": "nearest-exact", "antialias": False},
}
latent_upscale_default_mode = "Latent"
sd_upscalers: list = []
face_restorers: list = []
demo = None
parallel_processing_allowed = True


def config_filename() -> str:
    return os.path.join(paths.data_path, "config.json")


def __getattr__(name: str) -> Any:
    if name == "sd_model":
        from modules import sd_models

        return sd_models.get_sd_model()
    if name == "device":
        from modules import devices

        return devices.device
    if name in ("models_path", "data_path", "script_path"):
        return getattr(paths, name)
    if name == "prompt_styles":
        return reload_styles()
    if name == "interrogator":  # A1111 scripts call shared.interrogator.interrogate(pil_image)
        from modules import interrogate

        return interrogate.clip_interrogator
    raise AttributeError(name)


def reload_styles():
    """(Re)create ``prompt_styles`` from ``--styles-file`` (default: styles.csv in the data dir)."""
    from modules.styles import StyleDatabase

    files = getattr(cmd_opts, "styles_file", None) or [os.path.join(paths.data_path, "styles.csv")]
    globals()["prompt_styles"] = database = StyleDatabase(files)
    return database


def init(options: Any) -> None:
    """Install parsed command-line options and load the settings file of the data dir."""
    global cmd_opts
    cmd_opts = options
    paths.configure(options.data_dir, options.models_dir)
    opts.load(config_filename())
    reload_styles()
    from modules import extra_networks

    extra_networks.register_default_extra_networks()
