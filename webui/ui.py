"""The Gradio page: checkpoint picker, the txt2img, img2img and PNG Info tabs. Event handlers only translate
between components and the engine in ``modules``; generation runs in the engine's job queue."""
from __future__ import annotations

import html
import os

import gradio as gr

from modules import infotext_utils, scripts, sd_models, sd_samplers, sd_schedulers, sd_vae, shared, txt2img
from modules.loading import model_download
from modules.runtime import job_queue
from modules.loading.demo_model import DEMO_NAME
from modules.errors import UserInputError
from modules.shared import opts
from webui import ui_extensions, ui_extras, ui_img2img
from webui.ui_common import (EMPTY_COUNTER, POLL_SECONDS, POSTPROCESS_FIELDS, action_buttons, attach_scripts, cfg_slider,
                             error_html, error_updates, infotext_html, output_panel, override_settings_box,
                             override_settings_update, postprocess_controls, postprocess_job_options, prompt_boxes,
                             sampler_controls, script_controls, script_paste_components, script_paste_updates,
                             seed_controls, select_image, size_and_batch, stream_job, update_token_counter,
                             variation_values, wire_generation)

__all__ = ["EMPTY_COUNTER", "update_token_counter", "select_image"]
HIRES_SAME_SAMPLER = "Use same sampler"
HIRES_SAME_SCHEDULER = "Use same scheduler"
MODEL_WATCH_SECONDS = 2.0  # how often a freshly opened page checks on the start-up model load


def _checkpoint_choices() -> list[str]:
    return sd_models.checkpoint_tiles()


def _model_notice() -> str:
    if sd_models.load_problems:
        return "**Model:** " + " ".join(sd_models.load_problems)
    if not sd_models.checkpoints_list:
        return ("**No checkpoint found.** Put a Stable Diffusion 1.x `.safetensors` file into "
                f"`{sd_models.model_dir()}` and press 🔄, or download SD 1.5 with the button below.")
    selected = sd_models.select_checkpoint()
    if selected is not None and DEMO_NAME in selected.name:
        return (f"**Demo model:** `{selected.name}` has random weights, so images are noise patterns, not pictures. "
                f"Put a real SD 1.x checkpoint into `{sd_models.model_dir()}` and press 🔄 to use it.")
    return ""


def generate(prompt, negative_prompt, sampler_name, scheduler, steps, cfg_scale, width, height, seed, use_variation,
             subseed, subseed_strength, seed_resize_from_w, seed_resize_from_h, batch_count, batch_size, styles=None,
             enable_hr=False, denoising_strength=0.7, hr_scale=2.0, hr_upscaler="Latent", hr_second_pass_steps=0,
             hr_resize_x=0, hr_resize_y=0, hr_sampler_name=HIRES_SAME_SAMPLER, hr_scheduler=HIRES_SAME_SCHEDULER,
             hr_prompt="", hr_negative_prompt="", override_settings=None, *extra):
    """Submit a txt2img job and stream its progress and live preview until it finishes. ``extra``: the values of
    ``ui_common.POSTPROCESS_FIELDS``, then those of the scripts' controls."""
    try:
        overrides = infotext_utils.override_settings_from_labels(override_settings)
        faces = postprocess_job_options(overrides, *extra[:len(POSTPROCESS_FIELDS)])
        p = txt2img.make_txt2img(prompt, negative_prompt, sampler_name, scheduler, steps, cfg_scale, width, height, seed,
                                 *variation_values(use_variation, subseed, subseed_strength, seed_resize_from_w,
                                                   seed_resize_from_h),
                                 batch_count, batch_size, styles, enable_hr=enable_hr, denoising_strength=denoising_strength,
                                 hr_scale=hr_scale, hr_upscaler=hr_upscaler, hr_second_pass_steps=hr_second_pass_steps,
                                 hr_resize_x=hr_resize_x, hr_resize_y=hr_resize_y, hr_sampler_name=hr_sampler_name,
                                 hr_scheduler=hr_scheduler, hr_prompt=hr_prompt, hr_negative_prompt=hr_negative_prompt,
                                 override_settings=overrides, **faces)
        attach_scripts(p, "txt2img", extra)
    except UserInputError as e:
        yield error_updates(str(e))
        return
    yield from stream_job(lambda: txt2img.run(p), "txt2img")


def _style_names() -> list[str]:
    return list(shared.prompt_styles.styles)


