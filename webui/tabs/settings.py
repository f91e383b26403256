"""The Settings tab (A1111's layout): sections on the left, a search box that filters by label and key, every setting
with its default shown, Apply settings (the same path as ``POST /sdapi/v1/options``: ``runtime.settings_change``)
and Reload UI. Also builds the quick settings bar's extra components (``quicksettings_list``)."""
from __future__ import annotations

import html
import inspect
from typing import Any, Callable

import gradio as gr

from modules import sd_models, sd_samplers, sd_vae, shared, upscaler
from modules.errors import UserInputError
from modules.options import OptionHTML, OptionInfo
from modules.runtime import job_queue, settings_change
from modules.shared import opts

OTHER_SECTION = ("other", "Other")
# Choices of the built-in settings whose values come from a fixed set or from what is installed (the settings module
# stays free of Gradio and of the engine, so they are named here).
CHOICES: dict[str, Callable[[], list]] = {
    "sd_model_checkpoint": lambda: sd_models.checkpoint_tiles(),
    "sd_vae": lambda: sd_vae.choices(),
    "hide_samplers": lambda: [sampler.name for sampler in sd_samplers.samplers],
    "upscaler_for_img2img": lambda: [None, *[u.name for u in upscaler.all_upscalers()]],
    "face_restoration_model": lambda: ["CodeFormer", "GFPGAN"],
    "emphasis": lambda: ["Original", "No norm", "Ignore", "None"],
    "randn_source": lambda: ["CPU", "GPU", "NV"],
    "hires_fix_refiner_pass": lambda: ["first pass", "second pass", "both passes"],
    "vae_tiling": lambda: ["auto", "always", "off"],
    "unet_fast_path": lambda: ["graphs", "compile", "off"],
    "sd_noise_schedule": lambda: ["Default", "Zero Terminal SNR"],
    "show_progress_type": lambda: ["Approx cheap", "TAESD", "Full"],
    "disable_all_extensions": lambda: ["none", "extra", "all"],
    "quicksettings_list": lambda: list(opts.data_labels),
}


def _text(value: Any) -> str:
    if value is None or value == "":
        return "empty" if value == "" else "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "empty"
    return str(value)


def label_of(key: str, info: OptionInfo) -> str:
    label = info.label or key
    return f"{label} (requires {info.requires})" if info.requires else label


def describe(key: str, info: OptionInfo) -> str:
    """What is shown under a setting: its default, its key, and the comment its author gave."""
    comment = " ".join(part.strip() for part in (info.comment_before, info.comment_after) if part and part.strip())
    return f"Default: {_text(info.default)} · {key}" + (f" · {comment}" if comment else "")


def _component_class(info: OptionInfo, key: str) -> type:
    if isinstance(info.component, str):
        return getattr(gr, info.component)
    if info.component is not None:
        return info.component  # an extension's Gradio class, as in A1111
    default = info.default
    if key in CHOICES or isinstance(default, list):
        return gr.Dropdown
    if isinstance(default, bool):
        return gr.Checkbox
    if isinstance(default, (int, float)):
        return gr.Number
    return gr.Textbox


def make_component(key: str, info: OptionInfo, elem_prefix: str = "setting_") -> gr.components.Component:
    """The component for a setting, holding its current value (A1111's ``component``/``component_args`` first)."""
    if isinstance(info, OptionHTML):
        return gr.HTML(info.text, elem_id=f"{elem_prefix}{key}")
    cls = _component_class(info, key)
    args = info.component_args() if callable(info.component_args) else dict(info.component_args or {})
    value = getattr(opts, key)
    if cls is gr.Dropdown and "choices" not in args:
        choices = CHOICES[key]() if key in CHOICES else []
        current = value if isinstance(value, list) else [value]
        args["choices"] = [*choices, *[v for v in current if v not in choices and v is not None]]
        args.setdefault("multiselect", isinstance(info.default, list))
    if cls is gr.Number and isinstance(info.default, int) and not isinstance(info.default, bool):
        args.setdefault("precision", 0)
    kwargs = {"label": label_of(key, info), "value": value, "elem_id": f"{elem_prefix}{key}", **args}
    if "info" in inspect.signature(cls.__init__).parameters:
        kwargs.setdefault("info", describe(key, info))
    return cls(**kwargs)


def sections(left_out: tuple = ()) -> dict[tuple[str, str], list[str]]:
    """Section -> its setting keys, in the order they were added (extensions' sections after the built-in ones);
    the quick settings are in the bar at the top instead, as in A1111."""
    found: dict[tuple[str, str], list[str]] = {}
    for key, info in opts.data_labels.items():
        if key in left_out:
            continue
        found.setdefault(tuple(info.section) if info.section else OTHER_SECTION, []).append(key)
    return found


def matches(query: str, key: str, info: OptionInfo) -> bool:
    words = query.lower().split()
    text = f"{key} {info.label} {getattr(info, 'text', '')}".lower()
    return all(word in text for word in words)


