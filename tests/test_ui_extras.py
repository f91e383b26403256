"""The Extras tab handler, the Faces controls of the generation tabs and "Send to extras"."""
from __future__ import annotations

import os

import gradio as gr
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests import weights
from tests.conftest import pixels
from tests.test_ui_handlers import _args as _txt2img_args
from webui.tabs import extras as extras_tab
from webui.tabs import img2img as img2img_tab
from webui.tabs import txt2img as txt2img_tab
from webui.ui_common import POSTPROCESS_FIELDS


def _extras_args(**overrides):
    values = dict(source="single", image=None, files=None, input_dir="", output_dir="", resize_mode=0, upscaling_resize=2,
                  upscaling_resize_w=512, upscaling_resize_h=512, upscaling_crop=True, upscaler_1="Lanczos",
                  upscaler_2="None", extras_upscaler_2_visibility=0, gfpgan_visibility=0, codeformer_visibility=0,
                  codeformer_weight=0, upscale_first=False)
    values.update(overrides)
    assert list(values) == extras_tab.GENERATE_INPUTS
    return values


def _png_with_parameters(path, size=(40, 24), text="a dog\nSteps: 5, Seed: 3"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.fromarray((np.random.RandomState(1).rand(size[1], size[0], 3) * 255).astype(np.uint8)).save(path, pnginfo=info)
    return str(path)


def test_single_image_is_upscaled_saved_and_keeps_its_infotext(data_dir, model_dirs, tmp_path):
    source = _png_with_parameters(tmp_path / "in.png")
    updates = list(extras_tab.generate(_extras_args(image=source)))
    gallery, info, progress = updates[-1]
    assert progress == "" and "Postprocess upscale by: 2, Postprocess upscaler: Lanczos" in info
    with Image.open(gallery[0]) as written:
        assert written.size == (80, 48)
        assert written.text["parameters"] == "a dog\nSteps: 5, Seed: 3"
        assert written.text["extras"] == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    assert os.path.dirname(gallery[0]).endswith(os.path.join("outputs", "extras-images"))


def test_batch_upload_and_folder_batch(data_dir, model_dirs):
    folder = data_dir / "extras-in"
    first = _png_with_parameters(folder / "frame-a.png")
    _png_with_parameters(folder / "frame-b.png", size=(16, 16))
    gallery, _, _ = list(extras_tab.generate(_extras_args(source="batch", files=[first, first])))[-1]
    assert len(gallery) == 2 and all(Image.open(path).size == (80, 48) for path in gallery)
    gallery, _, _ = list(extras_tab.generate(_extras_args(source="folder", input_dir="extras-in",
                                                          output_dir="extras-out")))[-1]
    assert sorted(os.path.basename(path) for path in gallery) == ["frame-a.png", "frame-b.png"]
    assert Image.open(data_dir / "extras-out" / "frame-b.png").size == (32, 32)


def test_extras_errors_are_shown_and_nothing_runs(data_dir, model_dirs, tmp_path, monkeypatch):
    from modules import shared

    cases = [(_extras_args(), "upload an image first"),
             (_extras_args(image=_png_with_parameters(tmp_path / "x.png"), upscaler_1="R-ESRGAN 4x+"), "Unknown upscaler"),
             (_extras_args(image=_png_with_parameters(tmp_path / "y.png"), codeformer_visibility=1), "CodeFormer"),
             (_extras_args(source="folder", input_dir="../.."), "outside")]
    for args, message in cases:
        updates = list(extras_tab.generate(args))
        assert len(updates) == 1 and message in updates[0][2], updates[0][2]
    monkeypatch.setattr(shared.cmd_opts, "webui_is_non_local", True)
    updates = list(extras_tab.generate(_extras_args(source="folder", input_dir="extras-in")))
    assert "only available when the server is bound to this computer" in updates[0][2]


def test_model_upscalers_appear_in_the_lists_and_missing_weights_are_explained(data_dir, model_dirs):
    hint = extras_tab.weights_hint()
    assert "R-ESRGAN 4x+: save https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth" in hint
    assert "CodeFormer: save https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth" in hint
    weights.write_rrdbnet(str(model_dirs["RealESRGAN"] / "RealESRGAN_x4plus.pth"))
    first, second, hint = extras_tab.refresh_lists()
    assert first["choices"][-1] == "R-ESRGAN 4x+" and "R-ESRGAN 4x+:" not in hint
    assert "R-ESRGAN 4x+" in txt2img_tab.hires_upscaler_names()


def _faces(**overrides):
    values = dict(restore_faces=False, face_restoration_model="CodeFormer", code_former_weight=0.5)
    values.update(overrides)
    assert list(values) == POSTPROCESS_FIELDS
    return values


def test_faces_controls_reach_the_job_and_paste_back(tiny_model, model_dirs, fake_face):
    from modules.shared import opts

    weights.write_codeformer(str(model_dirs["Codeformer"] / "codeformer-v0.1.0.pth"))
    weights.write_gfpgan(str(model_dirs["GFPGAN"] / "GFPGANv1.4.pth"))
    result = list(txt2img_tab.generate({**_txt2img_args(), **_faces(restore_faces=True,
                                                                     face_restoration_model="GFPGAN")}))[-1][4]
    text = result["infotexts"][0]
    assert "Face restoration: GFPGAN" in text
    assert opts.face_restoration_model == "CodeFormer"  # the model choice is a per-job override
    pasted = dict(zip(txt2img_tab.PASTE_FIELDS, txt2img_tab.paste_parameters(text)))
    assert pasted["restore_faces"]["value"] is True and pasted["face_restoration_model"]["value"] == "GFPGAN"
    pasted = dict(zip(img2img_tab.PASTE_FIELDS, img2img_tab.paste_parameters("a cat\nSteps: 3, Seed: 1")))
    assert pasted["restore_faces"]["value"] is False


def test_img2img_tab_restores_faces(tiny_model, model_dirs, fake_face):
    from tests.test_ui_img2img import _args

    weights.write_codeformer(str(model_dirs["Codeformer"] / "codeformer-v0.1.0.pth"))
    image = Image.fromarray((np.random.RandomState(2).rand(64, 64, 3) * 255).astype(np.uint8))
    plain = list(img2img_tab.generate(_args(init_image=image)))[-1][4]
    restored = list(img2img_tab.generate({**_args(init_image=image), **_faces(restore_faces=True)}))[-1][4]
    assert "Face restoration: CodeFormer" in restored["infotexts"][0]
    assert np.abs(pixels(plain["images"][0]) - pixels(restored["images"][0])).max() > 10


def test_send_to_extras_from_the_gallery_and_png_info(tiny_model, tmp_path):
    result = list(txt2img_tab.generate(_txt2img_args(seed=7)))[-1][4]
    tabs, image = extras_tab.receive_result(result)
    assert tabs.selected == "extras" and image["value"] == result["images"][0].already_saved_as
    tabs, image = extras_tab.receive_png(str(tmp_path / "some.png"))
    assert tabs.selected == "extras" and image["value"] == str(tmp_path / "some.png")
    assert not any(isinstance(update, gr.Tabs) for update in extras_tab.receive_result(None))


@pytest.mark.parametrize("source", ["single", "batch"])
def test_uploaded_names_are_not_reused_outside_a_chosen_folder(data_dir, model_dirs, tmp_path, source):
    path = _png_with_parameters(tmp_path / "keepme.png")
    args = _extras_args(source=source, image=path if source == "single" else None,
                        files=[path] if source == "batch" else None)
    gallery, _, _ = list(extras_tab.generate(args))[-1]
    assert os.path.basename(gallery[0]) != "keepme.png" and os.path.basename(gallery[0])[:5].isdigit()
