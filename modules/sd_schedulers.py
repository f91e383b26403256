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


ZERO_TERMINAL_SNR_LAST_ALPHA_BAR = 4.8973451890853435e-08  # A1111's (sigma_max ~ 4518.76); diffusers uses 2**-24


def zero_terminal_snr_betas(config: dict) -> list[float]:
    """The training betas of ``config`` rescaled to zero terminal SNR as A1111 does (``rescale_zero_terminal_snr_abar``):
    sqrt(alpha_bar) shifted so its last value is 0 and scaled to keep the first, then the last alpha_bar set to a
    tiny positive value so the last sigma stays finite."""
    import torch

    count, start, end = int(config.get("num_train_timesteps", 1000)), config["beta_start"], config["beta_end"]
    kind = config.get("beta_schedule", "scaled_linear")
    if kind == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, count, dtype=torch.float64) ** 2
    elif kind == "linear":
        betas = torch.linspace(start, end, count, dtype=torch.float64)
    else:
        raise ValueError(f"zero terminal SNR: unsupported beta_schedule {kind!r}")
    root = torch.cumprod(1 - betas, 0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    alpha_bar = ((root - last) * first / (first - last)) ** 2
    alpha_bar[-1] = ZERO_TERMINAL_SNR_LAST_ALPHA_BAR
    previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return (1 - alpha_bar / previous).tolist()


def find(name: str | None) -> Scheduler | None:
    """Look a schedule up by name, label or alias (case-insensitive); None/"" mean Automatic."""
    if not name:
        return schedulers_map["automatic"]
    found = schedulers_map.get(name)
    if found is None:
        lowered = name.lower()
        found = next((s for key, s in schedulers_map.items() if key.lower() == lowered), None)
    return found
