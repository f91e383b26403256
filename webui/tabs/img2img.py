"""The img2img tab: img2img, sketch, inpaint (mask painted in ``gr.ImageEditor``), inpaint upload and batch from
folders, with the inpaint options and the paste button."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

import gradio as gr

from modules import img2img, images, infotext_utils, processing, scripts, shared
from modules.masking import mask_from_layers
from modules.errors import UserInputError
from modules.runtime import job_queue
from webui.ui_common import (POSTPROCESS_FIELDS, REFINER_FIELDS, GenerationInputs, action_buttons, cfg_slider,
                             error_html, error_updates, output_panel, override_settings_box, override_settings_update,
                             postprocess_controls, prompt_boxes, refiner_controls, read_infotext,
                             restore_faces_options, sampler_controls, script_controls, script_paste_components,
                             script_paste_updates, seed_controls, size_and_batch, stream_job, style_names,
                             variation_values, wire_generation)

MODES = {"img2img": "img2img", "sketch": "Sketch", "inpaint": "Inpaint", "inpaint_upload": "Inpaint upload",
         "batch": "Batch"}  # tab id -> label
MASK_MODES = ["Inpaint masked", "Inpaint not masked"]
MASKED_CONTENT = processing.INPAINTING_FILL_NAMES
INPAINT_AREAS = ["Whole picture", "Only masked"]
PASTE_FIELDS = ["prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "width", "height", "seed",
                "use_variation", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "batch_size",
                "denoising_strength", "mask_blur", "inpainting_mask_invert", "inpainting_fill", "inpaint_full_res",
                "inpaint_full_res_padding", "stochastic_freeze", "initial_noise_multiplier", *POSTPROCESS_FIELDS, *REFINER_FIELDS]
SEND_FIELDS = ["prompt", "negative_prompt", "steps", "seed", "width", "height"]  # what "Send to" from a gallery copies
SEND_TARGET_UPDATES = 6  # what receive_result/receive_png update first: the main tabs, then mode_outputs


@dataclass(kw_only=True)
class Img2ImgInputs(GenerationInputs):
    """The values of the tab's controls that make a job, by name (``GENERATE_INPUTS`` lists them)."""
    mode: str
    init_image: Any
    sketch: Any
    inpaint_editor: Any
    upload_image: Any
    upload_mask: Any
    batch_input: str
    batch_output: str
    batch_mask: str
    resize_mode: int
    denoising_strength: float
    mask_blur: int
    inpainting_mask_invert: int
    inpainting_fill: int
    inpaint_full_res: int
    inpaint_full_res_padding: int
    stochastic_freeze: bool
    color_correction: bool
    initial_noise_multiplier: float


GENERATE_INPUTS = [f.name for f in fields(Img2ImgInputs)]


def _radio_labels(values: dict) -> dict:
    """Index-typed radios are set by label."""
    labels = {"inpainting_mask_invert": MASK_MODES, "inpainting_fill": MASKED_CONTENT, "inpaint_full_res": INPAINT_AREAS}
    return {k: labels[k][int(v)] if k in labels else v for k, v in values.items()}


def paste_parameters(text: str, require_text: bool = False) -> list:
    """Fill the img2img fields from an infotext (or params.txt when ``text`` is empty and not ``require_text``)."""
    parsed = read_infotext(text) if (text or "").strip() or not require_text else None
    if parsed is None:
        return [gr.skip()] * (len(PASTE_FIELDS) + 1) + script_paste_updates("img2img", None)
    values = _radio_labels(infotext_utils.img2img_fields_from_infotext(parsed[1]))
    return [gr.update(value=values[name]) if name in values else gr.skip() for name in PASTE_FIELDS] + \
        [override_settings_update(parsed[1])] + script_paste_updates("img2img", parsed[1])


def show_in_mode(image, target: str) -> list:
    """Updates for the main tabs and then ``mode_outputs`` showing ``image`` in the ``target`` mode."""
    if target == "inpaint":
        editor = {"background": image, "layers": [], "composite": image}
        return [gr.Tabs(selected="img2img"), gr.Tabs(selected="inpaint"), "inpaint", gr.update(visible=True),
                gr.skip(), gr.update(value=editor)]
    return [gr.Tabs(selected="img2img"), gr.Tabs(selected="img2img"), "img2img", gr.update(visible=False),
            gr.update(value=image), gr.skip()]


