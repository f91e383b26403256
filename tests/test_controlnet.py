"""ControlNet (issue 21, first part): model files in the original LDM layout and as diffusers folders, found in
models/ControlNet, and their residuals on the denoiser seam (weight, guidance start/end, several units)."""
from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from modules.errors import UserInputError
from tests.conftest import noise_image, pixels

HINT_CHANNELS = ((3, 16), (16, 16), (16, 32), (32, 32), (32, 96), (96, 96), (96, 256))  # the official hint encoder


def controlnet_shapes(unet=None) -> dict:
    """The LDM ``control_model.*`` shapes of a ControlNet for the UNet ``unet`` (default: the tests' tiny SD 1)."""
    from modules.families import sd1_layout

    unet = unet or sd1_layout.TINY.unet
    shapes = {}
    for key, shape in sd1_layout.unet_shapes(unet).items():
        name = key[len(sd1_layout.UNET):]
        if name.startswith(("input_blocks.", "middle_block.", "time_embed.", "label_emb.")):
            shapes["control_model." + name] = shape
    outputs = []  # the channels after each input block
    i = 0
    while f"control_model.input_blocks.{i}.0.weight" in shapes or f"control_model.input_blocks.{i}.0.op.weight" in shapes \
            or f"control_model.input_blocks.{i}.0.out_layers.3.weight" in shapes:
        for suffix in ("0.weight", "0.op.weight", "0.out_layers.3.weight"):
            if f"control_model.input_blocks.{i}.{suffix}" in shapes:
                outputs.append(shapes[f"control_model.input_blocks.{i}.{suffix}"][0])
        i += 1
    for i, channels in enumerate(outputs):
        shapes[f"control_model.zero_convs.{i}.0.weight"] = (channels, channels, 1, 1)
        shapes[f"control_model.zero_convs.{i}.0.bias"] = (channels,)
    middle = shapes["control_model.middle_block.2.out_layers.3.weight"][0]
    shapes["control_model.middle_block_out.0.weight"] = (middle, middle, 1, 1)
    shapes["control_model.middle_block_out.0.bias"] = (middle,)
    for index, (cin, cout) in enumerate(HINT_CHANNELS):
        shapes[f"control_model.input_hint_block.{2 * index}.weight"] = (cout, cin, 3, 3)
        shapes[f"control_model.input_hint_block.{2 * index}.bias"] = (cout,)
    shapes["control_model.input_hint_block.14.weight"] = (unet.model_channels, 256, 3, 3)
    shapes["control_model.input_hint_block.14.bias"] = (unet.model_channels,)
    return shapes


def write_controlnet(path: str, seed: int = 0, shapes: dict | None = None) -> str:
    from modules.loading import demo_model

    return demo_model.write_checkpoint(path, shapes=shapes or controlnet_shapes(), seed=seed)


def _job(units=(), watch=None, **overrides):
    from modules import processing
    from modules.controlnet import apply
    from modules.shared import state

    params = dict(prompt="a cat", negative_prompt="", seed=11, steps=4, width=64, height=64, sampler_name="Euler",
                  do_not_save_samples=True, do_not_save_grid=True)
    p = processing.StableDiffusionProcessingTxt2Img(**{**params, **overrides})
    if units:
        p.denoiser_hooks.before_unet.append(apply.residuals_hook(list(units)))
    if watch is not None:  # sees each UNet call after the ControlNet hook
        p.denoiser_hooks.before_unet.append(watch)
    state.begin("test")
    return processing.process_images(p)


def _unit(path: str, name: str = "canny", **options):
    from modules import sd_models
    from modules.controlnet import apply, models

    model = sd_models.get_sd_model()
    net = models.load(path, model.dtype, like=model.unet.config, device=model.device)
    hint = apply.hint_tensor(noise_image(64, 64, seed=5), 64, 64, model.device, model.dtype)
    return apply.ControlUnit(name, net, hint, **options)


