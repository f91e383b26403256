"""IP-Adapter as a ControlNet unit (issue 21): a tiny adapter in the official layouts (``.safetensors`` with
``image_proj.*``/``ip_adapter.*`` keys, and the ``.bin`` of two dicts) in models/ControlNet, with a tiny CLIP vision
encoder where the h94/IP-Adapter download puts it, through the extension's API."""
from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from tests.conftest import models_subdir, pixels
from tests.test_controlnet import SMALL, _b64


def adapter_state(unet, clip_width: int = 16, seed: int = 0) -> dict:
    """The official layout for ``unet``: the image projection to 4 tokens, and the IP key and value projections of
    every cross-attention layer, numbered as the attention processors (odd numbers: the attn2 ones)."""
    generator = torch.Generator().manual_seed(seed)
    width = unet.config.cross_attention_dim
    state = {"image_proj": {"proj.weight": torch.randn(4 * width, clip_width, generator=generator) * 0.5,
                            "proj.bias": torch.randn(4 * width, generator=generator),
                            "norm.weight": torch.ones(width), "norm.bias": torch.zeros(width)},
             "ip_adapter": {}}
    for number, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            attention = unet.get_submodule(name[:-len(".processor")])
            inner = attention.to_k.weight.shape[0]
            for key in ("to_k_ip", "to_v_ip"):
                state["ip_adapter"][f"{number}.{key}.weight"] = torch.randn(inner, width, generator=generator)
    return state


def plus_adapter_state(unet, hidden: int = 32, seed: int = 1) -> dict:
    """An "IP-Adapter Plus" in the official layout: the original Resampler (4 layers of perceiver attention and
    feed-forward, 4 query tokens 64 wide, one 64-channel head) over the encoder's hidden states."""
    generator = torch.Generator().manual_seed(seed)
    state = adapter_state(unet, seed=seed)
    width, dim = unet.config.cross_attention_dim, 64

    def weights(*shape):
        return torch.randn(*shape, generator=generator) * 0.2

    projection = {"latents": weights(1, 4, dim), "proj_in.weight": weights(dim, hidden), "proj_in.bias": weights(dim),
                  "proj_out.weight": weights(width, dim), "proj_out.bias": weights(width),
                  "norm_out.weight": torch.ones(width), "norm_out.bias": torch.zeros(width)}
    for layer in range(4):
        for norm in ("0.norm1", "0.norm2", "1.0"):
            projection[f"layers.{layer}.{norm}.weight"] = torch.ones(dim)
            projection[f"layers.{layer}.{norm}.bias"] = torch.zeros(dim)
        projection[f"layers.{layer}.0.to_q.weight"] = weights(dim, dim)
        projection[f"layers.{layer}.0.to_kv.weight"] = weights(2 * dim, dim)
        projection[f"layers.{layer}.0.to_out.weight"] = weights(dim, dim)
        projection[f"layers.{layer}.1.1.weight"] = weights(4 * dim, dim)
        projection[f"layers.{layer}.1.3.weight"] = weights(dim, 4 * dim)
    state["image_proj"] = projection
    return state


def write_encoder() -> None:
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    from modules.controlnet import ip_adapter

    torch.manual_seed(0)
    folder = ip_adapter.ENCODERS["ip-adapter_clip_h"].path()
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8,
        projection_dim=16)).to(torch.float16).save_pretrained(folder)  # float16, as the official encoders are
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)


@pytest.fixture()
def adapters(api_client, controlnet_dir):
    from safetensors.torch import save_file

    from modules import sd_models

    state = adapter_state(sd_models.get_sd_model().unet)
    flat = {f"{part}.{key}": value for part in state for key, value in state[part].items()}
    save_file(flat, os.path.join(controlnet_dir, "ip-adapter_tiny.safetensors"))
    torch.save(state, os.path.join(controlnet_dir, "ip-adapter_tiny_bin.bin"))
    with models_subdir("annotator"):
        write_encoder()
        yield controlnet_dir