def mode_outputs(c: dict) -> list:
    """The components ``show_in_mode`` updates after the main tabs."""
    return [c["mode_tabs"], c["mode"], c["inpaint_controls"], c["init_image"], c["inpaint_editor"]]


def paste_outputs(c: dict) -> list:
    return [c[name] for name in PASTE_FIELDS] + [c["override_settings"]] + script_paste_components("img2img")


def receive_result(result: dict | None, target: str) -> list:
    """Send to img2img / inpaint from a gallery: the selected image, its prompts and steps, the seed (``send_seed``)
    and the size (``send_size``), then switch to that mode. ``SEND_TARGET_UPDATES`` updates, then one per
    ``SEND_FIELDS`` entry."""
    if not result or not result.get("images"):
        return [gr.skip()] * (SEND_TARGET_UPDATES + len(SEND_FIELDS))
    index = min(result.get("selected", 0), len(result["images"]) - 1)
    image = result["images"][index]
    params = infotext_utils.parse_generation_parameters(result["infotexts"][index])
    values = infotext_utils.img2img_fields_from_infotext(params)
    values["width"], values["height"] = image.size
    wanted = {"prompt", "negative_prompt", "steps"} | ({"seed"} if shared.opts.send_seed else set()) | \
        ({"width", "height"} if shared.opts.send_size else set())
    return show_in_mode(image, target) + \
        [gr.update(value=values[name]) if name in wanted and name in values else gr.skip() for name in SEND_FIELDS]


def receive_png(path: str | None, text: str, target: str) -> list:
    """Send to img2img / inpaint from PNG Info: the image, and every field its infotext fills."""
    from modules import images

    if not path:
        return [gr.skip()] * (SEND_TARGET_UPDATES + len(PASTE_FIELDS) + 1)
    with images.read(path) as image:
        picture = image.convert("RGB")
    return show_in_mode(picture, target) + paste_parameters(text or "", require_text=True)


def inputs_for_mode(mode: str, init_image, sketch, inpaint_editor, upload_image, upload_mask):
    """(init image, mask) from the components of the selected mode; errors name what is missing."""
    if mode == "img2img":
        if init_image is None:
            raise UserInputError("img2img: upload an image first")
        return init_image, None
    if mode == "sketch":
        composite = (sketch or {}).get("composite")
        if composite is None:
            raise UserInputError("sketch: upload an image and draw on it first")
        return composite.convert("RGB"), None
    if mode == "inpaint":
        background = (inpaint_editor or {}).get("background")
        if background is None:
            raise UserInputError("inpaint: upload an image first")
        mask = mask_from_layers(inpaint_editor)
        if mask is None:
            raise UserInputError("inpaint: paint over the area to change first")
        return background.convert("RGB"), mask
    if mode == "inpaint_upload":
        if upload_image is None or upload_mask is None:
            raise UserInputError("inpaint upload: both an image and a mask are needed")
        return upload_image, upload_mask
    raise UserInputError(f"unknown img2img mode {mode!r}")


def interrogate(model: str, mode, init_image, sketch, inpaint_editor, upload_image, upload_mask) -> tuple:
    """Describe the current mode's picture ("clip": a caption, "deepdanbooru": tags) in the prompt box; the
    work runs in the job queue. Returns (prompt update, progress HTML)."""
    from modules import interrogate as interrogators

    try:
        if mode == "inpaint":
            picture = (inpaint_editor or {}).get("background")
        elif mode == "inpaint_upload":
            picture = upload_image
        else:
            picture = inputs_for_mode(mode, init_image, sketch, inpaint_editor, upload_image, upload_mask)[0]
        if picture is None:
            raise UserInputError("interrogate: upload an image first")
        interrogator = interrogators.find(model)
    except (UserInputError, interrogators.InterrogatorFilesMissing, interrogators.UnknownInterrogator) as e:
        return gr.skip(), error_html(str(e))
    job = job_queue.queue.submit(lambda: interrogator.interrogate(picture.convert("RGB")), f"interrogate {model}",
                                 client="ui")
    job.wait()
    if job.status != job_queue.DONE:
        return gr.skip(), error_html(job.error or job.status)
    return job.result, ""


