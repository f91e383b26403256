"""The ``<lora:name:te[:unet[:dyn]]>`` handler (alias ``lyco``), with A1111's multiplier rules."""
from __future__ import annotations

import logging

from modules import extra_networks
from modules.networks import lora
from modules.errors import UserInputError

log = logging.getLogger("webui")


def _number(params: extra_networks.ExtraNetworkParams, value: str, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise UserInputError(f"<lora:{':'.join(params.items)}>: {what} {value!r} is not a number") from None


def parse_lora_params(params: extra_networks.ExtraNetworkParams) -> tuple[str, float, float]:
    """(name, te multiplier, unet multiplier): te defaults to 1.0, unet to te; ``te=``/``unet=`` override."""
    if not params.positional:
        raise UserInputError(f"<lora:{':'.join(params.items)}>: the LoRA name is missing")
    positional = params.positional
    te = _number(params, positional[1], "multiplier") if len(positional) > 1 else 1.0
    te = _number(params, params.named["te"], "te multiplier") if "te" in params.named else te
    unet = _number(params, positional[2], "unet multiplier") if len(positional) > 2 else te
    unet = _number(params, params.named["unet"], "unet multiplier") if "unet" in params.named else unet
    return str(positional[0]), te, unet


class ExtraNetworkLora(extra_networks.ExtraNetwork):
    def __init__(self) -> None:
        super().__init__("lora")

    def activate(self, p, params_list: list[extra_networks.ExtraNetworkParams]) -> None:
        from modules import sd_models

        wanted = [parse_lora_params(params) for params in params_list]
        available = lora.list_available_networks()
        loaded, missing = [], []
        for name, te, unet in wanted:
            network = lora.registry.find(name)
            if network is None:
                missing.append(name)
                continue
            loaded.append(lora.LoadedNetwork(network, te, unet, name))
        if missing:
            log.warning("LoRA not found: %s (available: %d in %s)", ", ".join(missing), len(available), lora.lora_dirs()[0])
            p.comment("Networks not found: " + ", ".join(missing))
        current = [(n.network.filename, n.te_multiplier, n.unet_multiplier) for n in lora.applied_networks().loaded]
        requested = [(n.network.filename, n.te_multiplier, n.unet_multiplier) for n in loaded]
        model = getattr(p, "sd_model", None) or sd_models.get_sd_model()  # a hires pass may run on its own model
        if current != requested or lora.applied_networks().model is not model:
            for warning in lora.applied_networks().apply(model, loaded):
                log.warning(warning)
                p.comment(warning)
        hashes = [f"{n.mentioned_name.replace(':', '').replace(',', '')}: {n.network.shorthash}" for n in loaded]
        if hashes:
            p.extra_generation_params["Lora hashes"] = ", ".join(hashes)

    def deactivate(self, p) -> None:
        lora.applied_networks().restore()


def register() -> None:
    handler = ExtraNetworkLora()
    extra_networks.register_extra_network(handler)
    extra_networks.register_extra_network_alias(handler, "lyco")
