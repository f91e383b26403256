"""The Extras tab: upscale and restore faces on one image, uploaded images or a folder (``modules.postprocessing``)."""
from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

import gradio as gr

from modules import img2img, images, postprocessing, shared, upscaler
from modules.loading import model_catalog
from modules.runtime import job_queue
from modules.errors import UserInputError
from webui.ui_common import POLL_SECONDS, error_html, infotext_html

SOURCES = {"single": "Single Image", "batch": "Batch Process", "folder": "Batch from Directory"}
SOURCE_INPUTS = ["source", "image", "files", "input_dir", "output_dir"]
GENERATE_INPUTS = SOURCE_INPUTS + [f.name for f in fields(postprocessing.ExtrasParams)]  # generate()'s value names


def _params(values: dict[str, Any]) -> postprocessing.ExtrasParams:
    """The options from the controls' values, in their types (a value that does not convert names its control)."""
    params = {}
    for option in fields(postprocessing.ExtrasParams):
        value = values.get(option.name, option.default)
        kind = {"int": int, "float": float, "bool": bool}.get(str(option.type))
        try:
            params[option.name] = kind(value) if kind is not None else (value or option.default)
        except (TypeError, ValueError):
            raise UserInputError(f"{option.name}: {value!r} is not a number") from None
    return postprocessing.ExtrasParams(**params)


def upscaler_names() -> list[str]:
    return [u.name for u in upscaler.all_upscalers()]


def weights_hint() -> str:
    hint = model_catalog.missing_hint(model_catalog.UPSCALERS + model_catalog.FACE_RESTORERS)
    if not hint:
        return ""
    return ("Only the models whose weights are present are listed. To add one, save the official file "
            "(or enable *download official weights* in the settings):\n\n" + "\n".join(f"- {line}" for line in hint.splitlines()))


def _open(path: str) -> tuple:
    with images.read(path) as opened:
        opened.load()
        return opened.copy(), os.path.basename(path)


def _sources(source: str, image: str | None, files, input_dir: str) -> list[tuple]:
    """(image, original name) pairs for the chosen source; errors name what is missing."""
    if source == "single":
        if not image:
            raise UserInputError("extras: upload an image first")
        return [_open(image)]
    if source == "batch":
        if not files:
            raise UserInputError("extras: upload one or more images first")
        return [_open(getattr(file, "name", file)) for file in files]
    folder = img2img.resolve_batch_dir(input_dir, "input folder", must_exist=True)
    pairs = [_open(path) for path in img2img.list_batch_images(folder)]
    if not pairs:
        raise UserInputError(f"extras: no images in {input_dir!r}")
    return pairs


def generate(values: dict[str, Any]):
    """Run the extras job in the queue and yield (gallery, info, progress) updates. ``values``: the controls by
    ``GENERATE_INPUTS`` name."""
    source, image, files, input_dir, output_dir = (values.get(name) for name in SOURCE_INPUTS)
    try:
        params = _params(values)
        params.validate()
        pairs = _sources(source, image, files, input_dir)
        outdir = None
        if source == "folder" and (output_dir or "").strip():
            outdir = str(img2img.resolve_batch_dir(output_dir, "output folder", must_exist=False))
    except UserInputError as e:
        yield gr.skip(), gr.skip(), error_html(str(e))
        return
    if outdir is None:
        pairs = [(picture, None) for picture, _ in pairs]  # names are kept only in an output folder of the user's choice
    job = job_queue.queue.submit(lambda: postprocessing.run(pairs, params, outdir), "extras")
    while not job.wait(POLL_SECONDS):
        yield gr.skip(), gr.skip(), f"<div class='progress-text'>Processing {job_queue.queue.state_of(job).job_no + 1}/{len(pairs)}</div>"
    if job.status != job_queue.DONE:
        yield gr.skip(), gr.skip(), error_html(job.error or job.status)
        return
    results, text = job.result
    gallery = [getattr(picture, "already_saved_as", None) or picture for picture in results]
    yield gallery, infotext_html(text), ""


def receive_result(result: dict | None) -> list:
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


def receive_png(path: str | None) -> list:
    if not path:
        return [gr.skip(), gr.skip()]
    return [gr.Tabs(selected="extras"), gr.update(value=path)]


