"""The extension loader and the A1111 Script API: discovery order, metadata.ini, hooks in the reference order,
error isolation naming the extension, enable/disable, API-style arguments, and an unmodified A1111-style
extension (tests/fixtures/extensions/example-a1111)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tests.conftest import FIXTURES, img2img, noise_image, pixels, titled, write_extension

def loaded_titles() -> list[str]:
    from modules import scripts

    return [data.script_class().title() for data in scripts.scripts_data]


def test_scripts_load_builtin_first_then_user_sorted_with_metadata_ordering(ext_root):
    from modules import extensions, scripts

    write_extension(ext_root["builtin"], "zeta", {"scripts/one.py": titled("zeta one")})
    write_extension(ext_root["user"], "alpha", {"scripts/a.py": titled("alpha a"), "scripts/b.py": titled("alpha b"),
                                                "metadata.ini": "[scripts/a.py]\nAfter = alpha/b.py\n"})
    write_extension(ext_root["user"], "beta", {"scripts/x.py": titled("beta x"),
                                               "metadata.ini": "[Extension]\nName = beta\n[scripts/x.py]\nBefore = zeta\n"})
    write_extension(ext_root["user"], "gamma", {"scripts/g.py": titled("gamma g"),
                                                "metadata.ini": "[Extension]\nRequires = not-installed\n"})
    scripts.reload_scripts()
    # listing order is built-in, then user extensions sorted; metadata.ini moves beta x before zeta and alpha a after alpha b
    assert loaded_titles() == ["beta x", "zeta one", "alpha b", "alpha a"]
    gamma = extensions.find("gamma")
    assert not gamma.enabled and "requires not-installed" in gamma.errors[0]
    assert all(e.load_time > 0 for e in extensions.active())
    assert extensions.find("zeta").source == "built-in" and extensions.find("alpha").source == "local folder"


def test_a_broken_extension_is_reported_by_name_and_the_others_load(ext_root):
    from modules import extensions, scripts

    write_extension(ext_root["user"], "broken", {"scripts/bad.py": "import does_not_exist_anywhere\n"})
    write_extension(ext_root["user"], "fine", {"scripts/ok.py": titled("fine ok")})
    scripts.reload_scripts()
    assert loaded_titles() == ["fine ok"]
    broken = extensions.find("broken")
    assert broken.errors and "bad.py" in broken.errors[0] and "does_not_exist_anywhere" in broken.errors[0]


def test_disable_persists_and_safe_mode_loads_nothing(ext_root, monkeypatch):
    from modules import extensions, scripts, shared

    write_extension(ext_root["builtin"], "core-ext", {"scripts/c.py": titled("core")})
    write_extension(ext_root["user"], "user-ext", {"scripts/u.py": titled("user")})
    scripts.reload_scripts()
    assert loaded_titles() == ["core", "user"]
    extensions.set_enabled("user-ext", False)
    with open(shared.config_filename(), encoding="utf8") as f:
        assert json.load(f)["disabled_extensions"] == ["user-ext"]
    scripts.reload_scripts()
    assert loaded_titles() == ["core"]
    assert [e.name for e in extensions.extensions if not e.enabled] == ["user-ext"]
    extensions.set_enabled("user-ext", True)
    monkeypatch.setattr(shared.cmd_opts, "disable_extensions", True)
    scripts.reload_scripts()
    assert loaded_titles() == [] and extensions.active() == []
    monkeypatch.setattr(shared.cmd_opts, "disable_extensions", False)
    monkeypatch.setattr(shared.cmd_opts, "disable_extra_extensions", True, raising=False)
    scripts.reload_scripts()
    assert loaded_titles() == ["core"]
    from modules.errors import UserInputError

    with pytest.raises(UserInputError, match="'nope' is not installed"):
        extensions.set_enabled("nope", False)


HOOKS = ["setup", "before_process", "process", "before_process_batch", "after_extra_networks_activate", "process_batch",
         "process_before_every_sampling", "before_hr", "post_sample", "on_mask_blend", "postprocess_batch",
         "postprocess_batch_list", "postprocess_image", "postprocess_maskoverlay", "postprocess_image_after_composite",
         "postprocess"]

RECORDER = """
    calls = []

    def ui(self, is_img2img):
        import gradio as gr
        return [gr.Checkbox(True, label="Record"), gr.Textbox("tag", label="Tag")]
""" + "".join(f"""
    def {hook}(self, p, *args, **kwargs):
        type(self).calls.append(({hook!r}, args[-2:], sorted(kwargs)))