def test_original_and_diffusers_layouts_are_found_and_load_to_the_same_network(controlnet_dir):
    from modules.controlnet import models

    single = write_controlnet(os.path.join(controlnet_dir, "control_tiny_canny.safetensors"))
    net = models.load(single, torch.float32)
    assert type(net).__name__ == "ControlNetModel" and net.config.cross_attention_dim == 32
    assert net.config.conditioning_channels == 3
    net.save_pretrained(os.path.join(controlnet_dir, "tiny-canny-diffusers"))
    listed = models.list_models()
    assert list(listed) == ["control_tiny_canny", "tiny-canny-diffusers"]
    assert models.find("control_tiny_canny [abcdef12]") == single  # with or without the hash
    assert models.title("control_tiny_canny", single).startswith("control_tiny_canny [")
    folder = models.load(listed["tiny-canny-diffusers"], torch.float32)
    for key, value in net.state_dict().items():
        assert torch.equal(value, folder.state_dict()[key]), key
    from safetensors.torch import load_file, save_file

    pruned = os.path.join(controlnet_dir, "control_tiny_canny_fp16.safetensors")  # the fp16 pruned variant
    save_file({key: value.half() for key, value in load_file(single).items()}, pruned)
    half = models.load(pruned, torch.float32)
    for key, value in net.state_dict().items():
        assert torch.equal(value.half().float(), half.state_dict()[key]), key
    os.remove(pruned)
    torch.save({key: value for key, value in load_file(single).items()},  # a .pth: read with weights_only
               os.path.join(controlnet_dir, "control_tiny_canny_pth.pth"))
    from_pth = models.load(models.find("control_tiny_canny_pth"), torch.float32)
    assert all(torch.equal(value, from_pth.state_dict()[key]) for key, value in net.state_dict().items())
    os.remove(os.path.join(controlnet_dir, "control_tiny_canny_pth.pth"))
    assert models.load(single, torch.float32, device="cpu") is net  # kept, one copy per device
    elsewhere = models.load(single, torch.float32, device="meta")  # another worker's device (--gpus)
    assert elsewhere is not net and next(elsewhere.parameters()).device.type == "meta"
    assert next(net.parameters()).device.type == "cpu"  # the first device's copy stays where it is
    with pytest.raises(UserInputError, match="ControlNet model 'nope' not found"):
        models.find("nope")
    torch.save({"control_model.time_embed.0.weight": torch.zeros(2, 2)}, os.path.join(controlnet_dir, "broken.pth"))
    with pytest.raises(UserInputError, match="not a ControlNet"):
        models.load(os.path.join(controlnet_dir, "broken.pth"), torch.float32)


def test_weight_zero_is_no_controlnet_bit_for_bit_and_a_unit_changes_the_image(controlnet_dir):
    path = write_controlnet(os.path.join(controlnet_dir, "canny.safetensors"))
    plain = pixels(_job().images[0])
    assert (pixels(_job([_unit(path, weight=0.0)]).images[0]) == plain).all()
    controlled = pixels(_job([_unit(path, weight=1.0)]).images[0])
    assert (controlled != plain).any()


def test_residuals_reach_the_unet_only_between_guidance_start_and_end(controlnet_dir):
    path = write_controlnet(os.path.join(controlnet_dir, "canny.safetensors"))
    unit = _unit(path, guidance_start=0.25, guidance_end=0.5)
    calls = []
    forward = unit.controlnet.forward
    unit.controlnet.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    seen = []
    _job([unit], watch=lambda call: seen.append("down_block_additional_residuals" in call.kwargs), steps=8)
    del unit.controlnet.forward
    with_residuals = seen
    assert with_residuals == [0.25 <= step / 8 <= 0.5 for step in range(8)]  # calls 2, 3 and 4 of 8
    assert len(calls) == 3


def test_two_units_add_their_residuals(controlnet_dir):
    from modules.controlnet import apply

    first = _unit(write_controlnet(os.path.join(controlnet_dir, "a.safetensors"), seed=1), "a")
    second = _unit(write_controlnet(os.path.join(controlnet_dir, "b.safetensors"), seed=2), "b")
    captured = {}

    def capture(units, key):
        hook = apply.residuals_hook(units)

        def run(call):
            hook(call)
            captured.setdefault(key, [t.clone() for t in call.kwargs["down_block_additional_residuals"]])
        return run

    from modules import processing
    from modules.shared import state

    for key, units in (("a", [first]), ("b", [second]), ("both", [first, second])):
        p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", seed=11, steps=2, width=64, height=64,
                                                        sampler_name="Euler", do_not_save_samples=True,
                                                        do_not_save_grid=True)
        p.denoiser_hooks.before_unet.append(capture(units, key))
        state.begin("test")
        processing.process_images(p)
    for a, b, both in zip(captured["a"], captured["b"], captured["both"]):
        assert torch.allclose(a + b, both, atol=1e-5)


