"""The page shell: the checkpoint and VAE bar, the tabs (one module each under ``webui/tabs``) and the Send to
buttons between them. Event handlers only translate between components and the engine in ``modules``;
generation runs in the engine's job queue."""
from __future__ import annotations

import gradio as gr

from modules import scripts, sd_models, sd_samplers, sd_schedulers, sd_vae, shared
from modules.loading import model_download
from modules.loading.demo_model import DEMO_NAME
from modules.runtime import job_queue
from modules.shared import opts
from webui import gradio_compat
from webui.tabs import extensions as extensions_tab
from webui.tabs import extras as extras_tab
from webui.tabs import history as history_tab
from webui.tabs import img2img as img2img_tab
from webui.tabs import pnginfo as pnginfo_tab
from webui.tabs import settings as settings_tab
from webui.tabs import txt2img as txt2img_tab
from webui.ui_common import POLL_SECONDS, error_html, script_paste_components

MODEL_WATCH_SECONDS = 2.0  # how often a freshly opened page checks on the start-up model load


def _checkpoint_choices() -> list[tuple[str, str]]:
    """(label, title) per checkpoint: the title with the model family next to it where the header says it."""
    return [(f"{info.title} · {info.family.label}" if info.family is not None else info.title, info.title)
            for info in sd_models.checkpoints_list.values()]


def _model_notice() -> str:
    if sd_models.load_problems:
        return "**Model:** " + " ".join(sd_models.load_problems)
    if not sd_models.checkpoints_list:
        return ("**No checkpoint found.** Put a Stable Diffusion 1.x, 2.x or SDXL `.safetensors` file into "
                f"`{sd_models.model_dir()}` and press 🔄, or download "
                f"{' or '.join(offer.label for offer in model_download.OFFERS)} with the buttons above.")
    selected = sd_models.select_checkpoint()
    if selected is not None and DEMO_NAME in selected.name:
        return (f"**Demo model:** `{selected.name}` has random weights, so images are noise patterns, not pictures. "
                f"Put a real SD 1.x, 2.x or SDXL checkpoint into `{sd_models.model_dir()}` and press 🔄 to use it.")
    return ""


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


def second_checkpoint_choices():
    """The refiner dropdowns' and the hires checkpoint dropdown's choices after a rescan (their values stay)."""
    titles = sd_models.checkpoint_tiles()
    return (gr.update(choices=titles), gr.update(choices=titles),
            gr.update(choices=[txt2img_tab.HIRES_SAME_CHECKPOINT, *titles]))


def current_checkpoint_and_notice():
    """While the page waits for the start-up model load: the model in use (a checkpoint that failed was replaced;
    titles gain their hash once it is computed) and what to say about it. The timer stops once a model is loaded
    or nothing is left in the queue that could load one."""
    settled = sd_models.current_model() is not None or (job_queue.queue.current is None and not job_queue.queue.pending())
    return (gr.update(choices=_checkpoint_choices(), value=_selected_title()), _model_notice(),
            gr.Timer(active=not settled))


def download_model(label: str):
    """Download the official checkpoint called ``label`` (the demo model when the hub cannot be reached)."""
    offer = model_download.find_offer(label)
    progress = {"done": 0, "total": 0}

    def report(done: int, total: int) -> None:
        progress.update(done=done, total=total)

    job = job_queue.queue.submit(lambda: model_download.provide_checkpoint(report, offer), f"download {offer.label}")
    while not job.wait(POLL_SECONDS):
        total = progress["total"]
        text = f"Downloading: {progress['done'] / 2**20:.0f} / {total / 2**20:.0f} MiB" if total else "Contacting the hub..."
        yield gr.skip(), text
    sd_models.list_models()
    message = job.result[1] if job.status == job_queue.DONE else f"Failed: {job.error}"
    selected = sd_models.select_checkpoint()
    yield gr.update(choices=_checkpoint_choices(), value=selected.title if selected else None), message


def _downloader(label: str):
    def download():
        yield from download_model(label)
    return download


def _download_elem_id(label: str) -> str:
    """"SD 1.5" -> "download_sd15", "SDXL base" -> "download_sdxlbase"."""
    return "download_" + "".join(ch for ch in label.lower() if ch.isalnum())


def _config_file() -> str:
    return shared.config_filename()


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


def _wire_send_buttons(tabs: gr.Tabs, t2i: dict, i2i: dict, extras: dict, png: dict) -> None:
    """Send to: from the txt2img gallery and from PNG Info into the tab that receives it."""
    t2i["send_extras"].click(extras_tab.receive_result, [t2i["result"]], [tabs, extras["image"]], queue=False)
    into_img2img = [tabs, *img2img_tab.mode_outputs(i2i)]
    for target in ("img2img", "inpaint"):
        t2i[f"send_{target}"].click(lambda r, target=target: img2img_tab.receive_result(r, target), [t2i["result"]],
                                    [*into_img2img, *(i2i[name] for name in img2img_tab.SEND_FIELDS)], queue=False)
    _wire_send_buttons_from_file(tabs, t2i, i2i, extras, png["image"], png["text"], png)


