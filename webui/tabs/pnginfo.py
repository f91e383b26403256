"""The PNG Info tab: the generation parameters and other text chunks of a dropped image, and its Send to buttons
(``webui.ui`` wires those to the receiving tabs)."""
from __future__ import annotations

import html

import gradio as gr

from modules.errors import UserInputError
from webui.ui_common import error_html, infotext_html


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


def create_tab() -> dict:
    c: dict = {}
    with gr.Row():
        c["image"] = gr.Image(type="filepath", label="Source", sources=["upload", "clipboard"], elem_id="pnginfo_image")
        with gr.Column():
            c["info"] = gr.HTML("", elem_id="pnginfo_html")
            c["text"] = gr.State("")
            with gr.Row():
                c["send_txt2img"] = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img")
                c["send_img2img"] = gr.Button("Send to img2img", elem_id="pnginfo_send_img2img")
                c["send_inpaint"] = gr.Button("Send to inpaint", elem_id="pnginfo_send_inpaint")
                c["send_extras"] = gr.Button("Send to extras", elem_id="pnginfo_send_extras")
    return c


def wire_tab(c: dict) -> None:
    c["image"].change(read_png_info, [c["image"]], [c["info"], c["text"]], queue=False)
