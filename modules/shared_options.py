"""The settings every part of the program reads (keys and defaults as A1111 v1.10.1)."""
from __future__ import annotations

from modules.options import OptionInfo, options_section

options_templates: dict[str, OptionInfo] = {}

options_templates.update(options_section(("saving-images", "Saving images/grids"), {
    "samples_save": OptionInfo(True, "Always save all generated images"),
    "samples_format": OptionInfo("png", "File format for images"),
    "samples_filename_pattern": OptionInfo("", "Images filename pattern"),
    "save_images_add_number": OptionInfo(True, "Add number to filename when saving"),
    "grid_save": OptionInfo(True, "Always save all generated image grids"),
    "grid_format": OptionInfo("png", "File format for grids"),
    "grid_extended_filename": OptionInfo(False, "Add extended info (seed, prompt) to filename when saving grid"),
    "grid_only_if_multiple": OptionInfo(True, "Do not save grids consisting of one picture"),
    "n_rows": OptionInfo(-1, "Grid row count; use -1 for autodetect and 0 for it to be same as batch size"),
    "enable_pnginfo": OptionInfo(True, "Save text information about generation parameters as chunks to png files"),
    "add_user_name_to_info": OptionInfo(False, "Add the logged-in user's name to the generation information (User)"),
    "save_txt": OptionInfo(False, "Create a text file next to every image with generation parameters."),
    "jpeg_quality": OptionInfo(80, "Quality for saved jpeg and avif images"),
    "return_grid": OptionInfo(True, "Show grid in gallery"),
    "img_max_size_mp": OptionInfo(200, "Maximum grid size in megapixels (A1111's X/Y/Z plot script checks it)"),
    "font": OptionInfo("", "Font for image grids that have text (a .ttf or .otf path; empty: the bundled font)"),
    "grid_text_active_color": OptionInfo("#000000", "Text color for image grids"),
    "grid_text_inactive_color": OptionInfo("#999999", "Inactive text color for image grids"),
    "grid_background_color": OptionInfo("#ffffff", "Background color for image grids"),
}))

options_templates.update(options_section(("saving-paths", "Paths for saving"), {
    "outdir_samples": OptionInfo("", "Output directory for images; if empty, defaults to three directories below"),
    "outdir_txt2img_samples": OptionInfo("outputs/txt2img-images", "Output directory for txt2img images"),
    "outdir_img2img_samples": OptionInfo("outputs/img2img-images", "Output directory for img2img images"),
    "outdir_extras_samples": OptionInfo("outputs/extras-images", "Output directory for images from extras tab"),
    "outdir_grids": OptionInfo("", "Output directory for grids; if empty, defaults to two directories below"),
    "outdir_txt2img_grids": OptionInfo("outputs/txt2img-grids", "Output directory for txt2img grids"),
    "outdir_img2img_grids": OptionInfo("outputs/img2img-grids", "Output directory for img2img grids"),
    "outdir_save": OptionInfo("log/images", "Directory for saving images using the Save button"),
    "outdir_init_images": OptionInfo("outputs/init-images", "Directory for saving init images when using img2img"),
}))

options_templates.update(options_section(("saving-to-dirs", "Saving to a directory"), {
    "save_to_dirs": OptionInfo(True, "Save images to a subdirectory"),
    "grid_save_to_dirs": OptionInfo(True, "Save grids to a subdirectory"),
    "directories_filename_pattern": OptionInfo("[date]", "Directory name pattern"),
    "directories_max_prompt_words": OptionInfo(8, "Max prompt words for [prompt_words] pattern"),
}))

options_templates.update(options_section(("sd", "Stable Diffusion"), {
    "sd_model_checkpoint": OptionInfo(None, "Stable Diffusion checkpoint", infotext="Model hash"),
    "sd_checkpoints_keep_in_cpu": OptionInfo(True, "Keep cached checkpoints in RAM rather than VRAM"),
    "sd_checkpoint_cache": OptionInfo(2, "Checkpoints to keep in RAM (LRU; 1 keeps only the loaded one)"),
    "sd_vae": OptionInfo("Automatic", "SD VAE (Automatic: a VAE named like the checkpoint, else its own; None: its own)",
                         infotext="VAE"),
    "CLIP_stop_at_last_layers": OptionInfo(1, "Clip skip", infotext="Clip skip"),
    "emphasis": OptionInfo("Original", "Emphasis mode (Original, No norm, Ignore, None)", infotext="Emphasis"),
    "comma_padding_backtrack": OptionInfo(20, "Prompt word wrap length limit (tokens moved to the next chunk after a comma)"),
    "enable_prompt_comments": OptionInfo(True, "Enable # comments in prompts"),
    "use_old_scheduling": OptionInfo(False, "Use old prompt editing timelines", infotext="Old prompt editing timelines"),
    "textual_inversion_add_hashes_to_infotext": OptionInfo(True, "Add textual inversion hashes to infotext"),
    "lora_add_hashes_to_infotext": OptionInfo(True, "Add LoRA hashes to infotext"),
    "eta_noise_seed_delta": OptionInfo(0, "Eta noise seed delta", infotext="ENSD"),
    "randn_source": OptionInfo("CPU", "Random number generator source", infotext="RNG"),
}))