def visibility(query: str, section_label: str, layout: dict[tuple[str, str], list[str]]) -> list:
    """Updates for every section column, then every setting: a search shows each matching setting, in every
    section; without one, the chosen section."""
    query = (query or "").strip()
    column_updates, setting_updates = [], []
    for section, keys in layout.items():
        shown = [matches(query, key, opts.data_labels[key]) if query else section[1] == section_label for key in keys]
        column_updates.append(gr.update(visible=any(shown)))
        setting_updates += [gr.update(visible=visible) for visible in shown]
    return column_updates + setting_updates


def apply_settings(keys: list[str], values: tuple) -> str:
    """Apply what changed, load a newly chosen checkpoint, save; the message says what happened or what is wrong."""
    changed = {}
    for key, value in zip(keys, values):
        info = opts.data_labels[key]
        if isinstance(info, OptionHTML):
            continue
        try:
            new = opts.cast_value(key, value)
        except (TypeError, ValueError):
            return _error(f"settings: {key!r} cannot be {value!r}")
        if new != getattr(opts, key):
            changed[key] = new
    if not changed:
        return "<div class='settings-result'>Nothing changed.</div>"
    try:
        checkpoint = settings_change.apply(changed, "settings", is_api=False)
    except UserInputError as e:
        return _error(str(e))
    if checkpoint is not None:
        job = job_queue.queue.submit(lambda: sd_vae.reload_vae_weights(sd_models.reload_model_weights(info=checkpoint)),
                                     f"load {checkpoint.name}")
        job.wait()
        if job.status != job_queue.DONE:
            changed.pop("sd_model_checkpoint")
            return _error(f"Checkpoint not changed: {job.error or job.status}") + _saved(changed)
    return _saved(changed)


def _saved(changed: dict) -> str:
    if not changed:
        return ""
    try:
        settings_change.save()
    except OSError as e:
        return _error(f"settings applied but not saved to {shared.config_filename()}: {e.strerror or e}")
    labels = [opts.data_labels[key].label or key for key in changed]
    later = sorted({opts.data_labels[key].requires for key in changed} - {""})
    text = f"{len(changed)} setting{'s' if len(changed) != 1 else ''} changed: {', '.join(labels)}."
    if later:
        text += f" Takes effect after: {' / '.join(later)}."
    return f"<div class='settings-result'>{html.escape(text)}</div>"


def _error(message: str) -> str:
    return f"<div class='error' style='color:#d33'>Error: {html.escape(message)}</div>"


# Reload UI: the old server closes at once; after 2 s the page asks for itself until the rebuilt one answers.
RELOAD_JS = """() => {
    document.body.innerHTML = '<h1 id="reloading" style="text-align:center;margin-top:20%">Reloading...</h1>';
    const ping = () => fetch(location.href, {cache: "no-store"})
        .then(r => r.ok ? location.reload() : setTimeout(ping, 500)).catch(() => setTimeout(ping, 500));
    setTimeout(ping, 2000);
}"""


def request_reload() -> None:
    """Reload UI: the server rebuilds the page (extensions' scripts included) and serves it on the same port."""
    shared.state.request_restart()


def create_tab(quick: list[str]) -> dict[str, Any]:
    layout = sections(tuple(quick))
    first = next(iter(layout))[1]
    c: dict[str, Any] = {"layout": layout, "columns": [], "components": {}}
    with gr.Row():
        c["apply"] = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
        c["reload"] = gr.Button("Reload UI", elem_id="settings_restart_gradio")
    c["result"] = gr.HTML(elem_id="settings_result")
    with gr.Row():
        with gr.Column(scale=1, min_width=220):
            c["search"] = gr.Textbox(label="Search", placeholder="a word of a setting's label or key",
                                     elem_id="settings_search")
            c["section"] = gr.Radio([label for _, label in layout], value=first, label="Sections",
                                    elem_id="settings_sections")
        with gr.Column(scale=4):
            for (section_id, label), keys in layout.items():
                with gr.Column(visible=label == first, elem_id=f"settings_section_{section_id}") as column:
                    gr.Markdown(f"### {label}")
                    for key in keys:
                        c["components"][key] = make_component(key, opts.data_labels[key])
                c["columns"].append(column)
    return c


def wire_tab(c: dict[str, Any]) -> None:
    keys = list(c["components"])
    components = list(c["components"].values())
    layout = c["layout"]
    outputs = [*c["columns"], *components]
    filter_inputs = [c["search"], c["section"]]
    c["search"].change(lambda query, section: visibility(query, section, layout), filter_inputs, outputs, queue=False)
    c["section"].change(lambda section: ["", *visibility("", section, layout)], [c["section"]],
                        [c["search"], *outputs], queue=False)
    c["apply"].click(lambda *values: apply_settings(keys, values), components, [c["result"]])
    c["reload"].click(request_reload, None, None, queue=False, js=RELOAD_JS)


def quicksettings(keys: list[str]) -> dict[str, gr.components.Component]:
    """The quick settings bar's components for ``keys`` (the checkpoint and VAE are the bar's own)."""
    return {key: make_component(key, opts.data_labels[key]) for key in keys
            if key in opts.data_labels and key not in ("sd_model_checkpoint", "sd_vae")}


def apply_quicksetting(key: str, value: Any) -> str:
    return apply_settings([key], (value,))
