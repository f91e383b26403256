"""Infotext write/parse, matching A1111's format, including real A1111 texts."""
from __future__ import annotations

from modules import images, infotext_utils, processing
from tests.conftest import txt2img

A1111_TEXT = (
    "masterpiece, best quality, (a cat:1.2) sitting on a mat\n"
    "at sunset\n"
    "Negative prompt: lowres, bad anatomy\n"
    "blurry\n"
    'Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, '
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1'
)


def test_parse_real_a1111_infotext():
    res = infotext_utils.parse_generation_parameters(A1111_TEXT)
    assert res["Prompt"] == "masterpiece, best quality, (a cat:1.2) sitting on a mat\nat sunset"
    assert res["Negative prompt"] == "lowres, bad anatomy\nblurry"
    assert res["Steps"] == "20" and res["Sampler"] == "DPM++ 2M" and res["Schedule type"] == "Karras"
    assert (res["Size-1"], res["Size-2"]) == ("512", "768")
    assert res["Model hash"] == "6ce0161689"
    assert res["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert res["Clip skip"] == "1" and res["RNG"] == "GPU"  # defaults for absent keys


def test_legacy_sampler_name_is_split():
    res = infotext_utils.parse_generation_parameters("cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1")
    assert res["Sampler"] == "DPM++ 2M" and res["Schedule type"] == "Automatic"
    res = infotext_utils.parse_generation_parameters("cat\nSteps: 20, Sampler: DPM++ 2M SDE Karras, CFG scale: 7, Seed: 1")
    assert res["Sampler"] == "DPM++ 2M SDE" and res["Schedule type"] == "Karras"


def test_last_line_with_fewer_than_three_params_is_prompt():
    res = infotext_utils.parse_generation_parameters("a photo\nstyle: oil, mood: calm")
    assert res["Prompt"] == "a photo\nstyle: oil, mood: calm"


def test_quoting_rules():
    assert infotext_utils.quote("plain") == "plain"
    assert infotext_utils.quote("a, b") == '"a, b"'
    assert infotext_utils.quote("name: hash") == '"name: hash"'
    assert infotext_utils.quote('日本, "x"') == '"日本, \\"x\\""'
    text = infotext_utils.build_infotext("p", "", {"Steps": 20, "Sampler": "Euler", "Seed": 1, "Tiling": "Tiling", "None": None})
    assert text == "p\nSteps: 20, Sampler: Euler, Seed: 1, Tiling"


def test_create_infotext_key_order_and_round_trip(tiny_model):
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt="a, b: c\nline two", negative_prompt="bad", seed=5, subseed=9, subseed_strength=0.25, steps=3,
        width=64, height=64, sampler_name="DPM++ 2M", seed_resize_from_w=128, seed_resize_from_h=96,
        do_not_save_samples=True, do_not_save_grid=True, extra_generation_params={"Note": "x, y", "Steps": 3})
    result = processing.process_images(p)
    text = result.infotexts[0]
    last = text.split("\n")[-1]
    keys = [key for key, _value in infotext_utils.re_param.findall(last)]
    assert keys == ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
                    "Variation seed", "Variation seed strength", "Seed resize from", "RNG", "Note", "Version"]
    res = infotext_utils.parse_generation_parameters(text)
    assert res["Prompt"] == "a, b: c\nline two"
    assert res["Negative prompt"] == "bad"
    assert res["Seed"] == "5" and res["Variation seed"] == "9" and res["Variation seed strength"] == "0.25"
    assert (res["Seed resize from-1"], res["Seed resize from-2"]) == ("128", "96")
    assert res["Model hash"] == tiny_model.sd_checkpoint_info.shorthash and len(res["Model hash"]) == 10
    assert res["Model"] == "tiny" and res["Note"] == "x, y" and res["CFG scale"] == "7"
    assert res["Schedule type"] == "Karras"  # Automatic is written as the sampler's default


def test_png_chunk_round_trip(tiny_model, tmp_path):
    result = txt2img(do_not_save_samples=True)
    path, _ = images.save_image(result.images[0], str(tmp_path), "", 1234, "a cat", "png",
                                info=result.infotexts[0], save_to_dirs=False)
    from PIL import Image

    with Image.open(path) as img:
        geninfo, _items = images.read_info_from_image(img)
    assert geninfo == result.infotexts[0]


def test_jpeg_exif_round_trip(tmp_path):
    from PIL import Image

    path = str(tmp_path / "x.jpg")
    images.save_image_with_geninfo(Image.new("RGB", (8, 8)), "caf\u00e9\nSteps: 1, Sampler: Euler, Seed: 2", path)
    with Image.open(path) as img:
        assert images.read_info_from_image(img)[0] == "caf\u00e9\nSteps: 1, Sampler: Euler, Seed: 2"