def test_a_controlnet_of_another_family_is_refused_naming_both(controlnet_dir, use_checkpoint_dir, sdxl_dir):
    from modules.controlnet import models

    net = models.load(write_controlnet(os.path.join(controlnet_dir, "sd1.safetensors")), torch.float32)
    sdxl = use_checkpoint_dir(sdxl_dir, "tiny-sdxl.safetensors")
    with pytest.raises(UserInputError, match=r"ControlNet sd1 is for a model with 32-wide text conditioning, not for "
                                             r"this SDXL checkpoint \(80-wide\)"):  # the tiny SDXL's width
        models.check_family(net, sdxl, "sd1")


def test_control_modes_scale_as_the_extension_does(controlnet_dir):
    from modules import processing
    from modules.controlnet import apply
    from modules.shared import state

    path = write_controlnet(os.path.join(controlnet_dir, "canny.safetensors"))
    captured = {}
    for mode in apply.CONTROL_MODES:
        unit = _unit(path, control_mode=mode)
        hook = apply.residuals_hook([unit])

        def capture(call, mode=mode, hook=hook):
            hook(call)
            captured.setdefault(mode, ([t.clone() for t in call.kwargs["down_block_additional_residuals"]],
                                       call.kwargs["mid_block_additional_residual"].clone(), len(call.rows)))

        p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", seed=11, steps=2, width=64, height=64,
                                                        sampler_name="Euler", do_not_save_samples=True,
                                                        do_not_save_grid=True)
        p.denoiser_hooks.before_unet.append(capture)
        state.begin("test")
        processing.process_images(p)
    balanced, balanced_mid, images = captured["Balanced"]
    prompt, prompt_mid, _ = captured["My prompt is more important"]
    control, control_mid, _ = captured["ControlNet is more important"]
    count = len(balanced) + 1
    for i, (plain, soft, strong) in enumerate(zip(balanced, prompt, control)):
        assert torch.allclose(soft, plain * 0.825 ** (count - 1 - i), atol=1e-6)
        assert torch.allclose(strong[:-images], soft[:-images], atol=1e-6)
        assert (strong[-images:] == 0).all()  # the negative prompt's rows get no control
    assert torch.allclose(prompt_mid, balanced_mid) and (control_mid[-images:] == 0).all()


# ---- the A1111 extension's API ------------------------------------------------------------------------------

def _b64(image) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


SMALL = {"prompt": "a cat", "seed": 11, "steps": 4, "width": 64, "height": 64, "sampler_name": "Euler"}


def test_the_extensions_unit_through_alwayson_scripts(api_client, controlnet_dir, astronaut):
    import json

    from modules.api import encoding
    from modules.infotext_utils import parse_generation_parameters

    write_controlnet(os.path.join(controlnet_dir, "control_tiny_canny.safetensors"))
    picture = _b64(Image.fromarray(astronaut).resize((64, 64)))
    plain = api_client.post("/sdapi/v1/txt2img", json=SMALL).json()
    unit = {"input_image": picture, "module": "canny", "model": "control_tiny_canny [00000000]", "weight": 1.0,
            "resize_mode": 1, "control_mode": "Balanced", "processor_res": 64, "threshold_a": 100, "threshold_b": 200}
    answer = api_client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert answer.status_code == 200, answer.text
    infotext = json.loads(answer.json()["info"])["infotexts"][0]
    entry = parse_generation_parameters(infotext)["ControlNet 0"]
    assert entry.startswith("Module: canny, Model: control_tiny_canny [") and "Weight: 1.0" in entry
    assert "Resize Mode: Crop and Resize, Processor Res: 64, Threshold A: 100.0, Threshold B: 200.0" in entry
    controlled = pixels(encoding.decode_image(answer.json()["images"][0]))
    assert (controlled != pixels(encoding.decode_image(plain["images"][0]))).any()
    off = api_client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": [
        {**unit, "weight": 0}]}}}).json()
    assert (pixels(encoding.decode_image(off["images"][0])) == pixels(encoding.decode_image(plain["images"][0]))).all()