def apply_styles(prompt: str, negative: str, selected: list[str] | None):
    """Move the selected styles' text into the prompt boxes and clear the selection."""
    selected = selected or []
    return (shared.prompt_styles.apply_styles_to_prompt(prompt or "", selected),
            shared.prompt_styles.apply_negative_styles_to_prompt(negative or "", selected), gr.update(value=[]))


def save_style(name: str, prompt: str, negative: str):
    from modules.styles import PromptStyle

    try:
        shared.prompt_styles.save_style(PromptStyle(name or "", prompt or "", negative or ""))
    except (UserInputError, OSError) as e:
        return gr.skip(), error_html(str(e))
    return gr.update(choices=_style_names()), f"Saved style {html.escape(name.strip())!s}."


def refresh_styles():
    shared.prompt_styles.reload()
    return gr.update(choices=_style_names())


def _lora_samples(force: bool) -> list[list[str]]:
    from modules.networks import lora

    return [[name] for name in sorted(lora.list_available_networks(force=force))]


def _embedding_samples(force: bool) -> tuple[list[list[str]], str]:
    from modules.textual_inversion import textual_inversion

    usable = textual_inversion.refresh_for_model(sd_models.current_model(), force_reload=force)
    problems = [f"{html.escape(name)}: skipped, {html.escape(reason)}" for name, reason in usable.skip_reasons.items()]
    problems += [f"{html.escape(os.path.basename(path))}: {html.escape(message)}"
                 for path, message in textual_inversion.embedding_db.errors.items()]
    return [[name] for name in usable.word_embeddings], "".join(f"<div class='skipped'>{p}</div>" for p in problems)


def refresh_extra_networks(force: bool = True):
    """The LoRA and embedding lists: rereading every file for the refresh button, only changed ones on page load."""
    embeddings, skipped = _embedding_samples(force)
    return gr.Dataset(samples=_lora_samples(force)), gr.Dataset(samples=embeddings), skipped


def add_lora_to_prompt(sample: list | None, prompt: str) -> str:
    return _append(prompt, f"<lora:{sample[0]}:1>") if sample else gr.skip()


def add_embedding_to_prompt(sample: list | None, prompt: str) -> str:
    return _append(prompt, sample[0]) if sample else gr.skip()


def _append(prompt: str, text: str) -> str:
    prompt = (prompt or "").rstrip()
    return f"{prompt}, {text}" if prompt and not prompt.endswith(",") else f"{prompt} {text}".strip()


PASTE_FIELDS = ["prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "width", "height",
                "seed", "use_variation", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h",
                "batch_size", "enable_hr", "denoising_strength", "hr_scale", "hr_upscaler", "hr_second_pass_steps",
                "hr_resize_x", "hr_resize_y", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
                *POSTPROCESS_FIELDS]


def read_infotext(text: str) -> tuple[str, dict] | None:
    """The parsed infotext of ``text``, or of params.txt (the last generation) when ``text`` is empty."""
    from modules import paths, script_callbacks

    if not (text or "").strip():
        try:
            with open(os.path.join(paths.data_path, "params.txt"), encoding="utf8") as f:
                text = f.read()
        except OSError:
            return None
    params = infotext_utils.parse_generation_parameters(text)
    script_callbacks.infotext_pasted_callback(text, params)
    return text, params


def paste_parameters(text: str) -> list:
    """Fill the txt2img fields from an infotext (the prompt box's text, or params.txt when it is empty): one update
    per name in ``PASTE_FIELDS`` (fields the infotext does not carry are skipped), then the override settings."""
    parsed = read_infotext(text)
    if parsed is None:
        return [gr.skip()] * (len(PASTE_FIELDS) + 1) + script_paste_updates("txt2img", None)
    values = infotext_utils.txt2img_fields_from_infotext(parsed[1])
    return [gr.update(value=values[name]) if name in values else gr.skip() for name in PASTE_FIELDS] + \
        [override_settings_update(parsed[1])] + script_paste_updates("txt2img", parsed[1])


def read_png_info(path: str | None):
    """The PNG Info tab: show the infotext and other text chunks of a dropped image."""
    from modules import images

    if not path:
        return "", ""
    try:
        with images.read(path) as image:
            geninfo, items = images.read_info_from_image(image)
    except UserInputError as e:
        return error_html(str(e)), ""
    extra = "".join(f"<div><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</div>"
                    for k, v in items.items() if isinstance(v, (str, int, float)))
    if not geninfo:
        return "<div>No generation parameters found in this image.</div>" + extra, ""
    return infotext_html(geninfo) + extra, geninfo


