"""Extra networks: the ``<kind:arg:arg...>`` prompt syntax and the registry of handlers (A1111 names).

Every ``<word:...>`` tag is removed from the prompt text; registered handlers get the parameters of
their kind for each batch (``activate``) and are told when the job ends (``deactivate``). Extensions
add kinds with :func:`register_extra_network`.
"""
from __future__ import annotations

import logging
import re
from collections import defaultdict
from typing import Any

from modules import errors
from modules.errors import UserInputError

log = logging.getLogger("webui")
re_extra_net = re.compile(r"<(\w+):([^>]+)>")


class ExtraNetworkParams:
    def __init__(self, items: list | None = None):
        self.items = items or []
        self.positional: list = []
        self.named: dict[str, str] = {}
        for item in self.items:
            parts = item.split("=", 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExtraNetworkParams) and self.items == other.items

    def __repr__(self) -> str:
        return f"ExtraNetworkParams({self.items!r})"


class ExtraNetwork:
    def __init__(self, name: str):
        self.name = name

    def activate(self, p: Any, params_list: list[ExtraNetworkParams]) -> None:
        """Apply the networks of this kind for the batch; an empty list means none are wanted."""
        raise NotImplementedError

    def deactivate(self, p: Any) -> None:
        """Undo everything ``activate`` did; called once at the end of the job."""
        raise NotImplementedError


extra_network_registry: dict[str, ExtraNetwork] = {}
extra_network_aliases: dict[str, ExtraNetwork] = {}


def register_extra_network(extra_network: ExtraNetwork) -> None:
    extra_network_registry[extra_network.name] = extra_network


def register_extra_network_alias(extra_network: ExtraNetwork, alias: str) -> None:
    extra_network_aliases[alias] = extra_network


def lookup_extra_networks(extra_network_data: dict) -> dict[ExtraNetwork, list[ExtraNetworkParams]]:
    """Handler -> params, merging aliases (``lyco`` into ``lora``); unknown kinds are logged and skipped."""
    res: dict[ExtraNetwork, list[ExtraNetworkParams]] = {}
    for name, params in extra_network_data.items():
        network = extra_network_registry.get(name) or extra_network_aliases.get(name)
        if network is None:
            log.info("Skipping unknown extra network: %s", name)
            continue
        res.setdefault(network, []).extend(params)
    return res


def activate(p: Any, extra_network_data: dict) -> None:
    """Call every registered handler, with the params of its kind (possibly none)."""
    active = lookup_extra_networks(extra_network_data)
    calls = list(active.items()) + [(network, []) for network in extra_network_registry.values() if network not in active]
    for network, params in calls:
        try:
            network.activate(p, params)
        except UserInputError:
            raise  # e.g. a multiplier that is not a number: the user must fix the prompt
        except Exception as e:  # a broken handler (often an extension's) must not stop the job
            errors.display(e, f"activating extra network {network.name}")
    p.extra_network_data = extra_network_data


def deactivate(p: Any, extra_network_data: dict | None = None) -> None:
    for network in extra_network_registry.values():
        try:
            network.deactivate(p)
        except Exception as e:  # one failing handler must not leave the others applied
            errors.display(e, f"deactivating extra network {network.name}")


def parse_prompt(prompt: str) -> tuple[str, dict[str, list[ExtraNetworkParams]]]:
    res: dict[str, list[ExtraNetworkParams]] = defaultdict(list)

    def found(m: re.Match) -> str:
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re_extra_net.sub(found, prompt), res


def parse_prompts(prompts: list[str]) -> tuple[list[str], dict[str, list[ExtraNetworkParams]]]:
    """Strip tags from every prompt; the networks of the first prompt are the batch's (as A1111)."""
    res, extra_data = [], None
    for prompt in prompts:
        updated, parsed = parse_prompt(prompt)
        if extra_data is None:
            extra_data = parsed
        res.append(updated)
    return res, dict(extra_data or {})
