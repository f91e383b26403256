"""The Extensions tab and extension installation: git install and update on a loopback server only, install.py
under the protected-package constraints, enable/disable, extension tabs, and the page's injected JS/CSS."""
from __future__ import annotations

import os
import shutil
import subprocess

import gradio as gr
import pytest

from tests.conftest import FIXTURES, titled, write_extension


def git(folder, *args) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def make_repo(folder, files: dict[str, str]):
    write_extension(folder.parent, folder.name, files)
    git(folder, "init", "-q", "-b", "main")
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "first")
    return folder


def test_install_from_a_git_url_then_update(ext_root, tmp_path):
    from modules import extensions
    from webui.tabs import extensions as extensions_tab

    source = make_repo(tmp_path / "src" / "my-ext", {"scripts/mine.py": titled("Mine")})
    table, enabled, updatable, message = extensions_tab.install(str(source), "")
    assert "Installed my-ext" in message and "Restart" in message
    installed = ext_root["user"] / "my-ext"
    assert (installed / "scripts" / "mine.py").is_file() and not list(ext_root["user"].glob(".*installing"))
    row = next(r for r in table["value"] if r[1] == "my-ext")
    assert row[0] is True and row[2] == str(source) and row[3] == git(source, "rev-parse", "HEAD")[:8]
    assert updatable["choices"] == ["my-ext"]
    (source / "scripts" / "more.py").write_text(titled("More"))
    git(source, "add", "-A")
    git(source, "commit", "-qm", "second")
    _, message = extensions_tab.update("my-ext")
    assert git(source, "rev-parse", "HEAD")[:8] in message
    assert (installed / "scripts" / "more.py").is_file()
    assert extensions.find("my-ext").commit == git(source, "rev-parse", "HEAD")
    *_, again = extensions_tab.install(str(source), "")
    assert "already installed" in again
    *_, bad = extensions_tab.install("ext::sh -c touch% /tmp/pwned", "")
    assert "is not a git URL" in bad
    *_, escape = extensions_tab.install(str(source), "../outside")
    assert "may only contain" in escape and not (ext_root["user"].parent / "outside").exists()


def test_install_and_update_do_not_exist_on_a_non_local_server(ext_root, tmp_path, monkeypatch):
    from modules import extensions, shared
    from webui.tabs import extensions as extensions_tab

    source = make_repo(tmp_path / "src" / "remote-ext", {"scripts/r.py": titled("R")})
    monkeypatch.setattr(shared.cmd_opts, "webui_is_non_local", True)
    *_, message = extensions_tab.install(str(source), "")
    assert "only possible when the server is bound to 127.0.0.1" in message
    assert not (ext_root["user"] / "remote-ext").exists()
    with pytest.raises(PermissionError):
        extensions.update("remote-ext")
    with gr.Blocks() as demo:
        c = extensions_tab.create_tab()
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert "install" not in c and "extensions_install_button" not in ids and "extensions_update_button" not in ids
    assert "extensions_install_unavailable" in ids and "extensions_table" in ids
    monkeypatch.setattr(shared.cmd_opts, "webui_is_non_local", False)
    with gr.Blocks() as demo:
        c = extensions_tab.create_tab()
    assert "install" in c and "extensions_install_button" in {getattr(b, "elem_id", None) for b in demo.blocks.values()}


def test_enable_disable_from_the_tab_is_saved(ext_root):
    from modules import extensions, scripts, shared
    from webui.tabs import extensions as extensions_tab

    write_extension(ext_root["user"], "one", {"scripts/a.py": titled("One")})
    write_extension(ext_root["user"], "two", {"scripts/b.py": titled("Two")})
    scripts.reload_scripts()
    table, message = extensions_tab.apply_enabled(["two"])
    assert shared.opts.disabled_extensions == ["one"] and "Restart" in message
    assert [r[:2] for r in table["value"]] == [[False, "one"], [True, "two"]]
    scripts.reload_scripts()
    assert [e.name for e in extensions.active()] == ["two"]


def test_install_script_runs_under_the_constraints(ext_root, monkeypatch):
    from modules import extensions, scripts

    write_extension(ext_root["user"], "greedy", {
        "install.py": "import launch\nlaunch.run_pip('install torch==2.0.0', 'an older torch')\n"})
    write_extension(ext_root["user"], "raw-pip", {
        "install.py": "import subprocess, sys\n"
                      "subprocess.check_call([sys.executable, '-m', 'pip', 'install', 'gradio==5.0.0'])\n"})
    shutil.copytree(os.path.join(FIXTURES, "example-a1111"), ext_root["user"] / "example-a1111")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the resolver refuses before anything is downloaded
    scripts.reload_scripts()
    for name in ("greedy", "raw-pip"):
        assert not extensions.run_install_script(extensions.find(name))
        failure = extensions.find(name).errors[-1]
        assert failure.startswith("install.py failed") and "ResolutionImpossible" in failure, failure
    example = extensions.find("example-a1111")
    assert extensions.run_install_script(example) and example.errors == []
    from importlib.metadata import version

    assert version("torch").startswith("2.13.0") and version("gradio") == "6.31.0"


