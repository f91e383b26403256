"""The ``<hypernet:name:strength>`` handler (strength 1.0 by default), as A1111's."""
from __future__ import annotations

import logging
import os
from typing import Any

from modules import extra_networks
from modules.errors import UserInputError
from modules.networks import hypernetwork

log = logging.getLogger("webui")
MODELS_ATTRIBUTE = "hypernetwork_models"  # on p: the models this job's hypernetworks are hooked onto


class ExtraNetworkHypernet(extra_networks.ExtraNetwork):
    def __init__(self) -> None:
        super().__init__("hypernet")
        self._cache: dict[str, tuple[tuple, hypernetwork.Hypernetwork]] = {}  # path -> (size and mtime, network)

    def _load(self, name: str, path: str) -> hypernetwork.Hypernetwork:
        stat = os.stat(path)
        signature = (stat.st_size, stat.st_mtime_ns)
        cached = self._cache.get(path)
        if cached is None or cached[0] != signature:
            cached = self._cache[path] = (signature, hypernetwork.load(name, path))
        return cached[1]

    def activate(self, p: Any, params_list: list[extra_networks.ExtraNetworkParams]) -> None:
        from modules import sd_models

        self.deactivate(p)
        if not params_list:
            return
        model = getattr(p, "sd_model", None) or sd_models.get_sd_model()  # a hires pass may run on its own model
        available = hypernetwork.list_hypernetworks()
        width = model.unet.config.cross_attention_dim
        chosen, missing = [], []
        for params in params_list:
            if not params.positional:
                raise UserInputError(f"<hypernet:{':'.join(params.items)}>: the hypernetwork name is missing")
            name = str(params.positional[0])
            try:
                strength = float(params.positional[1]) if len(params.positional) > 1 else 1.0
            except ValueError:
                raise UserInputError(f"<hypernet:{':'.join(params.items)}>: strength {params.positional[1]!r} is "
                                     f"not a number") from None
            if name not in available:
                missing.append(name)
                continue
            network = self._load(name, available[name])
            if width not in network.layers:
                message = (f"Hypernetwork {name} has no layers for this {model.family.label} model's {width}-wide "
                           f"text conditioning (it has {sorted(network.layers)}): skipped")
                log.warning(message)
                p.comment(message)
                continue
            chosen.append((network, strength))
        if missing:
            log.warning("Hypernetworks not found: %s (available: %d)", ", ".join(missing), len(available))
            p.comment("Hypernetworks not found: " + ", ".join(missing))
        if chosen:
            model.extra[hypernetwork.HOOKS_KEY] = hypernetwork.apply(model.unet, chosen, model.device)
            setattr(p, MODELS_ATTRIBUTE, [model])

    def deactivate(self, p: Any) -> None:
        for model in getattr(p, MODELS_ATTRIBUTE, []):
            for handle in model.extra.pop(hypernetwork.HOOKS_KEY, []):
                handle.remove()
        setattr(p, MODELS_ATTRIBUTE, [])


def register() -> None:
    extra_networks.register_extra_network(ExtraNetworkHypernet())