@pytest.mark.parametrize("unit, message", [
    ({"model": "nowhere", "module": "canny"}, "ControlNet model 'nowhere' not found"),
    ({"model": "control_tiny_canny", "module": "canny", "control_mode": 7},
     "controlnet unit 0: control_mode 7 is not one of Balanced"),
    ({"model": "control_tiny_canny", "module": "canny", "weight": "strong"}, "controlnet unit 0: weight 'strong'"),
    ({"model": "control_tiny_canny", "module": "blur"}, "preprocessor 'blur' is not available"),
    ({"model": "control_tiny_canny", "module": "canny", "guidance_start": 0.8, "guidance_end": 0.2},
     "guidance_start 0.8 and guidance_end 0.2"),
    ({"model": "control_tiny_canny", "module": "canny", "processor_res": 100000},
     "controlnet unit 0: processor_res 100000 is above 4096"),
])
def test_bad_units_get_422_naming_the_unit_and_field(api_client, controlnet_dir, astronaut, unit, message):
    write_controlnet(os.path.join(controlnet_dir, "control_tiny_canny.safetensors"))
    unit = {"input_image": _b64(Image.fromarray(astronaut).resize((64, 64))), **unit}
    answer = api_client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert answer.status_code == 422 and message in answer.json()["detail"], answer.text


def test_the_extensions_routes_and_detect_match_opencv(api_client, controlnet_dir, astronaut):
    import cv2
    import numpy as np

    from modules.api import encoding

    write_controlnet(os.path.join(controlnet_dir, "control_tiny_canny.safetensors"))
    assert api_client.get("/controlnet/version").json() == {"version": 2}
    assert api_client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}
    assert api_client.get("/controlnet/model_list").json()["model_list"][0].startswith("control_tiny_canny [")
    modules = api_client.get("/controlnet/module_list").json()
    assert {"none", "canny", "invert (from white bg & black line)", "depth_midas", "depth_anything_v2", "normal_midas",
            "openpose", "seg_segformer_ade20k", "scribble_xdog", "lineart_standard (from white bg & black line)",
            "tile_resample", "inpaint", "inpaint_only"} <= set(modules["module_list"])
    assert modules["module_detail"]["normal_midas"]["sliders"][1] == {
        "name": "Normal Background Threshold", "min": 0, "max": 1, "value": 0.4}
    assert [s["name"] for s in modules["module_detail"]["canny"]["sliders"]] == \
        ["Preprocessor Resolution", "Low Threshold", "High Threshold"]
    picture = Image.fromarray(astronaut).resize((128, 128))
    answer = api_client.post("/controlnet/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [_b64(picture)], "controlnet_processor_res": 128,
        "controlnet_threshold_a": 80, "controlnet_threshold_b": 160}).json()
    edges = np.asarray(encoding.decode_image(answer["images"][0]).convert("L"))
    assert (edges == cv2.Canny(np.asarray(picture.convert("RGB")), 80, 160)).all()  # OpenCV's own output
    bad = api_client.post("/controlnet/detect", json={"controlnet_module": "canny",
                                                        "controlnet_input_images": ["not base64"]})
    assert bad.status_code == 422 and "controlnet_input_images[0]" in bad.json()["detail"]
    embeds = api_client.post("/controlnet/detect", json={"controlnet_module": "ip-adapter_clip_sd15",
                                                           "controlnet_input_images": [_b64(picture)]})
    assert embeds.status_code == 422 and "makes image embeddings for an IP-Adapter model" in embeds.json()["detail"]
    offline = api_client.post("/controlnet/detect", json={"controlnet_module": "depth_midas",
                                                            "controlnet_input_images": [_b64(picture)]})
    assert offline.status_code == 422 and "is missing and HF_HUB_OFFLINE is set" in offline.json()["detail"]