def test_extension_tabs_settings_and_assets_reach_the_page(ext_root, data_dir):
    from modules import script_callbacks, scripts, shared
    from webui import extension_assets, ui

    shutil.copytree(os.path.join(FIXTURES, "example-a1111"), ext_root["user"] / "example-a1111")
    write_extension(ext_root["user"], "tabby", {"scripts/tab.py": (
        "import gradio as gr\nfrom modules import script_callbacks\n\n"
        "def tabs():\n    with gr.Blocks(analytics_enabled=False) as block:\n"
        "        gr.Textbox('hello from a tab', elem_id='tabby_text')\n    return [(block, 'Tabby', 'tabby')]\n\n"
        "script_callbacks.on_ui_tabs(tabs)\n")})
    scripts.reload_scripts()
    script_callbacks.ui_settings_callback()
    assert shared.opts.example_stamp_note == "hello"
    demo = ui.create_ui()
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"tab_tabby", "tabby_text", "tab_extensions", "txt2img_script_dropdown"} <= ids
    assert "script_txt2img_example_stamp_enabled" in ids  # the always-on script's controls
    head = extension_assets.head_html()
    assert 'data-source="example-a1111/javascript/example.js"' in head and "exampleExtensionLoaded" in head
    assert "#example-extension-marker" in extension_assets.css()


def test_start_up_keeps_what_install_py_reported(ext_root, monkeypatch):
    from modules import extensions, shared
    from webui import server
    from webui.tabs import extensions as extensions_tab

    write_extension(ext_root["user"], "failing", {"install.py": "raise SystemExit('cannot set up the thing')\n",
                                                  "scripts/f.py": titled("Failing")})
    extensions.list_extensions()
    monkeypatch.setattr(shared.cmd_opts, "skip_install", False)
    server.load_extensions(shared.cmd_opts)
    assert "cannot set up the thing" in extensions.find("failing").errors[-1]
    assert "cannot set up the thing" in next(r for r in extensions_tab.table_rows() if r[1] == "failing")[6]


WATCHER = '''import gradio as gr

import modules.scripts as scripts
from modules import script_callbacks

seen = []
script_callbacks.on_before_component(lambda component, **kwargs: seen.append(("before", kwargs["elem_id"])))
script_callbacks.on_after_component(lambda component, **kwargs: seen.append(("after", kwargs["elem_id"])))


class Script(scripts.Script):
    def __init__(self):
        self.own = []
        self.on_after_component(self.found_prompt, elem_id="txt2img_prompt")

    def found_prompt(self, params):
        self.own.append(("callback", params.component.elem_id))
        params.component.change(lambda text: None, [params.component], None)  # extensions wire events here

    def title(self):
        return "Watcher"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def after_component(self, component, **kwargs):
        self.own.append(kwargs["elem_id"])
'''


def test_component_hooks_see_every_component_and_their_tab(ext_root, data_dir):
    import sys

    from modules import scripts
    from webui import ui

    write_extension(ext_root["user"], "watcher", {"scripts/watcher.py": WATCHER})
    scripts.reload_scripts()
    ui.create_ui()
    seen = sys.modules["watcher.py"].seen
    ids = [elem_id for when, elem_id in seen if when == "after"]
    assert {"setting_sd_model_checkpoint", "txt2img_prompt", "img2img_prompt", "extras_image"} <= set(ids)
    position = seen.index(("before", "txt2img_prompt"))
    assert seen[position + 1] == ("after", "txt2img_prompt")  # before, then after, for each component
    assert ids.index("setting_sd_model_checkpoint") < ids.index("txt2img_prompt") < ids.index("img2img_prompt")
    txt2img_watcher = scripts.scripts_txt2img.title_map["watcher"]
    img2img_watcher = scripts.scripts_img2img.title_map["watcher"]
    # each tab's script instance sees that tab's components only; the elem_id callback fired once, for its id
    assert "txt2img_prompt" in txt2img_watcher.own and "img2img_prompt" not in txt2img_watcher.own
    assert "img2img_prompt" in img2img_watcher.own and "txt2img_prompt" not in img2img_watcher.own
    assert txt2img_watcher.own.count(("callback", "txt2img_prompt")) == 1
    assert not any(isinstance(entry, tuple) for entry in img2img_watcher.own)