options_templates.update(options_section(("sdxl", "Stable Diffusion XL"), {
    "sdxl_crop_top": OptionInfo(0, "crop top coordinate"),
    "sdxl_crop_left": OptionInfo(0, "crop left coordinate"),
    "sdxl_refiner_low_aesthetic_score": OptionInfo(2.5, "SDXL low aesthetic score (the refiner's negative prompt)"),
    "sdxl_refiner_high_aesthetic_score": OptionInfo(6.0, "SDXL high aesthetic score (the refiner's prompt)"),
    "sdxl_clip_l_skip": OptionInfo(False, "Clip skip SDXL: apply Clip skip to SDXL's CLIP-L encoder (bigG never)"),
}))

options_templates.update(options_section(("refiner", "Refiner"), {
    "hires_fix_refiner_pass": OptionInfo("second pass", "Hires fix: which pass the refiner may switch in "
                                         "(first pass, second pass, both passes)", infotext="Hires refiner"),
    "refiner_switch_by_sample_steps": OptionInfo(False, "Refiner switch by sampling steps instead of the noise level "
                                                 "(legacy)", infotext="Refiner switch by sampling steps"),
}))

options_templates.update(options_section(("img2img", "img2img"), {
    "img2img_color_correction": OptionInfo(False, "Apply color correction to img2img results to match original colors."),
    "img2img_fix_steps": OptionInfo(False, "With img2img, do exactly the amount of steps the slider specifies."),
    "img2img_extra_noise": OptionInfo(0.0, "Extra noise multiplier for img2img and hires fix", infotext="Extra noise"),
    "img2img_background_color": OptionInfo("#ffffff", "With img2img, fill transparent parts of the input image with this color."),
    "initial_noise_multiplier": OptionInfo(1.0, "Noise multiplier for img2img", infotext="Noise multiplier"),
    "send_seed": OptionInfo(True, "Send seed when sending prompt or image to other interface"),
    "send_size": OptionInfo(True, "Send size when sending prompt or image to another interface"),
}))

options_templates.update(options_section(("upscaling", "Upscaling"), {
    "ESRGAN_tile": OptionInfo(192, "Tile size for ESRGAN upscalers (0 = no tiling)"),
    "ESRGAN_tile_overlap": OptionInfo(8, "Tile overlap for ESRGAN upscalers, in pixels"),
    "upscaler_for_img2img": OptionInfo(None, "Upscaler for img2img"),
    "download_official_weights": OptionInfo(
        True, "Download official weights on first use (upscalers, face restoration, TAESD previews, DeepDanbooru, "
              "CLIP interrogator); off: only files present in models/ are used"),
}))

options_templates.update(options_section(("face-restoration", "Face restoration"), {
    "face_restoration": OptionInfo(False, "Restore faces"),
    "face_restoration_model": OptionInfo("CodeFormer", "Face restoration model"),
    "code_former_weight": OptionInfo(0.5, "CodeFormer weight (0 = maximum effect, 1 = minimum effect)"),
    "face_restoration_unload": OptionInfo(False, "Move face restoration model from VRAM into RAM after processing"),
}))

options_templates.update(options_section(("interrogate", "Interrogate"), {
    "interrogate_return_ranks": OptionInfo(False, "Include ranks of model tags matches in results"),
    "interrogate_deepbooru_score_threshold": OptionInfo(0.5, "deepbooru: score threshold"),
    "deepbooru_sort_alpha": OptionInfo(True, "deepbooru: sort tags alphabetically"),
    "deepbooru_use_spaces": OptionInfo(True, "deepbooru: use spaces in tags"),
    "deepbooru_escape": OptionInfo(True, "deepbooru: escape (\\) brackets"),
    "deepbooru_filter_tags": OptionInfo("", "deepbooru: filter out those tags (comma-separated)"),
}))

