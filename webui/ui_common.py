"""Pieces the generation tabs share: streaming a queued job's progress into the page, HTML snippets, and the
builders and events of the controls both tabs have (prompts, buttons, sampler, size, seeds, output)."""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, field

import gradio as gr

from modules import infotext_utils, sd_models, shared
from modules.engine import previews, prompt_chunks
from modules.runtime import job_queue

POLL_SECONDS = 0.4
EMPTY_COUNTER = "<span class='token-counter'>0/75</span>"


def progress_html(progress: dict, position: int) -> str:
    if position > 0:
        return f"<div class='progress-text'>Queued: {position} job(s) ahead</div>"
    step, steps = progress.get("step", 0), progress.get("steps", 0)
    eta = progress.get("eta")
    eta_text = f" · ETA {eta:.0f}s" if eta is not None else ""
    percent = int(progress.get("progress", 0) * 100)
    batch = f" · batch {progress.get('job_no', 0) + 1}/{progress['job_count']}" if progress.get("job_count", 0) > 1 else ""
    text = progress.get("textinfo")  # e.g. "Downloading codeformer-v0.1.0.pth: 40%" while weights arrive
    note = f"<div class='progress-text'>{html.escape(text)}</div>" if text else ""
    return (f"<div class='progress-text'>Step {step}/{steps}{batch}{eta_text} ({percent}%)</div>{note}"
            f"<progress value='{percent}' max='100' style='width:100%'></progress>")


def infotext_html(text: str) -> str:
    return f"<pre class='infotext' style='white-space:pre-wrap'>{html.escape(text or '')}</pre>"


def comments_html(comments: str) -> str:
    """Warnings of the job (unknown LoRA or styles, layers that did not fit ...)."""
    lines = [line for line in (comments or "").splitlines() if line.strip()]
    return "".join(f"<div class='comments' style='color:#b80'>{html.escape(line)}</div>" for line in lines)


def error_html(message: str) -> str:
    return f"<div class='error' style='color:#d33'>Error: {html.escape(message)}</div>"


def error_updates(message: str) -> tuple:
    """The one update an invalid request gets: the error in the progress area, nothing else touched."""
    return gr.skip(), error_html(message), gr.skip(), gr.skip(), gr.skip(), gr.skip()


def stream_job(run, description: str):
    """Submit ``run`` to the job queue and yield (gallery, progress, preview, info, result, job id) updates
    until it finishes. The job runs in the queue worker: closing the tab stops this stream, not the job."""
    job = job_queue.queue.submit(run, description, client="ui")
    last_preview = -1
    while not job.wait(POLL_SECONDS):
        progress = job_queue.queue.progress(job)
        preview = gr.skip()
        job_state = job_queue.queue.state_of(job)  # with --gpus: the state of the worker running it
        if (job.status == job_queue.RUNNING and job_state.id_live_preview != last_preview
                and job_state.current_latent is not None and not shared.opts.content_filter):
            last_preview = job_state.id_live_preview
            image = previews.current_preview(job_state, sd_models.current_model(job_queue.queue.slot_of(job)),
                                             shared.opts.show_progress_type)
            preview = gr.update(value=image, visible=True) if image is not None else gr.skip()
        yield gr.skip(), progress_html(progress, job_queue.queue.position(job)), preview, gr.skip(), gr.skip(), job.id
    if job.status != job_queue.DONE:
        yield gr.skip(), error_html(job.error or job.status), gr.update(visible=False), gr.skip(), gr.skip(), job.id
        return
    processed = job.result
    first_info = infotext_html(processed.infotexts[0] if processed.infotexts else "") + comments_html(processed.comments)
    gallery = [getattr(image, "already_saved_as", None) or image for image in processed.images]
    result = {"seed": processed.seed, "subseed": processed.subseed, "infotexts": processed.infotexts,
              "images": list(processed.images), "selected": 0}
    yield gallery, "", gr.update(visible=False), first_info, result, job.id


def select_image(result: dict | None, evt: gr.SelectData):
    """Show the clicked image's infotext and remember which one is selected (for Send to)."""
    if not result or evt.index is None or evt.index >= len(result.get("infotexts", [])):
        return gr.skip(), gr.skip()
    return infotext_html(result["infotexts"][evt.index]), {**result, "selected": evt.index}