PASTER = '''import gradio as gr
from modules import infotext_utils, script_callbacks


def tabs():
    with gr.Blocks(analytics_enabled=False) as block:
        text = gr.Textbox("", elem_id="paster_text")
        image = gr.Image(type="pil", elem_id="paster_image")
        to_txt2img = gr.Button("to txt2img", elem_id="paster_to_txt2img")
        to_inpaint = gr.Button("to inpaint", elem_id="paster_to_inpaint")
    infotext_utils.register_paste_params_button(infotext_utils.ParamBinding(
        paste_button=to_txt2img, tabname="txt2img", source_text_component=text))
    infotext_utils.register_paste_params_button(infotext_utils.ParamBinding(
        paste_button=to_inpaint, tabname="inpaint", source_text_component=text, source_image_component=image))
    return [(block, "Paster", "paster")]


script_callbacks.on_ui_tabs(tabs)
'''


def test_paste_buttons_extensions_register_fill_the_target_tab(ext_root, data_dir):
    from modules import infotext_utils, scripts
    from tests.conftest import noise_image
    from webui import ui

    write_extension(ext_root["user"], "paster", {"scripts/paster.py": PASTER})
    scripts.reload_scripts()
    demo = ui.create_ui()
    assert infotext_utils.registered_param_bindings == []  # each binding is wired into the page it belongs to
    by_id = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}

    def handler(elem_id):
        button = by_id[elem_id]
        return next(f for f in demo.fns.values() if (button._id, "click") in f.targets)

    infotext = "a lighthouse\nNegative prompt: fog\nSteps: 7, Sampler: Euler, CFG scale: 5, Seed: 42, Size: 64x96"
    to_txt2img = handler("paster_to_txt2img")
    assert [c.elem_id for c in to_txt2img.inputs] == ["paster_text"]
    updates = to_txt2img.fn(infotext)
    values = {out.elem_id: update for out, update in zip(to_txt2img.outputs, updates)}
    assert updates[0].selected == "txt2img"
    assert values["txt2img_prompt"]["value"] == "a lighthouse" and values["txt2img_steps"]["value"] == 7
    assert values["txt2img_seed"]["value"] == 42 and values["txt2img_height"]["value"] == 96
    to_inpaint = handler("paster_to_inpaint")
    picture = noise_image(64, 96)
    updates = to_inpaint.fn(infotext, picture)
    values = {out.elem_id: update for out, update in zip(to_inpaint.outputs, updates)}
    assert updates[0].selected == "img2img" and updates[1].selected == "inpaint"
    assert values["img2maskimg"]["value"]["background"].size == (64, 96)
    assert values["img2img_prompt"]["value"] == "a lighthouse" and values["img2img_steps"]["value"] == 7
    assert values["img2img_neg_prompt"]["value"] == "fog"


def test_gradio3_idioms_of_a1111_extensions_build_and_mean_what_they_meant(ext_root, data_dir):
    """webui/gradio_compat.py: tooltip=, gr.Box, .style(), Component.update, _js= and gr.Image(source=, tool=)."""
    from modules import scripts
    from webui import ui

    shutil.copytree(os.path.join(FIXTURES, "gradio3-idioms"), ext_root["user"] / "gradio3-idioms")
    scripts.reload_scripts()
    demo = ui.create_ui()
    by_id = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    prefix = "script_txt2img_gradio_3_idioms_"
    assert isinstance(by_id[prefix + "box"], gr.Group)
    assert by_id[prefix + "enabled"].tooltip == "adds a line to the infotext"
    assert by_id[prefix + "note"].container is False and by_id[prefix + "fill"].size == "sm"
    assert by_id[prefix + "picture"].sources == ["upload"] and by_id[prefix + "gallery"].columns == 3
    row = by_id[prefix + "enabled"].parent
    while not isinstance(row, gr.Row):  # Gradio puts form fields in a Form of their own
        row = row.parent
    assert row.equal_height is True
    fill_id = by_id[prefix + "fill"]._id
    config = demo.get_config_file()
    fill_events = [d for d in config["dependencies"] if [fill_id, "click"] in [list(t) for t in d["targets"]]]
    assert fill_events and fill_events[0]["js"] == "() => 'filled by js'"
    assert gr.Textbox.update(visible=True) == {"visible": True, "__type__": "update"}
    assert gr.Box is gr.Group
