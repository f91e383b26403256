"""The Gradio page: checkpoint picker and the txt2img tab. Event handlers only translate between
components and the engine in ``modules``; generation runs in the engine's job queue."""
from __future__ import annotations

import html
import os
import time

import gradio as gr

from modules import job_queue, model_download, prompt_chunks, sd_models, sd_samplers, sd_schedulers, shared, txt2img
from modules.demo_model import DEMO_NAME
from modules.errors import UserInputError
from modules.shared import opts, state

POLL_SECONDS = 0.4


def _checkpoint_choices() -> list[str]:
    return sd_models.checkpoint_tiles()


def _model_notice() -> str:
    if not sd_models.checkpoints_list:
        return ("**No checkpoint found.** Put a Stable Diffusion 1.x `.safetensors` file into "
                f"`{sd_models.model_dir()}` and press 🔄, or download SD 1.5 with the button below.")
    selected = sd_models.select_checkpoint()
    if selected is not None and DEMO_NAME in selected.name:
        return (f"**Demo model:** `{selected.name}` has random weights, so images are noise patterns, not pictures. "
                f"Put a real SD 1.x checkpoint into `{sd_models.model_dir()}` and press 🔄 to use it.")
    return ""


def _progress_html(progress: dict, position: int) -> str:
    if position > 0:
        return f"<div class='progress-text'>Queued: {position} job(s) ahead</div>"
    step, steps = progress.get("step", 0), progress.get("steps", 0)
    eta = progress.get("eta")
    eta_text = f" · ETA {eta:.0f}s" if eta is not None else ""
    percent = int(progress.get("progress", 0) * 100)
    batch = f" · batch {progress.get('job_no', 0) + 1}/{progress['job_count']}" if progress.get("job_count", 0) > 1 else ""
    return (f"<div class='progress-text'>Step {step}/{steps}{batch}{eta_text} ({percent}%)</div>"
            f"<progress value='{percent}' max='100' style='width:100%'></progress>")


def _gallery_items(processed) -> list:
    return [getattr(image, "already_saved_as", None) or image for image in processed.images]


def _infotext_html(text: str) -> str:
    return f"<pre class='infotext' style='white-space:pre-wrap'>{html.escape(text or '')}</pre>"


def _comments_html(comments: str) -> str:
    """Warnings of the job (unknown LoRA or styles, layers that did not fit ...)."""
    lines = [line for line in (comments or "").splitlines() if line.strip()]
    return "".join(f"<div class='comments' style='color:#b80'>{html.escape(line)}</div>" for line in lines)


def _error_html(message: str) -> str:
    return f"<div class='error' style='color:#d33'>Error: {html.escape(message)}</div>"


def generate(prompt, negative_prompt, sampler_name, scheduler, steps, cfg_scale, width, height, seed, use_variation,
             subseed, subseed_strength, seed_resize_from_w, seed_resize_from_h, batch_count, batch_size, styles=None):
    """Submit a txt2img job and stream its progress and live preview until it finishes.

    The job runs in the queue worker: closing the tab stops this stream, not the job."""
    try:
        p = txt2img.make_txt2img(prompt, negative_prompt, sampler_name, scheduler, steps, cfg_scale, width, height, seed,
                                 subseed if use_variation else -1, subseed_strength if use_variation else 0,
                                 seed_resize_from_w if use_variation else 0, seed_resize_from_h if use_variation else 0,
                                 batch_count, batch_size, styles)
    except UserInputError as e:
        yield gr.skip(), _error_html(str(e)), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return
    job = job_queue.queue.submit(lambda: txt2img.run(p), "txt2img")
    last_preview = -1
    while not job.wait(POLL_SECONDS):
        progress = job_queue.queue.progress(job)
        preview = gr.skip()
        if job is job_queue.queue.current and state.id_live_preview != last_preview and state.current_latent is not None:
            from modules import previews

            last_preview = state.id_live_preview
            preview = gr.update(value=previews.latent_to_image(state.current_latent), visible=True)
        yield gr.skip(), _progress_html(progress, job_queue.queue.position(job)), preview, gr.skip(), gr.skip(), job.id
    if job.status != job_queue.DONE:
        yield gr.skip(), _error_html(job.error or job.status), gr.update(visible=False), gr.skip(), gr.skip(), job.id
        return
    processed = job.result
    first_info = _infotext_html(processed.infotexts[0] if processed.infotexts else "") + _comments_html(processed.comments)
    yield (_gallery_items(processed), "", gr.update(visible=False), first_info,
           {"seed": processed.seed, "subseed": processed.subseed, "infotexts": processed.infotexts}, job.id)