def update_token_counter(text: str, steps, is_positive: bool = True) -> str:
    try:
        count, limit = prompt_chunks.token_counter(text or "", int(steps or 20), is_positive)
    except Exception as e:  # the counter must never break typing
        return f"<span class='token-counter error' title='{html.escape(str(e))}'>?/75</span>"
    return f"<span class='token-counter'>{count}/{limit}</span>"


def variation_values(use_variation, subseed, subseed_strength, resize_w, resize_h) -> tuple:
    """The "Extra" seed fields as the job gets them: ignored (defaults) while the group is closed."""
    if not use_variation:
        return -1, 0, 0, 0
    return subseed, subseed_strength, resize_w, resize_h


def prompt_boxes(tab: str, c: dict, placeholder: str = "") -> None:
    """Prompt and negative prompt, each with its token counter."""
    with gr.Row():
        c["prompt"] = gr.Textbox(label="Prompt", lines=3, elem_id=f"{tab}_prompt", scale=8, placeholder=placeholder)
        c["token_counter"] = gr.HTML(EMPTY_COUNTER, elem_id=f"{tab}_token_counter", scale=0, min_width=70)
    with gr.Row():
        c["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{tab}_neg_prompt", scale=8)
        c["negative_token_counter"] = gr.HTML(EMPTY_COUNTER, scale=0, min_width=70, elem_id=f"{tab}_negative_token_counter")


def action_buttons(tab: str, c: dict, interrogate: bool = False) -> None:
    """Generate, paste, Interrupt and Skip (and the Interrogate buttons when asked), and the states the job's
    result and id live in."""
    with gr.Column(scale=1, min_width=200):
        c["generate"] = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate")
        c["paste"] = gr.Button("↙️", elem_id=f"{tab}_paste", min_width=40)
        with gr.Row():
            c["interrupt"] = gr.Button("Interrupt", elem_id=f"{tab}_interrupt", min_width=60)
            c["skip"] = gr.Button("Skip", elem_id=f"{tab}_skip", min_width=60)
        if interrogate:
            with gr.Row():
                c["interrogate"] = gr.Button("Interrogate CLIP", elem_id="interrogate", min_width=60)
                c["deepbooru"] = gr.Button("Interrogate DeepBooru", elem_id="deepbooru", min_width=60)
    c["result"] = gr.State(None)
    c["job_id"] = gr.State(None)


def sampler_controls(tab: str, c: dict, sampler_names: list[str], schedule_labels: list[str]) -> None:
    with gr.Row():
        c["sampler_name"] = gr.Dropdown(sampler_names, value=sampler_names[0], label="Sampling method",
                                        elem_id=f"{tab}_sampling")
        c["scheduler"] = gr.Dropdown(schedule_labels, value="Automatic", label="Schedule type", elem_id=f"{tab}_scheduler")
    c["steps"] = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{tab}_steps")


def size_and_batch(tab: str, c: dict) -> None:
    with gr.Row():
        c["width"] = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id=f"{tab}_width")
        c["height"] = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id=f"{tab}_height")
    with gr.Row():
        c["batch_count"] = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{tab}_batch_count")
        c["batch_size"] = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{tab}_batch_size")


def cfg_slider(tab: str) -> gr.Slider:
    return gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale", elem_id=f"{tab}_cfg_scale")


def seed_controls(tab: str, c: dict) -> None:
    """Seed, random/reuse buttons and the "Extra" variation group, with their events."""
    with gr.Row():
        c["seed"] = gr.Number(-1, label="Seed", precision=0, elem_id=f"{tab}_seed", scale=4)
        random_seed = gr.Button("🎲", elem_id=f"{tab}_random_seed", scale=0, min_width=40)
        reuse_seed = gr.Button("♻️", elem_id=f"{tab}_reuse_seed", scale=0, min_width=40)
        c["use_variation"] = gr.Checkbox(False, label="Extra", elem_id=f"{tab}_subseed_show", scale=1)
    with gr.Group(visible=False) as variation_group:
        with gr.Row():
            c["subseed"] = gr.Number(-1, label="Variation seed", precision=0, elem_id=f"{tab}_subseed")
            c["subseed_strength"] = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength",
                                              elem_id=f"{tab}_subseed_strength")
        with gr.Row():
            c["seed_resize_from_w"] = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width",
                                                elem_id=f"{tab}_seed_resize_from_w")
            c["seed_resize_from_h"] = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                                elem_id=f"{tab}_seed_resize_from_h")
    random_seed.click(lambda: -1, None, c["seed"], queue=False)
    reuse_seed.click(lambda r: r["seed"] if r else -1, [c["result"]], c["seed"], queue=False)
    c["use_variation"].change(lambda v: gr.update(visible=v), [c["use_variation"]], [variation_group], queue=False)


