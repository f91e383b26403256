"""Schedule types ("Schedule type" in the UI, ``scheduler`` in the API): A1111 names mapped to the
diffusers scheduler constructor options that produce that sigma/timestep spacing."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scheduler:
    name: str
    label: str
    kwargs: dict = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    unsupported: str = ""  # reason, when diffusers has no equivalent


schedulers = [
    Scheduler("automatic", "Automatic"),
    Scheduler("uniform", "Uniform", {"timestep_spacing": "linspace"}),
    Scheduler("karras", "Karras", {"use_karras_sigmas": True}),
    Scheduler("exponential", "Exponential", {"use_exponential_sigmas": True}),
    Scheduler("polyexponential", "Polyexponential", unsupported="diffusers has no polyexponential sigma schedule"),
    Scheduler("sgm_uniform", "SGM Uniform", {"timestep_spacing": "trailing"}, aliases=("SGMUniform",)),
    Scheduler("kl_optimal", "KL Optimal", unsupported="diffusers has no KL-optimal sigma schedule"),
    Scheduler("align_your_steps", "Align Your Steps", unsupported="needs per-model sigma tables that are not bundled yet"),
    Scheduler("simple", "Simple", unsupported="diffusers has no 'simple' sigma schedule"),
    Scheduler("normal", "Normal", unsupported="diffusers has no 'normal' sigma schedule"),
    Scheduler("ddim", "DDIM", {"timestep_spacing": "leading"}),
    Scheduler("beta", "Beta", {"use_beta_sigmas": True}),
]
schedulers_map = {s.name: s for s in schedulers} | {s.label: s for s in schedulers} | {a: s for s in schedulers for a in s.aliases}


def find(name: str | None) -> Scheduler | None:
    """Look a schedule up by name, label or alias (case-insensitive); None/"" mean Automatic."""
    if not name:
        return schedulers_map["automatic"]
    found = schedulers_map.get(name)
    if found is None:
        lowered = name.lower()
        found = next((s for key, s in schedulers_map.items() if key.lower() == lowered), None)
    return found
