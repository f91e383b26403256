"""The sampler table: A1111 sampler names -> diffusers scheduler class and options.

The model's own scheduler config (its training noise schedule) is the base; the sampler and the
schedule type add constructor options, which are checked against the class's constructor.
Samplers diffusers cannot reproduce are listed in ``unsupported_samplers`` with the reason.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from modules import sd_schedulers
from modules.errors import UserInputError
from modules.runtime import heavy_imports

KDIFF = {"timestep_spacing": "linspace"}  # k-diffusion samplers space sigmas over the full schedule


@dataclass(frozen=True)
class SamplerData:
    name: str
    scheduler_class: str
    aliases: tuple[str, ...]
    options: dict = field(default_factory=dict)  # "scheduler": default schedule for Automatic
    kwargs: dict = field(default_factory=dict)
    needs_seed: bool = False  # the scheduler draws noise from a seed of its own (Brownian tree)

    def total_steps(self, steps: int) -> int:
        """Model calls A1111 counts for prompt schedules: twice the steps for second-order samplers."""
        return steps * 2 if self.options.get("second_order") else steps

    @property
    def is_kdiffusion(self) -> bool:
        """A sampler A1111 runs through k-diffusion (its aliases start with ``k_``), not a timestep sampler."""
        return any(alias.startswith("k_") for alias in self.aliases)

    @property
    def constructor(self) -> str:  # A1111 attribute name; here the diffusers class name
        return self.scheduler_class


samplers: list[SamplerData] = [
    SamplerData("DPM++ 2M", "DPMSolverMultistepScheduler", ("k_dpmpp_2m",), {"scheduler": "karras"},
                {**KDIFF, "algorithm_type": "dpmsolver++", "solver_order": 2}),
    SamplerData("DPM++ SDE", "DPMSolverSDEScheduler", ("k_dpmpp_sde",), {"scheduler": "karras", "second_order": True},
                KDIFF, needs_seed=True),
    SamplerData("DPM++ 2M SDE", "DPMSolverMultistepScheduler", ("k_dpmpp_2m_sde",), {"scheduler": "exponential"},
                {**KDIFF, "algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    SamplerData("DPM++ 2M SDE Heun", "DPMSolverMultistepScheduler", ("k_dpmpp_2m_sde_heun",), {"scheduler": "exponential"},
                {**KDIFF, "algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"}),
    SamplerData("DPM++ 3M SDE", "DPMSolverMultistepScheduler", ("k_dpmpp_3m_sde",), {"scheduler": "exponential"},
                {**KDIFF, "algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    SamplerData("Euler a", "EulerAncestralDiscreteScheduler", ("k_euler_a", "k_euler_ancestral"), {}, KDIFF),
    SamplerData("Euler", "EulerDiscreteScheduler", ("k_euler",), {}, KDIFF),
    SamplerData("LMS", "LMSDiscreteScheduler", ("k_lms",), {}, KDIFF),
    SamplerData("Heun", "HeunDiscreteScheduler", ("k_heun",), {"second_order": True}, KDIFF),
    SamplerData("DPM2", "KDPM2DiscreteScheduler", ("k_dpm_2",), {"scheduler": "karras", "second_order": True}, KDIFF),
    SamplerData("DPM2 a", "KDPM2AncestralDiscreteScheduler", ("k_dpm_2_a",), {"scheduler": "karras", "second_order": True},
                KDIFF),
    SamplerData("DDIM", "DDIMScheduler", ("ddim",), {}, {"timestep_spacing": "leading"}),
    SamplerData("PLMS", "PNDMScheduler", ("plms",), {}, {"timestep_spacing": "leading", "skip_prk_steps": True}),
    SamplerData("UniPC", "UniPCMultistepScheduler", ("unipc",), {}, KDIFF),
    SamplerData("LCM", "LCMScheduler", ("k_lcm",), {}, {}),
]

unsupported_samplers: dict[str, str] = {
    "DPM++ 2S a": "diffusers has no ancestral single-step DPM-Solver++ (DPMSolverSinglestepScheduler is not ancestral)",
    "DPM fast": "k-diffusion's DPM-Solver 'fast' (adaptive order over a fixed budget) has no diffusers scheduler",
    "DPM adaptive": "adaptive step-size DPM-Solver has no diffusers scheduler (it ignores the step count)",
    "Restart": "the Restart sampler has no diffusers scheduler",
    "DDIM CFG++": "CFG++ changes the guidance inside the DDIM update; diffusers' DDIMScheduler cannot express it",
}
unsupported_aliases = {"k_dpmpp_2s_a": "DPM++ 2S a", "k_dpm_fast": "DPM fast", "k_dpm_ad": "DPM adaptive",
                       "restart": "Restart", "ddim_cfgpp": "DDIM CFG++"}

all_samplers = samplers
all_samplers_map = {s.name: s for s in samplers}
samplers_for_img2img = samplers
samplers_map: dict[str, str] = {}
for _s in samplers:
    samplers_map[_s.name.lower()] = _s.name
    for _alias in _s.aliases:
        samplers_map[_alias.lower()] = _s.name


def visible_sampler_names() -> list[str]:
    from modules.shared import opts

    hidden = set(opts.hide_samplers or [])
    return [s.name for s in samplers if s.name not in hidden]


def find_sampler(name: str) -> SamplerData | None:
    return all_samplers_map.get(name) or all_samplers_map.get(samplers_map.get(name.lower(), ""))


def get_sampler_and_scheduler(sampler_name: str | None, scheduler_name: str | None) -> tuple[str, str]:
    """Resolve a sampler and schedule, accepting legacy combined names ("DPM++ 2M Karras").

    Returns (sampler name, schedule label). Unknown or unsupported names raise :class:`UserInputError`;
    there is no silent fallback.
    """
    sampler_name = (sampler_name or samplers[0].name).strip()
    sampler = find_sampler(sampler_name)
    schedule = sd_schedulers.find(scheduler_name)
    if schedule is None:
        labels = ", ".join(s.label for s in sd_schedulers.schedulers)
        raise UserInputError(f"Unknown schedule type {scheduler_name!r}; choose one of: {labels}")
    if sampler is None:
        for candidate in sd_schedulers.schedulers:
            for suffix in {candidate.label, candidate.name, *candidate.aliases}:
                if sampler_name.lower().endswith(" " + suffix.lower()):
                    base = find_sampler(sampler_name[: -len(suffix) - 1])
                    if base is not None:
                        sampler = base
                        if not scheduler_name or schedule.name == "automatic":
                            default = base.options.get("scheduler")
                            schedule = sd_schedulers.schedulers_map["automatic"] if default == candidate.name else candidate
                        break
            if sampler is not None:
                break
    if sampler is None:
        unsupported = unsupported_samplers.get(sampler_name) or unsupported_samplers.get(unsupported_aliases.get(sampler_name.lower(), ""))
        if unsupported:
            raise UserInputError(f"Sampler {sampler_name!r} is not supported: {unsupported}")
        raise UserInputError(f"Unknown sampler {sampler_name!r}; choose one of: {', '.join(s.name for s in samplers)}")
    if schedule.unsupported:
        raise UserInputError(f"Schedule type {schedule.label!r} is not supported: {schedule.unsupported}")
    scheduler_kwargs(sampler, schedule)  # raises when this sampler cannot use this schedule
    return sampler.name, schedule.label


def effective_schedule(sampler: SamplerData, schedule: sd_schedulers.Scheduler) -> sd_schedulers.Scheduler:
    """Automatic means the sampler's default schedule (Karras for DPM++ 2M ...) or the model's own."""
    if schedule.name == "automatic" and sampler.options.get("scheduler"):
        return sd_schedulers.schedulers_map[sampler.options["scheduler"]]
    return schedule


def _scheduler_class(name: str):
    heavy_imports.ensure([name])  # checked while a request is validated, maybe while the job thread imports diffusers
    import diffusers

    return getattr(diffusers, name)


def scheduler_kwargs(sampler: SamplerData, schedule: sd_schedulers.Scheduler) -> dict[str, Any]:
    schedule = effective_schedule(sampler, schedule)
    kwargs = {**sampler.kwargs, **schedule.kwargs}
    params = inspect.signature(_scheduler_class(sampler.scheduler_class).__init__).parameters
    for key in schedule.kwargs:
        if key not in params:
            raise UserInputError(f"Schedule type {schedule.label!r} is not available for sampler {sampler.name!r}")
    return {k: v for k, v in kwargs.items() if k in params}


def create_scheduler(model_scheduler_config: dict, sampler_name: str, scheduler_label: str | None, seed: int = 0):
    """A fresh diffusers scheduler (schedulers keep per-run state) for one sampling run. A config asking for
    ``rescale_betas_zero_snr`` (a ``ztsnr`` checkpoint, the Noise schedule setting) gets A1111's zero-terminal-SNR
    betas."""
    sampler = find_sampler(sampler_name)
    if sampler is None:
        raise UserInputError(f"Unknown sampler {sampler_name!r}")
    schedule = sd_schedulers.find(scheduler_label) or sd_schedulers.schedulers_map["automatic"]
    kwargs = scheduler_kwargs(sampler, schedule)
    if sampler.needs_seed:
        kwargs["noise_sampler_seed"] = seed
    config = {k: v for k, v in model_scheduler_config.items() if not k.startswith("_")}
    if config.pop("rescale_betas_zero_snr", False):  # A1111's schedule, not diffusers' (which ends at 2**-24)
        config["trained_betas"] = sd_schedulers.zero_terminal_snr_betas(config)
    return _scheduler_class(sampler.scheduler_class).from_config(config, **kwargs)


def schedule_label_for_infotext(sampler_name: str, scheduler_label: str | None) -> str:
    sampler = find_sampler(sampler_name)
    schedule = sd_schedulers.find(scheduler_label) or sd_schedulers.schedulers_map["automatic"]
    return effective_schedule(sampler, schedule).label if sampler else schedule.label


def create_sampler(name: str, model: Any = None):
    """A1111 entry point; returns the sampler's data (our loop lives in modules.engine.sampling)."""
    sampler = find_sampler(name)
    if sampler is None:
        raise UserInputError(f"Unknown sampler {name!r}")
    return sampler