def test_img2img_uses_its_input_and_the_hires_pass_gets_a_hint_of_its_size(api_client, controlnet_dir, astronaut):
    import json

    write_controlnet(os.path.join(controlnet_dir, "control_tiny_canny.safetensors"))
    unit = {"module": "canny", "model": "control_tiny_canny", "processor_res": 64}
    source = _b64(Image.fromarray(astronaut).resize((64, 64)))
    answer = api_client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [source], "denoising_strength": 0.6,
                                                        "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert answer.status_code == 200, answer.text  # no unit image: the img2img input is the hint's picture
    entry = json.loads(answer.json()["info"])["infotexts"][0]
    assert "Threshold A: 100.0, Threshold B: 200.0" in entry  # canny's defaults, which it ran with
    missing = api_client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert missing.status_code == 422 and "controlnet unit 0: no image given" in missing.json()["detail"]
    hires = api_client.post("/sdapi/v1/txt2img", json={
        **SMALL, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos", "denoising_strength": 0.5,
        "hr_second_pass_steps": 2, "alwayson_scripts": {"controlnet": {"args": [{**unit, "image": source}]}}})
    assert hires.status_code == 200, hires.text  # residuals of the 96x96 pass: a 64x64 hint would not add up
    assert json.loads(hires.json()["info"])["width"] == 64


def test_the_inpaint_controlnet_gets_the_masked_pixels_as_minus_one(api_client, controlnet_dir, astronaut, monkeypatch):
    import json

    from modules.controlnet import apply

    write_controlnet(os.path.join(controlnet_dir, "control_v11p_sd15_inpaint.safetensors"))
    hints = []
    original = apply.hint_tensor
    monkeypatch.setattr(apply, "hint_tensor", lambda *args: hints.append(original(*args)) or hints[-1])
    mask = Image.new("L", (64, 64))
    mask.paste(255, (0, 0, 32, 64))  # the left half is repainted
    source = _b64(Image.fromarray(astronaut).resize((64, 64)))
    unit = {"module": "inpaint_only", "model": "control_v11p_sd15_inpaint", "resize_mode": "Just Resize"}
    answer = api_client.post("/sdapi/v1/img2img", json={
        **SMALL, "init_images": [source], "mask": _b64(mask), "denoising_strength": 0.75, "inpainting_fill": 1,
        "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert answer.status_code == 200, answer.text  # no unit image: the img2img input and its mask
    assert 'Module: inpaint_only, Model: control_v11p_sd15_inpaint [' in json.loads(answer.json()["info"])["infotexts"][0]
    hint = hints[-1][0]
    assert (hint[:, :, :31] == -1).all() and (hint[:, :, 33:] >= 0).all()
    own_mask = Image.new("L", (64, 64))
    own_mask.paste(255, (0, 48, 64, 64))  # a unit's own image and mask win
    hints.clear()
    answer = api_client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": [
        {**unit, "module": "inpaint", "image": {"image": source, "mask": _b64(own_mask)}}]}}})
    assert answer.status_code == 200, answer.text
    assert (hints[-1][0][:, 49:] == -1).all() and (hints[-1][0][:, :47] >= 0).all()


def test_an_alias_runs_its_preprocessor_and_the_infotext_names_what_ran(api_client, controlnet_dir, astronaut):
    import json

    write_controlnet(os.path.join(controlnet_dir, "control_tiny_canny.safetensors"))
    unit = {"module": "lineart_standard", "model": "control_tiny_canny", "image": _b64(Image.fromarray(astronaut)),
            "processor_res": 64}
    answer = api_client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert answer.status_code == 200, answer.text
    infotext = json.loads(answer.json()["info"])["infotexts"][0]
    assert 'ControlNet 0: "Module: lineart_standard (from white bg & black line), Model: control_tiny_canny [' in infotext
    assert "Processor Res: 64" in infotext and "Threshold" not in infotext  # it has no thresholds to record


