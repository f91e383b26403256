"""The Extensions tab: installed extensions (source, commit, enabled, load time, problems), enabling and disabling
them, and, only on a server bound to this computer and not shared, installing from a git URL and updating."""
from __future__ import annotations

import html

import gradio as gr

from modules import extensions, shared
from modules.errors import UserInputError
from webui.ui_common import error_html

COLUMNS = ["Enabled", "Extension", "Source", "Commit", "Branch", "Load time, s", "Problems"]


def table_rows() -> list[list]:
    return [[e.enabled, e.name, e.source, e.commit[:8], e.branch, round(e.load_time, 3), "; ".join(e.errors)]
            for e in extensions.extensions]


def updatable_names() -> list[str]:
    return [e.name for e in extensions.extensions if not e.is_builtin and e.remote]


def apply_enabled(enabled_names: list[str] | None):
    """Persist the checked extensions as enabled and the others as disabled (used from the next start)."""
    enabled_names = set(enabled_names or [])
    for extension in list(extensions.extensions):
        if extension.enabled != (extension.name in enabled_names):
            extensions.set_enabled(extension.name, extension.name in enabled_names)
    return gr.update(value=table_rows()), "Saved. Restart the web UI to load or unload the changed extensions."


def install(url: str, name: str):
    try:
        extension = extensions.install_from_url(url, name)
    except (UserInputError, PermissionError) as e:
        return gr.skip(), gr.skip(), gr.skip(), error_html(str(e))
    problems = f" Problems: {html.escape('; '.join(extension.errors))}" if extension.errors else ""
    message = (f"Installed {html.escape(extension.name)} at {html.escape(extension.commit[:8])} into "
               f"{html.escape(extension.path)}. Restart the web UI to load it.{problems}")
    names = [e.name for e in extensions.extensions]
    return (gr.update(value=table_rows()), gr.update(choices=names, value=[e.name for e in extensions.active()]),
            gr.update(choices=updatable_names()), message)


def update(name: str | None):
    if not name:
        return gr.skip(), error_html("choose an extension to update")
    try:
        commit = extensions.update(name)
    except (UserInputError, PermissionError) as e:
        return gr.skip(), error_html(str(e))
    return gr.update(value=table_rows()), f"{html.escape(name)} is now at {html.escape(commit[:8])}. Restart the web UI to use it."


def create_tab() -> dict:
    c: dict = {}
    c["table"] = gr.Dataframe(table_rows(), headers=COLUMNS, interactive=False, elem_id="extensions_table",
                              wrap=True)
    names = [e.name for e in extensions.extensions]
    with gr.Row():
        c["enabled"] = gr.CheckboxGroup(names, value=[e.name for e in extensions.active()], label="Enabled extensions",
                                        elem_id="extensions_enabled", scale=4)
        c["apply"] = gr.Button("Apply", elem_id="extensions_apply", scale=1)
    c["status"] = gr.HTML("", elem_id="extensions_status")
    if shared.cmd_opts.webui_is_non_local:
        gr.Markdown("Installing and updating extensions is only possible when the web UI is bound to this computer "
                    "(127.0.0.1) and not shared.", elem_id="extensions_install_unavailable")
        return c
    with gr.Accordion("Install from URL", open=False, elem_id="extensions_install"):
        with gr.Row():
            c["url"] = gr.Textbox(label="URL of the extension's git repository", elem_id="extensions_install_url", scale=4)
            c["name"] = gr.Textbox(label="Folder name (optional)", elem_id="extensions_install_dirname", scale=2)
        c["install"] = gr.Button("Install", variant="primary", elem_id="extensions_install_button")
    with gr.Row():
        c["update_name"] = gr.Dropdown(updatable_names(), label="Installed from git", elem_id="extensions_update_name",
                                       scale=4)
        c["update"] = gr.Button("Update", elem_id="extensions_update_button", scale=1)
    return c


def wire_tab(c: dict) -> None:
    c["apply"].click(apply_enabled, [c["enabled"]], [c["table"], c["status"]], queue=False)
    if "install" in c:
        c["install"].click(install, [c["url"], c["name"]], [c["table"], c["enabled"], c["update_name"], c["status"]],
                           concurrency_limit=1)
        c["update"].click(update, [c["update_name"]], [c["table"], c["status"]], concurrency_limit=1)
