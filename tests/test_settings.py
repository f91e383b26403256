"""The Settings tab: every setting with its default, search, Apply (the same validation and save as POST /options),
quick settings, and extensions' settings."""
from __future__ import annotations

import json

import gradio as gr
import pytest

from modules import shared
from modules.options import OptionInfo
from modules.shared import opts
from webui.tabs import settings


@pytest.fixture()
def restored_settings(data_dir):
    saved = dict(opts.data)
    yield
    opts.data.clear()
    opts.data.update(saved)
    opts.save(shared.config_filename())


def _visible(updates: list, layout: dict) -> list[str]:
    keys = [key for section_keys in layout.values() for key in section_keys]
    return [key for key, update in zip(keys, updates[len(layout):]) if update["visible"]]


def test_every_setting_is_in_a_section_with_its_default_and_what_a_change_needs(tiny_model):
    layout = settings.sections(("sd_model_checkpoint", "sd_vae"))
    listed = [key for keys in layout.values() for key in keys]
    assert sorted(listed) == sorted(set(opts.data_labels) - {"sd_model_checkpoint", "sd_vae"})
    assert ("sd", "Stable Diffusion") in layout and "CLIP_stop_at_last_layers" in layout[("sd", "Stable Diffusion")]
    with gr.Blocks():
        clip_skip = settings.make_component("CLIP_stop_at_last_layers", opts.data_labels["CLIP_stop_at_last_layers"])
        hidden = settings.make_component("hide_samplers", opts.data_labels["hide_samplers"])
        tiling = settings.make_component("vae_tiling", opts.data_labels["vae_tiling"])
    assert isinstance(clip_skip, gr.Number) and clip_skip.value == 1
    assert clip_skip.info.startswith("Default: 1 · CLIP_stop_at_last_layers")
    assert isinstance(hidden, gr.Dropdown) and hidden.multiselect and "Euler a" in [c[0] for c in hidden.choices]
    assert hidden.label.endswith("(requires Reload UI)")
    assert [c[0] for c in tiling.choices] == ["auto", "always", "off"]


def test_search_filters_by_label_and_key_across_sections(tiny_model):
    layout = settings.sections()
    by_label = _visible(settings.visibility("clip skip", "Saving images/grids", layout), layout)
    assert by_label == ["CLIP_stop_at_last_layers", "sdxl_clip_l_skip"]
    assert _visible(settings.visibility("ESRGAN_tile", "", layout), layout) == ["ESRGAN_tile", "ESRGAN_tile_overlap"]
    section_only = settings.visibility("", "Upscaling", layout)
    assert _visible(section_only, layout) == layout[("upscaling", "Upscaling")]
    assert [u["visible"] for u in section_only[:len(layout)]] == [label == "Upscaling" for _, label in layout]


def test_apply_checks_like_the_api_and_saves_atomically(tiny_model, restored_settings, data_dir):
    keys = ["CLIP_stop_at_last_layers", "hide_samplers", "samples_format"]
    message = settings.apply_settings(keys, (2.0, ["DDIM"], "png"))
    assert "2 settings changed: Clip skip, Hide samplers in user interface. Takes effect after: Reload UI." in message
    assert opts.CLIP_stop_at_last_layers == 2 and opts.hide_samplers == ["DDIM"]
    stored = json.loads((data_dir / "config.json").read_text())
    assert stored["CLIP_stop_at_last_layers"] == 2 and stored["hide_samplers"] == ["DDIM"]
    assert "Nothing changed" in settings.apply_settings(keys, (2, ["DDIM"], "png"))

    wrong = settings.apply_settings(["CLIP_stop_at_last_layers"], ("many",))
    assert "Error: settings: &#x27;CLIP_stop_at_last_layers&#x27; cannot be &#x27;many&#x27;" in wrong
    assert opts.CLIP_stop_at_last_layers == 2
    unknown = settings.apply_settings(["sd_model_checkpoint"], ("nowhere.safetensors",))
    assert "settings: unknown checkpoint &#x27;nowhere.safetensors&#x27;" in unknown
    # restrict_api settings are the page's to change, not the API's: the same check says which
    assert "1 setting changed" in settings.apply_settings(["max_sampling_steps"], (200,))
    from modules.runtime import settings_change
    with pytest.raises(Exception, match="cannot be changed through the API"):
        settings_change.check({"max_sampling_steps": 300}, "options")


def test_a_failing_save_says_so_and_keeps_the_old_file(tiny_model, restored_settings, data_dir, monkeypatch):
    before = (data_dir / "config.json").read_bytes() if (data_dir / "config.json").exists() else None

    from modules.options import Options

    def full_disk(self, filename):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Options, "save", full_disk)
    message = settings.apply_settings(["CLIP_stop_at_last_layers"], (3,))
    assert "settings applied but not saved to" in message and "No space left on device" in message
    after = (data_dir / "config.json").read_bytes() if (data_dir / "config.json").exists() else None
    assert after == before


def test_extension_settings_get_their_section_and_quick_settings_go_to_the_top_bar(tiny_model, restored_settings):
    from webui import ui

    opts.add_option("example_strength", OptionInfo(0.5, "Example strength", section=("example", "Example ext")))
    try:
        opts.set("quicksettings_list", ["sd_model_checkpoint", "CLIP_stop_at_last_layers"])
        demo = ui.create_ui()
        by_id = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
        assert by_id["settings_section_example"].visible is False
        assert isinstance(by_id["setting_example_strength"], gr.Number)
        quick = by_id["setting_CLIP_stop_at_last_layers"]
        assert quick.parent is by_id["quicksettings"] or quick.parent.parent is by_id["quicksettings"]
        assert by_id["quicksettings_hidden_sd_vae"].visible is False  # not in the list: not in the bar
        assert by_id["setting_sd_vae"].parent is not by_id["quicksettings"]  # but in the Settings tab
        layout = settings.sections(("sd_model_checkpoint", "CLIP_stop_at_last_layers"))
        assert "CLIP_stop_at_last_layers" not in layout[("sd", "Stable Diffusion")]  # in the bar, not in the tab
        assert "1 setting changed: Clip skip." in settings.apply_quicksetting("CLIP_stop_at_last_layers", 2)
    finally:
        del opts.data_labels["example_strength"]
        opts.data.pop("example_strength", None)


def test_reload_ui_asks_the_server_to_rebuild_the_page():
    shared.state.server_command = None
    settings.request_reload()
    assert shared.state.wait_for_server_command(timeout=1) == "restart"