def test_an_infotexts_units_are_pasted_into_the_page_and_read_by_the_api(api_client, controlnet_dir, astronaut):
    import json

    import gradio as gr

    from modules import scripts
    from modules.api import encoding
    from modules.shared import opts
    from webui import ui_common
    from webui.tabs import txt2img as txt2img_tab

    write_controlnet(os.path.join(controlnet_dir, "control_tiny_canny.safetensors"))
    source = _b64(Image.fromarray(astronaut).resize((64, 64)))
    unit = {"module": "scribble_xdog", "model": "control_tiny_canny", "processor_res": 64, "threshold_a": 20,
            "weight": 0.7, "guidance_end": 0.8, "control_mode": "My prompt is more important"}
    job = {**SMALL, "init_images": [source], "denoising_strength": 0.6}
    first = api_client.post("/sdapi/v1/img2img", json={**job, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    infotext = json.loads(first.json()["info"])["infotexts"][0]
    assert 'Weight: 0.7' in infotext and 'Threshold A: 20.0' in infotext

    again = api_client.post("/sdapi/v1/img2img", json={**job, "infotext": infotext})  # the units from the infotext
    assert again.status_code == 200, again.text
    assert json.loads(again.json()["info"])["infotexts"][0] == infotext
    assert (pixels(encoding.decode_image(again.json()["images"][0])) ==
            pixels(encoding.decode_image(first.json()["images"][0]))).all()

    saved = opts.control_net_unit_count
    opts.set("control_net_unit_count", 2)
    try:
        with gr.Blocks():
            scripts.scripts_txt2img.setup_ui()
    finally:
        opts.set("control_net_unit_count", saved)
    controlnet = scripts.scripts_txt2img.script("ControlNet")
    assert controlnet.args_to - controlnet.args_from == 2  # the unit-count setting
    updates = txt2img_tab.paste_parameters(infotext)[len(txt2img_tab.PASTE_FIELDS) + 1:]
    pasted = {component.elem_id: update.get("value") for component, update
              in zip(ui_common.script_paste_components("txt2img"), updates) if "value" in update}
    prefix = "script_txt2img_controlnet_unit0_"
    assert pasted[prefix + "enabled"] is True and pasted[prefix + "module"] == "scribble_xdog"
    assert pasted[prefix + "model"].startswith("control_tiny_canny [")
    assert pasted[prefix + "weight"] == 0.7 and pasted[prefix + "threshold_a"] == 20
    assert pasted[prefix + "guidance_end"] == 0.8 and pasted[prefix + "control_mode"] == "My prompt is more important"
    assert not any(key.startswith("script_txt2img_controlnet_unit1_") for key in pasted)  # no entry: left alone


def test_sdxl_controlnets_in_every_layout_condition_an_sdxl_image(controlnet_dir, use_checkpoint_dir, sdxl_dir):
    from safetensors.torch import save_file

    from modules.controlnet import models
    from modules.families import sdxl

    model = use_checkpoint_dir(sdxl_dir, "tiny-sdxl.safetensors")
    original = write_controlnet(os.path.join(controlnet_dir, "xl_original.safetensors"),
                                shapes=controlnet_shapes(sdxl.TINY_BASE[0]))
    net = models.load(original, torch.float32, like=model.unet.config)
    assert net.config.addition_embed_type == "text_time" and net.config.cross_attention_dim == 80
    assert net.config.addition_time_embed_dim == model.unet.config.addition_time_embed_dim
    net.save_pretrained(os.path.join(controlnet_dir, "xl-diffusers"))  # a folder with its config.json
    save_file(net.state_dict(), os.path.join(controlnet_dir, "diffusers_xl_keys.safetensors"))  # keys, no config
    for name in ("xl-diffusers", "diffusers_xl_keys"):
        other = models.load(models.find(name), torch.float32, like=model.unet.config)
        assert {k: v.shape for k, v in other.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
        assert all(torch.equal(v, other.state_dict()[k]) for k, v in net.state_dict().items()), name
        assert other.config.attention_head_dim == net.config.attention_head_dim, name
    plain = pixels(_job().images[0])
    calls = []
    unit = _unit(original, "xl")
    controlled = pixels(_job([unit], watch=lambda call: calls.append("down_block_additional_residuals" in call.kwargs))
                        .images[0])
    assert calls and all(calls) and (controlled != plain).any()
    off = _unit(original, "xl", weight=0.0)
    assert (pixels(_job([off]).images[0]) == plain).all()
    keys_net = models.load(models.find("diffusers_xl_keys"), model.dtype, like=model.unet.config)
    same = apply_unit(keys_net)
    assert (pixels(_job([same]).images[0]) == controlled).all()  # the same network from diffusers' keys


def apply_unit(net):
    from modules import sd_models
    from modules.controlnet import apply

    model = sd_models.get_sd_model()
    hint = apply.hint_tensor(noise_image(64, 64, seed=5), 64, 64, model.device, model.dtype)
    return apply.ControlUnit("xl", net.to(model.device), hint)


@pytest.mark.parametrize("option, per_pass", [("Both", [1, 1]), ("Low res only", [1, 0]), ("High res only", [0, 1])])
def test_the_hires_fix_option_picks_the_passes_a_unit_applies_to(api_client, controlnet_dir, astronaut, monkeypatch,
                                                                 option, per_pass):
    import json

    from modules.controlnet import apply

    write_controlnet(os.path.join(controlnet_dir, "control_tiny_canny.safetensors"))
    counts = []
    original = apply.residuals_hook
    monkeypatch.setattr(apply, "residuals_hook", lambda units: counts.append(len(units)) or original(units))
    unit = {"module": "canny", "model": "control_tiny_canny", "processor_res": 64, "hr_option": option,
            "image": _b64(Image.fromarray(astronaut).resize((64, 64)))}
    answer = api_client.post("/sdapi/v1/txt2img", json={
        **SMALL, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos", "denoising_strength": 0.5,
        "hr_second_pass_steps": 2, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert answer.status_code == 200, answer.text
    assert counts == per_pass
    assert f"Hr Option: {option}" in json.loads(answer.json()["info"])["infotexts"][0]
    bad = api_client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": [
        {**unit, "hr_option": "Sometimes"}]}}})
    assert bad.status_code == 422 and "controlnet unit 0: hr_option 'Sometimes'" in bad.json()["detail"]