def _wire_send_buttons_from_file(tabs: gr.Tabs, t2i: dict, i2i: dict, extras: dict, path: gr.components.Component,
                                 text: gr.components.Component, source: dict) -> None:
    """Send to from a saved file and its infotext (PNG Info, History): ``source`` holds the send buttons."""
    source["send_extras"].click(extras_tab.receive_png, [path], [tabs, extras["image"]], queue=False)
    into_img2img = [tabs, *img2img_tab.mode_outputs(i2i)]
    for target in ("img2img", "inpaint"):
        source[f"send_{target}"].click(lambda file, info, target=target: img2img_tab.receive_png(file, info, target),
                                       [path, text], [*into_img2img, *img2img_tab.paste_outputs(i2i)], queue=False)
    source["send_txt2img"].click(txt2img_tab.receive_infotext, [text], [tabs, *txt2img_tab.paste_outputs(t2i)],
                                 queue=False)


PASTE_TARGETS = ("txt2img", "img2img", "inpaint", "extras")


def _as_picture(value):
    """An image from a source component's value (PIL, a file path, an array, or a gallery's first entry)."""
    import numpy as np
    from PIL import Image

    from modules import images

    if isinstance(value, (list, tuple)) and value:
        value = value[0][0] if isinstance(value[0], (list, tuple)) else value[0]
    if isinstance(value, dict):
        value = value.get("path") or value.get("composite") or value.get("background")
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, np.ndarray):
        return Image.fromarray(value).convert("RGB")
    if isinstance(value, str) and value:
        with images.read(value) as image:
            return image.convert("RGB")
    return None


def receive_pasted(target: str, text: str | None, image) -> list:
    """A paste button an extension registered (``register_paste_params_button``): switch to ``target`` and fill it
    from the source's infotext and image. The updates match ``_paste_button_outputs``."""
    picture = _as_picture(image)
    if target == "txt2img":
        if text:
            return txt2img_tab.receive_infotext(text)
        return [gr.Tabs(selected="txt2img")] + [gr.skip()] * (len(txt2img_tab.PASTE_FIELDS) + 1 + len(
            script_paste_components("txt2img")))
    if target == "extras":
        return [gr.Tabs(selected="extras"), gr.update(value=picture) if picture is not None else gr.skip()]
    switch = img2img_tab.show_in_mode(picture, target) if picture is not None else \
        [gr.Tabs(selected="img2img"), gr.Tabs(selected=target), target, gr.update(visible=target == "inpaint"),
         gr.skip(), gr.skip()]
    fields = img2img_tab.paste_parameters(text, require_text=True) if text else \
        [gr.skip()] * (len(img2img_tab.PASTE_FIELDS) + 1 + len(script_paste_components("img2img")))
    return switch + fields


def _paste_button_outputs(target: str, tabs: gr.Tabs, t2i: dict, i2i: dict, extras: dict) -> list:
    if target == "txt2img":
        return [tabs, *txt2img_tab.paste_outputs(t2i)]
    if target == "extras":
        return [tabs, extras["image"]]
    return [tabs, *img2img_tab.mode_outputs(i2i), *img2img_tab.paste_outputs(i2i)]


def _connect_paste_buttons(demo: gr.Blocks, tabs: gr.Tabs, t2i: dict, i2i: dict, extras: dict) -> None:
    """Wire the buttons extensions registered with ``infotext_utils.register_paste_params_button`` (A1111's
    ``connect_paste_params_buttons``); each binding is used once, by the page it was built into."""
    from modules import errors, infotext_utils

    for binding in list(infotext_utils.registered_param_bindings):
        if getattr(binding.paste_button, "_id", None) not in demo.blocks:
            continue
        infotext_utils.registered_param_bindings.remove(binding)
        if binding.tabname not in PASTE_TARGETS:
            errors.report(f"register_paste_params_button: unknown tab {binding.tabname!r}; "
                          f"choose one of {', '.join(PASTE_TARGETS)}")
            continue
        if binding.source_tabname or binding.paste_field_names:
            errors.report("register_paste_params_button: copying fields from another tab (source_tabname, "
                          "paste_field_names) is not supported; the button pastes the infotext and the image")
        sources = [binding.source_text_component, binding.source_image_component]
        inputs = [component for component in sources if component is not None]

        def paste(*values, target=binding.tabname, has=tuple(c is not None for c in sources)):
            given = iter(values)
            text, image = (next(given) if present else None for present in has)
            return receive_pasted(target, text, image)

        binding.paste_button.click(paste, inputs, _paste_button_outputs(binding.tabname, tabs, t2i, i2i, extras),
                                   queue=False)