""" for hook in HOOKS)


def test_always_on_hooks_run_in_the_reference_order_with_their_ui_values(ext_root, tiny_model):
    from modules import processing, scripts
    from modules.shared import state

    write_extension(ext_root["user"], "recorder", {"scripts/rec.py": titled("Recorder", RECORDER, "scripts.AlwaysVisible")})
    scripts.reload_scripts()
    runner = scripts.runner_for(is_img2img=False)
    assert [s.title() for s in runner.alwayson_scripts] == ["Recorder"] and runner.selectable_scripts == []
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", seed=3, steps=3, width=64, height=64,
                                                    sampler_name="Euler", n_iter=2, enable_hr=True, hr_scale=1.5,
                                                    do_not_save_samples=True, do_not_save_grid=True)
    runner.attach(p)
    state.begin("test")
    processed = processing.process_with_scripts(p)
    cls = runner.alwayson_scripts[0].__class__
    batch = ["before_process_batch", "after_extra_networks_activate", "process_batch", "process_before_every_sampling",
             "before_hr", "process_before_every_sampling", "post_sample", "postprocess_batch", "postprocess_batch_list",
             "postprocess_image", "postprocess_image_after_composite"]
    assert [c[0] for c in cls.calls] == ["setup", "before_process", "process", *batch, *batch, "postprocess"]
    assert all(c[1] == (True, "tag") for c in cls.calls if c[0] not in ("post_sample", "postprocess_batch_list",
                                                                           "postprocess_image", "postprocess",
                                                                           "postprocess_image_after_composite"))
    assert dict((c[0], c[2]) for c in cls.calls)["process_batch"] == ["batch_number", "prompts", "seeds", "subseeds"]
    assert len(processed.images) == 2  # no grid: the job saves none


def test_inpainting_calls_mask_blend_every_step_and_the_overlay_hook(ext_root, tiny_model):
    from PIL import Image

    from modules import scripts

    write_extension(ext_root["user"], "recorder", {"scripts/rec.py": titled("Recorder", RECORDER, "scripts.AlwaysVisible")})
    scripts.reload_scripts()
    runner = scripts.runner_for(is_img2img=True)
    cls = runner.alwayson_scripts[0].__class__
    cls.calls.clear()
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    from modules import processing
    from modules.shared import state

    p = processing.StableDiffusionProcessingImg2Img(prompt="x", seed=1, steps=6, width=64, height=64, sampler_name="Euler",
                                                    init_images=[noise_image(64, 64)], mask=mask, denoising_strength=0.5,
                                                    inpaint_full_res=False, do_not_save_samples=True, do_not_save_grid=True)
    runner.attach(p)
    state.begin("test")
    processing.process_with_scripts(p)
    names = [c[0] for c in cls.calls]
    assert names.count("on_mask_blend") == 3  # int(0.5 x 6) steps
    assert names.index("postprocess_maskoverlay") < names.index("postprocess_image_after_composite")


FAILING_PROCESS = """
    def process(self, p, *args):
        raise RuntimeError("kaboom in process")
"""

FAILING_RUN = """
    def run(self, p, *args):
        raise KeyError("missing thing")