def select_image(result: dict | None, evt: gr.SelectData):
    if not result or evt.index is None or evt.index >= len(result.get("infotexts", [])):
        return gr.skip()
    return _infotext_html(result["infotexts"][evt.index])


EMPTY_COUNTER = "<span class='token-counter'>0/75</span>"


def update_token_counter(text: str, steps, is_positive: bool = True) -> str:
    try:
        count, limit = prompt_chunks.token_counter(text or "", int(steps or 20), is_positive)
    except Exception as e:  # the counter must never break typing
        return f"<span class='token-counter error' title='{html.escape(str(e))}'>?/75</span>"
    return f"<span class='token-counter'>{count}/{limit}</span>"


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
        return gr.skip(), _error_html(str(e))
    return gr.update(choices=_style_names()), f"Saved style {html.escape(name.strip())!s}."


def refresh_styles():
    shared.prompt_styles.reload()
    return gr.update(choices=_style_names())


def _lora_samples(force: bool) -> list[list[str]]:
    from modules import lora

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
                "batch_size"]


def paste_parameters(text: str) -> list:
    """Fill the txt2img fields from an infotext (the prompt box's text, or params.txt when it is empty);
    one update per name in ``PASTE_FIELDS``, skipping fields the infotext does not carry."""
    from modules import infotext_utils, paths, script_callbacks

    if not (text or "").strip():
        try:
            with open(os.path.join(paths.data_path, "params.txt"), encoding="utf8") as f:
                text = f.read()
        except OSError:
            return [gr.skip()] * len(PASTE_FIELDS)
    params = infotext_utils.parse_generation_parameters(text)
    script_callbacks.infotext_pasted_callback(text, params)
    values = infotext_utils.txt2img_fields_from_infotext(params)
    return [gr.update(value=values[name]) if name in values else gr.skip() for name in PASTE_FIELDS]


def read_png_info(path: str | None):
    """The PNG Info tab: show the infotext and other text chunks of a dropped image."""
    from modules import images

    if not path:
        return "", ""
    try:
        with images.read(path) as image:
            geninfo, items = images.read_info_from_image(image)
    except UserInputError as e:
        return _error_html(str(e)), ""
    extra = "".join(f"<div><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</div>"
                    for k, v in items.items() if isinstance(v, (str, int, float)))
    if not geninfo:
        return "<div>No generation parameters found in this image.</div>" + extra, ""
    return _infotext_html(geninfo) + extra, geninfo


def send_to_txt2img(text: str) -> list:
    return [gr.Tabs(selected="txt2img"), *paste_parameters(text or "")] if text else [gr.skip()] * (1 + len(PASTE_FIELDS))


def change_checkpoint(title: str):
    info = sd_models.get_closet_checkpoint_match(title)
    if info is None:
        return _error_html(f"checkpoint {title!r} not found"), _model_notice()
    opts.set("sd_model_checkpoint", info.title)
    job = job_queue.queue.submit(lambda: sd_models.reload_model_weights(info=info), f"load {info.name}")
    job.wait()
    if job.status != job_queue.DONE:
        return _error_html(job.error or job.status), _model_notice()
    opts.save(_config_file())
    return "", _model_notice()


def refresh_checkpoints():
    sd_models.list_models()
    selected = sd_models.select_checkpoint()
    return gr.update(choices=_checkpoint_choices(), value=selected.title if selected else None), _model_notice()


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