def test_every_sampler_gets_the_residuals(controlnet_dir):
    from modules import sd_samplers

    path = write_controlnet(os.path.join(controlnet_dir, "canny.safetensors"))
    unit = _unit(path)
    for sampler in sd_samplers.all_samplers:
        calls = []
        plain = pixels(_job(sampler_name=sampler.name).images[0])
        watch = lambda call: calls.append("down_block_additional_residuals" in call.kwargs)  # noqa: E731
        controlled = pixels(_job([unit], watch=watch, sampler_name=sampler.name).images[0])
        assert calls and all(calls), sampler.name
        assert (controlled != plain).any(), sampler.name


def test_a_refiner_of_the_same_family_gets_the_residuals_too(controlnet_dir):
    path = write_controlnet(os.path.join(controlnet_dir, "canny.safetensors"))
    calls = []
    watch = lambda call: calls.append("down_block_additional_residuals" in call.kwargs)  # noqa: E731
    processed = _job([_unit(path)], watch=watch, refiner_checkpoint="other", refiner_switch_at=0.5)
    assert "Refiner: other" in processed.infotexts[0]
    assert len(calls) == 4 and all(calls)  # two steps on the base, two on the refiner


def test_the_sdxl_refiner_gets_no_residuals_of_a_base_controlnet(controlnet_dir, use_checkpoint_dir, sdxl_dir):
    from modules.families import sd1_layout, sdxl
    from modules.loading import demo_model
    from tests.test_sdxl import BIG_G, REFINER_UNET

    refiner = sdxl_dir / "tiny-refiner-for-controlnet.safetensors"
    if not refiner.exists():
        demo_model.write_checkpoint(str(refiner), seed=4,
                                    shapes=sdxl.checkpoint_shapes(REFINER_UNET, sd1_layout.TINY.vae, BIG_G))
    use_checkpoint_dir(sdxl_dir, "tiny-sdxl.safetensors")
    path = write_controlnet(os.path.join(controlnet_dir, "xl.safetensors"), shapes=controlnet_shapes(sdxl.TINY_BASE[0]))
    calls = []
    watch = lambda call: calls.append("down_block_additional_residuals" in call.kwargs)  # noqa: E731
    _job([_unit(path, "xl")], watch=watch, steps=6, refiner_checkpoint="tiny-refiner-for-controlnet",
         refiner_switch_at=0.5)
    on_base = calls.count(True)
    assert 0 < on_base < 6 and calls == [True] * on_base + [False] * (6 - on_base)