def _run(client, *units, job=None):
    answer = client.post("/sdapi/v1/txt2img", json={**(job or SMALL), "alwayson_scripts": {"controlnet": {
        "args": list(units)}}})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_an_ip_adapter_unit_conditions_the_image_and_leaves_the_unet_as_it_was(api_client, adapters, astronaut):
    from modules import sd_models
    from modules.api import encoding

    unet = sd_models.get_sd_model().unet
    processors = {name: type(processor) for name, processor in unet.attn_processors.items()}
    reference = _b64(Image.fromarray(astronaut).resize((64, 64)))
    plain = _run(api_client)
    unit = {"module": "ip-adapter_clip_sd15", "model": "ip-adapter_tiny", "image": reference, "weight": 0.8}
    adapted = _run(api_client, unit)
    entry = json.loads(adapted["info"])["infotexts"][0].split("ControlNet 0: ")[1]
    assert entry.startswith('"Module: ip-adapter_clip_h, Model: ip-adapter_tiny [') and "Weight: 0.8" in entry
    assert "Resize Mode: Crop and Resize, Guidance Start" in entry  # nothing an IP-Adapter does not use
    assert not any(field in entry for field in ("Processor Res", "Threshold", "Pixel Perfect", "Control Mode"))
    image = pixels(encoding.decode_image(adapted["images"][0]))
    assert (image != pixels(encoding.decode_image(plain["images"][0]))).any()
    assert {name: type(processor) for name, processor in unet.attn_processors.items()} == processors  # detached
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    again = _run(api_client)
    assert (pixels(encoding.decode_image(again["images"][0])) == pixels(encoding.decode_image(plain["images"][0]))).all()
    from_bin = _run(api_client, {**unit, "model": "ip-adapter_tiny_bin"})  # the .bin layout: the same adapter
    assert (pixels(encoding.decode_image(from_bin["images"][0])) == image).all()
    off = _run(api_client, {**unit, "weight": 0})
    assert (pixels(encoding.decode_image(off["images"][0])) == pixels(encoding.decode_image(plain["images"][0]))).all()
    late = _run(api_client, {**unit, "guidance_start": 0.5})  # the adapter's scale is 0 before half the steps
    assert (pixels(encoding.decode_image(late["images"][0])) != image).any()
    wide = _b64(Image.fromarray(astronaut).resize((96, 48)))  # not square: the resize mode decides what it sees
    cropped = _run(api_client, {**unit, "image": wide})
    stretched = _run(api_client, {**unit, "image": wide, "resize_mode": "Just Resize"})
    assert "Resize Mode: Just Resize" in json.loads(stretched["info"])["infotexts"][0]
    assert (pixels(encoding.decode_image(stretched["images"][0])) !=
            pixels(encoding.decode_image(cropped["images"][0]))).any()


def test_the_prompt_rows_get_the_images_embedding_and_the_negative_rows_a_blank_ones(api_client, adapters,
                                                                                      astronaut, monkeypatch):
    from modules.controlnet import ip_adapter

    seen = []
    original = ip_adapter.embeds_hook

    def watching(unet, units, *more):
        hook = original(unet, units, *more)

        def run(call):
            hook(call)
            seen.append((call.kwargs["added_cond_kwargs"]["image_embeds"][0], call.guided, len(call.rows),
                         [processor.scale for processor in ip_adapter._ip_processors(unet)][0]))
        return run

    monkeypatch.setattr(ip_adapter, "embeds_hook", watching)
    from modules.engine import fast_path
    fast_paths = []
    monkeypatch.setattr(fast_path, "runner_for", lambda *args: fast_paths.append(args))
    reference = Image.fromarray(astronaut).resize((64, 64))
    _run(api_client, {"module": "ip-adapter_clip_h", "model": "ip-adapter_tiny", "image": _b64(reference),
                      "guidance_end": 0.5}, job={**SMALL, "batch_size": 2})
    embeds, guided, images, scale = seen[0]
    assert guided and images == 2 and embeds.shape == (4, 1, 16)
    assert (embeds[2:] == 0).all() and (embeds[:2].abs() > 0).any()  # negative rows: the plain adapter's zeros
    assert torch.equal(embeds[0], embeds[1])
    assert scale == [1.0] and seen[-1][3] == [0.0]  # past the guidance end
    assert not fast_paths  # the adapter's modules are new each job: no CUDA graphs of them
    _run(api_client)
    assert fast_paths  # a job without one gets the fast path again


@pytest.mark.parametrize("unit, message", [
    ({"module": "canny", "model": "ip-adapter_tiny"},
     "controlnet unit 0: ip-adapter_tiny is an IP-Adapter; its preprocessor must be one of ip-adapter_clip_h, "
     "ip-adapter_clip_g, not canny"),
    ({"module": "ip-adapter_clip_h", "model": "ip-adapter_tiny", "control_mode": 2},
     "controlnet unit 0: control_mode 'ControlNet is more important' is for ControlNets"),
    ({"module": "ip-adapter_clip_g", "model": "ip-adapter_tiny"}, "CLIP ViT-bigG image encoder (IP-Adapter): the "
                                                                  "model folder"),
    ({"module": "ip-adapter_clip_h", "model": "ip-adapter_sdxl"},
     "IP-Adapter ip-adapter_sdxl is for a model with 80-wide text conditioning, not for this SD 1.x checkpoint"),
    ({"module": "ip-adapter_clip_h", "model": "ip-adapter_wide_clip"}, "takes 24-wide image embeddings; the "
                                                                       "ip-adapter_clip_h encoder makes 16-wide ones"),
])
def test_mismatched_ip_adapter_units_are_refused_naming_the_problem(api_client, adapters, astronaut, unit, message):
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from modules import sd_models

    unet = sd_models.get_sd_model().unet
    wide = adapter_state(unet, clip_width=24)
    sdxl_like = adapter_state(SimpleNamespace(  # an 80-wide text conditioning: the tests' tiny SDXL
        config=SimpleNamespace(cross_attention_dim=80), attn_processors=dict.fromkeys(["a.attn1.processor",
                                                                                       "a.attn2.processor"]),
        get_submodule=lambda name: SimpleNamespace(to_k=torch.nn.Linear(80, 32))))
    for name, state in (("ip-adapter_wide_clip", wide), ("ip-adapter_sdxl", sdxl_like)):
        save_file({f"{part}.{key}": value for part in state for key, value in state[part].items()},
                  os.path.join(adapters, f"{name}.safetensors"))
    answer = api_client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": [
        {**unit, "image": _b64(Image.fromarray(astronaut).resize((64, 64)))}]}}})
    assert answer.status_code == 422 and message in answer.json()["detail"], answer.text
    assert unet.encoder_hid_proj is None