def output_panel(tab: str, c: dict, below_gallery=None) -> None:
    """Progress, live preview, gallery (``below_gallery()`` adds components under it) and the infotext."""
    with gr.Column(scale=1):
        c["progress"] = gr.HTML("", elem_id=f"{tab}_progress")
        c["preview"] = gr.Image(label="Live preview", visible=False, interactive=False, elem_id=f"{tab}_preview")
        c["gallery"] = gr.Gallery(label="Output", columns=4, height="auto", elem_id=f"{tab}_gallery",
                                  interactive=False, format="png")
        if below_gallery is not None:
            below_gallery()
        c["info"] = gr.HTML("", elem_id=f"html_info_{tab}")


def wire_generation(c: dict, generate, input_names: list[str], paste, paste_outputs: list) -> None:
    """The events both generation tabs have: Generate and Ctrl+Enter, Interrupt, Skip, gallery selection,
    the token counters and the paste button. ``generate(values, script_args)`` gets the controls named in
    ``input_names`` as a dict, then the scripts' control values as a list."""
    outputs = [c["gallery"], c["progress"], c["preview"], c["info"], c["result"], c["job_id"]]
    inputs = [c[name] for name in input_names] + list(c.get("script_inputs") or [])

    def submit(*values):
        yield from generate(dict(zip(input_names, values)), list(values[len(input_names):]))

    c["generate"].click(submit, inputs, outputs, concurrency_limit=None, show_progress="hidden")
    c["prompt"].submit(submit, inputs, outputs, concurrency_limit=None, show_progress="hidden")
    c["interrupt"].click(lambda jid: job_queue.queue.interrupt(jid), [c["job_id"]], None, queue=False)
    c["skip"].click(lambda jid: job_queue.queue.skip(jid), [c["job_id"]], None, queue=False)
    c["gallery"].select(select_image, [c["result"]], [c["info"], c["result"]], queue=False)
    counter_events = dict(queue=False, show_progress="hidden", trigger_mode="always_last")
    c["prompt"].change(update_token_counter, [c["prompt"], c["steps"]], [c["token_counter"]], **counter_events)
    c["negative_prompt"].change(lambda text, n: update_token_counter(text, n, False), [c["negative_prompt"], c["steps"]],
                                [c["negative_token_counter"]], **counter_events)
    c["paste"].click(paste, [c["prompt"]], paste_outputs, queue=False)


def override_settings_box(tab: str) -> gr.Dropdown:
    """Settings pasted from an infotext that differ from the current ones; used for the next job only."""
    return gr.Dropdown([], value=[], multiselect=True, label="Override settings", visible=False,
                       elem_id=f"{tab}_override_settings", allow_custom_value=True)


def override_settings_update(params: dict):
    labels = infotext_utils.override_settings_labels(infotext_utils.override_settings_from_infotext(params))
    return gr.update(choices=labels, value=labels, visible=bool(labels))


def script_controls(tab: str, c: dict) -> None:
    """The always-on scripts' controls and the Script dropdown with each selectable script's controls."""
    from modules import scripts

    c["script_inputs"] = scripts.runner_for(tab == "img2img").setup_ui()


def _script_paste_fields(tab: str) -> list:
    """The (control, infotext key or function) pairs of the tab's scripts; none before the page built them."""
    from modules import scripts

    runner = scripts.scripts_img2img if tab == "img2img" else scripts.scripts_txt2img
    return list(runner.infotext_fields) if runner is not None else []


def script_paste_components(tab: str) -> list:
    """The controls scripts fill from a pasted infotext (their ``infotext_fields``)."""
    return [component for component, _ in _script_paste_fields(tab)]


def script_paste_updates(tab: str, params: dict | None) -> list:
    """One update per ``script_paste_components(tab)``: a field's infotext key, or its function of the parsed
    infotext (A1111's ``infotext_fields``); keys the infotext lacks are left alone."""
    from modules import errors

    updates = []
    for component, key in _script_paste_fields(tab):
        if params is None:
            updates.append(gr.skip())
        elif callable(key):
            try:
                value = key(params)
            except Exception as e:
                errors.report(f"pasting into a script's field failed: {type(e).__name__}: {e}", exc_info=True)
                value = gr.skip()
            updates.append(value if isinstance(value, dict) else gr.update(value=value))
        elif key in params:
            updates.append(gr.update(value=_pasted_value(component, params[key])))
        else:
            updates.append(gr.skip())
    return updates


