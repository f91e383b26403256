"""The History tab: every image under outputs/, newest first, by page; search (``modules/history/index.py``), the
full image with its infotext, Send to, and Move to trash (only on a loopback, non-shared server)."""
from __future__ import annotations

import datetime
import html
import os

import gradio as gr

from modules import shared
from modules.errors import UserInputError
from modules.history import index

PER_PAGE = 36
SEARCH_HINT = ('words of the prompt · neg:word · seed:1234 · model:name · sampler:"Euler a" · size:512x768 · '
               'date:2026-11-30 · after:/before:YYYY-MM-DD')


def deleting_allowed() -> bool:
    return not getattr(shared.cmd_opts, "webui_is_non_local", False)


def search(query: str, page) -> tuple:
    """(gallery, status, page, the page's paths) for a search text and page number."""
    try:
        total, entries = index.history().search(query or "", int(page or 1), PER_PAGE)
    except UserInputError as e:
        return gr.skip(), f"<div class='error' style='color:#d33'>Error: {html.escape(str(e))}</div>", gr.skip(), gr.skip()
    pages = max(1, -(-total // PER_PAGE))
    page = min(max(1, int(page or 1)), pages)
    if entries == [] and total:  # past the last page: show the last one
        total, entries = index.history().search(query or "", page, PER_PAGE)
    gallery = [(entry.path, entry.prompt[:80]) for entry in entries]
    status = f"<div class='history-status'>{total} image{'s' if total != 1 else ''} · page {page} of {pages}</div>"
    return gallery, status, page, [entry.path for entry in entries]


def refresh(query: str, page) -> tuple:
    """Reconcile the index with the folder (files added or removed by hand), then search again."""
    index.history().reconcile()
    return search(query, page)


def turn(query: str, page, step: int) -> tuple:
    return search(query, max(1, int(page or 1) + step))


def select(paths: list, evt: gr.SelectData) -> tuple:
    """The chosen image: (full image, its infotext as HTML, the infotext, the path)."""
    if evt.index is None or not paths or evt.index >= len(paths):
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    entry = index.history().entry(paths[evt.index])
    if entry is None:
        return None, "<div class='error'>That image is no longer in the history; press Refresh.</div>", "", ""
    when = datetime.datetime.fromtimestamp(entry.created).strftime("%Y-%m-%d %H:%M")
    relative = os.path.relpath(entry.path, index.history().root)
    info = (f"<div class='history-file'>{html.escape(relative)} · {when}</div>"
            f"<pre class='infotext' style='white-space:pre-wrap'>{html.escape(entry.infotext or '(no infotext)')}</pre>")
    return entry.path, info, entry.infotext, entry.path


def move_to_trash(path: str, query: str, page) -> tuple:
    """Move the shown image into <data dir>/trash (never a hard delete), then show the page again."""
    if not deleting_allowed():
        message = "Error: moving images to the trash works only on a loopback server that is not shared"
        return (gr.skip(), f"<div class='error' style='color:#d33'>{message}</div>", gr.skip(), gr.skip(), gr.skip(),
                gr.skip(), gr.skip(), gr.skip())
    try:
        target = index.history().move_to_trash(path or "", index.trash_dir())
    except UserInputError as e:
        return (gr.skip(), f"<div class='error' style='color:#d33'>Error: {html.escape(str(e))}</div>", gr.skip(),
                gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
    gallery, status, page, paths = search(query, page)
    note = f"<div class='history-status'>Moved to {html.escape(target)}</div>"
    return gallery, status + note, page, paths, None, "", "", ""


def create_tab() -> dict:
    c: dict = {"paths": gr.State([])}
    with gr.Row():
        c["query"] = gr.Textbox(label="Search", placeholder=SEARCH_HINT, elem_id="history_query", scale=5)
        c["search"] = gr.Button("Search", variant="primary", elem_id="history_search", scale=1)
        c["refresh"] = gr.Button("🔄 Refresh", elem_id="history_refresh", scale=0, min_width=100)
    with gr.Row():
        c["prev"] = gr.Button("◀ Previous", elem_id="history_prev", scale=0, min_width=110)
        c["page"] = gr.Number(value=1, precision=0, minimum=1, label="Page", elem_id="history_page", scale=0,
                              min_width=90)
        c["next"] = gr.Button("Next ▶", elem_id="history_next", scale=0, min_width=110)
        c["status"] = gr.HTML(elem_id="history_status")
    with gr.Row():
        with gr.Column(scale=3):
            c["gallery"] = gr.Gallery(columns=6, height="auto", allow_preview=False, show_label=False,
                                      elem_id="history_gallery")
        with gr.Column(scale=2):
            c["image"] = gr.Image(type="filepath", label="Image", interactive=False, elem_id="history_image")
            c["info"] = gr.HTML(elem_id="history_info")
            c["text"] = gr.Textbox(visible=False, elem_id="history_text")
            c["path"] = gr.Textbox(visible=False, elem_id="history_path")
            with gr.Row():
                for target, label in (("txt2img", "txt2img"), ("img2img", "img2img"), ("inpaint", "inpaint"),
                                      ("extras", "extras")):
                    c[f"send_{target}"] = gr.Button(f"Send to {label}", elem_id=f"history_send_{target}")
                c["delete"] = gr.Button("🗑 Move to trash", elem_id="history_delete", visible=deleting_allowed())
    return c


def wire_tab(c: dict, page_tab: gr.Tab) -> None:
    listing = [c["gallery"], c["status"], c["page"], c["paths"]]
    ask = [c["query"], c["page"]]
    c["search"].click(lambda query: search(query, 1), [c["query"]], listing, queue=False)
    c["query"].submit(lambda query: search(query, 1), [c["query"]], listing, queue=False)
    c["refresh"].click(refresh, ask, listing)
    c["prev"].click(lambda query, page: turn(query, page, -1), ask, listing, queue=False)
    c["next"].click(lambda query, page: turn(query, page, 1), ask, listing, queue=False)
    page_tab.select(search, ask, listing, queue=False)
    c["gallery"].select(select, [c["paths"]], [c["image"], c["info"], c["text"], c["path"]], queue=False)
    c["delete"].click(move_to_trash, [c["path"], *ask], [*listing, c["image"], c["info"], c["text"], c["path"]],
                      queue=False)