def send_to_txt2img(text: str) -> list:
    return [gr.Tabs(selected="txt2img"), *paste_parameters(text or "")] if text else \
        [gr.skip()] * (2 + len(PASTE_FIELDS) + len(script_paste_components("txt2img")))


def _selected_title() -> str | None:
    """The checkpoint the setting names (the model in use once one has loaded)."""
    selected = sd_models.select_checkpoint()
    return selected.title if selected else None


def change_checkpoint(title: str):
    """Load the chosen checkpoint; one that fails leaves the model, the setting and the dropdown as they were."""
    info = sd_models.get_closet_checkpoint_match(title)
    if info is None:
        return error_html(f"checkpoint {title!r} not found"), _model_notice(), gr.update(value=_selected_title())
    job = job_queue.queue.submit(lambda: sd_models.reload_model_weights(info=info), f"load {info.name}")
    job.wait()
    if job.status != job_queue.DONE:
        return error_html(job.error or job.status), _model_notice(), gr.update(value=_selected_title())
    opts.save(_config_file())
    return "", _model_notice(), gr.update(value=info.title)


def change_vae(name: str) -> str:
    """Save the SD VAE setting; the next job loads it."""
    if name not in sd_vae.choices():
        return error_html(f"VAE {name!r} not found")
    opts.set("sd_vae", name)
    opts.save(_config_file())
    return ""


def refresh_vae_choices():
    sd_vae.refresh_vae_list()
    return gr.update(choices=sd_vae.choices())


def refresh_checkpoints():
    sd_models.list_models()
    return gr.update(choices=_checkpoint_choices(), value=_selected_title()), _model_notice()


def current_checkpoint_and_notice():
    """While the page waits for the start-up model load: the model in use (a checkpoint that failed was replaced;
    titles gain their hash once it is computed) and what to say about it. The timer stops once a model is loaded
    or nothing is left in the queue that could load one."""
    settled = sd_models.current_model() is not None or (job_queue.queue.current is None and not job_queue.queue.pending())
    return (gr.update(choices=_checkpoint_choices(), value=_selected_title()), _model_notice(),
            gr.Timer(active=not settled))


def download_model():
    progress = {"done": 0, "total": 0}

    def report(done: int, total: int) -> None:
        progress.update(done=done, total=total)

    job = job_queue.queue.submit(lambda: model_download.provide_checkpoint(report), "download SD 1.5")
    while not job.wait(POLL_SECONDS):
        total = progress["total"]
        text = f"Downloading: {progress['done'] / 2**20:.0f} / {total / 2**20:.0f} MiB" if total else "Contacting the hub..."
        yield gr.skip(), text
    sd_models.list_models()
    message = job.result[1] if job.status == job_queue.DONE else f"Failed: {job.error}"
    selected = sd_models.select_checkpoint()
    yield gr.update(choices=_checkpoint_choices(), value=selected.title if selected else None), message


def _config_file() -> str:
    from modules import shared

    return shared.config_filename()


SEND_TARGET_UPDATES = 6  # the main tabs, then ui_img2img.mode_outputs


def hires_upscaler_names() -> list[str]:
    from modules import upscaler

    return list(shared.latent_upscale_modes) + [u.name for u in upscaler.all_upscalers()]


def send_image_to(result: dict | None, target: str) -> list:
    """Send to img2img / inpaint: the selected image, its prompts and steps, the seed (``send_seed``) and the
    size (``send_size``), then switch to that tab. One update per ``ui_img2img.SEND_FIELDS`` entry."""
    if not result or not result.get("images"):
        return [gr.skip()] * (SEND_TARGET_UPDATES + len(ui_img2img.SEND_FIELDS))
    index = min(result.get("selected", 0), len(result["images"]) - 1)
    image = result["images"][index]
    params = infotext_utils.parse_generation_parameters(result["infotexts"][index])
    values = infotext_utils.img2img_fields_from_infotext(params)
    values["width"], values["height"] = image.size
    wanted = {"prompt", "negative_prompt", "steps"} | ({"seed"} if opts.send_seed else set()) | \
        ({"width", "height"} if opts.send_size else set())
    return ui_img2img.show_in_mode(image, target) + \
        [gr.update(value=values[name]) if name in wanted and name in values else gr.skip() for name in ui_img2img.SEND_FIELDS]