options_templates.update(options_section(("sampler-params", "Sampler parameters"), {
    "hide_samplers": OptionInfo([], "Hide samplers in user interface").needs_reload_ui(),
    "vae_tiling": OptionInfo("auto", "VAE tiling: auto (whole, and in tiles after an out-of-memory error), always, or "
                             "off"),
    "vae_tile_size": OptionInfo(512, "VAE tile size in pixels (tiles overlap by a quarter)"),
    "unet_fast_path": OptionInfo("graphs", "UNet fast path on CUDA: graphs (CUDA graphs of the eager UNet, bitwise "
                                 "identical), compile (torch.compile too, close to eager but not bitwise) or off "
                                 "(--fast-path overrides it)"),
    "unet_compile_sizes": OptionInfo("512x512, 1024x1024", "Sizes the compile tier compiles, in the background"),
    "sd_noise_schedule": OptionInfo("Default", "Noise schedule for sampling: Default or Zero Terminal SNR (for models "
                                    "trained with it)", infotext="Noise Schedule"),
    "sgm_noise_multiplier": OptionInfo(False, "SGM noise multiplier: txt2img starts from noise x sqrt(1 + sigma_max^2) "
                                       "as the official SDXL code does (only to reproduce its images)",
                                       infotext="SGM noise multiplier"),
    "eta_ddim": OptionInfo(0.0, "Eta for DDIM", infotext="Eta DDIM"),
    "eta_ancestral": OptionInfo(1.0, "Eta for k-diffusion samplers", infotext="Eta"),
    "s_churn": OptionInfo(0.0, "sigma churn (Euler)", infotext="Sigma churn"),
    "s_tmin": OptionInfo(0.0, "sigma tmin (Euler)", infotext="Sigma tmin"),
    "s_tmax": OptionInfo(0.0, "sigma tmax (Euler; 0 = no limit)", infotext="Sigma tmax"),
    "s_noise": OptionInfo(1.0, "sigma noise (Euler)", infotext="Sigma noise"),
    "s_min_uncond": OptionInfo(0.0, "Negative Guidance minimum sigma", infotext="NGMS"),
}))

options_templates.update(options_section(("ui", "Live previews and UI"), {
    "show_progressbar": OptionInfo(True, "Show progressbar"),
    "live_previews_enable": OptionInfo(True, "Show live previews of the created image"),
    "show_progress_every_n_steps": OptionInfo(10, "Live preview display period (in sampling steps); -1 = only after each image"),
    "show_progress_type": OptionInfo("Approx cheap", "Live preview method: Approx cheap, TAESD (its small decoder in "
                                     "models/VAE-taesd) or Full (the VAE)"),
    "tiling": OptionInfo(False, "Tiling"),
    "quicksettings_list": OptionInfo(["sd_model_checkpoint", "sd_vae"], "Quicksettings list (settings shown in the bar at "
                                     "the top of the page)").needs_reload_ui(),
}))

options_templates.update(options_section(("content-filter", "Content filter"), {
    "content_filter": OptionInfo(False, "Content filter: replace images the safety checker (CompVis, diffusers' "
                                 "StableDiffusionSafetyChecker) flags with a notice; live previews are not shown"),
    "prompt_blocklist": OptionInfo("", "Prompt blocklist: refuse jobs whose prompt contains any of these words "
                                   "(comma-separated, whole words, any case)"),
}))

options_templates.update(options_section(("server", "Server limits"), {
    "max_sampling_steps": OptionInfo(
        1000, "Most sampling steps (and hires steps) a job may ask for; the UI slider stops at 150, the API at this",
        restrict_api=True),
}))

options_templates.update(options_section(("control_net", "ControlNet"), {
    "control_net_unit_count": OptionInfo(3, "Multi-ControlNet: ControlNet unit number", "Slider",
                                         {"minimum": 1, "maximum": 10, "step": 1}).needs_reload_ui(),
    "control_net_no_detectmap": OptionInfo(False, "Do not append detectmap to output"),
}))

options_templates.update(options_section(("extensions", "Extensions"), {
    "disabled_extensions": OptionInfo([], "Disabled extensions (folder names)").needs_restart(),
    "disable_all_extensions": OptionInfo("none", "Disable extensions: none, extra (all but built-in) or all"
                                         ).needs_restart(),
}))
