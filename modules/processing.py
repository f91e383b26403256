"""Processing objects and ``process_images``: the one path every generation (UI, API, scripts) takes."""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from modules import (devices, errors, extra_networks, images, infotext_utils, paths, rng, sd_models, sd_samplers,
                     sd_vae, shared, upscaler)
from modules.engine import denoiser, sampling
from modules.errors import UserInputError
from modules.masking import apply_color_correction, create_binary_mask, setup_color_correction  # noqa: F401 (script API)
from modules.imaging import content_filter
from modules.runtime import atomic_files, background_writer
from modules.scripts import (MaskBlendArgs, PostprocessBatchListArgs, PostprocessImageArgs, PostprocessMaskOverlayArgs,
                             PostSampleArgs)
from modules.shared import opts, state
from modules.runtime.version import infotext_version

REFINER_OFF = (None, "", "None", "none")
HIRES_SAME_CHECKPOINT = (None, "", "Use same checkpoint")
REFINER_SWITCH_AT = 0.8  # A1111's default when a refiner is chosen
opt_C = 4  # A1111's names for the SD latent format; the engine reads each model's own (p.latent_format)
opt_f = 8
MAX_SIDE = 2048
MAX_HIRES_SIDE = 4096
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100
SIGMA_DEFAULTS = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0}
SIGMA_INFOTEXT = {"s_churn": "Sigma churn", "s_tmin": "Sigma tmin", "s_tmax": "Sigma tmax", "s_noise": "Sigma noise"}
UI_MAX_STEPS = 150  # the sliders stop here; jobs may ask for up to max_steps()


def max_steps() -> int:
    """The most sampling steps a job may ask for (setting ``max_sampling_steps``; A1111's API has no limit)."""
    return max(1, int(opts.max_sampling_steps or UI_MAX_STEPS))


def get_fixed_seed(seed: Any) -> int:
    return rng.get_fixed_seed(seed)


def fix_seed(p: "StableDiffusionProcessing") -> None:
    p.seed = [get_fixed_seed(s) for s in p.seed] if isinstance(p.seed, list) else get_fixed_seed(p.seed)
    p.subseed = get_fixed_seed(p.subseed)


slerp = rng.slerp


def create_random_tensors(shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0, p=None):
    return rng.ImageRNG(shape, seeds, subseeds, subseed_strength, seed_resize_from_h, seed_resize_from_w).first()


