"""Pieces the generation tabs share: streaming a queued job's progress into the page, HTML snippets,
the seed controls, token counters and the override-settings box."""
from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from modules import job_queue, prompt_chunks
from modules.shared import state

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
    return (f"<div class='progress-text'>Step {step}/{steps}{batch}{eta_text} ({percent}%)</div>"
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
    job = job_queue.queue.submit(run, description)
    last_preview = -1
    while not job.wait(POLL_SECONDS):
        progress = job_queue.queue.progress(job)
        preview = gr.skip()
        if job is job_queue.queue.current and state.id_live_preview != last_preview and state.current_latent is not None:
            from modules import previews

            last_preview = state.id_live_preview
            preview = gr.update(value=previews.latent_to_image(state.current_latent), visible=True)
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


@dataclass
class SeedControls:
    seed: gr.Number
    use_variation: gr.Checkbox
    subseed: gr.Number
    subseed_strength: gr.Slider
    resize_w: gr.Slider
    resize_h: gr.Slider

    @property
    def components(self) -> list:
        return [self.seed, self.use_variation, self.subseed, self.subseed_strength, self.resize_w, self.resize_h]


def seed_controls(tab: str, result: gr.State) -> SeedControls:
    """Seed, random/reuse buttons and the "Extra" variation group, with their events."""
    with gr.Row():
        seed = gr.Number(-1, label="Seed", precision=0, elem_id=f"{tab}_seed", scale=4)
        random_seed = gr.Button("🎲", elem_id=f"{tab}_random_seed", scale=0, min_width=40)
        reuse_seed = gr.Button("♻️", elem_id=f"{tab}_reuse_seed", scale=0, min_width=40)
        use_variation = gr.Checkbox(False, label="Extra", elem_id=f"{tab}_subseed_show", scale=1)
    with gr.Group(visible=False) as variation_group:
        with gr.Row():
            subseed = gr.Number(-1, label="Variation seed", precision=0, elem_id=f"{tab}_subseed")
            subseed_strength = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength", elem_id=f"{tab}_subseed_strength")
        with gr.Row():
            resize_w = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width", elem_id=f"{tab}_seed_resize_from_w")
            resize_h = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height", elem_id=f"{tab}_seed_resize_from_h")
    random_seed.click(lambda: -1, None, seed, queue=False)
    reuse_seed.click(lambda r: r["seed"] if r else -1, [result], seed, queue=False)
    use_variation.change(lambda v: gr.update(visible=v), [use_variation], [variation_group], queue=False)
    return SeedControls(seed, use_variation, subseed, subseed_strength, resize_w, resize_h)


def override_settings_box(tab: str) -> gr.Dropdown:
    """Settings pasted from an infotext that differ from the current ones; used for the next job only."""
    return gr.Dropdown([], value=[], multiselect=True, label="Override settings", visible=False,
                       elem_id=f"{tab}_override_settings", allow_custom_value=True)


def override_settings_update(params: dict):
    from modules import infotext_utils

    labels = infotext_utils.override_settings_labels(infotext_utils.override_settings_from_infotext(params))
    return gr.update(choices=labels, value=labels, visible=bool(labels))
