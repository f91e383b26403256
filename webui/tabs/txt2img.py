"""The txt2img tab: prompts and styles, sampler, hires fix, faces, size, seed, the scripts' controls, the
output gallery and the extra-networks cards."""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, fields
from typing import Any, Sequence

import gradio as gr

from modules import infotext_utils, scripts, sd_models, shared, txt2img
from modules.errors import UserInputError
from webui.ui_common import (POSTPROCESS_FIELDS, REFINER_FIELDS, GenerationInputs, action_buttons, cfg_slider,
                             error_html, error_updates, output_panel, override_settings_box, override_settings_update,
                             postprocess_controls, prompt_boxes, refiner_controls, read_infotext,
                             restore_faces_options, sampler_controls, script_controls, script_paste_components,
                             script_paste_updates, seed_controls, size_and_batch, stream_job, style_names,
                             variation_values, wire_generation)

HIRES_SAME_CHECKPOINT = "Use same checkpoint"
HIRES_SAME_SAMPLER = "Use same sampler"
HIRES_SAME_SCHEDULER = "Use same scheduler"


@dataclass(kw_only=True)
class Txt2ImgInputs(GenerationInputs):
    """The values of the tab's controls that make a job, by name (``GENERATE_INPUTS`` lists them)."""
    enable_hr: bool = False
    denoising_strength: float = 0.7
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str = HIRES_SAME_CHECKPOINT
    hr_sampler_name: str = HIRES_SAME_SAMPLER
    hr_scheduler: str = HIRES_SAME_SCHEDULER
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


GENERATE_INPUTS = [f.name for f in fields(Txt2ImgInputs)]


def generate(values: dict[str, Any], script_args: Sequence = ()):
    """Submit a txt2img job and stream its progress and live preview until it finishes. ``values``: the controls by
    ``GENERATE_INPUTS`` name; ``script_args``: the scripts' controls (their defaults when empty)."""
    try:
        v = Txt2ImgInputs(**values)
        overrides = infotext_utils.override_settings_from_labels(v.override_settings)
        restore_faces = restore_faces_options(overrides, v.restore_faces, v.face_restoration_model,
                                              v.code_former_weight)
        p = txt2img.make_txt2img(v.prompt, v.negative_prompt, v.sampler_name, v.scheduler, v.steps, v.cfg_scale,
                                 v.width, v.height, v.seed,
                                 *variation_values(v.use_variation, v.subseed, v.subseed_strength, v.seed_resize_from_w,
                                                   v.seed_resize_from_h),
                                 v.batch_count, v.batch_size, v.styles, enable_hr=v.enable_hr,
                                 denoising_strength=v.denoising_strength, hr_scale=v.hr_scale, hr_upscaler=v.hr_upscaler,
                                 hr_second_pass_steps=v.hr_second_pass_steps, hr_resize_x=v.hr_resize_x,
                                 hr_resize_y=v.hr_resize_y, hr_checkpoint_name=v.hr_checkpoint_name,
                                 hr_sampler_name=v.hr_sampler_name,
                                 hr_scheduler=v.hr_scheduler, hr_prompt=v.hr_prompt,
                                 hr_negative_prompt=v.hr_negative_prompt, override_settings=overrides,
                                 restore_faces=restore_faces, **v.refiner())
        scripts.runner_for(False).attach(p, list(script_args) or None)
    except UserInputError as e:
        yield error_updates(str(e))
        return
    yield from stream_job(lambda: txt2img.run(p), "txt2img")


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
    return gr.update(choices=style_names()), f"Saved style {html.escape(name.strip())!s}."


def refresh_styles():
    shared.prompt_styles.reload()
    return gr.update(choices=style_names())


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


def _hypernetwork_samples() -> list[list[str]]:
    from modules.networks import hypernetwork

    return [[name] for name in hypernetwork.list_hypernetworks()]


def refresh_extra_networks(force: bool = True):
    """The LoRA, hypernetwork and embedding lists: rereading every file for the refresh button, only changed ones
    on page load."""
    embeddings, skipped = _embedding_samples(force)
    return (gr.Dataset(samples=_lora_samples(force)), gr.Dataset(samples=_hypernetwork_samples()),
            gr.Dataset(samples=embeddings), skipped)


def add_lora_to_prompt(sample: list | None, prompt: str) -> str:
    return _append(prompt, f"<lora:{sample[0]}:1>") if sample else gr.skip()


def add_hypernetwork_to_prompt(sample: list | None, prompt: str) -> str:
    return _append(prompt, f"<hypernet:{sample[0]}:1>") if sample else gr.skip()


def add_embedding_to_prompt(sample: list | None, prompt: str) -> str:
    return _append(prompt, sample[0]) if sample else gr.skip()


def _append(prompt: str, text: str) -> str:
    prompt = (prompt or "").rstrip()
    return f"{prompt}, {text}" if prompt and not prompt.endswith(",") else f"{prompt} {text}".strip()


PASTE_FIELDS = ["prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "width", "height",
                "seed", "use_variation", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h",
                "batch_size", "enable_hr", "denoising_strength", "hr_scale", "hr_upscaler", "hr_second_pass_steps",
                "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt",
                "hr_negative_prompt", *POSTPROCESS_FIELDS, *REFINER_FIELDS]