def test_the_detected_map_follows_the_images_as_the_extension_returns_it(api_client, controlnet_dir, astronaut):
    import cv2
    import numpy as np

    from modules.api import encoding
    from modules.shared import opts

    write_controlnet(os.path.join(controlnet_dir, "control_tiny_canny.safetensors"))
    picture = Image.fromarray(astronaut).resize((64, 64))
    unit = {"module": "canny", "model": "control_tiny_canny", "processor_res": 64, "image": _b64(picture)}

    def images(job_unit, **job):
        answer = api_client.post("/sdapi/v1/txt2img", json={**SMALL, **job, "alwayson_scripts": {"controlnet": {
            "args": [job_unit]}}})
        assert answer.status_code == 200, answer.text
        return [encoding.decode_image(text) for text in answer.json()["images"]]

    returned = images(unit, batch_size=2)
    assert len(returned) == 3 and returned[2].size == (64, 64)  # two images, then the canny map
    edges = cv2.Canny(np.asarray(picture), 100, 200)
    assert (np.asarray(returned[2].convert("L")) == edges).all()
    assert len(images({**unit, "save_detected_map": False})) == 1
    assert len(images({**unit, "module": "none"})) == 1  # no preprocessor, no map
    opts.set("control_net_no_detectmap", True)
    try:
        assert len(images(unit)) == 1
    finally:
        opts.set("control_net_no_detectmap", False)
    scripted = images(unit, script_name="prompts from file or textbox",  # its jobs' images are all its own
                      script_args=[False, False, "start", "a cat\na dog"])
    assert len(scripted) == 2


def test_a_unit_parses_the_forms_clients_send():
    from modules.controlnet import units

    parsed = units.parse({"processor_res": -1, "resize_mode": "Envelope (Outer Fit)", "guessmode": True,
                          "hr_option": 1, "low_vram": 1, "unknown_field": 3}, 0, lambda text, field: None)
    assert parsed.processor_res == 512 and parsed.resize_mode == "Resize and Fill"
    assert parsed.control_mode == "ControlNet is more important" and parsed.hr_option == "Low res only"
    assert parsed.low_vram is True and parsed.extra == {"unknown_field": 3}
    picture, stroke = Image.new("RGB", (32, 32), "red"), Image.new("RGBA", (32, 32))
    stroke.paste((255, 255, 255, 255), (0, 0, 8, 32))  # painted over the left quarter in the page's editor
    edited = units.parse({"image": {"background": picture, "layers": [stroke], "composite": picture}}, 0, None)
    assert edited.image is picture and edited.mask.getbbox() == (0, 0, 8, 32)
    assert units.parse({"image": {"background": None, "layers": [], "composite": None}}, 0, None).image is None
    assert units.parse(None, 1, None) is None
    with pytest.raises(UserInputError, match="controlnet unit 2: must be an object"):
        units.parse([1, 2], 2, None)


def test_a_low_vram_unit_is_on_the_device_only_for_its_calls(api_client, controlnet_dir, astronaut, monkeypatch):
    from modules.api import encoding
    from modules.controlnet import models

    write_controlnet(os.path.join(controlnet_dir, "control_tiny_canny.safetensors"))
    moves, loaded = [], []
    original = models.load

    def recording(*args, **kwargs):
        net = original(*args, **kwargs)
        loaded.append(kwargs)
        if "to" not in vars(net):
            real = net.to
            monkeypatch.setattr(net, "to", lambda *a, **k: moves.append(str(a[0] if a else k)) or real(*a, **k),
                                raising=False)
        return net

    monkeypatch.setattr(models, "load", recording)
    unit = {"module": "canny", "model": "control_tiny_canny", "processor_res": 64,
            "image": _b64(Image.fromarray(astronaut).resize((64, 64)))}
    first = api_client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert first.status_code == 200 and not moves  # on the device all along
    offloaded = api_client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": [
        {**unit, "low_vram": True}]}}})
    assert offloaded.status_code == 200, offloaded.text
    assert loaded[-1]["device"] is None and str(loaded[-1]["offloaded_for"]) == "cpu"  # its own RAM copy
    assert len(moves) == 2 * 4 and moves[1::2] == ["cpu"] * 4  # to the device and back, for each of the 4 steps
    assert (pixels(encoding.decode_image(offloaded.json()["images"][0])) ==
            pixels(encoding.decode_image(first.json()["images"][0]))).all()