def create_ui() -> gr.Blocks:
    sampler_names = sd_samplers.visible_sampler_names()
    schedule_labels = [s.label for s in sd_schedulers.schedulers if not s.unsupported]
    selected = sd_models.select_checkpoint()
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False) as demo:
        with gr.Row():
            checkpoint = gr.Dropdown(_checkpoint_choices(), value=selected.title if selected else None,
                                     label="Stable Diffusion checkpoint", elem_id="setting_sd_model_checkpoint", scale=4)
            refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", scale=0, min_width=40)
            download = gr.Button("Download SD 1.5", elem_id="download_sd15", scale=1)
        notice = gr.Markdown(_model_notice(), elem_id="model_notice")
        model_status = gr.HTML("", elem_id="model_status")
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                with gr.Row():
                    with gr.Column(scale=4):
                        with gr.Row():
                            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt", scale=8,
                                                placeholder="Prompt (press Ctrl+Enter to generate)")
                            token_counter = gr.HTML(EMPTY_COUNTER, elem_id="txt2img_token_counter",
                                                    scale=0, min_width=70)
                        with gr.Row():
                            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt", scale=8)
                            negative_token_counter = gr.HTML(EMPTY_COUNTER, scale=0, min_width=70,
                                                             elem_id="txt2img_negative_token_counter")
                        with gr.Row():
                            styles = gr.Dropdown(_style_names(), value=[], multiselect=True, label="Styles",
                                                 elem_id="txt2img_styles", scale=6)
                            styles_apply = gr.Button("📋", elem_id="txt2img_style_apply", scale=0, min_width=40)
                            styles_refresh = gr.Button("🔄", elem_id="txt2img_styles_refresh", scale=0, min_width=40)
                            style_name = gr.Textbox(label="New style name", elem_id="txt2img_style_name", scale=3)
                            style_save = gr.Button("💾 Save as style", elem_id="txt2img_style_create", scale=1)
                        style_status = gr.HTML("", elem_id="txt2img_style_status")
                    with gr.Column(scale=1, min_width=200):
                        generate_button = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
                        paste = gr.Button("↙️", elem_id="txt2img_paste", min_width=40)
                        with gr.Row():
                            interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt", min_width=60)
                            skip = gr.Button("Skip", elem_id="txt2img_skip", min_width=60)
                with gr.Row():
                    with gr.Column(scale=1):
                        with gr.Row():
                            sampler = gr.Dropdown(sampler_names, value=sampler_names[0], label="Sampling method",
                                                  elem_id="txt2img_sampling")
                            schedule = gr.Dropdown(schedule_labels, value="Automatic", label="Schedule type",
                                                   elem_id="txt2img_scheduler")
                        steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="txt2img_steps")
                        with gr.Row():
                            width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="txt2img_width")
                            height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id="txt2img_height")
                        with gr.Row():
                            batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id="txt2img_batch_count")
                            batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id="txt2img_batch_size")
                        cfg_scale = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale", elem_id="txt2img_cfg_scale")
                        with gr.Row():
                            seed = gr.Number(-1, label="Seed", precision=0, elem_id="txt2img_seed", scale=4)
                            random_seed = gr.Button("🎲", elem_id="txt2img_random_seed", scale=0, min_width=40)
                            reuse_seed = gr.Button("♻️", elem_id="txt2img_reuse_seed", scale=0, min_width=40)
                            use_variation = gr.Checkbox(False, label="Extra", elem_id="txt2img_subseed_show", scale=1)
                        with gr.Group(visible=False) as variation_group:
                            with gr.Row():
                                subseed = gr.Number(-1, label="Variation seed", precision=0, elem_id="txt2img_subseed")
                                subseed_strength = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength",
                                                             elem_id="txt2img_subseed_strength")
                            with gr.Row():
                                resize_w = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width",
                                                     elem_id="txt2img_seed_resize_from_w")
                                resize_h = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                                     elem_id="txt2img_seed_resize_from_h")
                    with gr.Column(scale=1):
                        progress = gr.HTML("", elem_id="txt2img_progress")
                        preview = gr.Image(label="Live preview", visible=False, interactive=False, elem_id="txt2img_preview")
                        gallery = gr.Gallery(label="Output", columns=4, height="auto", elem_id="txt2img_gallery",
                                             interactive=False, format="png")
                        info = gr.HTML("", elem_id="html_info_txt2img")
                with gr.Accordion("Extra networks", open=False, elem_id="txt2img_extra_networks"):
                    with gr.Tab("Lora", elem_id="txt2img_lora_tab"):
                        lora_cards = gr.Dataset(components=["text"], samples=[], samples_per_page=50,
                                                label="Click a LoRA to add it to the prompt", elem_id="txt2img_lora_cards")
                    with gr.Tab("Textual Inversion", elem_id="txt2img_textual_inversion_tab"):
                        embedding_cards = gr.Dataset(components=["text"], samples=[], samples_per_page=50,
                                                     label="Click an embedding to add it to the prompt",
                                                     elem_id="txt2img_textual_inversion_cards")
                        skipped = gr.HTML("", elem_id="txt2img_embeddings_skipped")
                    extra_refresh = gr.Button("🔄 Refresh", elem_id="txt2img_extra_refresh")
                result = gr.State(None)
                job_id = gr.State(None)

            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                with gr.Row():
                    png_image = gr.Image(type="filepath", label="Source", sources=["upload", "clipboard"],
                                         elem_id="pnginfo_image")
                    with gr.Column():
                        png_info = gr.HTML("", elem_id="pnginfo_html")
                        png_text = gr.State("")
                        png_send_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img")

        inputs = [prompt, negative, sampler, schedule, steps, cfg_scale, width, height, seed, use_variation, subseed,
                  subseed_strength, resize_w, resize_h, batch_count, batch_size, styles]
        outputs = [gallery, progress, preview, info, result, job_id]
        generate_button.click(generate, inputs, outputs, concurrency_limit=None, show_progress="hidden")
        prompt.submit(generate, inputs, outputs, concurrency_limit=None, show_progress="hidden")
        interrupt.click(lambda jid: job_queue.queue.interrupt(jid), [job_id], None, queue=False)
        skip.click(lambda jid: job_queue.queue.skip(jid), [job_id], None, queue=False)
        random_seed.click(lambda: -1, None, seed, queue=False)
        reuse_seed.click(lambda r: r["seed"] if r else -1, [result], seed, queue=False)
        use_variation.change(lambda v: gr.update(visible=v), [use_variation], [variation_group], queue=False)
        gallery.select(select_image, [result], [info], queue=False)
        counter_events = dict(queue=False, show_progress="hidden", trigger_mode="always_last")
        prompt.change(update_token_counter, [prompt, steps], [token_counter], **counter_events)
        negative.change(lambda text, n: update_token_counter(text, n, False), [negative, steps], [negative_token_counter],
                        **counter_events)
        styles_apply.click(apply_styles, [prompt, negative, styles], [prompt, negative, styles], queue=False)
        style_save.click(save_style, [style_name, prompt, negative], [styles, style_status], queue=False)
        styles_refresh.click(refresh_styles, None, [styles], queue=False)
        extra_networks_lists = [lora_cards, embedding_cards, skipped]
        extra_refresh.click(refresh_extra_networks, None, extra_networks_lists, queue=False)
        demo.load(lambda: refresh_extra_networks(force=False), None, extra_networks_lists, queue=False)
        lora_cards.click(add_lora_to_prompt, [lora_cards, prompt], [prompt], queue=False)
        embedding_cards.click(add_embedding_to_prompt, [embedding_cards, prompt], [prompt], queue=False)
        paste_outputs = [prompt, negative, sampler, schedule, steps, cfg_scale, width, height, seed, use_variation,
                         subseed, subseed_strength, resize_w, resize_h, batch_size]  # in PASTE_FIELDS order
        paste.click(paste_parameters, [prompt], paste_outputs, queue=False)
        png_image.change(read_png_info, [png_image], [png_info, png_text], queue=False)
        png_send_txt2img.click(send_to_txt2img, [png_text], [tabs, *paste_outputs], queue=False)
        checkpoint.input(change_checkpoint, [checkpoint], [model_status, notice], concurrency_limit=None)
        refresh.click(refresh_checkpoints, None, [checkpoint, notice], queue=False)
        download.click(download_model, None, [checkpoint, model_status], concurrency_limit=None)
    return demo