def native_size(title: str | None, width: float, height: float):
    """(width, height, hint) after the checkpoint ``title`` was chosen: a size still at another family's default
    square (512 or 1024) becomes this family's (SDXL 1024x1024, SD 1.x/2.x 512x512) and the hint says so; a size
    the user set stays. The API's default stays 512x512, as in A1111."""
    from modules.families import detection

    info = sd_models.get_closet_checkpoint_match(title) if title else None
    family = info.family if info is not None else None
    if family is None or not family.supported:
        return gr.skip(), gr.skip(), ""
    native = family.default_size
    defaults = {f.default_size for f in detection.registry}
    if width == height and int(width) in defaults and int(width) != native:
        return native, native, (f"Size set to {native}×{native}, the native size of {family.label} models "
                                "(without the page, the default stays 512×512 as in A1111).")
    return gr.skip(), gr.skip(), ""


def paste_parameters(text: str) -> list:
    """Fill the txt2img fields from an infotext (the prompt box's text, or params.txt when it is empty): one update
    per name in ``PASTE_FIELDS`` (fields the infotext does not carry are skipped), then the override settings."""
    parsed = read_infotext(text)
    if parsed is None:
        return [gr.skip()] * (len(PASTE_FIELDS) + 1) + script_paste_updates("txt2img", None)
    values = infotext_utils.txt2img_fields_from_infotext(parsed[1])
    return [gr.update(value=values[name]) if name in values else gr.skip() for name in PASTE_FIELDS] + \
        [override_settings_update(parsed[1])] + script_paste_updates("txt2img", parsed[1])


def receive_infotext(text: str) -> list:
    """Send to txt2img (from PNG Info): switch to this tab and fill its fields from the infotext."""
    return [gr.Tabs(selected="txt2img"), *paste_parameters(text or "")] if text else \
        [gr.skip()] * (2 + len(PASTE_FIELDS) + len(script_paste_components("txt2img")))


def hires_upscaler_names() -> list[str]:
    from modules import upscaler

    return list(shared.latent_upscale_modes) + [u.name for u in upscaler.all_upscalers()]


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
            c["hr_checkpoint_name"] = gr.Dropdown([HIRES_SAME_CHECKPOINT, *sd_models.checkpoint_tiles()],
                                                  value=HIRES_SAME_CHECKPOINT, label="Hires checkpoint",
                                                  elem_id="hr_checkpoint")
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


def create_tab(sampler_names: list[str], schedule_labels: list[str]) -> dict:
    c: dict = {}
    with gr.Row():
        with gr.Column(scale=4):
            prompt_boxes("txt2img", c, placeholder="Prompt (press Ctrl+Enter to generate)")
            with gr.Row():
                c["styles"] = gr.Dropdown(style_names(), value=[], multiselect=True, label="Styles",
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
            refiner_controls("txt2img", c)
            size_and_batch("txt2img", c)
            c["size_hint"] = gr.Markdown("", elem_id="txt2img_size_hint")
            c["cfg_scale"] = cfg_slider("txt2img")
            seed_controls("txt2img", c)
            c["override_settings"] = override_settings_box("txt2img")
            script_controls("txt2img", c)
        output_panel("txt2img", c, below_gallery=lambda: _send_buttons(c))
    with gr.Accordion("Extra networks", open=False, elem_id="txt2img_extra_networks"):
        with gr.Tab("Lora", elem_id="txt2img_lora_tab"):
            c["lora_cards"] = gr.Dataset(components=["text"], samples=[], samples_per_page=50,
                                         label="Click a LoRA to add it to the prompt", elem_id="txt2img_lora_cards")
        with gr.Tab("Hypernetworks", elem_id="txt2img_hypernetworks_tab"):
            c["hypernetwork_cards"] = gr.Dataset(components=["text"], samples=[], samples_per_page=50,
                                                 label="Click a hypernetwork to add it to the prompt",
                                                 elem_id="txt2img_hypernetwork_cards")
        with gr.Tab("Textual Inversion", elem_id="txt2img_textual_inversion_tab"):
            c["embedding_cards"] = gr.Dataset(components=["text"], samples=[], samples_per_page=50,
                                              label="Click an embedding to add it to the prompt",
                                              elem_id="txt2img_textual_inversion_cards")
            c["skipped"] = gr.HTML("", elem_id="txt2img_embeddings_skipped")
        c["extra_refresh"] = gr.Button("🔄 Refresh", elem_id="txt2img_extra_refresh")
    return c


def wire_tab(c: dict, demo: gr.Blocks) -> None:
    wire_generation(c, generate, GENERATE_INPUTS, paste_parameters, paste_outputs(c))
    c["styles_apply"].click(apply_styles, [c["prompt"], c["negative_prompt"], c["styles"]],
                            [c["prompt"], c["negative_prompt"], c["styles"]], queue=False)
    c["style_save"].click(save_style, [c["style_name"], c["prompt"], c["negative_prompt"]], [c["styles"], c["style_status"]],
                          queue=False)
    c["styles_refresh"].click(refresh_styles, None, [c["styles"]], queue=False)
    extra_networks_lists = [c["lora_cards"], c["hypernetwork_cards"], c["embedding_cards"], c["skipped"]]
    c["extra_refresh"].click(refresh_extra_networks, None, extra_networks_lists, queue=False)
    demo.load(lambda: refresh_extra_networks(force=False), None, extra_networks_lists, queue=False)
    c["lora_cards"].click(add_lora_to_prompt, [c["lora_cards"], c["prompt"]], [c["prompt"]], queue=False)
    c["hypernetwork_cards"].click(add_hypernetwork_to_prompt, [c["hypernetwork_cards"], c["prompt"]], [c["prompt"]],
                                  queue=False)
    c["embedding_cards"].click(add_embedding_to_prompt, [c["embedding_cards"], c["prompt"]], [c["prompt"]], queue=False)


def paste_outputs(c: dict) -> list:
    return [c[name] for name in PASTE_FIELDS] + [c["override_settings"]] + script_paste_components("txt2img")
