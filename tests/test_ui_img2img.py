"""The img2img tab's handlers without a browser: every mode, the folder batch and its safety rules."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modules import img2img as img2img_module
from modules import shared
from tests.conftest import noise_image, pixels
from webui.tabs import img2img as img2img_tab
from webui.ui_common import POSTPROCESS_FIELDS, REFINER_FIELDS


def _args(mode="img2img", **overrides):
    values = dict(mode=mode, prompt="a cat", negative_prompt="", styles=[], init_image=None, sketch=None,
                  inpaint_editor=None, upload_image=None, upload_mask=None, batch_input="", batch_output="", batch_mask="",
                  resize_mode=0, sampler_name="Euler", scheduler="Automatic", steps=3, cfg_scale=7, width=64, height=64,
                  seed=5, use_variation=False, subseed=-1, subseed_strength=0, seed_resize_from_w=0, seed_resize_from_h=0,
                  batch_count=1, batch_size=1, denoising_strength=0.75, mask_blur=4, inpainting_mask_invert=0,
                  inpainting_fill=1, inpaint_full_res=0, inpaint_full_res_padding=32, stochastic_freeze=False,
                  color_correction=False, initial_noise_multiplier=1.0, override_settings=[])
    optional = set(POSTPROCESS_FIELDS) | set(REFINER_FIELDS)  # the Faces and Refiner controls
    assert set(values) | optional == set(img2img_tab.GENERATE_INPUTS)
    values.update(overrides)
    return values


def _run(**kwargs):
    updates = list(img2img_tab.generate(_args(**kwargs)))
    return updates[-1]


def test_img2img_mode(tiny_model):
    gallery, progress, _preview, info, result, _job = _run(init_image=noise_image(80, 80), width=64, height=96)
    assert progress == "" and result["images"][0].size == (64, 96)
    assert "Denoising strength: 0.75" in info and "Mask blur" not in info


def test_sketch_mode_uses_the_drawing(tiny_model):
    base = Image.new("RGB", (64, 64), "white")
    drawn = base.copy()
    drawn.paste((255, 0, 0), (0, 0, 32, 64))
    results = [_run(mode="sketch", sketch={"background": base, "layers": [], "composite": image}, denoising_strength=0.3)[4]
               for image in (base, drawn)]
    assert np.abs(pixels(results[0]["images"][0]) - pixels(results[1]["images"][0])).mean() > 5


def test_inpaint_mode_takes_the_mask_from_the_painted_layer(tiny_model):
    source = noise_image(64, 64)
    stroke = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    stroke.paste((255, 255, 255, 255), (0, 0, 24, 64))
    editor = {"background": source, "layers": [stroke], "composite": source}
    result = _run(mode="inpaint", inpaint_editor=editor)[4]
    diff = np.abs(pixels(result["images"][0]) - pixels(source))
    assert diff[:, 44:].max() <= 1 and diff[:, :20].mean() > 20
    assert "Mask blur: 4" in result["infotexts"][0]


def test_inpaint_upload_mode(tiny_model):
    source = noise_image(64, 64)
    mask = Image.new("L", (64, 64))
    mask.paste(255, (40, 0, 64, 64))
    result = _run(mode="inpaint_upload", upload_image=source, upload_mask=mask, inpainting_mask_invert=1)[4]
    diff = np.abs(pixels(result["images"][0]) - pixels(source))
    assert diff[:, 56:].max() <= 1 and diff[:, :20].mean() > 20  # the kept strip, beyond the blurred edge
    assert "Mask mode: Inpaint not masked" in result["infotexts"][0]


@pytest.mark.parametrize("mode, overrides, message", [
    ("img2img", {}, "img2img: upload an image first"),
    ("sketch", {}, "sketch: upload an image and draw on it first"),
    ("inpaint", {"inpaint_editor": {"background": Image.new("RGB", (8, 8)), "layers": [], "composite": None}},
     "inpaint: paint over the area to change first"),
    ("inpaint_upload", {"upload_image": Image.new("RGB", (8, 8))}, "both an image and a mask are needed"),
    ("batch", {}, "input folder: no folder given"),
    ("batch", {"batch_input": "/"}, "is outside the allowed folders"),
    ("batch", {"batch_input": "missing-folder"}, "is not a folder"),
])
def test_missing_inputs_are_named(tiny_model, mode, overrides, message):
    updates = list(img2img_tab.generate(_args(mode=mode, **overrides)))
    assert len(updates) == 1 and message in updates[0][1]


def test_batch_from_folder_with_masks_and_stochastic_freeze(tiny_model, data_dir):
    frames = data_dir / "frames"
    masks = data_dir / "frame-masks"
    frames.mkdir(exist_ok=True)
    masks.mkdir(exist_ok=True)
    first, second = noise_image(64, 64, seed=1), noise_image(64, 64, seed=2)
    for name, image in (("f1.png", first), ("f2.png", first), ("f3.png", second)):
        image.save(frames / name)
    mask = Image.new("L", (64, 64))
    mask.paste(255, (0, 0, 32, 64))
    mask.save(masks / "f3.png")
    result = _run(mode="batch", batch_input="frames", batch_output="frames-out", batch_mask=str(masks), seed=-1,
                  stochastic_freeze=True, inpainting_fill=1, sampler_name="Euler a")[4]
    out = data_dir / "frames-out"
    assert sorted(p.name for p in out.iterdir()) == ["f1.png", "f2.png", "f3.png"]
    saved = {name: pixels(Image.open(out / name)) for name in ("f1.png", "f2.png", "f3.png")}
    assert (saved["f1.png"] == saved["f2.png"]).all()  # same frame, same noise: identical
    assert np.abs(saved["f1.png"] - saved["f3.png"]).mean() > 1
    assert np.abs(saved["f3.png"][:, 48:] - pixels(second)[:, 48:]).max() <= 1  # f3 had a mask
    seeds = {text.split("Seed: ")[1].split(",")[0] for text in result["infotexts"]}
    assert len(seeds) == 1 and "Stochastic freeze: True" in result["infotexts"][0]
    assert str(result["seed"]) in seeds  # the result's seed (for ♻️) is the one used, not -1
    unfrozen = _run(mode="batch", batch_input="frames", batch_output="frames-free", seed=-1, sampler_name="Euler a")[4]
    assert len({text.split("Seed: ")[1].split(",")[0] for text in unfrozen["infotexts"]}) == 3


def test_batch_is_refused_on_a_non_local_server(tiny_model, monkeypatch):
    monkeypatch.setattr(shared.cmd_opts, "webui_is_non_local", True)
    updates = list(img2img_tab.generate(_args(mode="batch", batch_input="frames")))
    assert "only available when the server is bound to this computer" in updates[0][1]
    with pytest.raises(img2img_module.UserInputError):
        img2img_module.resolve_batch_dir("frames", "input folder")


def test_batch_roots_flag_allows_another_folder(tiny_model, tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    with pytest.raises(img2img_module.UserInputError, match="outside the allowed folders"):
        img2img_module.resolve_batch_dir(str(tmp_path / "in"), "input folder")
    monkeypatch.setattr(shared.cmd_opts, "img2img_batch_root", [str(tmp_path)])
    assert img2img_module.resolve_batch_dir(str(tmp_path / "in"), "input folder") == str((tmp_path / "in").resolve())
    with pytest.raises(img2img_module.UserInputError, match="outside the allowed folders"):
        img2img_module.resolve_batch_dir(str(tmp_path / "in" / ".." / ".."), "input folder")


def test_interrogate_buttons_fill_the_prompt_or_name_what_is_missing(tiny_model, tmp_path, monkeypatch):
    import torch

    from modules import deepbooru, paths
    from tests.test_deepbooru import _tiny_state

    monkeypatch.setattr(paths, "models_path", str(tmp_path))
    monkeypatch.setattr(deepbooru, "model", deepbooru.DeepDanbooru())
    picture = noise_image(64, 64)
    pictures = dict(init_image=picture, sketch=None, inpaint_editor=None, upload_image=None, upload_mask=None)
    prompt, progress = img2img_tab.interrogate("deepdanbooru", "img2img", *pictures.values())
    assert "model-resnet_custom_v3.pt" in progress and "error" in progress  # shown, nothing else touched
    prompt, progress = img2img_tab.interrogate("clip", "img2img", *pictures.values())
    assert "CLIP interrogator files are missing" in progress
    (tmp_path / "torch_deepdanbooru").mkdir()
    torch.save(_tiny_state(), tmp_path / "torch_deepdanbooru" / "model-resnet_custom_v3.pt")
    assert img2img_tab.interrogate("deepdanbooru", "img2img", *pictures.values()) == (r"1girl, long hair, smile \(cute\)", "")
    inpaint = dict(pictures, init_image=None, inpaint_editor={"background": picture, "layers": []})
    assert img2img_tab.interrogate("deepdanbooru", "inpaint", *inpaint.values())[0].startswith("1girl")  # no mask needed
    empty = dict(pictures, init_image=None)
    assert "upload an image first" in img2img_tab.interrogate("deepdanbooru", "img2img", *empty.values())[1]
