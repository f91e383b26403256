"""Start-up (A1111's ``modules/initialize.py``): the one place where the built-in features register themselves.

Registries (extra networks, upscaler sources, model families) start empty, and the modules that fill them do not
import each other, so that no module has to know its plug-ins. The server, the test fixtures and the benchmarks all
start through :func:`initialize`.
"""
from __future__ import annotations

from typing import Any

from modules import esrgan_model, extra_networks, interrogate, sd_models, shared, upscaler
from modules.families import detection, sd1, sd2, sdxl
from modules.networks import extra_networks_hypernet, extra_networks_lora


def initialize(options: Any) -> None:
    """Install the command-line options, load the settings and styles of the data dir, register the features."""
    shared.init(options)
    register_builtin_features()


def register_builtin_features() -> None:
    """Register what ships with the engine; safe to call more than once."""
    detection.register(*sd1.FAMILIES, *sd2.FAMILIES, *sdxl.FAMILIES)
    if "lora" not in extra_networks.extra_network_registry:
        extra_networks_lora.register()
    if "hypernet" not in extra_networks.extra_network_registry:
        extra_networks_hypernet.register()
    upscaler.register_model_source(esrgan_model.model_upscalers)
    shared.sd_model_provider = sd_models.get_sd_model
    shared.interrogator = interrogate.clip_interrogator