def send_png_to(path: str | None, text: str, target: str) -> list:
    """PNG Info -> img2img / inpaint: the image, and every field its infotext fills."""
    from modules import images

    if not path:
        return [gr.skip()] * (SEND_TARGET_UPDATES + len(ui_img2img.PASTE_FIELDS) + 1)
    with images.read(path) as image:
        picture = image.convert("RGB")
    return ui_img2img.show_in_mode(picture, target) + ui_img2img.paste_parameters(text or "", require_text=True)


def send_image_to_extras(result: dict | None) -> list:
    """The selected gallery image (with its infotext) into the Extras tab's single-image source."""
    if not result or not result.get("images"):
        return [gr.skip(), gr.skip()]
    index = min(result.get("selected", 0), len(result["images"]) - 1)
    image = result["images"][index]
    saved = getattr(image, "already_saved_as", None)
    if not saved:  # not saved (samples_save off): Gradio writes the image with its text chunks
        image = image.copy()
        image.info["parameters"] = result["infotexts"][index]
    return [gr.Tabs(selected="extras"), gr.update(value=saved or image)]


def send_png_to_extras(path: str | None) -> list:
    if not path:
        return [gr.skip(), gr.skip()]
    return [gr.Tabs(selected="extras"), gr.update(value=path)]


def _hires_controls(c: dict, sampler_names: list[str], schedule_labels: list[str]) -> None:
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr"):
        c["enable_hr"] = gr.Checkbox(False, label="Enable", elem_id="txt2img_enable_hr")
        with gr.Row():
            c["hr_upscaler"] = gr.Dropdown(hires_upscaler_names(), value="Latent", label="Upscaler",
                                           elem_id="txt2img_hr_upscaler")
            c["hr_second_pass_steps"] = gr.Slider(0, 150, value=0, step=1, label="Hires steps", elem_id="txt2img_hires_steps")
            c["denoising_strength"] = gr.Slider(0, 1, value=0.7, step=0.01, label="Denoising strength",
                                                elem_id="txt2img_denoising_strength")
        with gr.Row():
            c["hr_scale"] = gr.Slider(1, 4, value=2, step=0.05, label="Upscale by", elem_id="txt2img_hr_scale")
            c["hr_resize_x"] = gr.Slider(0, 4096, value=0, step=8, label="Resize width to", elem_id="txt2img_hr_resize_x")
            c["hr_resize_y"] = gr.Slider(0, 4096, value=0, step=8, label="Resize height to", elem_id="txt2img_hr_resize_y")
        with gr.Row():
            c["hr_sampler_name"] = gr.Dropdown([HIRES_SAME_SAMPLER, *sampler_names], value=HIRES_SAME_SAMPLER,
                                               label="Hires sampling method", elem_id="hr_sampler")
            c["hr_scheduler"] = gr.Dropdown([HIRES_SAME_SCHEDULER, *schedule_labels], value=HIRES_SAME_SCHEDULER,
                                            label="Hires schedule type", elem_id="hr_scheduler")
        with gr.Row():
            c["hr_prompt"] = gr.Textbox(label="Hires prompt", lines=2, elem_id="hires_prompt",
                                        placeholder="Prompt for hires fix pass. Leave empty to use the same prompt.")
            c["hr_negative_prompt"] = gr.Textbox(label="Hires negative prompt", lines=2, elem_id="hires_neg_prompt",
                                                 placeholder="Leave empty to use the same negative prompt.")


def _send_buttons(c: dict) -> None:
    with gr.Row():
        c["send_img2img"] = gr.Button("🖼️ Send to img2img", elem_id="txt2img_send_to_img2img")
        c["send_inpaint"] = gr.Button("🎨️ Send to inpaint", elem_id="txt2img_send_to_inpaint")
        c["send_extras"] = gr.Button("📐 Send to extras", elem_id="txt2img_send_to_extras")