def create_tab() -> dict:
    c: dict = {"source": gr.State("single")}
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Tabs(elem_id="mode_extras"):
                with gr.Tab(SOURCES["single"], id="single", elem_id="extras_single_tab") as tab_single:
                    # a file path, so the source's PNG text chunks (its infotext) reach the pipeline
                    c["image"] = gr.Image(type="filepath", label="Source", sources=["upload", "clipboard"],
                                          elem_id="extras_image")
                with gr.Tab(SOURCES["batch"], id="batch", elem_id="extras_batch_process_tab") as tab_batch:
                    c["files"] = gr.File(file_count="multiple", file_types=["image"], label="Batch Process",
                                         elem_id="extras_image_batch")
                batch_allowed = not getattr(shared.cmd_opts, "webui_is_non_local", False)
                with gr.Tab(SOURCES["folder"], id="folder", elem_id="extras_batch_directory_tab",
                            visible=batch_allowed) as tab_folder:
                    c["input_dir"] = gr.Textbox(label="Input directory", elem_id="extras_batch_input_dir")
                    c["output_dir"] = gr.Textbox(label="Output directory", elem_id="extras_batch_output_dir",
                                                 placeholder="Leave empty to save to outputs/extras-images")
            c["source_tabs"] = {"single": tab_single, "batch": tab_batch, "folder": tab_folder}
            c["generate"] = gr.Button("Generate", variant="primary", elem_id="extras_generate")
            c["resize_mode"] = gr.Radio(["Scale by", "Scale to"], value="Scale by", type="index", label="Resize",
                                        elem_id="extras_resize_mode")
            with gr.Row():
                c["upscaling_resize"] = gr.Slider(1, 8, value=4, step=0.05, label="Resize", elem_id="extras_upscaling_resize")
                c["upscaling_resize_w"] = gr.Slider(64, 8192, value=512, step=8, label="Width", elem_id="extras_upscaling_resize_w")
                c["upscaling_resize_h"] = gr.Slider(64, 8192, value=512, step=8, label="Height", elem_id="extras_upscaling_resize_h")
                c["upscaling_crop"] = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            names = upscaler_names()
            with gr.Row():
                c["upscaler_1"] = gr.Dropdown(names, value="None", label="Upscaler 1", elem_id="extras_upscaler_1")
                c["upscaler_2"] = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
                c["extras_upscaler_2_visibility"] = gr.Slider(0, 1, value=0, step=0.001, label="Upscaler 2 visibility",
                                                              elem_id="extras_upscaler_2_visibility")
            with gr.Row():
                c["gfpgan_visibility"] = gr.Slider(0, 1, value=0, step=0.001, label="GFPGAN visibility",
                                                   elem_id="extras_gfpgan_visibility")
                c["codeformer_visibility"] = gr.Slider(0, 1, value=0, step=0.001, label="CodeFormer visibility",
                                                       elem_id="extras_codeformer_visibility")
                c["codeformer_weight"] = gr.Slider(0, 1, value=0, step=0.001, label="CodeFormer weight (0 = maximum effect)",
                                                   elem_id="extras_codeformer_weight")
            c["upscale_first"] = gr.Checkbox(False, label="Upscale before restoring faces", elem_id="extras_upscale_first")
            c["refresh"] = gr.Button("🔄 Refresh model lists", elem_id="extras_refresh")
            c["hint"] = gr.Markdown(weights_hint(), elem_id="extras_weights_hint")
        with gr.Column(scale=1):
            c["progress"] = gr.HTML("", elem_id="extras_progress")
            c["gallery"] = gr.Gallery(label="Result", columns=2, height="auto", elem_id="extras_gallery", interactive=False,
                                      format="png")
            c["info"] = gr.HTML("", elem_id="html_info_extras")
    return c


def refresh_lists():
    names = upscaler_names()
    return gr.update(choices=names), gr.update(choices=names), weights_hint()


def wire_tab(c: dict) -> None:
    for source, tab in c["source_tabs"].items():
        tab.select(lambda source=source: source, None, [c["source"]], queue=False)

    def submit(*values):
        yield from generate(dict(zip(GENERATE_INPUTS, values)))

    c["generate"].click(submit, [c[name] for name in GENERATE_INPUTS], [c["gallery"], c["info"], c["progress"]],
                        concurrency_limit=None, show_progress="hidden")
    c["refresh"].click(refresh_lists, None, [c["upscaler_1"], c["upscaler_2"], c["hint"]], queue=False)