def generate(values: dict[str, Any], script_args: Sequence = ()):
    """Submit an img2img job (or a folder batch) and stream its progress, as txt2img's Generate. ``values``: the
    controls by ``GENERATE_INPUTS`` name; ``script_args``: the scripts' controls (their defaults when empty)."""
    try:
        v = Img2ImgInputs(**values)
        overrides = infotext_utils.override_settings_from_labels(v.override_settings)
        restore_faces = restore_faces_options(overrides, v.restore_faces, v.face_restoration_model,
                                              v.code_former_weight)
        if v.color_correction:
            overrides["img2img_color_correction"] = True
        batch = v.mode == "batch"
        image, mask = (None, None) if batch else inputs_for_mode(v.mode, v.init_image, v.sketch, v.inpaint_editor,
                                                                 v.upload_image, v.upload_mask)
        subseed, subseed_strength, seed_resize_from_w, seed_resize_from_h = variation_values(
            v.use_variation, v.subseed, v.subseed_strength, v.seed_resize_from_w, v.seed_resize_from_h)
        p = img2img.make_img2img(
            v.prompt, v.negative_prompt, image, mask, sampler_name=v.sampler_name, scheduler=v.scheduler, steps=v.steps,
            cfg_scale=v.cfg_scale, width=v.width, height=v.height, seed=v.seed, subseed=subseed,
            subseed_strength=subseed_strength, seed_resize_from_w=seed_resize_from_w,
            seed_resize_from_h=seed_resize_from_h, batch_count=v.batch_count, batch_size=v.batch_size,
            styles=v.styles, resize_mode=v.resize_mode, denoising_strength=v.denoising_strength,
            mask_blur=v.mask_blur, inpainting_mask_invert=v.inpainting_mask_invert, inpainting_fill=v.inpainting_fill,
            inpaint_full_res=bool(v.inpaint_full_res), inpaint_full_res_padding=v.inpaint_full_res_padding,
            initial_noise_multiplier=float(v.initial_noise_multiplier), stochastic_freeze=v.stochastic_freeze,
            override_settings=overrides, restore_faces=restore_faces, validate=not batch, **v.refiner())
        scripts.runner_for(True).attach(p, list(script_args) or None)
        if batch:
            for folder, what in ((v.batch_input, "input folder"), (v.batch_mask, "mask folder"),
                                 (v.batch_output, "output folder")):
                if (folder or "").strip() or what == "input folder":
                    img2img.resolve_batch_dir(folder, what, must_exist=what != "output folder")
    except UserInputError as e:
        yield error_updates(str(e))
        return
    if batch:
        yield from stream_job(lambda: img2img.process_batch(p, v.batch_input, v.batch_output, v.batch_mask),
                              "img2img batch")
    else:
        yield from stream_job(lambda: img2img.run(p), "img2img")


