"""Upscalers (ESRGAN/Real-ESRGAN/SRVGG in their official layouts, tiling, size rule, hires), face detection and
restoration (CodeFormer, GFPGAN) and the Extras pipeline."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests import weights
from tests.conftest import ROOT, pixels, txt2img


LAYOUTS = [
    ("RealESRGAN", "RealESRGAN_x4plus.pth", "R-ESRGAN 4x+", dict(layout="basicsr"), 4),
    ("RealESRGAN", "RealESRGAN_x2plus.pth", "R-ESRGAN 2x+", dict(layout="basicsr", unshuffle=2), 2),
    ("RealESRGAN", "RealESRGAN_x4plus_anime_6B.pth", "R-ESRGAN 4x+ Anime6B", dict(layout="basicsr", blocks=2), 4),
    ("ESRGAN", "ESRGAN_4x.pth", "ESRGAN_4x", dict(layout="esrgan"), 4),
    ("ESRGAN", "4x-Custom.safetensors", "4x-Custom", dict(layout="basicsr"), 4),
    ("ESRGAN", "8x-old.pth", "8x-old", dict(layout="esrgan", upsamples=3), 8),
]


@pytest.mark.parametrize("folder,filename,name,kwargs,scale", LAYOUTS)
def test_rrdbnet_files_in_each_layout_load_with_their_scale_and_the_same_outputs(model_dirs, folder, filename, name, kwargs, scale):
    import torch

    from modules import upscaler

    original = weights.write_rrdbnet(str(model_dirs[folder] / filename), **kwargs)
    entry = upscaler.find(name)
    assert entry.data_path == str(model_dirs[folder] / filename)
    network = entry.scaler.load()
    assert network.scale == scale
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert torch.allclose(network(x), original(x), atol=1e-5)
    assert network(x).shape == (1, 3, 12 * scale, 10 * scale)


def test_srvgg_general_x4v3_loads_and_keeps_its_residual(model_dirs):
    import torch

    from modules import upscaler

    original = weights.write_srvgg(str(model_dirs["RealESRGAN"] / "realesr-general-x4v3.pth"))
    network = upscaler.find("R-ESRGAN General 4xV3").scaler.load()
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        out = network(x)
        assert torch.allclose(out, original(x), atol=1e-6)
    assert out.shape == (1, 3, 36, 28) and network.scale == 4


def test_upscaler_list_order_and_the_a1111_size_rule(model_dirs):
    from modules import shared, upscaler

    weights.write_rrdbnet(str(model_dirs["ESRGAN"] / "zeta.pth"))
    weights.write_rrdbnet(str(model_dirs["RealESRGAN"] / "RealESRGAN_x4plus.pth"))
    names = [u.name for u in upscaler.all_upscalers()]
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    assert names[3:] == ["R-ESRGAN 4x+", "zeta"]
    assert shared.sd_upscalers[4].scale == 4
    image = Image.new("RGB", (50, 30), (10, 200, 30))
    # x3 with a 4x model: one pass (200x120), then Lanczos down to floor(w*3/8)*8 x floor(h*3/8)*8
    assert upscaler.find("R-ESRGAN 4x+").scaler.upscale(image, 3).size == (144, 88)
    # x10 needs two passes of 4x (800x480 > 500x300) then the exact size
    assert upscaler.find("zeta").scaler.upscale(image, 10).size == (496, 296)


def test_tiled_upscale_matches_whole_image_away_from_seams(model_dirs):
    from modules import esrgan_model, upscaler

    weights.write_rrdbnet(str(model_dirs["ESRGAN"] / "tiles.pth"))
    network = upscaler.find("tiles").scaler.load()
    calls = []
    network.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape[-2:])))
    image = Image.fromarray((np.random.RandomState(3).rand(100, 100, 3) * 255).astype(np.uint8))
    whole = pixels(esrgan_model.tiled_upscale(network, image, tile=0))
    tiled = pixels(esrgan_model.tiled_upscale(network, image, tile=64, overlap=8))
    assert calls == [(100, 100)] + [(64, 64)] * 4  # tiles start at 0 and 36 on both axes
    assert whole.shape == tiled.shape == (400, 400, 3)
    # pixels 0..35 are covered by the first tile only, at least 28 px from its inner edge (the network sees ~18 px)
    assert np.abs(whole[:144, :144] - tiled[:144, :144]).max() <= 1
    assert np.abs(whole - tiled).max() > 1  # the seams themselves do differ: tiling really happened


def test_overlapping_tiles_are_averaged_exactly():
    import torch

    from modules import esrgan_model

    class NearestX2(torch.nn.Module):  # position-independent, so every tiling must give the whole-image result
        scale = 2

        def forward(self, x):
            return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")

    image = Image.fromarray((np.random.RandomState(4).rand(50, 70, 3) * 255).astype(np.uint8))
    tiled = esrgan_model.tiled_upscale(NearestX2(), image, tile=32, overlap=12)
    assert np.array_equal(pixels(tiled), pixels(image.resize((140, 100), Image.NEAREST)))


def test_an_interrupt_between_tiles_ends_the_upscale_with_a_plain_resize(model_dirs):
    from modules import esrgan_model
    from modules.shared import state

    calls = []

    def interrupt_after_the_first_tile(module, args, out):
        calls.append(1)
        state.interrupt()

    network = weights.rrdbnet()
    network.register_forward_hook(interrupt_after_the_first_tile)
    image = Image.fromarray((np.random.RandomState(5).rand(40, 40, 3) * 255).astype(np.uint8))
    state.begin("test")
    try:
        result = esrgan_model.tiled_upscale(network, image, tile=16, overlap=4)
    finally:
        state.begin("test")
    assert len(calls) == 1 and result.size == (160, 160)
    assert np.array_equal(pixels(result), pixels(image.resize((160, 160), Image.LANCZOS)))


def test_tile_settings_are_read_from_the_options(model_dirs):
    from modules import upscaler
    from modules.shared import opts

    weights.write_rrdbnet(str(model_dirs["ESRGAN"] / "opt.pth"))
    entry = upscaler.find("opt")
    calls = []
    entry.scaler.load().register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape[-2:])))
    opts.set("ESRGAN_tile", 32)
    opts.set("ESRGAN_tile_overlap", 4)
    entry.scaler.upscale(Image.new("RGB", (60, 40)), 4)
    assert calls == [(32, 32)] * 4


def test_unknown_layout_and_mismatched_weights_are_refused_with_a_message(tmp_path):
    import torch

    from modules.arch import esrgan as esrgan_arch
    from modules.loading.model_files import UnsupportedModelFile

    with pytest.raises(UnsupportedModelFile, match="not an ESRGAN"):
        esrgan_arch.build({"something.weight": torch.zeros(3)})
    state = weights.rrdbnet().state_dict()
    state["conv_hr.weight"] = torch.zeros(8, 8, 5, 5)
    with pytest.raises(UnsupportedModelFile, match="do not match"):
        esrgan_arch.build(state)


def test_missing_official_weights_are_not_listed_and_the_hint_names_url_and_path(model_dirs):
    from modules import upscaler
    from modules.loading import model_catalog

    names = [u.name for u in upscaler.all_upscalers()]
    assert names == ["None", "Lanczos", "Nearest"]
    hint = model_catalog.missing_hint(model_catalog.UPSCALERS)
    assert f"R-ESRGAN 4x+: save {model_catalog.REALESRGAN_RELEASES}/v0.1.0/RealESRGAN_x4plus.pth as " \
           f"{model_dirs['RealESRGAN'] / 'RealESRGAN_x4plus.pth'}" in hint


def test_first_use_download_when_enabled(model_dirs, tmp_path, monkeypatch):
    from modules import upscaler
    from modules.loading import model_catalog
    from modules.shared import opts

    served = tmp_path / "served.pth"
    weights.write_rrdbnet(str(served))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    opts.set("download_official_weights", False)
    assert "R-ESRGAN 4x+" not in [u.name for u in upscaler.all_upscalers()]
    opts.set("download_official_weights", True)  # the default
    listed = upscaler.find("R-ESRGAN 4x+")  # listed before it exists
    assert not os.path.exists(listed.data_path)
    official = listed.scaler.official
    monkeypatch.setattr(listed.scaler, "official", model_catalog.OfficialWeights(
        official.name, official.folder, official.filename, served.as_uri()))
    reports = []
    real_download = model_catalog.download
    monkeypatch.setattr(model_catalog, "download", lambda w, report=None: real_download(w, lambda done, total: reports.append((done, total))))
    result = listed.scaler.upscale(Image.new("RGB", (8, 8)), 4)
    assert result.size == (32, 32)
    assert os.path.getsize(listed.data_path) == os.path.getsize(served)
    assert reports and reports[-1][0] == os.path.getsize(served)
    assert not [f for f in os.listdir(model_dirs["RealESRGAN"]) if f.startswith(".download")]


def test_weights_that_cannot_arrive_say_which_file_where_and_from_where(model_dirs, tiny_model, monkeypatch):
    """Restore faces on a fresh install: the restorer is offered and its download tried when first needed; when the
    hub cannot be reached (or downloads are off) the message names the file, where to save it and where to get it."""
    from modules.loading import model_catalog
    from modules.shared import opts

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert opts.download_official_weights is True  # the default, as in A1111
    official = model_catalog.FACE_RESTORERS[0]
    unreachable = model_catalog.OfficialWeights(official.name, official.folder, official.filename,
                                                "http://127.0.0.1:9/codeformer.pth")  # nothing listens there
    monkeypatch.setattr(model_catalog, "FACE_RESTORERS", (unreachable, *model_catalog.FACE_RESTORERS[1:]))
    from modules import face_restoration
    monkeypatch.setattr(face_restoration.CodeFormerRestoration, "official", unreachable)
    assert txt2img(restore_faces=True).images  # listed, so a job may ask for it (the first face makes it load)
    with pytest.raises(Exception) as failed:
        face_restoration.find("CodeFormer").load()
    path = model_dirs["Codeformer"] / "codeformer-v0.1.0.pth"
    assert f"CodeFormer: could not download http://127.0.0.1:9/codeformer.pth" in str(failed.value)
    assert f"save it as {path}" in str(failed.value) and not path.exists()
    assert not [f for f in os.listdir(model_dirs["Codeformer"]) if f.startswith(".download")]
    opts.set("download_official_weights", False)
    with pytest.raises(Exception, match=r"are missing and downloads are off \(Settings: download_official_weights\); "
                                        r"download http://127.0.0.1:9/codeformer.pth and save it there"):
        model_catalog.ensure(unreachable)


def test_the_progress_line_shows_what_is_being_downloaded():
    from webui.ui_common import progress_html

    line = progress_html({"step": 0, "steps": 20, "progress": 0.0, "textinfo": "Downloading codeformer.pth: 40%"}, 0)
    assert "Downloading codeformer.pth: 40%" in line and "Step 0/20" in line


def test_hires_fix_with_a_model_upscaler(tiny_model, model_dirs):
    from modules import infotext_utils

    weights.write_rrdbnet(str(model_dirs["RealESRGAN"] / "RealESRGAN_x4plus.pth"))
    result = txt2img(enable_hr=True, hr_scale=2, hr_upscaler="R-ESRGAN 4x+", denoising_strength=0.5, hr_second_pass_steps=2)
    assert result.images[0].size == (128, 128)
    assert infotext_utils.parse_generation_parameters(result.infotexts[0])["Hires upscaler"] == "R-ESRGAN 4x+"


# ---------------------------------------------------------------- face detection and restoration

def test_haar_detector_finds_the_astronauts_face_and_eyes(astronaut):
    from modules.imaging import face_detection

    faces = face_detection.detect(astronaut)
    assert len(faces) == 1
    x, y, w, h = faces[0].box
    assert 160 <= x <= 200 and 50 <= y <= 90 and 80 <= w <= 120  # the face is at about (177, 67), 93 px wide
    left_eye, right_eye = faces[0].landmarks
    assert x < left_eye[0] < x + w / 2 < right_eye[0] < x + w
    assert y + h * 0.2 < left_eye[1] < y + h * 0.55 and abs(left_eye[1] - right_eye[1]) < h / 8


def test_alignment_maps_the_eyes_onto_the_template():
    from modules import face_restoration
    from modules.imaging import face_detection

    face = face_detection.Face((0, 0, 10, 10), np.array([[100, 120], [140, 110]], np.float32))
    affine = face_restoration.alignment(face)
    mapped = face.landmarks @ affine[:, :2].T + affine[:, 2]
    assert np.allclose(mapped, face_restoration.TEMPLATE[:2], atol=1e-3)


def test_yunet_rows_become_five_landmarks_in_template_order():
    from modules.imaging import face_detection

    row = np.array([10, 20, 100, 120, 40, 60, 80, 61, 60, 80, 45, 100, 75, 101, 0.9], np.float32)
    face = face_detection.face_from_yunet_row(row)
    assert face.box == (10, 20, 100, 120) and face.score == pytest.approx(0.9)
    assert face.landmarks.tolist() == [[40, 60], [80, 61], [60, 80], [45, 100], [75, 101]]


@pytest.mark.parametrize("name,writer,filename", [
    ("CodeFormer", weights.write_codeformer, "codeformer-v0.1.0.pth"),
    ("GFPGAN", weights.write_gfpgan, "GFPGANv1.4.pth"),
])
def test_restoring_faces_changes_only_the_face_region(model_dirs, astronaut, name, writer, filename):
    from modules import face_restoration
    from modules.imaging import face_detection

    writer(str(model_dirs[name if name == "GFPGAN" else "Codeformer"] / filename))
    restored = face_restoration.restore_faces(astronaut, name)
    left, top, right, bottom = face_restoration.face_region(
        face_restoration.alignment(face_detection.detect(astronaut)[0]), astronaut.shape)
    changed = np.abs(restored.astype(int) - astronaut.astype(int)).max(axis=2) > 0
    outside = changed.copy()
    outside[top:bottom, left:right] = False
    assert not outside.any()
    face = changed[top:bottom, left:right]
    assert face.mean() > 0.3  # most of the aligned square is repainted
    assert restored.shape == astronaut.shape and restored.dtype == np.uint8


def test_loaded_face_networks_match_the_saved_ones(model_dirs):
    import torch

    from modules.arch import codeformer as codeformer_arch, gfpgan as gfpgan_arch
    from modules.loading import model_files

    original = weights.write_codeformer(str(model_dirs["Codeformer"] / "codeformer-v0.1.0.pth"))
    loaded = codeformer_arch.build(model_files.read_state_dict(str(model_dirs["Codeformer"] / "codeformer-v0.1.0.pth")))
    face = torch.rand(1, 3, 512, 512) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(loaded(face, w=0.7), original(face, w=0.7), atol=1e-5)
        assert not torch.allclose(loaded(face, w=0.0), loaded(face, w=1.0), atol=1e-3)  # fidelity weight matters
    gfpgan = weights.write_gfpgan(str(model_dirs["GFPGAN"] / "GFPGANv1.3.safetensors"))
    loaded = gfpgan_arch.build(model_files.read_state_dict(str(model_dirs["GFPGAN"] / "GFPGANv1.3.safetensors")))
    with torch.no_grad():
        out = loaded(face)
        assert out.shape == (1, 3, 512, 512) and torch.allclose(out, gfpgan(face), atol=1e-5)


def test_restore_faces_without_weights_fails_before_generating(tiny_model, model_dirs):
    from modules.errors import UserInputError
    from tests.conftest import DenoiserCalls

    with DenoiserCalls() as calls, pytest.raises(UserInputError, match="Face restoration model 'CodeFormer' is not available"):
        txt2img(restore_faces=True)
    assert calls.calls == []


def test_missing_face_model_is_a_clear_error(model_dirs):
    from modules import face_restoration
    from modules.errors import UserInputError

    assert face_restoration.face_restorers() == []
    with pytest.raises(UserInputError, match="codeformer.pth"):
        face_restoration.restore_faces(np.zeros((64, 64, 3), np.uint8), "CodeFormer")


def test_restore_faces_in_txt2img_after_decode_with_infotext(tiny_model, model_dirs, fake_face):
    from modules import face_restoration, infotext_utils

    weights.write_codeformer(str(model_dirs["Codeformer"] / "codeformer-v0.1.0.pth"))
    plain = txt2img(seed=5)
    restored = txt2img(seed=5, restore_faces=True)
    assert infotext_utils.parse_generation_parameters(restored.infotexts[0])["Face restoration"] == "CodeFormer"
    assert "Face restoration" not in plain.infotexts[0]
    left, top, right, bottom = face_restoration.face_region(face_restoration.alignment(fake_face), (64, 64))
    diff = np.abs(pixels(plain.images[0]) - pixels(restored.images[0])).max(axis=2)
    assert diff[top:bottom, left:right].max() > 10
    outside = diff.copy()
    outside[top:bottom, left:right] = 0
    assert outside.max() == 0, (np.nonzero(outside), (left, top, right, bottom))


# ---------------------------------------------------------------- extras

def _with_parameters(image: Image.Image, text: str) -> Image.Image:
    image.info["parameters"] = text
    return image


def test_extras_upscale_keeps_the_source_info_and_appends_its_own(data_dir, model_dirs):
    from modules import images, postprocessing

    source = _with_parameters(Image.fromarray((np.random.RandomState(0).rand(40, 30, 3) * 255).astype(np.uint8)),
                              "a cat\nSteps: 20, Seed: 7")
    params = postprocessing.ExtrasParams(upscaling_resize=2, upscaler_1="Lanczos", upscaler_2="Nearest",
                                         extras_upscaler_2_visibility=0.5)
    results, text = postprocessing.run([(source, None)], params)
    assert results[0].size == (56, 80)  # floor(30*2/8)*8 x floor(40*2/8)*8
    assert text == ("Postprocess upscale by: 2, Postprocess upscaler: Lanczos, Postprocess upscaler 2: Nearest, "
                    "Postprocess upscaler 2 visibility: 0.5")
    # each upscaler scales by 2 (60x80), then the size rule's Lanczos gives 56x80
    lanczos = source.resize((60, 80), Image.LANCZOS).resize((56, 80), Image.LANCZOS)
    nearest = source.resize((60, 80), Image.NEAREST).resize((56, 80), Image.LANCZOS)
    expected = pixels(Image.blend(lanczos, nearest, 0.5))
    assert np.abs(pixels(results[0]) - expected).max() <= 1
    folder = postprocessing.output_dir()
    assert folder.endswith(os.path.join("outputs", "extras-images"))
    saved = sorted(os.listdir(folder))[-1]
    assert saved.endswith(".png") and len(saved) == len("00000.png")
    with Image.open(os.path.join(folder, saved)) as written:
        assert written.size == (56, 80)
        assert written.text["parameters"] == "a cat\nSteps: 20, Seed: 7"
        assert written.text["extras"] == text and written.text["postprocessing"] == text
        geninfo, _ = images.read_info_from_image(written)
    assert geninfo == "a cat\nSteps: 20, Seed: 7"


def test_extras_scale_to_with_crop_gives_the_exact_size(data_dir, model_dirs):
    from modules import postprocessing

    params = postprocessing.ExtrasParams(resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=70, upscaler_1="Lanczos")
    result, text = postprocessing.process_image(Image.new("RGB", (50, 30), (1, 2, 3)), params)
    assert result.size == (100, 70)
    assert "Postprocess upscale to: 100x70" in text and "Postprocess crop to: 100x70" in text


def test_extras_face_restoration_visibility_blends(data_dir, model_dirs, astronaut):
    from modules import face_restoration, postprocessing

    weights.write_codeformer(str(model_dirs["Codeformer"] / "codeformer-v0.1.0.pth"))
    full = face_restoration.find("CodeFormer").restore_with_weight(astronaut, 0.3)
    params = postprocessing.ExtrasParams(codeformer_visibility=0.5, codeformer_weight=0.3)
    result, text = postprocessing.process_image(Image.fromarray(astronaut), params)
    expected = (astronaut.astype(float) + full.astype(float)) / 2
    assert np.abs(pixels(result) - expected).max() <= 1
    assert np.abs(pixels(result) - astronaut).max() > 10
    assert text == "CodeFormer visibility: 0.5, CodeFormer weight: 0.3"


def test_extras_bad_parameters_are_named(data_dir, model_dirs):
    from modules import postprocessing
    from modules.errors import UserInputError

    for params, message in ((postprocessing.ExtrasParams(upscaling_resize=0), "upscaling_resize"),
                            (postprocessing.ExtrasParams(upscaler_1="R-ESRGAN 4x+"), "Unknown upscaler"),
                            (postprocessing.ExtrasParams(codeformer_visibility=2), "codeformer_visibility")):
        with pytest.raises(UserInputError, match=message):
            postprocessing.run([(Image.new("RGB", (8, 8)), None)], params, save_results=False)


def test_nothing_pulls_in_torchvision():
    code = ("import sys, numpy as np\n"
            "from modules import esrgan_model, face_restoration, postprocessing, scripts\n"
            "from modules.arch import codeformer, gfpgan\n"
            "from modules.imaging import face_detection\n"
            "import webui.ui\n"
            "scripts.runner_for(False)  # loads the built-in scripts, the face detailer's among them\n"
            "face_detection.detect(np.zeros((64, 64, 3), np.uint8))\n"
            "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
            "assert 'basicsr' not in sys.modules and 'facexlib' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


# ---------------------------------------------------------------- images.split_grid / combine_grid (SD upscale, GOBIG)

def test_split_grid_spreads_tiles_evenly_and_combine_restores_the_image():
    from modules import images

    source = Image.fromarray((np.random.RandomState(6).rand(700, 1000, 3) * 255).astype(np.uint8))
    grid = images.split_grid(source, 512, 512, 64)
    assert [x for x, _, _ in grid.tiles[0][2]] == [0, 244, 488]  # ceil(936/448) = 3 columns
    assert [y for y, _, _ in grid.tiles] == [0, 188]
    assert grid.tile_count == 6 and all(tile.size == (512, 512) for _, _, row in grid.tiles for _, _, tile in row)
    assert np.array_equal(pixels(images.combine_grid(grid)), pixels(source))


def test_combine_grid_blends_the_overlap_with_a_linear_ramp():
    from modules import images

    grid = images.split_grid(Image.new("RGB", (200, 100)), 128, 100, 56)
    assert [x for x, _, _ in grid.tiles[0][2]] == [0, 72]
    row = grid.tiles[0][2]
    row[0][2] = Image.new("RGB", (128, 100), (0, 0, 0))
    row[1][2] = Image.new("RGB", (128, 100), (255, 255, 255))
    combined = pixels(images.combine_grid(grid))[50, :, 0]
    assert (combined[:72] == 0).all() and (combined[128:] == 255).all()
    ramp = combined[72:128]
    assert ramp[0] == 0 and (np.diff(ramp) >= 0).all() and abs(int(ramp[28]) - 127) <= 3