def _bar_id(key: str, quick: list[str]) -> str:
    """A quick setting's id in the bar; the Settings tab has the setting (and its id) when the bar does not show it."""
    return f"setting_{key}" if key in quick else f"quicksettings_hidden_{key}"


def create_ui() -> gr.Blocks:
    gradio_compat.install()  # before any extension's ui(): A1111 extensions' Gradio 3 idioms
    sampler_names = sd_samplers.visible_sampler_names()
    schedule_labels = [s.label for s in sd_schedulers.schedulers if not s.unsupported]
    selected = sd_models.select_checkpoint()
    extension_tabs = extension_ui_tabs()
    quick = list(opts.quicksettings_list or [])
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False) as demo:
        with gr.Row(elem_id="quicksettings"):
            checkpoint = gr.Dropdown(_checkpoint_choices(), value=selected.title if selected else None,
                                     label="Stable Diffusion checkpoint", scale=4, visible="sd_model_checkpoint" in quick,
                                     elem_id=_bar_id("sd_model_checkpoint", quick))
            vae = gr.Dropdown(sd_vae.choices(), value=opts.sd_vae if opts.sd_vae in sd_vae.choices() else "Automatic",
                              label="SD VAE", scale=2, visible="sd_vae" in quick, elem_id=_bar_id("sd_vae", quick))
            quick_components = settings_tab.quicksettings(quick)
            refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", scale=0, min_width=40)
            downloads = [(gr.Button(f"Download {offer.label}", elem_id=_download_elem_id(offer.label),
                                    scale=1), offer.label) for offer in model_download.OFFERS]
        notice = gr.Markdown(_model_notice(), elem_id="model_notice")
        model_status = gr.HTML("", elem_id="model_status")
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img") as txt2img_page:
                t2i = txt2img_tab.create_tab(sampler_names, schedule_labels)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img") as img2img_page:
                i2i = img2img_tab.create_tab(sampler_names, schedule_labels)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras = extras_tab.create_tab()
            for blocks, title, elem_id in extension_tabs:
                with gr.Tab(title, id=elem_id, elem_id=f"tab_{elem_id}"):
                    blocks.render()
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings_page = settings_tab.create_tab(quick)
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                installed = extensions_tab.create_tab()
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png = pnginfo_tab.create_tab()
            with gr.Tab("History", id="history", elem_id="tab_history") as history_page:
                history = history_tab.create_tab()

        txt2img_tab.wire_tab(t2i, demo)
        img2img_tab.wire_tab(i2i)
        extras_tab.wire_tab(extras)
        extensions_tab.wire_tab(installed)
        settings_tab.wire_tab(settings_page)
        pnginfo_tab.wire_tab(png)
        history_tab.wire_tab(history, history_page)
        _wire_send_buttons(tabs, t2i, i2i, extras, png)
        _wire_send_buttons_from_file(tabs, t2i, i2i, extras, history["path"], history["text"], history)
        _connect_paste_buttons(demo, tabs, t2i, i2i, extras)
        size = [t2i["width"], t2i["height"]]
        checkpoint.input(change_checkpoint, [checkpoint], [model_status, notice, checkpoint], concurrency_limit=None
                         ).then(txt2img_tab.native_size, [checkpoint, *size], [*size, t2i["size_hint"]], queue=False)
        demo.load(txt2img_tab.native_size, [checkpoint, *size], [*size, t2i["size_hint"]], queue=False)
        model_watch = gr.Timer(MODEL_WATCH_SECONDS)
        model_watch.tick(current_checkpoint_and_notice, None, [checkpoint, notice, model_watch], queue=False,
                         show_progress="hidden")
        refresh.click(refresh_checkpoints, None, [checkpoint, notice], queue=False)
        refresh.click(refresh_vae_choices, None, [vae], queue=False)
        refresh.click(second_checkpoint_choices, None,
                      [t2i["refiner_checkpoint"], i2i["refiner_checkpoint"], t2i["hr_checkpoint_name"]], queue=False)
        vae.input(change_vae, [vae], [model_status], queue=False)
        for key, component in quick_components.items():
            component.input(lambda value, key=key: settings_tab.apply_quicksetting(key, value), [component],
                            [model_status], queue=False)
        for button, label in downloads:
            button.click(_downloader(label), None, [checkpoint, model_status], concurrency_limit=None)
        scripts.announce_components(demo, {"txt2img": txt2img_page, "img2img": img2img_page})
    return demo
