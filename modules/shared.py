"""The shared objects the Script API exposes: ``opts``, ``cmd_opts``, ``state``, ``sd_model`` ...

They are not the only process-wide mutable objects. The others, each owned by the module that names it, are the
registries A1111's module surface also exposes, that ``modules.initialize`` fills, or that cache files on disk:
``sd_models`` (checkpoint list, loaded models, load failures and ``load_problems``), ``sd_vae.vae_dict``,
``scripts`` (script classes and runners), ``extensions.extensions``, ``extra_networks`` (registry),
``upscaler.model_sources``, ``families.detection.registry``, ``networks.lora`` (``registry``, the merged networks per worker),
``textual_inversion.embedding_db``, ``interrogate.clip_interrogator``, ``deepbooru.model``,
``runtime.job_queue.queue``, ``infotext_utils.registered_param_bindings`` (until the page wires them),
``devices`` (the chosen device) and ``runtime.heavy_imports``. With ``--gpus``, ``state``, ``sd_model`` and
``devices.device`` are the running queue worker's (``runtime.worker_context``). Everything a generation needs is passed to it
explicitly: the sampling loop gets it all in its run object.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from modules import cmd_args, paths
from modules.options import OptionHTML, OptionInfo, Options, options_section  # noqa: F401  (re-exported for scripts)
from modules.shared_options import options_templates
from modules.shared_state import RoutedState, State
from modules.shared_total_tqdm import TotalTQDM

cmd_opts = cmd_args.parse([])
opts = Options(options_templates)
state = RoutedState(State())  # the running queue worker's State (the one State with a single worker)
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

# Installed by modules.initialize, so that this namespace imports nothing of the engine (and no engine module
# that reads ``shared.opts`` closes an import circle through it):
sd_model_provider: Callable[[], Any] | None = None  # what ``shared.sd_model`` returns: the checkpoint, loaded on first use
interrogator: Any = None  # A1111 scripts call shared.interrogator.interrogate(pil_image)


def config_filename() -> str:
    return os.path.join(paths.data_path, "config.json")


def __getattr__(name: str) -> Any:
    if name == "sd_model":
        return sd_model_provider() if sd_model_provider is not None else None
    if name == "device":
        from modules import devices

        return devices.device
    if name in ("models_path", "data_path", "script_path"):
        return getattr(paths, name)
    if name == "prompt_styles":
        return reload_styles()
    raise AttributeError(name)


def reload_styles():
    """(Re)create ``prompt_styles`` from ``--styles-file`` (default: styles.csv in the data dir)."""
    from modules.styles import StyleDatabase

    files = getattr(cmd_opts, "styles_file", None) or [os.path.join(paths.data_path, "styles.csv")]
    globals()["prompt_styles"] = database = StyleDatabase(files)
    return database


def init(options: Any) -> None:
    """Install parsed command-line options and load the settings file of the data dir (``modules.initialize``
    does this and registers the built-in features)."""
    global cmd_opts
    cmd_opts = options
    paths.configure(options.data_dir, options.models_dir)
    opts.load(config_filename())
    reload_styles()