def _pasted_value(component, value):
    """An infotext value (a string) in the type of the control it goes into."""
    if isinstance(component, gr.Checkbox):
        return str(value).lower() == "true"
    if isinstance(component, (gr.Slider, gr.Number)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return component.value
        return int(number) if number.is_integer() else number
    return value


POSTPROCESS_FIELDS = ["restore_faces", "face_restoration_model", "code_former_weight"]  # postprocess_controls adds them
REFINER_FIELDS = ["refiner_enabled", "refiner_checkpoint", "refiner_switch_at"]  # refiner_controls adds them


@dataclass(kw_only=True)
class GenerationInputs:
    """The controls both generation tabs have, by name; each tab's ``generate`` receives its subclass."""
    prompt: str
    negative_prompt: str
    sampler_name: str
    scheduler: str
    steps: int
    cfg_scale: float
    width: int
    height: int
    seed: int
    use_variation: bool
    subseed: int
    subseed_strength: float
    seed_resize_from_w: int
    seed_resize_from_h: int
    batch_count: int
    batch_size: int
    styles: list = field(default_factory=list)
    override_settings: list | None = None
    restore_faces: bool = False
    face_restoration_model: str | None = None
    code_former_weight: float | None = None
    refiner_enabled: bool = False
    refiner_checkpoint: str | None = None
    refiner_switch_at: float = 0.8

    def refiner(self) -> dict:
        """``make_txt2img``/``make_img2img``'s refiner arguments: none unless the accordion is ticked."""
        if not self.refiner_enabled or self.refiner_checkpoint in (None, "", "None"):
            return {}
        return {"refiner_checkpoint": self.refiner_checkpoint, "refiner_switch_at": float(self.refiner_switch_at)}


def postprocess_controls(tab: str, c: dict) -> None:
    """Restore faces (model and CodeFormer weight), for one generation tab."""
    from modules.loading import model_catalog

    with gr.Accordion("Faces", open=False, elem_id=f"{tab}_faces"):
        with gr.Row():
            c["restore_faces"] = gr.Checkbox(bool(shared.opts.face_restoration), label="Restore faces",
                                             elem_id=f"{tab}_restore_faces")
            c["face_restoration_model"] = gr.Dropdown(["CodeFormer", "GFPGAN"], value=shared.opts.face_restoration_model,
                                                      label="Face restoration model", elem_id=f"{tab}_face_restoration_model")
            c["code_former_weight"] = gr.Slider(0, 1, value=float(shared.opts.code_former_weight), step=0.01,
                                                label="CodeFormer weight (0 = strongest effect)",
                                                elem_id=f"{tab}_code_former_weight")
        hint = model_catalog.missing_hint(model_catalog.FACE_RESTORERS)
        if hint:
            gr.Markdown("Face restoration needs weights that are not installed yet:\n\n" +
                        "\n".join(f"- {line}" for line in hint.splitlines()), elem_id=f"{tab}_face_weights_hint")


def refiner_controls(tab: str, c: dict) -> None:
    """A1111's Refiner accordion: a second checkpoint (SDXL's refiner) that takes over the sampling run at "Switch
    at" of the way."""
    from modules import sd_models

    with gr.Accordion("Refiner", open=False, elem_id=f"{tab}_refiner"):
        c["refiner_enabled"] = gr.Checkbox(False, label="Refiner", elem_id=f"{tab}_enable_refiner")
        with gr.Row():
            c["refiner_checkpoint"] = gr.Dropdown(sd_models.checkpoint_tiles(), value=None, label="Checkpoint",
                                                  elem_id=f"{tab}_checkpoint", scale=3)
            c["refiner_switch_at"] = gr.Slider(0.01, 1.0, value=0.8, step=0.01, label="Switch at",
                                               elem_id=f"{tab}_switch_at", scale=2)


def restore_faces_options(overrides: dict, restore_faces=False, face_restoration_model=None,
                          code_former_weight=None) -> bool:
    """The job's ``restore_faces``. The restoration model and CodeFormer weight are settings in A1111, so they go
    into the job's ``overrides``."""
    if restore_faces:
        if face_restoration_model:
            overrides["face_restoration_model"] = face_restoration_model
        if code_former_weight is not None:
            overrides["code_former_weight"] = float(code_former_weight)
    return bool(restore_faces)


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


def style_names() -> list[str]:
    return list(shared.prompt_styles.styles)