def _txt2img_tab(sampler_names: list[str], schedule_labels: list[str]) -> dict:
    c: dict = {}
    with gr.Row():
        with gr.Column(scale=4):
            prompt_boxes("txt2img", c, placeholder="Prompt (press Ctrl+Enter to generate)")
            with gr.Row():
                c["styles"] = gr.Dropdown(_style_names(), value=[], multiselect=True, label="Styles",
                                          elem_id="txt2img_styles", scale=6)
                c["styles_apply"] = gr.Button("📋", elem_id="txt2img_style_apply", scale=0, min_width=40)
                c["styles_refresh"] = gr.Button("🔄", elem_id="txt2img_styles_refresh", scale=0, min_width=40)
                c["style_name"] = gr.Textbox(label="New style name", elem_id="txt2img_style_name", scale=3)
                c["style_save"] = gr.Button("💾 Save as style", elem_id="txt2img_style_create", scale=1)
            c["style_status"] = gr.HTML("", elem_id="txt2img_style_status")
        action_buttons("txt2img", c)
    with gr.Row():
        with gr.Column(scale=1):
            sampler_controls("txt2img", c, sampler_names, schedule_labels)
            _hires_controls(c, sampler_names, schedule_labels)
            postprocess_controls("txt2img", c)
            size_and_batch("txt2img", c)
            c["cfg_scale"] = cfg_slider("txt2img")
            seed_controls("txt2img", c)
            c["override_settings"] = override_settings_box("txt2img")
            script_controls("txt2img", c)
        output_panel("txt2img", c, below_gallery=lambda: _send_buttons(c))
    with gr.Accordion("Extra networks", open=False, elem_id="txt2img_extra_networks"):
        with gr.Tab("Lora", elem_id="txt2img_lora_tab"):
            c["lora_cards"] = gr.Dataset(components=["text"], samples=[], samples_per_page=50,
                                         label="Click a LoRA to add it to the prompt", elem_id="txt2img_lora_cards")
        with gr.Tab("Textual Inversion", elem_id="txt2img_textual_inversion_tab"):
            c["embedding_cards"] = gr.Dataset(components=["text"], samples=[], samples_per_page=50,
                                              label="Click an embedding to add it to the prompt",
                                              elem_id="txt2img_textual_inversion_cards")
            c["skipped"] = gr.HTML("", elem_id="txt2img_embeddings_skipped")
        c["extra_refresh"] = gr.Button("🔄 Refresh", elem_id="txt2img_extra_refresh")
    return c


GENERATE_INPUTS = ["prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "width", "height", "seed",
                   "use_variation", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h",
                   "batch_count", "batch_size", "styles", "enable_hr", "denoising_strength", "hr_scale", "hr_upscaler",
                   "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_sampler_name", "hr_scheduler", "hr_prompt",
                   "hr_negative_prompt", "override_settings", *POSTPROCESS_FIELDS]  # generate()'s parameters, in order


def _wire_txt2img(c: dict, demo: gr.Blocks) -> None:
    wire_generation(c, generate, GENERATE_INPUTS, paste_parameters, paste_outputs(c))
    c["styles_apply"].click(apply_styles, [c["prompt"], c["negative_prompt"], c["styles"]],
                            [c["prompt"], c["negative_prompt"], c["styles"]], queue=False)
    c["style_save"].click(save_style, [c["style_name"], c["prompt"], c["negative_prompt"]], [c["styles"], c["style_status"]],
                          queue=False)
    c["styles_refresh"].click(refresh_styles, None, [c["styles"]], queue=False)
    extra_networks_lists = [c["lora_cards"], c["embedding_cards"], c["skipped"]]
    c["extra_refresh"].click(refresh_extra_networks, None, extra_networks_lists, queue=False)
    demo.load(lambda: refresh_extra_networks(force=False), None, extra_networks_lists, queue=False)
    c["lora_cards"].click(add_lora_to_prompt, [c["lora_cards"], c["prompt"]], [c["prompt"]], queue=False)
    c["embedding_cards"].click(add_embedding_to_prompt, [c["embedding_cards"], c["prompt"]], [c["prompt"]], queue=False)


def paste_outputs(c: dict) -> list:
    return [c[name] for name in PASTE_FIELDS] + [c["override_settings"]] + script_paste_components("txt2img")


def extension_ui_tabs() -> list[tuple]:
    """The (Blocks, title, elem_id) tabs extensions add through ``on_ui_tabs``; malformed entries are reported."""
    from modules import errors, script_callbacks

    tabs = []
    for result in script_callbacks.ui_tabs_callback():
        for entry in result or []:
            if isinstance(entry, (tuple, list)) and len(entry) >= 2 and isinstance(entry[0], gr.Blocks):
                title = str(entry[1])
                tabs.append((entry[0], title, str(entry[2]) if len(entry) > 2 else title.lower().replace(" ", "_")))
            else:
                errors.report(f"on_ui_tabs: ignored {entry!r}; expected (gr.Blocks, title, elem_id)")
    return tabs