def _whole(value: Any) -> Any:
    """7.0 -> 7 (A1111 writes integral CFG scales without a decimal point)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: Any = None
    outpath_samples: str | None = None
    outpath_grids: str | None = None
    prompt: Any = ""
    prompt_for_display: str | None = None
    negative_prompt: Any = ""
    styles: list = field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict = field(default_factory=dict)
    overlay_images: list | None = None
    eta: float | None = None
    do_not_reload_embeddings: bool = False
    denoising_strength: float | None = None
    ddim_discretize: str | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict = field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    sampler_index: int | None = None
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    token_merging_ratio: float = 0
    token_merging_ratio_hr: float = 0
    disable_extra_networks: bool = False
    firstpass_image: Any = None
    comments: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scripts = None
        self.script_args: list = []
        self.all_prompts: list[str] = []
        self.all_negative_prompts: list[str] = []
        self.all_seeds: list[int] = []
        self.all_subseeds: list[int] = []
        self.prompts: list[str] = []
        self.negative_prompts: list[str] = []
        self.seeds: list[int] = []
        self.subseeds: list[int] = []
        self.iteration = 0
        self.batch_index = 0
        self.main_prompt = ""
        self.main_negative_prompt = ""
        self.extra_network_data: dict = {}
        self.sampler = None
        self.c = None
        self.uc = None
        self.rng: rng.ImageRNG | None = None
        self.step_multiplier = 1
        self.color_corrections = None
        self.paste_to = None
        self.is_hr_pass = False
        self.is_api = False
        self.user = None
        self.job_timestamp = None
        self.sd_model_name: str | None = None
        self.sd_model_hash: str | None = None
        self.sd_vae_name: str | None = None
        self.sd_vae_hash: str | None = None
        self.sampler_noise_scheduler_override = None
        self.clip_skip = 1
        self.cached_uc: dict = {}
        self.cached_c: dict = {}
        self.cached_refiner_c: dict = {}
        self.cached_refiner_uc: dict = {}
        self.refiner_model = None  # the refiner a pass of the current batch switched to
        self.empty_cond = None
        self.used_embedding_hashes: dict[str, str] = {}
        self.nested_job = False  # run inside another job (the face detailer's): no params.txt, no job counting
        self.denoiser_hooks = denoiser.DenoiserHooks()  # per-step extension points every sampling pass uses

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prompt={self.prompt!r}, seed={self.seed}, size={self.width}x{self.height})"

    @property
    def model(self):
        """The model this job's passes run on: ``sd_model``, which ``process_images_inner`` sets to the loaded
        checkpoint (a pass on another model, such as a refiner, carries its own handle)."""
        return self.sd_model if self.sd_model is not None else sd_models.get_sd_model()

    @property
    def latent_format(self):
        """The latent space of this job's model (A1111 hard-codes SD's as ``opt_C`` and ``opt_f``)."""
        return self.model.family.latent

    def validate(self) -> None:
        """Check the user-facing fields; errors name the field and its allowed range."""
        for name, value, low, high in (("width", self.width, 64, MAX_SIDE), ("height", self.height, 64, MAX_SIDE)):
            if not isinstance(value, int) or value % 8 or not low <= value <= high:
                raise UserInputError(f"{name} must be a multiple of 8 between {low} and {high}, got {value!r}")
        checks = (("steps", self.steps, 1, max_steps()), ("batch_size", self.batch_size, 1, MAX_BATCH_SIZE),
                  ("n_iter", self.n_iter, 1, MAX_BATCH_COUNT))
        for name, value, low, high in checks:
            if not isinstance(value, int) or not low <= value <= high:
                raise UserInputError(f"{name} must be an integer between {low} and {high}, got {value!r}")
        self._validate_texts()
        if self.refiner_checkpoint not in REFINER_OFF:
            if sd_models.get_closet_checkpoint_match(str(self.refiner_checkpoint)) is None:
                raise UserInputError(f"Could not find checkpoint with name {self.refiner_checkpoint}")
            switch_at = self.refiner_switch_at if self.refiner_switch_at is not None else REFINER_SWITCH_AT
            if not isinstance(switch_at, (int, float)) or not 0 < float(switch_at) <= 1:
                raise UserInputError(f"refiner_switch_at must be above 0 and at most 1, got {switch_at!r}")
        for name in ("seed_resize_from_w", "seed_resize_from_h"):  # 0 or less: off
            value = getattr(self, name)
            if not isinstance(value, int) or not (value <= 0 or 8 <= value <= MAX_SIDE):
                raise UserInputError(f"{name} must be 0 (off) or between 8 and {MAX_SIDE}, got {value!r}")
        if not 0 <= float(self.cfg_scale) <= 30:
            raise UserInputError(f"cfg_scale must be between 0 and 30, got {self.cfg_scale!r}")
        if not 0 <= float(self.subseed_strength or 0) <= 1:
            raise UserInputError(f"subseed_strength must be between 0 and 1, got {self.subseed_strength!r}")
        self.sampler_name, self.scheduler = sd_samplers.get_sampler_and_scheduler(self.sampler_name, self.scheduler)

    def _validate_texts(self) -> None:
        """A prompt is a text or a non-empty list of texts (one per image); a list of negative prompts has one per
        prompt; styles are a list of names."""
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            texts = value if isinstance(value, list) else [value]
            if not texts or not all(isinstance(text, str) for text in texts):
                raise UserInputError(f"{name} must be a text or a non-empty list of texts, got {value!r:.80}")
        if not isinstance(self.styles, list) or not all(isinstance(name, str) for name in self.styles):
            raise UserInputError(f"styles must be a list of style names, got {self.styles!r:.80}")
        if isinstance(self.negative_prompt, list):
            prompts = len(self.prompt) if isinstance(self.prompt, list) else self.batch_size * self.n_iter
            if len(self.negative_prompt) != prompts:
                raise UserInputError(f"negative_prompt: {len(self.negative_prompt)} texts for {prompts} prompts; give "
                                     f"one text, or one per prompt")

    def setup_prompts(self) -> None:
        """Expand prompts to one per image, apply styles, strip ``#`` comments."""
        from modules import prompt_parser, shared

        count = self.batch_size * self.n_iter
        self.all_prompts = list(self.prompt) if isinstance(self.prompt, list) else [self.prompt] * count
        if isinstance(self.negative_prompt, list):
            self.all_negative_prompts = list(self.negative_prompt)
        else:
            self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)
        styles = shared.prompt_styles
        unknown = styles.unknown(self.styles)
        if unknown:
            self.comment("Styles not found: " + ", ".join(unknown))
        self.all_prompts = [styles.apply_styles_to_prompt(x, self.styles) for x in self.all_prompts]
        self.all_negative_prompts = [styles.apply_negative_styles_to_prompt(x, self.styles) for x in self.all_negative_prompts]
        if opts.enable_prompt_comments:
            self.all_prompts = [prompt_parser.strip_comments(x) for x in self.all_prompts]
            self.all_negative_prompts = [prompt_parser.strip_comments(x) for x in self.all_negative_prompts]
        self.main_prompt = self.all_prompts[0] if self.all_prompts else ""
        self.main_negative_prompt = self.all_negative_prompts[0] if self.all_negative_prompts else ""

    def parse_extra_network_prompts(self) -> dict:
        """Remove ``<kind:...>`` tags from this batch's prompts; the first prompt's networks are the batch's."""
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)
        return self.extra_network_data

    def setup_conds(self) -> None:
        """Encode this batch's prompts (``p.c``: AND parts with schedules; ``p.uc``: negative prompts),
        reusing the previous batch's result when nothing that affects it changed."""
        total_steps = sd_samplers.all_samplers_map[self.sampler_name].total_steps(self.steps)
        self.step_multiplier = total_steps // self.steps
        self.c, self.uc, self.empty_cond = self.get_conds(self.prompts, self.negative_prompts, total_steps, None,
                                                          self.cached_c, self.cached_uc, (self.width, self.height))

    def get_conds(self, prompts: list[str], negative_prompts: list[str], total_steps: int, hires_steps: int | None,
                  cache_c: dict, cache_uc: dict, image_size: tuple[int, int], model: Any = None) -> tuple:
        """(multicond, uncond, empty-prompt encoding) for a batch, taken from the caches when the prompts and
        everything else that changes the text encoder's output are unchanged. ``image_size`` (width, height) of the
        pass reaches families that condition on it (SDXL), with the ``sdxl_crop_top/left`` settings."""
        from modules import prompt_parser
        from modules.engine import conditioning
        from modules.networks import lora
        from modules.textual_inversion import textual_inversion

        model = model or self.model
        embeddings = textual_inversion.refresh_for_model(model, rescan=not self.do_not_reload_embeddings)
        options = {"clip_skip": self.clip_skip, "emphasis": opts.emphasis,
                   "comma_padding_backtrack": opts.comma_padding_backtrack, "embeddings": embeddings}
        if model.family.size_conditioning:
            options.update(image_size=tuple(image_size), crop=(int(opts.sdxl_crop_top), int(opts.sdxl_crop_left)),
                           aesthetic_scores=(float(opts.sdxl_refiner_high_aesthetic_score),
                                             float(opts.sdxl_refiner_low_aesthetic_score)),
                           clip_l_skip=bool(opts.sdxl_clip_l_skip))
        encoder = model.family.text_conditioner(model, **options)
        old = bool(opts.use_old_scheduling)
        if old:
            texts = prompts + negative_prompts
            schedules = [prompt_parser.get_learned_conditioning_prompt_schedules(texts, total_steps, hires_steps, flag)
                         for flag in (True, False)]
            if schedules[0] != schedules[1]:
                self.extra_generation_params["Old prompt editing timelines"] = True
        text_encoder_state = (id(model), total_steps, hires_steps, old, options.get("image_size"), options.get("crop"),
                              options.get("aesthetic_scores"), options.get("clip_l_skip"),
                              opts.emphasis, self.clip_skip,
                              opts.comma_padding_backtrack, textual_inversion.embedding_db.files_signature,
                              tuple((n.network.filename, n.te_multiplier) for n in lora.applied_networks().loaded))
        key = (tuple(prompts), text_encoder_state)
        if cache_c.get("key") != key:
            value = conditioning.get_multicond_learned_conditioning(encoder, prompts, total_steps, hires_steps, old)
            cache_c.update(key=key, value=value)
        key = (tuple(negative_prompts), text_encoder_state)
        if cache_uc.get("key") != key:
            value = conditioning.get_learned_conditioning(encoder, negative_prompts, total_steps, hires_steps, old,
                                                          negative=True)
            cache_uc.update(key=key, value=value, empty=conditioning.split_rows(encoder.encode([""]))[0])
        for warning in embeddings.skipped_mentions(list(prompts) + list(negative_prompts)):
            self.comment(warning)
        if opts.textual_inversion_add_hashes_to_infotext:
            for name, embedding in encoder.used_embeddings.items():
                self.used_embedding_hashes[name.replace(":", "").replace(",", "")] = embedding.shorthash
        if self.used_embedding_hashes:
            self.extra_generation_params["TI hashes"] = ", ".join(f"{k}: {v}" for k, v in self.used_embedding_hashes.items())
        if opts.emphasis != "Original":
            self.extra_generation_params["Emphasis"] = opts.emphasis
        return cache_c["value"], cache_uc["value"], cache_uc["empty"]

    def sampling_run(self, cond, uncond, sampler_name: str, scheduler_label: str, steps: int, progress_steps: int,
                     refiner: sampling.RefinerSwitch | None = None, **img2img) -> sampling.SamplingRun:
        """The denoising loop's inputs for one pass of this batch; ``img2img`` holds the SamplingRun fields of
        img2img and inpainting (init_latent, denoise_steps, mask, nmask, image_conditioning)."""
        model = self.model
        scheduler_config = model.scheduler_config
        if opts.sd_noise_schedule == "Zero Terminal SNR":
            scheduler_config = {**scheduler_config, "rescale_betas_zero_snr": True}
            self.extra_generation_params["Noise Schedule"] = "Zero Terminal SNR"
        scheduler = sd_samplers.create_scheduler(scheduler_config, sampler_name, scheduler_label, seed=self.seeds[0])
        total_steps = sd_samplers.all_samplers_map[sampler_name].total_steps(steps)
        eta = self.eta if self.eta is not None else (opts.eta_ddim if sampler_name == "DDIM" else None)
        sgm_noise = bool(opts.sgm_noise_multiplier) and img2img.get("init_latent") is None and \
            sd_samplers.all_samplers_map[sampler_name].is_kdiffusion and hasattr(scheduler, "sigmas")
        if sgm_noise:
            self.extra_generation_params["SGM noise multiplier"] = True

        def on_step(step: int, total: int, latents) -> None:
            state.sampling_steps = progress_steps
            state.sampling_step = min(progress_steps, round(step * progress_steps / total))
            every = opts.show_progress_every_n_steps
            if opts.live_previews_enable and every > 0 and (state.sampling_step % every == 0 or step == total):
                state.current_latent = latents[0]
                state.id_live_preview += 1

        return sampling.SamplingRun(
            model=model, scheduler=scheduler, cond=cond, uncond=uncond, cfg_scale=float(self.cfg_scale), steps=steps,
            empty_cond=self.empty_cond, schedule_steps=total_steps, generators=self.rng.generators, eta=eta,
            should_stop=lambda: state.interrupted or state.skipped, on_step=on_step, mask_blend=self._mask_blend_hook(),
            extra_noise=self._extra_noise() if img2img.get("init_latent") is not None else 0.0,
            step_options=self._sigma_options(sampler_name), hooks=self._run_hooks(model), refiner=refiner,
            sgm_noise=sgm_noise, **img2img)

    def _run_hooks(self, model):
        """The run's denoiser hooks: the job's, with the UNet fast path (CUDA graphs) as ``unet_forward`` unless it
        is off or a script supplies its own UNet call, behind the out-of-memory ladder."""
        import dataclasses

        from modules.engine import fast_path

        hooks = self.denoiser_hooks
        forward = hooks.unet_forward
        if forward is denoiser.call_unet:
            forward = fast_path.runner_for(model, fast_path.mode(), denoiser.call_unet) or forward
        return dataclasses.replace(hooks, unet_forward=OutOfMemoryLadder(self, forward))

    def refiner_switch(self, prompts: list[str], negative_prompts: list[str], sampler_name: str, steps: int,
                       first_pass_steps: int | None, image_size: tuple[int, int]) -> sampling.RefinerSwitch | None:
        """The refiner for one pass (None without one, or when it is the loaded model or ``switch at`` is 1): the
        checkpoint loaded beside the model, and the pass's prompts encoded by its conditioner on the pass's
        prompt-editing timeline (``first_pass_steps``: this is the hires pass, counted after the first)."""
        if self.refiner_checkpoint in REFINER_OFF:
            return None
        switch_at = float(self.refiner_switch_at if self.refiner_switch_at is not None else REFINER_SWITCH_AT)
        refiner = (sd_models.load_beside_current(str(self.refiner_checkpoint), in_use=(self.model,))
                   if switch_at < 1 else None)
        if refiner is None:
            return None
        total_steps = sd_samplers.all_samplers_map[sampler_name].total_steps(steps)
        cond, uncond, empty = self.get_conds(prompts, negative_prompts, first_pass_steps or total_steps,
                                             total_steps if first_pass_steps else None, self.cached_refiner_c,
                                             self.cached_refiner_uc, image_size, model=refiner)
        return sampling.RefinerSwitch(switch_at, refiner, cond, uncond, empty,
                                      by_steps=bool(opts.refiner_switch_by_sample_steps))

    def note_refiner(self, run: sampling.SamplingRun) -> None:
        """After a pass: when it switched to the refiner, the infotext says so and the refiner's VAE decodes."""
        if run.refiner is None or run.refiner.switched_at is None:
            return
        self.refiner_model = run.refiner.model
        self.extra_generation_params["Refiner"] = run.refiner.model.sd_checkpoint_info.short_title
        self.extra_generation_params["Refiner switch at"] = run.refiner.switch_at
        if run.refiner.by_steps:
            self.extra_generation_params["Refiner switch by sampling steps"] = True
        if getattr(self, "enable_hr", False) and opts.hires_fix_refiner_pass != "second pass":
            self.extra_generation_params["Hires refiner"] = opts.hires_fix_refiner_pass  # only once it switched

    def _sigma_options(self, sampler_name: str) -> dict:
        """A1111's s_churn, s_tmin, s_tmax (0: no upper bound) and s_noise for Euler, recorded in the infotext when
        they differ from their defaults. A1111 also applies them to Heun and DPM2, whose diffusers schedulers cannot:
        changed values are refused there rather than ignored; other samplers never use them (as in A1111)."""
        values = {name: float(getattr(self, name) if getattr(self, name) is not None else default)
                  for name, default in SIGMA_DEFAULTS.items()}
        for name, value in values.items():
            if not 0 <= value <= 1000:
                raise UserInputError(f"{name} must be between 0 and 1000, got {value!r}")
        changed = {name: value for name, value in values.items() if value != SIGMA_DEFAULTS[name]}
        if not changed or sampler_name not in ("Euler", "Heun", "DPM2"):
            return {}
        if sampler_name != "Euler":
            raise UserInputError(f"{', '.join(changed)}: applied by the Euler sampler only here, not by {sampler_name}; "
                                 f"set them back to their defaults (s_churn 0, s_tmin 0, s_tmax 0, s_noise 1) or use Euler")
        for name, value in changed.items():
            self.extra_generation_params[SIGMA_INFOTEXT[name]] = _whole(value)
        return {**values, "s_tmax": values["s_tmax"] or float("inf")}

    def _extra_noise(self) -> float:
        """The ``img2img_extra_noise`` setting for a pass that starts from an image; recorded in the infotext."""
        extra = float(opts.img2img_extra_noise or 0)
        if extra > 0:
            self.extra_generation_params["Extra noise"] = extra
        return extra

    def _mask_blend_hook(self):
        """The scripts' ``on_mask_blend`` as the sampler's blend callback (None without scripts)."""
        if self.scripts is None:
            return None

        def blend(current, nmask, init_latent, mask, blended, sigma, final: bool):
            args = MaskBlendArgs(current, nmask, init_latent, mask, blended, None if final else self.model, sigma)
            self.scripts.on_mask_blend(self, args)
            return args.blended_latent

        return blend

    def before_sampling(self, x, noise, c, uc) -> None:
        """The scripts' ``process_before_every_sampling`` (twice with hires fix)."""
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=x, noise=noise, c=c, uc=uc)

    def txt2img_image_conditioning(self, x, width: int | None = None, height: int | None = None):
        """The extra UNet input of a 9-channel inpainting model when there is no init image (all masked,
        grey masked image); None for ordinary models."""
        import torch

        from modules.families import sd2

        if sd2.is_depth_model(self.model):
            raise UserInputError(f"{self.model.family.label}: a depth-to-image checkpoint makes an image from an input "
                                 f"image's depth; use it in img2img")
        if not is_inpainting_model(self.model):
            return None
        grey = torch.full((x.shape[0], 3, height or self.height, width or self.width), 0.5)
        return inpainting_conditioning(self.model, grey, torch.ones(x.shape[0], 1, *grey.shape[-2:]))

    def init(self, all_prompts, all_seeds, all_subseeds) -> None:
        pass

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        raise NotImplementedError

    def close(self) -> None:
        self.sampler = None
        self.c = None
        self.uc = None
        self.cached_c.clear()
        self.cached_uc.clear()

    def comment(self, text: str) -> None:
        self.comments[text] = 1

    def fill_fields_from_opts(self) -> None:
        self.s_min_uncond = self.s_min_uncond if self.s_min_uncond is not None else opts.s_min_uncond
        self.s_churn = self.s_churn if self.s_churn is not None else opts.s_churn
        self.s_tmin = self.s_tmin if self.s_tmin is not None else opts.s_tmin
        self.s_tmax = self.s_tmax if self.s_tmax is not None else opts.s_tmax
        self.s_noise = self.s_noise if self.s_noise is not None else opts.s_noise


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hr_upscale_to_x = self.hr_upscale_to_y = 0
        self.hr_crop_x = self.hr_crop_y = 0  # pixels cut from the upscaled first pass to reach hr_resize_x/y
        self.truncate_x = self.truncate_y = 0  # the same in latent pixels (A1111's names), set by the hires pass
        self.all_hr_prompts: list[str] = []
        self.all_hr_negative_prompts: list[str] = []
        self.hr_c = self.hr_uc = None
        self.cached_hr_c: dict = {}
        self.cached_hr_uc: dict = {}
        self.hr_extra_network_data: dict = {}
        self.hr_checkpoint_info = None  # the hires pass's own checkpoint (hr_checkpoint_name), once validated
        self.hr_model = None  # ... loaded next to the job's model by init()

    def validate(self) -> None:
        super().validate()
        if not self.enable_hr:
            return
        names = list(shared.latent_upscale_modes) + [u.name for u in upscaler.all_upscalers()]
        self.hr_upscaler = self.hr_upscaler or shared.latent_upscale_default_mode
        if self.hr_upscaler not in names:
            raise UserInputError(f"hr_upscaler: unknown upscaler {self.hr_upscaler!r}; choose one of: {', '.join(names)}")
        if not 0 <= float(self.denoising_strength) <= 1:
            raise UserInputError(f"denoising_strength must be between 0 and 1, got {self.denoising_strength!r}")
        if not isinstance(self.hr_second_pass_steps, int) or not 0 <= self.hr_second_pass_steps <= max_steps():
            raise UserInputError(f"hr_second_pass_steps must be an integer between 0 and {max_steps()}, "
                                 f"got {self.hr_second_pass_steps!r}")
        self.hr_checkpoint_info = None
        if self.hr_checkpoint_name not in HIRES_SAME_CHECKPOINT:
            self.hr_checkpoint_info = sd_models.get_closet_checkpoint_match(str(self.hr_checkpoint_name))
            if self.hr_checkpoint_info is None:
                raise UserInputError(f"Could not find checkpoint with name {self.hr_checkpoint_name}")
        if self.hr_sampler_name in (None, "", "Use same sampler"):
            self.hr_sampler_name = None
        if self.hr_scheduler in (None, "", "Use same scheduler"):
            self.hr_scheduler = None
        sd_samplers.get_sampler_and_scheduler(self.hr_sampler_name or self.sampler_name, self.hr_scheduler or self.scheduler)
        self.calculate_target_resolution()
        for name, value in (("hires width", self.hr_upscale_to_x), ("hires height", self.hr_upscale_to_y)):
            if not 64 <= value <= MAX_HIRES_SIDE:
                raise UserInputError(f"{name} must be between 64 and {MAX_HIRES_SIDE}, got {value} "
                                     f"(from hr_scale {self.hr_scale}, hr_resize {self.hr_resize_x}x{self.hr_resize_y})")

    def calculate_target_resolution(self) -> None:
        """The hires size: width/height x hr_scale, or hr_resize_x/y (one zero keeps the aspect ratio; both set
        covers the box, then the latents are cropped to it). Needs no model, so requests are checked without one."""
        self.hr_crop_x = self.hr_crop_y = 0
        if not self.hr_resize_x and not self.hr_resize_y:
            self.hr_upscale_to_x = int(self.width * float(self.hr_scale))
            self.hr_upscale_to_y = int(self.height * float(self.hr_scale))
            return
        if not self.hr_resize_y:
            self.hr_upscale_to_x, self.hr_upscale_to_y = self.hr_resize_x, self.hr_resize_x * self.height // self.width
        elif not self.hr_resize_x:
            self.hr_upscale_to_x, self.hr_upscale_to_y = self.hr_resize_y * self.width // self.height, self.hr_resize_y
        else:
            if self.width / self.height < self.hr_resize_x / self.hr_resize_y:
                self.hr_upscale_to_x, self.hr_upscale_to_y = self.hr_resize_x, self.hr_resize_x * self.height // self.width
            else:
                self.hr_upscale_to_x, self.hr_upscale_to_y = self.hr_resize_y * self.width // self.height, self.hr_resize_y
            self.hr_crop_x = self.hr_upscale_to_x - self.hr_resize_x
            self.hr_crop_y = self.hr_upscale_to_y - self.hr_resize_y

    def init(self, all_prompts, all_seeds, all_subseeds) -> None:
        if not self.enable_hr:
            return
        params = self.extra_generation_params
        if not self.hr_resize_x and not self.hr_resize_y:
            params["Hires upscale"] = _whole(float(self.hr_scale))
        else:
            params["Hires resize"] = f"{self.hr_resize_x}x{self.hr_resize_y}"
        if self.hr_second_pass_steps:
            params["Hires steps"] = self.hr_second_pass_steps
        params["Hires upscaler"] = self.hr_upscaler
        if self.hr_sampler_name and self.hr_sampler_name != self.sampler_name:
            params["Hires sampler"] = self.hr_sampler_name
        if self.hr_scheduler and self.hr_scheduler != self.scheduler:
            params["Hires schedule type"] = self.hr_scheduler
        if self.hr_checkpoint_info is not None:
            self.hr_model = sd_models.load_beside_current(self.hr_checkpoint_info.title, in_use=(self.sd_model,))
            if self.hr_model is not None:  # the job's own model: nothing to switch to, nothing to record
                if self.hr_model.family.latent.channels != self.sd_model.family.latent.channels:
                    raise UserInputError(f"Hires checkpoint {self.hr_checkpoint_info.title} is "
                                         f"{self.hr_model.family.label}, whose latents do not fit this "
                                         f"{self.sd_model.family.label} model's")
                params["Hires checkpoint"] = self.hr_checkpoint_info.short_title
        self.all_hr_prompts = self._hr_prompts(self.hr_prompt, all_prompts)
        self.all_hr_negative_prompts = self._hr_prompts(self.hr_negative_prompt, self.all_negative_prompts)
        if self.hr_prompt and self.all_hr_prompts != all_prompts:
            params["Hires prompt"] = self.hr_prompt
        if self.hr_negative_prompt and self.all_hr_negative_prompts != self.all_negative_prompts:
            params["Hires negative prompt"] = self.hr_negative_prompt
        if state.job_count == -1 or state.job_count == self.n_iter:
            state.job_count = self.n_iter * 2

    def _hr_prompts(self, text, first_pass: list[str]) -> list[str]:
        """The second pass's prompts: the first pass's when empty, else styled like them."""
        from modules import prompt_parser

        if not text:
            return list(first_pass)
        texts = list(text) if isinstance(text, list) else [text] * len(first_pass)
        styled = [shared.prompt_styles.apply_styles_to_prompt(t, self.styles) for t in texts]
        return [prompt_parser.strip_comments(t) for t in styled] if opts.enable_prompt_comments else styled

    def close(self) -> None:
        super().close()
        self.hr_c = self.hr_uc = None
        self.hr_model = None
        self.cached_hr_c.clear()
        self.cached_hr_uc.clear()

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        noise = self.rng.first()
        self.before_sampling(noise, noise, conditioning, unconditional_conditioning)
        refiner = self.refiner_switch(self.prompts, self.negative_prompts, self.sampler_name, self.steps, None,
                                      (self.width, self.height)) if self._refiner_pass("first pass") else None
        run = self.sampling_run(conditioning, unconditional_conditioning, self.sampler_name, self.scheduler, self.steps,
                                self.steps, refiner=refiner, image_conditioning=self.txt2img_image_conditioning(noise))
        latents, completed = sampling.sample(run, noise)
        self.note_refiner(run)
        if not self.enable_hr or not completed or state.interrupted or state.skipped:
            return latents
        state.nextjob()
        return self.sample_hr_pass(latents, seeds, subseeds, subseed_strength, prompts)

    def _refiner_pass(self, which: str) -> bool:
        """Whether the refiner may switch in this pass: always without hires fix; with it, as the setting
        ``hires_fix_refiner_pass`` says ("first pass", "second pass" (A1111's default), "both passes")."""
        return not self.enable_hr or opts.hires_fix_refiner_pass in (which, "both passes")

    def sample_hr_pass(self, samples, seeds, subseeds, subseed_strength, prompts):
        """Upscale the first pass (latent interpolation or decode -> pixel upscaler -> encode), then run an
        img2img pass of exactly ``hr_second_pass_steps`` steps at ``denoising_strength`` with fresh noise."""
        import torch

        first_model = self.refiner_model or self.model  # the first pass's last model decodes it
        self.refiner_model = None  # the hires pass starts on its own checkpoint again (A1111 reloads it)
        self.is_hr_pass = True
        if self.hr_model is not None:  # A1111 reloads the hires checkpoint here; ours waits beside the first
            self.sd_model = self.hr_model
        if self.scripts is not None:
            self.scripts.before_hr(self)
        target_w, target_h = self.hr_upscale_to_x, self.hr_upscale_to_y
        latent_mode = shared.latent_upscale_modes.get(self.hr_upscaler)
        if latent_mode is not None:
            if first_model.family.latent != self.latent_format:  # another VAE: its latents go through pixels
                samples = vae_encode(self, self.model, vae_decode(self, first_model, samples))
            scale = self.latent_format.downscale
            samples = torch.nn.functional.interpolate(samples, size=(target_h // scale, target_w // scale), **latent_mode)
        else:
            first_pass = _to_pil(vae_decode(self, first_model, samples))
            upscaled = [images.resize_image(0, image, target_w, target_h, upscaler_name=self.hr_upscaler) for image in first_pass]
            samples = vae_encode(self, self.model, _from_pil(upscaled))
        self.truncate_x = self.hr_crop_x // self.latent_format.downscale
        self.truncate_y = self.hr_crop_y // self.latent_format.downscale
        if self.truncate_x or self.truncate_y:
            samples = samples[:, :, self.truncate_y // 2:samples.shape[2] - (self.truncate_y + 1) // 2,
                              self.truncate_x // 2:samples.shape[3] - (self.truncate_x + 1) // 2]
        self.rng = rng.ImageRNG(samples.shape[1:], seeds, subseeds, subseed_strength, self.seed_resize_from_h,
                                self.seed_resize_from_w, opts.eta_noise_seed_delta)
        noise = self.rng.first()
        sampler_name = self.hr_sampler_name or self.sampler_name
        hr_steps = self.hr_second_pass_steps or self.steps
        schedule_steps, run_steps = img2img_steps(hr_steps, self.denoising_strength, fix_steps=True)
        self.setup_hr_conds(sampler_name, hr_steps)
        _, _, h, w = samples.shape
        self.before_sampling(samples, noise, self.hr_c, self.hr_uc)
        refiner = self.refiner_switch(self.hr_prompts, self.hr_negative_prompts, sampler_name, hr_steps, self.steps,
                                      (self.hr_upscale_to_x, self.hr_upscale_to_y)
                                      ) if self._refiner_pass("second pass") else None
        run = self.sampling_run(self.hr_c, self.hr_uc, sampler_name, self.hr_scheduler or self.scheduler,
                                max(schedule_steps, 1), hr_steps, refiner=refiner, init_latent=samples,
                                denoise_steps=run_steps,
                                image_conditioning=self.txt2img_image_conditioning(
                                    samples, w * self.latent_format.downscale, h * self.latent_format.downscale))
        latents, _ = sampling.sample(run, noise)
        self.note_refiner(run)
        self.is_hr_pass = False
        return latents

    def setup_hr_conds(self, sampler_name: str, hr_steps: int) -> None:
        """The second pass's conditioning, on the hires prompt-editing timeline (A1111 counts its steps after
        the first pass's); its extra networks replace the first pass's when they differ."""
        batch = slice(self.iteration * self.batch_size, (self.iteration + 1) * self.batch_size)
        hr_prompts, self.hr_extra_network_data = extra_networks.parse_prompts(self.all_hr_prompts[batch])
        hr_negative_prompts = self.all_hr_negative_prompts[batch]
        self.hr_prompts, self.hr_negative_prompts = hr_prompts, hr_negative_prompts
        if not self.disable_extra_networks and (self.hr_extra_network_data != self.extra_network_data
                                                or self.hr_model is not None):  # the networks go into the hires model
            extra_networks.activate(self, self.hr_extra_network_data)
        total_steps = sd_samplers.all_samplers_map[sampler_name].total_steps(hr_steps)
        self.hr_c, self.hr_uc, self.empty_cond = self.get_conds(hr_prompts, hr_negative_prompts, self.steps, total_steps,
                                                                self.cached_hr_c, self.cached_hr_uc,
                                                                (self.hr_upscale_to_x, self.hr_upscale_to_y))


INPAINTING_FILL_NAMES = ["fill", "original", "latent noise", "latent nothing"]


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """img2img and inpainting. ``mask`` (a PIL image, white = repaint) moves to ``image_mask``; after ``init``
    ``mask``/``nmask`` are the latent-size blend masks (1 = keep / 1 = repaint), as in A1111."""
    init_images: list | None = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float | None = None
    mask: Any = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: Any = None
    force_task_id: str | None = None
    stochastic_freeze: bool = False  # same initial and ancestral noise for every input image

    def __post_init__(self) -> None:
        super().__post_init__()
        self.image_mask = self.mask
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.image_conditioning = None
        self.mask_for_overlay = None
        self.init_img_hash = None

    def validate(self) -> None:
        from PIL import Image

        super().validate()
        if not self.init_images:
            raise UserInputError("init_images: at least one input image is required")
        if not all(isinstance(image, Image.Image) for image in self.init_images):
            raise UserInputError("init_images: every entry must be an image")
        if len(self.init_images) > 1:
            if len(self.init_images) > self.batch_size:
                raise UserInputError(f"init_images: {len(self.init_images)} images given, but batch_size is "
                                     f"{self.batch_size}; pass at most batch_size images (one is reused for the batch)")
            self.batch_size = len(self.init_images)
        if self.image_mask is not None and not isinstance(self.image_mask, Image.Image):
            raise UserInputError("mask: must be an image")
        if not 0 <= float(self.denoising_strength) <= 1:
            raise UserInputError(f"denoising_strength must be between 0 and 1, got {self.denoising_strength!r}")
        if self.resize_mode not in (0, 1, 2, 3):
            raise UserInputError(f"resize_mode must be 0, 1, 2 or 3 ({', '.join(images.RESIZE_MODES)}), got {self.resize_mode!r}")
        if self.inpainting_fill not in (0, 1, 2, 3):
            raise UserInputError(f"inpainting_fill must be 0, 1, 2 or 3 ({', '.join(INPAINTING_FILL_NAMES)}), "
                                 f"got {self.inpainting_fill!r}")
        for name in ("mask_blur_x", "mask_blur_y", "inpaint_full_res_padding"):
            if not 0 <= int(getattr(self, name)) <= 256:
                raise UserInputError(f"{name} must be between 0 and 256, got {getattr(self, name)!r}")

    def init(self, all_prompts, all_seeds, all_subseeds) -> None:
        """Prepare the input images and mask, encode them, and set up inpainting blending."""
        import numpy as np
        import torch
        from PIL import Image, ImageOps

        from modules import masking

        model = self.model
        if self.mask_blur is not None:
            self.mask_blur_x = self.mask_blur_y = int(self.mask_blur)
        if self.initial_noise_multiplier is None:
            self.initial_noise_multiplier = opts.initial_noise_multiplier
        params = self.extra_generation_params
        image_mask, crop_region = self.image_mask, None
        if image_mask is not None:
            image_mask = masking.create_binary_mask(image_mask, round=self.mask_round)
            if self.inpainting_mask_invert:
                image_mask = ImageOps.invert(image_mask)
                params["Mask mode"] = "Inpaint not masked"
            image_mask = masking.blur(image_mask, self.mask_blur_x, self.mask_blur_y)
            params["Mask blur"] = self.mask_blur_x if self.mask_blur_x == self.mask_blur_y else f"{self.mask_blur_x}x{self.mask_blur_y}"
            params["Masked content"] = INPAINTING_FILL_NAMES[self.inpainting_fill]
            if self.inpaint_full_res:
                self.mask_for_overlay = image_mask
                crop_region = masking.get_crop_region(image_mask, self.inpaint_full_res_padding)
                if crop_region is not None:
                    crop_region = masking.expand_crop_region(crop_region, self.width, self.height, *image_mask.size)
                    x1, y1, x2, y2 = crop_region
                    image_mask = images.resize_image(2, image_mask.crop(crop_region), self.width, self.height)
                    self.paste_to = (x1, y1, x2 - x1, y2 - y1)
                    params["Inpaint area"] = "Only masked"
                    params["Masked area padding"] = self.inpaint_full_res_padding
                else:
                    image_mask = self.mask_for_overlay = None
                    self.inpaint_full_res = False
                    self.comment('Unable to perform "Inpaint Only mask" because mask is blank, switched to img2img mode.')
            else:
                image_mask = images.resize_image(self.resize_mode if self.resize_mode != 3 else 0, image_mask, self.width, self.height)
                widened = np.clip(np.asarray(image_mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8)
                self.mask_for_overlay = Image.fromarray(widened)  # the blurred edge is fully repainted, then blended back
        latent_mask = self.latent_mask if self.latent_mask is not None else image_mask
        if self.latent_mask is not None:
            latent_mask = masking.create_binary_mask(self.latent_mask, round=self.mask_round)

        self.overlay_images = [] if image_mask is not None else None
        preset_corrections = bool(self.color_corrections)  # set by a script (Loopback: toward the first input)
        if not preset_corrections:
            self.color_corrections = [] if opts.img2img_color_correction else None
        prepared = []
        for img in self.init_images:
            image = images.flatten(img, opts.img2img_background_color)
            if crop_region is None:
                if self.resize_mode == 3:  # encoded at its own size, the latents are interpolated below
                    scale = self.latent_format.downscale
                    image = image.resize((max(image.width // scale, 1) * scale, max(image.height // scale, 1) * scale),
                                         Image.LANCZOS)
                else:
                    image = images.resize_image(self.resize_mode, image, self.width, self.height)
            if image_mask is not None:
                full = image if image.size == self.mask_for_overlay.size else images.resize_image(0, image, *self.mask_for_overlay.size)
                self.overlay_images.append(masking.overlay(full, self.mask_for_overlay))
            if crop_region is not None:
                image = images.resize_image(2, image.crop(crop_region), self.width, self.height)
            if image_mask is not None and self.inpainting_fill != 1:
                image = masking.fill(image, latent_mask.resize(image.size))
            if self.color_corrections is not None and not preset_corrections:
                self.color_corrections.append(masking.setup_color_correction(image))
            prepared.append(image)
        if len(prepared) == 1 and self.batch_size > 1:
            prepared *= self.batch_size
            for name in ("overlay_images", "color_corrections"):
                if getattr(self, name):
                    setattr(self, name, getattr(self, name) * self.batch_size)
        pixels = _from_pil(prepared)
        self.init_latent = vae_encode(self, model, pixels)
        latent_size = (self.height // self.latent_format.downscale, self.width // self.latent_format.downscale)
        if self.init_latent.shape[-2:] != latent_size:
            self.init_latent = torch.nn.functional.interpolate(self.init_latent, size=latent_size, mode="bilinear")
        if image_mask is not None:
            latmask = np.asarray(latent_mask.convert("L").resize(latent_size[::-1]), dtype=np.float32) / 255
            if self.mask_round:
                latmask = np.around(latmask)
            nmask = torch.from_numpy(latmask)[None, None].expand(1, self.latent_format.channels, *latent_size)
            self.mask, self.nmask = 1.0 - nmask, nmask
            if self.inpainting_fill == 2:
                noise = create_random_tensors(self.init_latent.shape[1:], all_seeds[:self.init_latent.shape[0]])
                self.init_latent = self.init_latent * self.mask + noise * self.nmask
            elif self.inpainting_fill == 3:
                self.init_latent = self.init_latent * self.mask
        self.image_conditioning = self.img2img_image_conditioning(pixels, self.init_latent, image_mask)

    def img2img_image_conditioning(self, source_image, latent_image, image_mask=None):
        """The extra UNet input of a 9-channel inpainting model: the (rounded) mask and the latents of the
        image with the masked area grey; with no mask everything counts as masked. A depth-to-image model's: the
        image's depth. None for ordinary models."""
        import numpy as np
        import torch

        from modules.families import sd2

        if sd2.is_depth_model(self.model):
            return depth_conditioning(source_image, tuple(latent_image.shape[-2:]))
        if not is_inpainting_model(self.model):
            return None
        if image_mask is None:
            mask = torch.ones(source_image.shape[0], 1, *source_image.shape[-2:])
        else:
            array = np.asarray(image_mask.convert("L").resize(source_image.shape[-1:-3:-1]), dtype=np.float32) / 255
            mask = torch.from_numpy(array).round()[None, None].expand(source_image.shape[0], 1, *array.shape)
        result = inpainting_conditioning(self.model, source_image, mask)
        if result.shape[-2:] != latent_image.shape[-2:]:
            result = torch.nn.functional.interpolate(result, size=latent_image.shape[-2:], mode="bilinear")
        return result

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        noise = self.rng.first()
        if self.initial_noise_multiplier != 1.0:
            self.extra_generation_params["Noise multiplier"] = self.initial_noise_multiplier
            noise = noise * self.initial_noise_multiplier
        steps, denoise_steps = img2img_steps(self.steps, self.denoising_strength, bool(opts.img2img_fix_steps))
        self.before_sampling(self.init_latent, noise, conditioning, unconditional_conditioning)
        refiner = self.refiner_switch(self.prompts, self.negative_prompts, self.sampler_name, max(steps, 1), None,
                                      (self.width, self.height))
        run = self.sampling_run(conditioning, unconditional_conditioning, self.sampler_name, self.scheduler, max(steps, 1),
                                denoise_steps, refiner=refiner, init_latent=self.init_latent, denoise_steps=denoise_steps,
                                mask=self.mask, nmask=self.nmask, image_conditioning=self.image_conditioning)
        latents, _ = sampling.sample(run, noise)
        self.note_refiner(run)
        return latents


def img2img_steps(steps: int, denoising_strength: float, fix_steps: bool) -> tuple[int, int]:
    """(schedule length, steps run). By default the last int(min(strength, 0.999) x steps) steps of a
    ``steps``-long schedule run; with ``fix_steps`` exactly ``steps`` run, of a schedule stretched to fit."""
    strength = min(float(denoising_strength), 0.999)
    if strength <= 0:
        return steps, 0
    if fix_steps:
        return int(steps / strength), steps
    return steps, int(strength * steps)


def is_inpainting_model(model) -> bool:
    return getattr(model.unet.config, "in_channels", 4) == 9


def depth_conditioning(source_image: Any, latent_size: tuple[int, int]) -> Any:
    """The 5th UNet input of a depth-to-image model, as A1111 makes it: MiDaS (DPT hybrid) depth of the batch's first
    input image (B, 3, H, W in 0..1), at the latent size (bicubic), scaled to -1..1, the same for every image.
    The checkpoint's own ``depth_model.*`` copy of MiDaS is not used: transformers' DPT port of the same network
    is (models/annotator, fetched on first use, as the ControlNet depth preprocessor)."""
    import torch

    from modules.controlnet import annotators

    first = (source_image[0].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    depth = torch.from_numpy(annotators.raw_depth(first, "depth_midas", size=latent_size))
    low, high = depth.min(), depth.max()
    scaled = 2 * (depth - low) / (high - low) - 1 if high > low else torch.zeros_like(depth)
    return scaled[None, None].expand(source_image.shape[0], 1, *latent_size).contiguous()


def inpainting_conditioning(model, source_image, mask):
    """[mask at latent size, latents of the image with masked pixels grey] for 9-channel UNets.
    ``source_image`` (B, 3, H, W) in 0..1, ``mask`` (B, 1, H, W) with 1 = repaint."""
    import torch

    masked = source_image * (1 - mask) + 0.5 * mask
    latents = sampling.encode(model, masked)
    return torch.cat([torch.nn.functional.interpolate(mask.float(), size=latents.shape[-2:]), latents], dim=1)


PROCESSED_FIELDS_FROM_P = (
    "width", "height", "sampler_name", "scheduler", "cfg_scale", "image_cfg_scale", "steps", "batch_size",
    "restore_faces", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash", "seed_resize_from_w",
    "seed_resize_from_h", "denoising_strength", "extra_generation_params", "styles", "clip_skip", "eta",
    "ddim_discretize", "s_churn", "s_tmin", "s_tmax", "s_noise", "s_min_uncond", "sampler_noise_scheduler_override",
    "token_merging_ratio", "token_merging_ratio_hr",
)


class Processed:
    def __init__(self, p: StableDiffusionProcessing, images_list: list, seed: int = -1, info: str = "", subseed: int | None = None,
                 all_prompts=None, all_negative_prompts=None, all_seeds=None, all_subseeds=None,
                 index_of_first_image: int = 0, infotexts=None, comments: str = ""):
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.subseed = subseed
        self.subseed_strength = p.subseed_strength
        self.info = info
        self.comments = "".join(f"{comment}\n" for comment in p.comments) if not comments else comments
        for name in PROCESSED_FIELDS_FROM_P:
            setattr(self, name, getattr(p, name, None))
        self.face_restoration_model = opts.face_restoration_model if p.restore_faces else None
        self.index_of_first_image = index_of_first_image
        self.job_timestamp = state.job_timestamp
        self.is_using_inpainting_conditioning = False
        self.version = infotext_version
        self.prompt = self.prompt if not isinstance(self.prompt, list) else self.prompt[0]
        self.negative_prompt = self.negative_prompt if not isinstance(self.negative_prompt, list) else self.negative_prompt[0]
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [self.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info] * len(images_list)

    def js(self) -> str:
        keys = ["prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed",
                "all_subseeds", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps",
                "batch_size", "restore_faces", "face_restoration_model", "sd_model_name", "sd_model_hash",
                "sd_vae_name", "sd_vae_hash", "seed_resize_from_w", "seed_resize_from_h", "denoising_strength",
                "extra_generation_params", "index_of_first_image", "infotexts", "styles", "job_timestamp",
                "clip_skip", "is_using_inpainting_conditioning", "version", "comments"]
        return json.dumps({k: getattr(self, k) for k in keys}, default=str)

    def infotext(self, p: StableDiffusionProcessing, index: int) -> str:
        return create_infotext(p, self.all_prompts, self.all_seeds, self.all_subseeds, comments=[],
                               position_in_batch=index % self.batch_size, iteration=index // self.batch_size)


def create_infotext(p: StableDiffusionProcessing, all_prompts, all_seeds, all_subseeds, comments=None, iteration: int = 0,
                    position_in_batch: int = 0, use_main_prompt: bool = False, index: int | None = None,
                    all_negative_prompts=None) -> str:
    """The A1111 infotext for one image, keys in A1111's fixed order."""
    if index is None:
        index = position_in_batch + iteration * p.batch_size
    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts
    uses_variation = bool(p.subseed_strength)
    params: dict[str, Any] = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "Schedule type": sd_samplers.schedule_label_for_infotext(p.sampler_name, p.scheduler),
        "CFG scale": _whole(p.cfg_scale),
        "Image CFG scale": getattr(p, "image_cfg_scale", None),
        "Seed": all_seeds[index] if all_seeds else p.seed,
        "Face restoration": opts.face_restoration_model if p.restore_faces else None,
        "Size": f"{p.width}x{p.height}",
        "Model hash": p.sd_model_hash,
        "Model": p.sd_model_name,
        "VAE hash": p.sd_vae_hash,
        "VAE": p.sd_vae_name,
        "Variation seed": all_subseeds[index] if uses_variation else None,
        "Variation seed strength": p.subseed_strength if uses_variation else None,
        "Seed resize from": f"{p.seed_resize_from_w}x{p.seed_resize_from_h}"
        if p.seed_resize_from_w > 0 and p.seed_resize_from_h > 0 else None,
        "Denoising strength": getattr(p, "denoising_strength", None) if not isinstance(p, StableDiffusionProcessingTxt2Img) or p.enable_hr else None,
        "Clip skip": p.clip_skip if p.clip_skip > 1 else None,
        "ENSD": opts.eta_noise_seed_delta if opts.eta_noise_seed_delta else None,
        "RNG": "CPU",
        "Tiling": "True" if p.tiling else None,
    }
    for key, value in p.extra_generation_params.items():
        if callable(value):
            value = value(**locals())
        elif isinstance(value, list):
            value = value[index] if index < len(value) else None
        params[key] = value  # a key of the fixed list keeps its position
    params["Version"] = infotext_version
    params["User"] = p.user if opts.add_user_name_to_info else None
    prompt = p.main_prompt if use_main_prompt else all_prompts[index]
    negative = p.main_negative_prompt if use_main_prompt else (all_negative_prompts[index] if all_negative_prompts else "")
    return infotext_utils.build_infotext(prompt, negative, params)


def _output_dir(kind: str, grid: bool) -> str:
    if grid:
        base = opts.outdir_grids or getattr(opts, f"outdir_{kind}_grids")
    else:
        base = opts.outdir_samples or getattr(opts, f"outdir_{kind}_samples")
    return base if os.path.isabs(base) else os.path.join(paths.data_path, base)


def _to_pil(batch) -> list:
    """Decoded images (a (B, 3, H, W) tensor in 0..1, or a list of (3, H, W) tensors or PIL images) -> PIL."""
    import numpy as np
    from PIL import Image

    result = []
    for item in batch:
        if isinstance(item, Image.Image):
            result.append(item)
            continue
        array = (item.permute(1, 2, 0).float().cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
        result.append(Image.fromarray(array))
    return result


def _from_pil(pictures: list):
    """PIL images -> float tensor (B, 3, H, W) in 0..1."""
    import numpy as np
    import torch

    array = np.stack([np.asarray(p.convert("RGB"), dtype=np.float32) / 255.0 for p in pictures])
    return torch.from_numpy(array).permute(0, 3, 1, 2)


@contextlib.contextmanager
def circular_padding(modules: tuple, enabled: bool):
    """A1111's Tiling: every convolution of ``modules`` pads circularly while the block runs, so the image wraps
    around (its left edge continues its right edge, its top its bottom); the padding is restored afterwards."""
    if not enabled:
        yield
        return
    import torch

    convolutions = [layer for module in modules for layer in module.modules() if isinstance(layer, torch.nn.Conv2d)]
    saved = [layer.padding_mode for layer in convolutions]
    for layer in convolutions:
        layer.padding_mode = "circular"
    try:
        yield
    finally:
        for layer, mode in zip(convolutions, saved):
            layer.padding_mode = mode


def process_with_scripts(p: StableDiffusionProcessing) -> Processed:
    """The selected script's ``run`` when ``p`` has one selected, else ``process_images``."""
    processed = p.scripts.run(p, *p.script_args) if p.scripts is not None else None
    return processed if processed is not None else process_images(p)


def process_images(p: StableDiffusionProcessing) -> Processed:
    """Apply ``override_settings``, make sure the right model is loaded, then run the generation."""
    if p.scripts is not None:
        p.scripts.before_process(p)
    if not p.override_settings_restore_afterwards:  # the settings are kept: they change for everyone now
        for key, value in p.override_settings.items():
            opts.set(key, value)
    with opts.overridden(p.override_settings if p.override_settings_restore_afterwards else {}):  # this job's own
        asked = p.override_settings.get("sd_model_checkpoint")  # a checkpoint named for this job must load, or fail it
        info = sd_models.get_closet_checkpoint_match(str(asked)) if asked else None
        sd_vae.reload_vae_weights(sd_models.reload_model_weights(info=info))
        return process_images_inner(p)


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    p.validate()
    p.fill_fields_from_opts()
    p.sd_model = model = sd_models.get_sd_model()
    for problem in sd_models.load_problems:  # the page and the API answer say which model was used instead
        p.comment(problem)
    info = model.sd_checkpoint_info
    p.sd_model_name, p.sd_model_hash = info.model_name, info.shorthash
    p.sd_vae_name, p.sd_vae_hash = sd_vae.loaded_vae_name(model), sd_vae.loaded_vae_hash(model)
    p.clip_skip = int(opts.CLIP_stop_at_last_layers)
    kind = "img2img" if isinstance(p, StableDiffusionProcessingImg2Img) else "txt2img"
    p.outpath_samples = p.outpath_samples or _output_dir(kind, grid=False)
    p.outpath_grids = p.outpath_grids or _output_dir(kind, grid=True)
    p.restore_faces = bool(p.restore_faces if p.restore_faces is not None else opts.face_restoration)
    if p.restore_faces:  # a missing model is reported before anything is generated, not after
        from modules import face_restoration

        face_restoration.find(opts.face_restoration_model)
    p.tiling = bool(p.tiling if p.tiling is not None else opts.tiling)

    seeds = [get_fixed_seed(s) for s in p.seed] if isinstance(p.seed, list) else None  # one seed per image
    seed = seeds[0] if seeds else get_fixed_seed(p.seed)
    subseed = get_fixed_seed(p.subseed)
    p.seed, p.subseed = seeds or seed, subseed
    p.setup_prompts()
    if opts.prompt_blocklist:
        content_filter.check_prompts(p.all_prompts, opts.prompt_blocklist)
    count = len(p.all_prompts)
    frozen = bool(getattr(p, "stochastic_freeze", False))
    if seeds is not None:
        if len(seeds) < count:
            raise UserInputError(f"seed: {len(seeds)} seeds given for {count} images")
        p.all_seeds = seeds[:count]
    else:
        p.all_seeds = [int(seed) if p.subseed_strength > 0 or frozen else int(seed) + i for i in range(count)]
    p.all_subseeds = [int(subseed) + (0 if frozen else i) for i in range(count)]
    if frozen:
        p.extra_generation_params["Stochastic freeze"] = True
    if p.scripts is not None:
        p.scripts.process(p)
    output_images, infotexts = [], []
    writer = background_writer.BackgroundWriter()  # PNG encoding overlaps the next batch
    try:
        index_of_first_image = _run_batches(p, model, writer, output_images, infotexts)
    finally:
        for what, error in writer.join():  # the job's files are on disk before it returns
            message = images.save_failure_message(error, what)
            errors.report(message)
            p.comment(message)
    processed = Processed(p, output_images, p.all_seeds[0], infotexts[0] if infotexts else "", p.all_subseeds[0],
                          index_of_first_image=index_of_first_image, infotexts=infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, processed)
    return processed


def _run_batches(p: StableDiffusionProcessing, model, writer, output_images: list, infotexts: list) -> int:
    """Every batch of the job, then the grid; returns the index of the first image (1 when the grid leads)."""
    p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
    hires_model = getattr(p, "hr_model", None)
    with circular_padding((model.unet, model.vae) + ((hires_model.unet, hires_model.vae) if hires_model else ()),
                          p.tiling):
        if state.job_count == -1 and not p.nested_job:
            state.job_count = p.n_iter
        p.job_timestamp = state.job_timestamp
        try:
            for n in range(p.n_iter):
                if state.interrupted or state.stopping_generation:
                    break
                if not _run_batch(p, n, model, writer, output_images, infotexts):
                    break
        finally:
            if not p.disable_extra_networks:
                extra_networks.deactivate(p, p.extra_network_data)

    index_of_first_image = 0
    wanted = (opts.return_grid or opts.grid_save) and not p.do_not_save_grid  # A1111: no grid at all then
    if wanted and (len(output_images) > 1 or not opts.grid_only_if_multiple) and output_images:
        grid = images.image_grid(output_images, p.batch_size)
        grid_text = create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, use_main_prompt=True)
        grid.info["parameters"] = grid_text
        if opts.grid_save:
            _save_or_comment(p, "grid", lambda: images.save_image(
                grid, p.outpath_grids, "grid", p.all_seeds[0], p.all_prompts[0], opts.grid_format, info=grid_text,
                short_filename=not opts.grid_extended_filename, p=p, grid=True, writer=writer))
        if opts.return_grid:
            output_images.insert(0, grid)
            infotexts.insert(0, grid_text)
            index_of_first_image = 1
    return index_of_first_image


def _run_batch(p: StableDiffusionProcessing, n: int, model, writer, output_images: list, infotexts: list) -> bool:
    """Generate, save and collect batch ``n``. False when the job should stop."""
    p.iteration = n
    p.sd_model = model  # a hires pass on its own checkpoint hands it back
    p.refiner_model = None
    state.skipped = False
    batch = slice(n * p.batch_size, (n + 1) * p.batch_size)
    p.prompts, p.negative_prompts = p.all_prompts[batch], p.all_negative_prompts[batch]
    p.seeds, p.subseeds = p.all_seeds[batch], p.all_subseeds[batch]
    if not p.prompts:
        return False
    latent = p.latent_format
    latent_shape = (latent.channels, p.height // latent.downscale, p.width // latent.downscale)
    p.rng = rng.ImageRNG(latent_shape, p.seeds, p.subseeds, p.subseed_strength, p.seed_resize_from_h,
                         p.seed_resize_from_w, opts.eta_noise_seed_delta)
    batch_info = dict(batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
    if p.scripts is not None:
        p.scripts.before_process_batch(p, **batch_info)
    if not p.disable_extra_networks:
        extra_networks.activate(p, p.parse_extra_network_prompts())
    if p.scripts is not None:
        batch_info["prompts"] = p.prompts
        p.scripts.after_extra_networks_activate(p, **batch_info, extra_network_data=p.extra_network_data)
        p.scripts.process_batch(p, **batch_info)
    p.setup_conds()
    if n == 0 and not _cmd_flag("no_prompt_history") and not p.nested_job:
        _save_or_comment(p, "prompt history (params.txt)", lambda: _write_params_txt(
            create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, index=0)))
    latents = p.sample(p.c, p.uc, p.seeds, p.subseeds, p.subseed_strength, p.prompts)
    if state.interrupted and state.sampling_step == 0:
        return False
    if p.scripts is not None:
        sampled = PostSampleArgs(latents)
        p.scripts.post_sample(p, sampled)
        latents = sampled.samples
    decoder = p.refiner_model or p.sd_model  # the model of the last pass (or the refiner it switched to) decodes
    decoded = vae_decode(p, decoder, latents)
    if decoder.extra.get(sampling.UPCAST_FLAG):
        p.comment(sampling.UPCAST_NOTE)
        p.extra_generation_params[sampling.UPCAST_INFOTEXT[0]] = sampling.UPCAST_INFOTEXT[1]
    if p.scripts is not None:
        p.scripts.postprocess_batch(p, decoded, batch_number=n)
        batch_list = PostprocessBatchListArgs(list(decoded))
        p.scripts.postprocess_batch_list(p, batch_list, batch_number=n)
        decoded = batch_list.images
    for i, image in enumerate(_to_pil(decoded)):
        p.batch_index = i
        image = _postprocess_image(p, n * p.batch_size + i, image)
        image = _composite(p, n * p.batch_size + i, i, image)
        hidden = False
        if opts.content_filter:
            image, hidden = content_filter.apply(image)
        if hidden:
            p.comment(f"Content filter: image {n * p.batch_size + i + 1} was hidden")
            p.extra_generation_params[content_filter.INFOTEXT_KEY] = "image hidden"
        text = create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, iteration=n, position_in_batch=i)
        p.extra_generation_params.pop(content_filter.INFOTEXT_KEY, None)
        if opts.samples_save and not p.do_not_save_samples:
            _save_or_comment(p, "image", lambda: images.save_image(
                image, p.outpath_samples, "", p.seeds[i], p.prompts[i], opts.samples_format, info=text, p=p,
                writer=writer))
        image.info["parameters"] = text
        output_images.append(image)
        infotexts.append(text)
    if not p.nested_job:
        state.nextjob()
    return True


def _postprocess_image(p: StableDiffusionProcessing, index: int, image):
    """Face restoration, then the scripts' ``postprocess_image`` (the face detailer's among them), on one image."""
    if p.restore_faces:
        import numpy as np
        from PIL import Image

        from modules import face_restoration

        image = Image.fromarray(face_restoration.restore_faces(np.asarray(image)))
    if p.scripts is not None:
        pp = PostprocessImageArgs(image)
        p.scripts.postprocess_image(p, pp)
        image = pp.image
    return image


def _composite(p: StableDiffusionProcessing, index: int, position: int, image):
    """Colour correction toward the input, then the untouched pixels pasted back over an inpainted result."""
    from modules import masking

    corrections = p.color_corrections
    if corrections:
        image = masking.apply_color_correction(corrections[position % len(corrections)], image)
    overlays = p.overlay_images
    if overlays:
        overlay = overlays[position % len(overlays)]
        if p.scripts is not None:
            ppmo = PostprocessMaskOverlayArgs(index, p.mask_for_overlay, overlay)
            p.scripts.postprocess_maskoverlay(p, ppmo)
            overlay = ppmo.overlay_image
        image = masking.apply_overlay(image, p.paste_to, overlay)
    if p.scripts is not None:
        pp = PostprocessImageArgs(image)
        p.scripts.postprocess_image_after_composite(p, pp)
        image = pp.image
    return image


def _cmd_flag(name: str) -> bool:
    from modules import shared

    return bool(getattr(shared.cmd_opts, name, False))


class OutOfMemoryLadder:
    """A run's ``unet_forward`` that survives running out of GPU memory: it frees the caches (CUDA graphs among them)
    and runs the step again eagerly; if that fails too, the model steps down a memory mode (normal -> medvram ->
    lowvram, ``lowvram.lower``) and the step runs once more. Each step down is said in the console and the job's
    comments; a step retried gives the same result, since graphs and eager are bitwise identical."""

    def __init__(self, p: StableDiffusionProcessing, forward: Callable[[Any, Any], Any]):
        self.p, self.forward = p, forward

    def __call__(self, unet: Any, call: Any):
        from modules import lowvram
        from modules.engine import fast_path

        try:
            return self.forward(unet, call)
        except Exception as e:
            if not devices.is_out_of_memory(e):
                raise
        if isinstance(self.forward, fast_path.GraphRunner):
            self.forward.cache.clear()
            self.forward = denoiser.call_unet  # for the rest of the run: weights may move from here on
        devices.torch_gc()
        self.p.comment("UNet ran out of GPU memory: freed the cached memory and ran the step again")
        try:
            return self.forward(unet, call)
        except Exception as e:
            model = sd_models.loaded_model_with(unet)
            if not devices.is_out_of_memory(e) or model is None:
                raise
            mode = lowvram.lower(model)
            if mode is None:
                raise
        devices.torch_gc()
        self.p.comment(f"UNet ran out of GPU memory again: the model now runs in {mode} mode, slower but in less "
                       f"memory (start with --{mode} to begin there)")
        return self.forward(unet, call)


def _vae_pass(p: StableDiffusionProcessing, what: str, model, run: Callable[[int], Any]):
    """``run(tile_size)`` as the ``vae_tiling`` setting says: "always" in tiles of ``vae_tile_size`` pixels, "auto"
    whole and, when that runs out of memory, again in tiles, "off" whole only. When the tiles do not fit either, the
    VAE runs on the CPU for this pass. Each fallback is said in the console and the job's comments."""
    mode, size = opts.vae_tiling, int(opts.vae_tile_size)
    tile = size if mode == "always" else 0
    try:
        return run(tile)
    except Exception as e:
        if mode == "off" or not devices.is_out_of_memory(e):
            raise
    devices.torch_gc()
    if not tile:
        _say(p, f"VAE {what} ran out of memory, so it ran in {size}x{size} tiles (setting vae_tiling)")
        try:
            return run(size)
        except Exception as e:
            if not devices.is_out_of_memory(e):
                raise
        devices.torch_gc()
    _say(p, f"VAE {what} ran out of GPU memory in tiles too, so it ran on the CPU (slow)")
    import torch

    vae_device, vae_dtype, model_device = model.vae.device, model.vae.dtype, model.device
    model.vae.to("cpu", torch.float32)  # float16 round-trips through float32 exactly
    model.device = torch.device("cpu")  # where sampling.encode/decode put the VAE's input
    try:
        return run(tile)
    finally:
        model.device = model_device
        model.vae.to(vae_device, vae_dtype)


def _say(p: StableDiffusionProcessing, message: str) -> None:
    errors.report(message)
    p.comment(message)


def vae_decode(p: StableDiffusionProcessing, model, latents):
    return _vae_pass(p, "decode", model, lambda tile: sampling.decode(model, latents, tile))


def vae_encode(p: StableDiffusionProcessing, model, pixels):
    return _vae_pass(p, "encode", model, lambda tile: sampling.encode(model, pixels, tile))


def _save_or_comment(p: StableDiffusionProcessing, what: str, save: Callable[[], Any]) -> None:
    """Write a result; when the disk is full (or the folder not writable) the job goes on, the image stays in its
    result, and the page and the API answer say what could not be saved."""
    try:
        save()
    except OSError as e:
        message = images.save_failure_message(e, what)
        errors.report(message)
        p.comment(message)


def _write_params_txt(text: str) -> None:
    atomic_files.write_text(os.path.join(paths.data_path, "params.txt"), text)
