"""Processing objects and ``process_images``: the one path every generation (UI, API, scripts) takes."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from modules import devices, extra_networks, images, infotext_utils, paths, rng, sd_models, sd_samplers, sampling
from modules.errors import UserInputError
from modules.shared import opts, state
from modules.version import infotext_version

opt_C = 4
opt_f = 8
MAX_SIDE = 2048
MAX_STEPS = 150
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100


def get_fixed_seed(seed: Any) -> int:
    return rng.get_fixed_seed(seed)


def fix_seed(p: "StableDiffusionProcessing") -> None:
    p.seed = get_fixed_seed(p.seed)
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
        self.empty_cond = None
        self.used_embedding_hashes: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prompt={self.prompt!r}, seed={self.seed}, size={self.width}x{self.height})"

    @property
    def model(self):
        return sd_models.get_sd_model()

    def validate(self) -> None:
        """Check the user-facing fields; errors name the field and its allowed range."""
        for name, value, low, high in (("width", self.width, 64, MAX_SIDE), ("height", self.height, 64, MAX_SIDE)):
            if not isinstance(value, int) or value % 8 or not low <= value <= high:
                raise UserInputError(f"{name} must be a multiple of 8 between {low} and {high}, got {value!r}")
        checks = (("steps", self.steps, 1, MAX_STEPS), ("batch_size", self.batch_size, 1, MAX_BATCH_SIZE),
                  ("n_iter", self.n_iter, 1, MAX_BATCH_COUNT))
        for name, value, low, high in checks:
            if not isinstance(value, int) or not low <= value <= high:
                raise UserInputError(f"{name} must be an integer between {low} and {high}, got {value!r}")
        if not 0 <= float(self.cfg_scale) <= 30:
            raise UserInputError(f"cfg_scale must be between 0 and 30, got {self.cfg_scale!r}")
        if not 0 <= float(self.subseed_strength or 0) <= 1:
            raise UserInputError(f"subseed_strength must be between 0 and 1, got {self.subseed_strength!r}")
        self.sampler_name, self.scheduler = sd_samplers.get_sampler_and_scheduler(self.sampler_name, self.scheduler)

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
        from modules import conditioning, lora, prompt_parser
        from modules.textual_inversion import textual_inversion

        model = self.model
        total_steps = sd_samplers.all_samplers_map[self.sampler_name].total_steps(self.steps)
        self.step_multiplier = total_steps // self.steps
        embeddings = textual_inversion.refresh_for_model(model, rescan=not self.do_not_reload_embeddings)
        encoder = conditioning.PromptEncoder(model, clip_skip=self.clip_skip, emphasis=opts.emphasis,
                                             comma_padding_backtrack=opts.comma_padding_backtrack, embeddings=embeddings)
        old = bool(opts.use_old_scheduling)
        if old:
            texts = self.prompts + self.negative_prompts
            schedules = [prompt_parser.get_learned_conditioning_prompt_schedules(texts, total_steps, None, flag)
                         for flag in (True, False)]
            if schedules[0] != schedules[1]:
                self.extra_generation_params["Old prompt editing timelines"] = True
        text_encoder_state = (id(model), total_steps, old, opts.emphasis, self.clip_skip, opts.comma_padding_backtrack,
                              textual_inversion.embedding_db.files_signature,
                              tuple((n.network.filename, n.te_multiplier) for n in lora.applied.loaded))
        key = (tuple(self.prompts), text_encoder_state)
        if self.cached_c.get("key") != key:
            value = conditioning.get_multicond_learned_conditioning(encoder, self.prompts, total_steps, None, old)
            self.cached_c = {"key": key, "value": value}
        key = (tuple(self.negative_prompts), text_encoder_state)
        if self.cached_uc.get("key") != key:
            value = conditioning.get_learned_conditioning(encoder, self.negative_prompts, total_steps, None, old)
            self.cached_uc = {"key": key, "value": value, "empty": encoder.encode([""])[0]}
        self.c, self.uc, self.empty_cond = self.cached_c["value"], self.cached_uc["value"], self.cached_uc["empty"]
        if opts.textual_inversion_add_hashes_to_infotext:
            for name, embedding in encoder.used_embeddings.items():
                self.used_embedding_hashes[name.replace(":", "").replace(",", "")] = embedding.shorthash
        if self.used_embedding_hashes:
            self.extra_generation_params["TI hashes"] = ", ".join(f"{k}: {v}" for k, v in self.used_embedding_hashes.items())
        if opts.emphasis != "Original":
            self.extra_generation_params["Emphasis"] = opts.emphasis

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

    def validate(self) -> None:
        super().validate()
        if self.enable_hr:
            raise UserInputError("enable_hr: hires fix is not available yet")

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        model = self.model
        noise = self.rng.first()
        scheduler = sd_samplers.create_scheduler(model.scheduler_config, self.sampler_name, self.scheduler, seed=seeds[0])
        eta = opts.eta_ddim if self.sampler_name == "DDIM" else None
        run = sampling.SamplingRun(
            model=model, scheduler=scheduler, cond=conditioning, uncond=unconditional_conditioning,
            cfg_scale=float(self.cfg_scale), steps=self.steps, empty_cond=self.empty_cond,
            schedule_steps=self.steps * self.step_multiplier, generators=self.rng.generators,
            eta=self.eta if self.eta is not None else eta,
            should_stop=lambda: state.interrupted or state.skipped,
            on_step=self._on_step,
        )
        latents, _completed = sampling.sample(run, noise)
        return latents

    def _on_step(self, step: int, total: int, latents) -> None:
        state.sampling_steps = self.steps
        state.sampling_step = min(self.steps, round(step * self.steps / total))
        every = opts.show_progress_every_n_steps
        if opts.live_previews_enable and every > 0 and (state.sampling_step % every == 0 or step == total):
            state.current_latent = latents[0]
            state.id_live_preview += 1


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """img2img fields are accepted so scripts can build the object; running it comes with img2img support."""
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

    def validate(self) -> None:
        raise UserInputError("img2img is not available yet")


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
                "clip_skip", "is_using_inpainting_conditioning", "version"]
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
    params["User"] = p.user
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
    import numpy as np
    from PIL import Image

    array = (batch.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]


def process_images(p: StableDiffusionProcessing) -> Processed:
    """Apply ``override_settings``, make sure the right model is loaded, then run the generation."""
    stored = {k: getattr(opts, k) for k in p.override_settings if k in opts.data_labels}
    try:
        for key, value in p.override_settings.items():
            opts.set(key, value)
        sd_models.reload_model_weights()
        return process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for key, value in stored.items():
                opts.set(key, value)


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    p.validate()
    p.fill_fields_from_opts()
    model = sd_models.get_sd_model()
    info = model.sd_checkpoint_info
    p.sd_model_name, p.sd_model_hash = info.model_name, info.shorthash
    p.clip_skip = int(opts.CLIP_stop_at_last_layers)
    kind = "img2img" if isinstance(p, StableDiffusionProcessingImg2Img) else "txt2img"
    p.outpath_samples = p.outpath_samples or _output_dir(kind, grid=False)
    p.outpath_grids = p.outpath_grids or _output_dir(kind, grid=True)
    p.restore_faces = bool(p.restore_faces if p.restore_faces is not None else False)
    p.tiling = bool(p.tiling if p.tiling is not None else opts.tiling)

    seed = get_fixed_seed(p.seed)
    subseed = get_fixed_seed(p.subseed)
    p.seed, p.subseed = seed, subseed
    p.setup_prompts()
    count = len(p.all_prompts)
    p.all_seeds = [int(seed) if p.subseed_strength > 0 else int(seed) + i for i in range(count)]
    p.all_subseeds = [int(subseed) + i for i in range(count)]
    p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
    if state.job_count == -1:
        state.job_count = p.n_iter
    p.job_timestamp = state.job_timestamp

    output_images, infotexts = [], []
    try:
        for n in range(p.n_iter):
            if state.interrupted or state.stopping_generation:
                break
            if not _run_batch(p, n, model, output_images, infotexts):
                break
    finally:
        if not p.disable_extra_networks:
            extra_networks.deactivate(p, p.extra_network_data)

    index_of_first_image = 0
    if (len(output_images) > 1 or not opts.grid_only_if_multiple) and output_images:
        grid = images.image_grid(output_images, p.batch_size)
        grid_text = create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, use_main_prompt=True)
        grid.info["parameters"] = grid_text
        if opts.grid_save and not p.do_not_save_grid:
            images.save_image(grid, p.outpath_grids, "grid", p.all_seeds[0], p.all_prompts[0], opts.grid_format,
                              info=grid_text, short_filename=not opts.grid_extended_filename, p=p, grid=True)
        if opts.return_grid:
            output_images.insert(0, grid)
            infotexts.insert(0, grid_text)
            index_of_first_image = 1
    if devices.device.type == "cuda":
        devices.torch_gc()
    return Processed(p, output_images, p.all_seeds[0], infotexts[0] if infotexts else "", p.all_subseeds[0],
                     index_of_first_image=index_of_first_image, infotexts=infotexts)


def _run_batch(p: StableDiffusionProcessing, n: int, model, output_images: list, infotexts: list) -> bool:
    """Generate, save and collect batch ``n``. False when the job should stop."""
    p.iteration = n
    state.skipped = False
    batch = slice(n * p.batch_size, (n + 1) * p.batch_size)
    p.prompts, p.negative_prompts = p.all_prompts[batch], p.all_negative_prompts[batch]
    p.seeds, p.subseeds = p.all_seeds[batch], p.all_subseeds[batch]
    if not p.prompts:
        return False
    latent_shape = (opt_C, p.height // opt_f, p.width // opt_f)
    p.rng = rng.ImageRNG(latent_shape, p.seeds, p.subseeds, p.subseed_strength, p.seed_resize_from_h,
                         p.seed_resize_from_w, opts.eta_noise_seed_delta)
    if not p.disable_extra_networks:
        extra_networks.activate(p, p.parse_extra_network_prompts())
    p.setup_conds()
    if n == 0 and not _cmd_flag("no_prompt_history"):
        _write_params_txt(create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, index=0))
    latents = p.sample(p.c, p.uc, p.seeds, p.subseeds, p.subseed_strength, p.prompts)
    if state.interrupted and state.sampling_step == 0:
        return False
    decoded = sampling.decode(model, latents)
    for i, image in enumerate(_to_pil(decoded)):
        p.batch_index = i
        text = create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, iteration=n, position_in_batch=i)
        if opts.samples_save and not p.do_not_save_samples:
            images.save_image(image, p.outpath_samples, "", p.seeds[i], p.prompts[i], opts.samples_format,
                              info=text, p=p)
        image.info["parameters"] = text
        output_images.append(image)
        infotexts.append(text)
    state.nextjob()
    return True


def _cmd_flag(name: str) -> bool:
    from modules import shared

    return bool(getattr(shared.cmd_opts, name, False))


def _write_params_txt(text: str) -> None:
    target = os.path.join(paths.data_path, "params.txt")
    with open(target + ".tmp", "w", encoding="utf8") as f:
        f.write(text)
    os.replace(target + ".tmp", target)