"""


def test_a_failing_hook_only_fails_that_hook_and_names_the_extension(ext_root, tiny_model):
    from modules import processing, scripts
    from modules.shared import state

    write_extension(ext_root["user"], "flaky", {"scripts/f.py": titled("Flaky", FAILING_PROCESS, "scripts.AlwaysVisible")})
    write_extension(ext_root["user"], "recorder", {"scripts/rec.py": titled("Recorder", RECORDER, "scripts.AlwaysVisible")})
    scripts.reload_scripts()
    runner = scripts.runner_for(is_img2img=False)
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a", seed=1, steps=2, width=64, height=64, sampler_name="Euler",
                                                    do_not_save_samples=True, do_not_save_grid=True)
    runner.attach(p)
    state.begin("test")
    processed = processing.process_with_scripts(p)
    assert len(processed.images) == 1
    assert "Extension flaky: Flaky process failed: RuntimeError: kaboom in process" in processed.comments
    recorder = runner.alwayson_scripts[1].__class__
    assert "postprocess" in [c[0] for c in recorder.calls]  # the other extension's hooks still ran


def test_a_failing_selectable_script_fails_the_job_with_the_extension_name(ext_root, tiny_model):
    from modules import processing, scripts
    from modules.scripts import ScriptError

    write_extension(ext_root["user"], "crashy", {"scripts/c.py": titled("Crashy", FAILING_RUN)})
    scripts.reload_scripts()
    runner = scripts.runner_for(is_img2img=False)
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a", steps=2, width=64, height=64, sampler_name="Euler")
    runner.attach(p, runner.build_args("crashy"))
    with pytest.raises(ScriptError, match="script 'Crashy' of extension 'crashy' failed: KeyError"):
        processing.process_with_scripts(p)


def test_api_style_arguments(ext_root):
    from modules import scripts
    from modules.errors import UserInputError

    shutil.copytree(os.path.join(FIXTURES, "example-a1111"), ext_root["user"] / "example-a1111")
    write_extension(ext_root["user"], "recorder", {"scripts/rec.py": titled("Recorder", RECORDER, "scripts.AlwaysVisible")})
    scripts.reload_scripts()
    runner = scripts.runner_for(is_img2img=False)
    titles = [s.title() for s in runner.alwayson_scripts]
    defaults = runner.ensure_args()
    # [selected, sweep count, order (index), grid] then the always-on scripts, in load order
    sweep = runner.script("seed sweep")
    assert defaults[0] == 0 and defaults[sweep.args_from:sweep.args_to] == [3, 0, True]
    args = runner.build_args("SEED SWEEP", [2, 1], {"recorder": {"args": [False]}})
    assert args[0] == 1 and args[sweep.args_from:sweep.args_to] == [2, 1, True]
    recorder = runner.script("Recorder")
    assert args[recorder.args_from:recorder.args_to] == [False, "tag"]
    named = runner.build_args("Seed sweep", {"Images": 5, "script_txt2img_seed_sweep_grid": False})
    assert named[sweep.args_from:sweep.args_to] == [5, 0, False]
    assert runner.build_args() == defaults  # nothing carried over from the previous request
    for kwargs, message in (({"script_name": "nope"}, "Script 'nope' not found; selectable scripts: Seed sweep"),
                            ({"script_name": "seed sweep", "script_args": [1, 2, 3, 4]}, "takes 3 argument"),
                            ({"script_name": "seed sweep", "script_args": {"Bogus": 1}}, "has no argument 'Bogus'"),
                            ({"alwayson_scripts": {"Seed sweep": {"args": []}}}, "is a selectable script"),
                            ({"alwayson_scripts": {"ghost": {"args": []}}}, "script 'ghost' not found"),
                            ({"script_name": "recorder"}, "Script 'recorder' not found")):
        with pytest.raises(UserInputError, match=message):
            runner.build_args(**kwargs)
    assert titles == ["Example stamp", "Recorder"]


def test_the_a1111_example_extension_runs_unmodified(ext_root, tiny_model, tmp_path):
    import gradio as gr
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules import images, processing, script_callbacks, scripts, shared
    from modules.shared import opts, state

    shutil.copytree(os.path.join(FIXTURES, "example-a1111"), ext_root["user"] / "example-a1111")
    scripts.reload_scripts()
    runner = scripts.runner_for(is_img2img=False)
    with gr.Blocks():
        inputs = runner.setup_ui()
    assert runner.titles == ["Seed sweep"] and isinstance(inputs[0], gr.Dropdown)
    stamp = runner.script("Example stamp")
    args = runner.build_args("Seed sweep", [2, 1, True], {"Example stamp": {"args": [True, 60]}})
    opts.set("grid_save", True)
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", seed=50, steps=2, width=64, height=64,
                                                    sampler_name="Euler", do_not_save_samples=True,
                                                    outpath_grids=str(tmp_path / "grids"))
    runner.attach(p, args)
    state.begin("test")
    processed = processing.process_with_scripts(p)
    assert len(processed.images) == 3 and processed.images[0].size == (128, 64)  # grid of two, then both images
    assert processed.seed == 51 and [t.split("Seed: ")[1].split(",")[0] for t in processed.infotexts[1:]] == ["51", "50"]
    assert "Example stamp: example-a1111" in processed.infotexts[1]
    saved = list((tmp_path / "grids").rglob("*.png"))
    assert len(saved) == 1 and images.read_info_from_image(images.read(str(saved[0])))[0].startswith("a cat")
    # the stamp (postprocess_image) added red: compare with the same seed without the stamp
    plain = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", seed=50, steps=2, width=64, height=64,
                                                        sampler_name="Euler", do_not_save_samples=True, do_not_save_grid=True)
    runner.attach(plain)
    unstamped = processing.process_with_scripts(plain).images[0]
    difference = pixels(processed.images[2]) - pixels(unstamped)
    assert difference[..., 0].max() == 60 and abs(difference[..., 1:]).max() == 0
    assert stamp.args_to - stamp.args_from == 2
    # callbacks: settings added, routes on a real FastAPI app
    script_callbacks.ui_settings_callback()
    assert shared.opts.example_stamp_note == "hello"
    app = FastAPI()
    script_callbacks.app_started_callback(None, app)
    assert TestClient(app).get("/example/ping").json() == {"pong": "hello"}


def test_img2img_jobs_run_the_selected_script(ext_root, tiny_model):
    from modules import processing, scripts

    shutil.copytree(os.path.join(FIXTURES, "example-a1111"), ext_root["user"] / "example-a1111")
    scripts.reload_scripts()
    runner = scripts.runner_for(is_img2img=True)
    fresh = processing.StableDiffusionProcessingImg2Img(prompt="x", seed=7, steps=2, width=64, height=64,
                                                        sampler_name="Euler", init_images=[noise_image(64, 64)],
                                                        do_not_save_samples=True, do_not_save_grid=True)
    runner.attach(fresh, runner.build_args("Seed sweep", [2, 0, False]))
    processed = processing.process_with_scripts(fresh)
    assert [t.split("Seed: ")[1].split(",")[0] for t in processed.infotexts] == ["7", "8"]


def test_compatibility_modules_extensions_import(data_dir, tmp_path):
    import gradio as gr
    import torch

    from modules import safe, sd_samplers_common
    from modules.shared import state
    from modules.ui_components import FormRow, InputAccordion, ToolButton

    path = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, path)
    assert torch.equal(safe.load_with_extra(str(path))["w"], torch.ones(2))

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"w": Payload()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=True)
    with safe.Extra(None), pytest.raises(Exception, match="refused to load"):
        safe.unsafe_torch_load(str(tmp_path / "evil.pt"))
    with gr.Blocks() as demo:
        with FormRow():
            ToolButton("🔄", elem_id="tool")
        with InputAccordion(True, label="Feature", elem_id="feature") as enabled:
            gr.Slider(0, 1, label="Inside", elem_id="inside")
    assert enabled.value is True and isinstance(enabled.accordion, gr.Accordion)
    def descendants(block):
        for child in getattr(block, "children", []):
            yield child
            yield from descendants(child)

    assert list(descendants(enabled.accordion))[1] is enabled  # the checkbox heads the accordion's content (in a Form)
    assert {"tool", "feature", "inside"} <= {
        getattr(b, "elem_id", None) for b in demo.blocks.values()}
    from modules import shared

    shared.total_tqdm.updateTotal(3)
    shared.total_tqdm.update()
    assert (shared.total_tqdm._tqdm.n, shared.total_tqdm._tqdm.total) == (1, 3)
    shared.total_tqdm.clear()
    before = state.id_live_preview
    sd_samplers_common.store_latent(torch.zeros(2, 4, 8, 8))
    assert state.current_latent.shape == (4, 8, 8) and state.id_live_preview == before + 1


def test_extra_noise_setting_and_its_callback(ext_root, tiny_model):
    import torch

    from modules import script_callbacks
    from modules.shared import opts

    def run():
        return img2img([noise_image(64, 64)], steps=4, denoising_strength=0.5)[1]

    calls = []
    plain = run()
    script_callbacks.on_extra_noise(lambda params: calls.append(params))
    assert run().images and calls == []  # off by default
    opts.set("img2img_extra_noise", 0.5)
    noisier = run()
    assert len(calls) == 1 and calls[0].noise.shape == calls[0].x.shape == (1, 4, 8, 8)
    assert "Extra noise: 0.5" in noisier.info and not np.array_equal(pixels(noisier.images[0]), pixels(plain.images[0]))

    def silence(params):
        params.noise = torch.zeros_like(params.noise)

    script_callbacks.on_extra_noise(silence)
    assert np.array_equal(pixels(run().images[0]), pixels(plain.images[0]))


def test_reloading_scripts_announces_it_first(ext_root):
    from modules import script_callbacks, scripts

    write_extension(ext_root["user"], "reloader", {"scripts/reloader.py": (
        "from modules import script_callbacks\nimport modules.scripts as scripts\n\n"
        "events = []\nscript_callbacks.on_before_reload(lambda: events.append('before_reload'))\n"
        "script_callbacks.on_script_unloaded(lambda: events.append('unloaded'))\n")})
    scripts.reload_scripts()
    import sys

    events = sys.modules["reloader.py"].events
    assert events == []
    scripts.reload_scripts()
    assert events == ["before_reload", "unloaded"] and script_callbacks.callback_map["callbacks_before_reload"]