def create_tab(sampler_names: list[str], schedule_labels: list[str]) -> dict:
    c: dict = {"mode": gr.State("img2img")}
    with gr.Row():
        with gr.Column(scale=4):
            prompt_boxes("img2img", c)
            c["styles"] = gr.Dropdown(style_names(), value=[], multiselect=True, label="Styles", elem_id="img2img_styles")
        action_buttons("img2img", c, interrogate=True)
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Tabs(elem_id="mode_img2img") as c["mode_tabs"]:
                with gr.Tab(MODES["img2img"], id="img2img", elem_id="img2img_img2img_tab") as tab_img2img:
                    c["init_image"] = gr.Image(type="pil", label="Image for img2img", image_mode="RGBA",
                                               sources=["upload", "clipboard"], elem_id="img2img_image", height=480)
                with gr.Tab(MODES["sketch"], id="sketch", elem_id="img2img_img2img_sketch_tab") as tab_sketch:
                    c["sketch"] = gr.ImageEditor(type="pil", label="Image for img2img", sources=["upload", "clipboard"],
                                                 elem_id="img2img_sketch", height=480, format="png",
                                                 brush=gr.Brush(colors=["#000000", "#ffffff", "#ff0000", "#00ff00", "#0000ff"]))
                with gr.Tab(MODES["inpaint"], id="inpaint", elem_id="img2img_inpaint_tab") as tab_inpaint:
                    c["inpaint_editor"] = gr.ImageEditor(type="pil", label="Image for inpainting with mask",
                                                         sources=["upload", "clipboard"], elem_id="img2maskimg", height=480,
                                                         format="png", layers=False, transforms=(),
                                                         brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24))
                with gr.Tab(MODES["inpaint_upload"], id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as tab_upload:
                    c["upload_image"] = gr.Image(type="pil", label="Image for img2img", sources=["upload", "clipboard"],
                                                 elem_id="img_inpaint_base")
                    c["upload_mask"] = gr.Image(type="pil", label="Mask (white = repaint)", sources=["upload", "clipboard"],
                                                image_mode="RGBA", elem_id="img_inpaint_mask")
                batch_allowed = not getattr(shared.cmd_opts, "webui_is_non_local", False)
                with gr.Tab(MODES["batch"], id="batch", elem_id="img2img_batch_tab", visible=batch_allowed) as tab_batch:
                    gr.Markdown("Process every image of a folder on this computer. Folders must be inside the data dir "
                                "or a `--img2img-batch-root`. Masks are matched by file name.")
                    c["batch_input"] = gr.Textbox(label="Input directory", elem_id="img2img_batch_input_dir")
                    c["batch_output"] = gr.Textbox(label="Output directory", elem_id="img2img_batch_output_dir",
                                                   placeholder="Leave empty to save to the normal output folder")
                    c["batch_mask"] = gr.Textbox(label="Inpaint batch mask directory (optional)",
                                                 elem_id="img2img_batch_inpaint_mask_dir")
            c["mode_tab_objects"] = {"img2img": tab_img2img, "sketch": tab_sketch, "inpaint": tab_inpaint,
                                     "inpaint_upload": tab_upload, "batch": tab_batch}
            c["resize_mode"] = gr.Radio(images.RESIZE_MODES, value=images.RESIZE_MODES[0], type="index", label="Resize mode",
                                        elem_id="resize_mode")
            with gr.Group(visible=False, elem_id="img2img_inpaint_controls") as c["inpaint_controls"]:
                with gr.Row():
                    c["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
                    c["inpainting_mask_invert"] = gr.Radio(MASK_MODES, value=MASK_MODES[0], type="index", label="Mask mode",
                                                           elem_id="img2img_mask_mode")
                with gr.Row():
                    c["inpainting_fill"] = gr.Radio(MASKED_CONTENT, value="original", type="index", label="Masked content",
                                                    elem_id="img2img_inpainting_fill")
                with gr.Row():
                    c["inpaint_full_res"] = gr.Radio(INPAINT_AREAS, value=INPAINT_AREAS[0], type="index", label="Inpaint area",
                                                     elem_id="img2img_inpaint_full_res")
                    c["inpaint_full_res_padding"] = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                                                              elem_id="img2img_inpaint_full_res_padding")
            sampler_controls("img2img", c, sampler_names, schedule_labels)
            size_and_batch("img2img", c)
            with gr.Row():
                c["cfg_scale"] = cfg_slider("img2img")
                c["denoising_strength"] = gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength",
                                                    elem_id="img2img_denoising_strength")
            seed_controls("img2img", c)
            with gr.Accordion("More", open=False, elem_id="img2img_more"):
                c["stochastic_freeze"] = gr.Checkbox(False, label="Same noise for every image (stochastic freeze)",
                                                     elem_id="img2img_stochastic_freeze",
                                                     info="Every input image gets the same seed and noise: video frames "
                                                          "change only where the frames change.")
                c["color_correction"] = gr.Checkbox(False, label="Color correction toward the input image",
                                                    elem_id="img2img_color_correction")
                c["initial_noise_multiplier"] = gr.Slider(0.5, 1.5, value=1.0, step=0.01, label="Initial noise multiplier",
                                                          elem_id="img2img_initial_noise_multiplier")
            postprocess_controls("img2img", c)
            refiner_controls("img2img", c)
            c["override_settings"] = override_settings_box("img2img")
            script_controls("img2img", c)
        output_panel("img2img", c)
    return c


def wire_tab(c: dict) -> None:
    wire_generation(c, generate, GENERATE_INPUTS, paste_parameters, paste_outputs(c))
    pictures = [c[name] for name in ("mode", "init_image", "sketch", "inpaint_editor", "upload_image", "upload_mask")]
    for button, model in (("interrogate", "clip"), ("deepbooru", "deepdanbooru")):
        c[button].click(lambda *values, model=model: interrogate(model, *values), pictures, [c["prompt"], c["progress"]],
                        show_progress="minimal")
    for mode, tab in c["mode_tab_objects"].items():
        tab.select(lambda mode=mode: (mode, gr.update(visible=mode in ("inpaint", "inpaint_upload", "batch"))), None,
                   [c["mode"], c["inpaint_controls"]], queue=False)