def test_an_sdxl_ip_adapter_conditions_an_sdxl_image(api_client, adapters, astronaut, use_checkpoint_dir, sdxl_dir):
    from safetensors.torch import save_file

    from modules.api import encoding

    model = use_checkpoint_dir(sdxl_dir, "tiny-sdxl.safetensors")
    state = adapter_state(model.unet, seed=3)
    save_file({f"{part}.{key}": value for part in state for key, value in state[part].items()},
              os.path.join(adapters, "ip-adapter_tiny_sdxl.safetensors"))
    reference = _b64(Image.fromarray(astronaut).resize((64, 64)))
    plain = _run(api_client)
    adapted = _run(api_client, {"module": "ip-adapter_clip_sdxl_plus_vith", "model": "ip-adapter_tiny_sdxl",
                                "image": reference})
    assert (pixels(encoding.decode_image(adapted["images"][0])) != pixels(encoding.decode_image(plain["images"][0]))).any()
    assert model.unet.encoder_hid_proj is None and model.unet.config.encoder_hid_dim_type is None


def test_a_plus_ip_adapter_takes_the_encoders_hidden_states(api_client, adapters, astronaut, monkeypatch):
    from safetensors.torch import save_file

    from modules import sd_models
    from modules.api import encoding
    from modules.controlnet import ip_adapter

    state = plus_adapter_state(sd_models.get_sd_model().unet)
    save_file({f"{part}.{key}": value for part in state for key, value in state[part].items()},
              os.path.join(adapters, "ip-adapter-plus_tiny.safetensors"))
    embedded = []
    original = ip_adapter.embed
    monkeypatch.setattr(ip_adapter, "embed", lambda *args: embedded.append(original(*args)) or embedded[-1])
    reference = _b64(Image.fromarray(astronaut).resize((64, 64)))
    plain = _run(api_client)
    adapted = _run(api_client, {"module": "ip-adapter_clip_h", "model": "ip-adapter-plus_tiny", "image": reference})
    assert (pixels(encoding.decode_image(adapted["images"][0])) != pixels(encoding.decode_image(plain["images"][0]))).any()
    positive, negative = embedded[0]
    assert positive.shape == negative.shape == (1, 1, 17, 32)  # 16 patches + the class token, 32 wide
    assert (negative != 0).any() and (positive != negative).any()  # a black image's hidden states, not zeros
    unet = sd_models.get_sd_model().unet
    assert unet.encoder_hid_proj is None and not ip_adapter._ip_processors(unet)  # detached


def test_ip_adapter_is_refused_in_lowvram_mode(api_client, adapters, astronaut, monkeypatch):
    from modules import lowvram

    monkeypatch.setattr(lowvram, "mode_of", lambda model: "lowvram")
    answer = api_client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": [
        {"module": "ip-adapter_clip_h", "model": "ip-adapter_tiny",
         "image": _b64(Image.fromarray(astronaut).resize((64, 64)))}]}}})
    assert answer.status_code == 422 and "IP-Adapter does not work with --lowvram" in answer.json()["detail"]


def test_an_adapter_file_is_read_once_while_it_is_unchanged(adapters):
    from safetensors.torch import save_file

    from modules import sd_models
    from modules.controlnet import ip_adapter

    path = os.path.join(adapters, "ip-adapter_tiny.safetensors")
    first = ip_adapter.read(path)
    assert ip_adapter.read(path) is first
    state = adapter_state(sd_models.get_sd_model().unet, seed=5)
    save_file({f"{part}.{key}": value for part in state for key, value in state[part].items()}, path)
    os.utime(path, ns=(1, 1))
    again = ip_adapter.read(path)
    assert again is not first and torch.equal(again["image_proj"]["proj.weight"], state["image_proj"]["proj.weight"])