def create_ui() -> gr.Blocks:
    sampler_names = sd_samplers.visible_sampler_names()
    schedule_labels = [s.label for s in sd_schedulers.schedulers if not s.unsupported]
    selected = sd_models.select_checkpoint()
    extension_tabs = extension_ui_tabs()
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False) as demo:
        with gr.Row():
            checkpoint = gr.Dropdown(_checkpoint_choices(), value=selected.title if selected else None,
                                     label="Stable Diffusion checkpoint", elem_id="setting_sd_model_checkpoint", scale=4)
            vae = gr.Dropdown(sd_vae.choices(), value=opts.sd_vae if opts.sd_vae in sd_vae.choices() else "Automatic",
                              label="SD VAE", elem_id="setting_sd_vae", scale=2)
            refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", scale=0, min_width=40)
            download = gr.Button("Download SD 1.5", elem_id="download_sd15", scale=1)
        notice = gr.Markdown(_model_notice(), elem_id="model_notice")
        model_status = gr.HTML("", elem_id="model_status")
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img") as txt2img_tab:
                t2i = _txt2img_tab(sampler_names, schedule_labels)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img") as img2img_tab:
                i2i = ui_img2img.create_tab(sampler_names, schedule_labels, _style_names())
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras = ui_extras.create_tab()
            for blocks, title, elem_id in extension_tabs:
                with gr.Tab(title, id=elem_id, elem_id=f"tab_{elem_id}"):
                    blocks.render()
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                extensions_tab = ui_extensions.create_tab()
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                with gr.Row():
                    png_image = gr.Image(type="filepath", label="Source", sources=["upload", "clipboard"],
                                         elem_id="pnginfo_image")
                    with gr.Column():
                        png_info = gr.HTML("", elem_id="pnginfo_html")
                        png_text = gr.State("")
                        with gr.Row():
                            png_send_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img")
                            png_send_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_img2img")
                            png_send_inpaint = gr.Button("Send to inpaint", elem_id="pnginfo_send_inpaint")
                            png_send_extras = gr.Button("Send to extras", elem_id="pnginfo_send_extras")

        _wire_txt2img(t2i, demo)
        ui_img2img.wire_tab(i2i)
        ui_extras.wire_tab(extras)
        ui_extensions.wire_tab(extensions_tab)
        t2i["send_extras"].click(send_image_to_extras, [t2i["result"]], [tabs, extras["image"]], queue=False)
        png_send_extras.click(send_png_to_extras, [png_image], [tabs, extras["image"]], queue=False)
        send_outputs = [tabs, *ui_img2img.mode_outputs(i2i)]
        for button, target in ((t2i["send_img2img"], "img2img"), (t2i["send_inpaint"], "inpaint")):
            button.click(lambda r, target=target: send_image_to(r, target), [t2i["result"]],
                         [*send_outputs, *(i2i[name] for name in ui_img2img.SEND_FIELDS)], queue=False)
        png_image.change(read_png_info, [png_image], [png_info, png_text], queue=False)
        png_send_txt2img.click(send_to_txt2img, [png_text], [tabs, *paste_outputs(t2i)], queue=False)
        for button, target in ((png_send_img2img, "img2img"), (png_send_inpaint, "inpaint")):
            button.click(lambda path, text, target=target: send_png_to(path, text, target), [png_image, png_text],
                         [*send_outputs, *ui_img2img.paste_outputs(i2i)], queue=False)
        checkpoint.input(change_checkpoint, [checkpoint], [model_status, notice, checkpoint], concurrency_limit=None)
        model_watch = gr.Timer(MODEL_WATCH_SECONDS)
        model_watch.tick(current_checkpoint_and_notice, None, [checkpoint, notice, model_watch], queue=False,
                         show_progress="hidden")
        refresh.click(refresh_checkpoints, None, [checkpoint, notice], queue=False)
        refresh.click(refresh_vae_choices, None, [vae], queue=False)
        vae.input(change_vae, [vae], [model_status], queue=False)
        download.click(download_model, None, [checkpoint, model_status], concurrency_limit=None)
        scripts.announce_components(demo, {"txt2img": txt2img_tab, "img2img": img2img_tab})
    return demo
