"""The /sdapi/v1 routes on the tiny models, in process (FastAPI's test client): shapes, strictness, scripts,
settings, queue behaviour and the login middleware."""
from __future__ import annotations

import base64
import os
import io
import json
import re
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import noise_image, pixels, titled, write_extension

BASE = "/sdapi/v1"
SMALL = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 1234, "sampler_name": "Euler"}


def b64(image: Image.Image, data_uri: bool = False) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    text = base64.b64encode(buffer.getvalue()).decode()
    return "data:image/png;base64," + text if data_uri else text


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def make_client(middleware=None):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules.api.api import Api

    app = FastAPI(middleware=middleware or [], docs_url="/docs")
    Api(app)
    return app, TestClient(app)


@pytest.fixture()
def client(tiny_model):
    from modules import scripts
    from modules.runtime import job_queue

    scripts.runner_for(False)  # scripts loaded (built-in extensions)
    _, test_client = make_client()
    saved_limit = job_queue.queue.max_pending
    with test_client:
        yield test_client
    job_queue.queue.max_pending = saved_limit


def test_txt2img_answers_like_a1111(client, data_dir):
    from tests.conftest import txt2img

    outputs = lambda: sorted(str(p) for p in (data_dir / "outputs").rglob("*.png"))  # noqa: E731
    before = outputs()
    response = client.post(f"{BASE}/txt2img", json={**SMALL, "batch_size": 2})
    assert outputs() == before  # save_images defaults to false
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])  # a JSON string that clients decode a second time
    assert info["all_seeds"] == [1234, 1235] and info["seed"] == 1234 and info["steps"] == 3
    assert len(body["images"]) == 2 and info["index_of_first_image"] == 0  # nothing saved: no grid either (A1111)
    first = decoded(body["images"][0])
    assert first.format == "PNG" and first.size == (64, 64)
    assert first.info["parameters"] == info["infotexts"][0]  # the PNG keeps its parameters chunk
    assert "Seed: 1234" in first.info["parameters"] and "Sampler: Euler" in first.info["parameters"]
    assert body["parameters"]["steps"] == 3 and body["parameters"]["cfg_scale"] == 7.0  # echo with defaults
    assert response.headers["X-Task-Id"].startswith("task(") and float(response.headers["X-Process-Time"]) > 0
    same = txt2img(prompt="a cat", seed=1234, steps=3, batch_size=2, sampler_name="Euler")
    assert np.array_equal(pixels(first), pixels(same.images[0]))  # the same image the engine makes

    saved = client.post(f"{BASE}/txt2img", json={**SMALL, "batch_size": 2, "save_images": True}).json()
    assert len(saved["images"]) == 3 and json.loads(saved["info"])["index_of_first_image"] == 1  # the grid first
    assert decoded(saved["images"][0]).size == (128, 64)
    assert len([path for path in outputs() if path not in before and "grids" in path]) == 1


def test_api_defaults_and_legacy_sampler_names(client):
    body = client.post(f"{BASE}/txt2img", json={**SMALL, "sampler_name": None, "steps": 2}).json()
    assert json.loads(body["info"])["sampler_name"] == "Euler"  # the API default is sampler_index "Euler"
    body = client.post(f"{BASE}/txt2img", json={**SMALL, "sampler_name": "", "sampler_index": "DPM++ 2M Karras",
                                                "scheduler": "automatic", "steps": 2}).json()
    text = json.loads(body["info"])["infotexts"][0]
    assert "Sampler: DPM++ 2M," in text and "Schedule type: Karras" in text
    body = client.post(f"{BASE}/txt2img", json={**SMALL, "sampler_name": "k_euler_a", "steps": 2}).json()
    assert json.loads(body["info"])["sampler_name"] == "Euler a"


def test_img2img_with_mask_from_data_uri_and_bare_base64(client):
    source = noise_image(64, 64, seed=3)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half
    response = client.post(f"{BASE}/img2img", json={
        **SMALL, "init_images": [b64(source, data_uri=True)], "mask": b64(mask), "mask_blur": 0, "inpainting_fill": 1,
        "inpaint_full_res": False, "denoising_strength": 0.9})
    assert response.status_code == 200, response.text
    body = response.json()
    result = pixels(decoded(body["images"][0]))
    assert np.array_equal(result[:, 40:], pixels(source)[:, 40:])  # the kept half is the input, exactly
    assert np.abs(result[:, :24] - pixels(source)[:, :24]).mean() > 10  # the masked half was repainted
    assert body["parameters"]["init_images"] is None and body["parameters"]["mask"] is None  # not echoed by default
    echoed = client.post(f"{BASE}/img2img", json={**SMALL, "steps": 2, "init_images": [b64(source)],
                                                  "include_init_images": True}).json()
    assert echoed["parameters"]["init_images"] == [b64(source)]


def test_override_settings_apply_and_are_restored_even_when_the_job_fails(client):
    from modules.shared import opts

    opts.set("CLIP_stop_at_last_layers", 1)
    body = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 2,
                                                "override_settings": {"CLIP_stop_at_last_layers": 2}}).json()
    assert "Clip skip: 2" in json.loads(body["info"])["infotexts"][0]
    assert opts.CLIP_stop_at_last_layers == 1
    failed = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 2, "override_settings": {
        "CLIP_stop_at_last_layers": 3, "sd_vae": "missing.safetensors"}})
    assert failed.status_code == 422 and "missing.safetensors" in failed.json()["detail"]
    assert opts.CLIP_stop_at_last_layers == 1 and opts.sd_vae == "Automatic"


def test_infotext_fills_the_fields_the_request_did_not_set(client):
    infotext = "a dog\nNegative prompt: ugly\nSteps: 2, Sampler: Euler a, CFG scale: 5, Seed: 77, Size: 64x64"
    body = client.post(f"{BASE}/txt2img", json={"infotext": infotext, "seed": 99, "sampler_name": None}).json()
    info = json.loads(body["info"])
    assert (info["prompt"], info["negative_prompt"], info["steps"], info["cfg_scale"]) == ("a dog", "ugly", 2, 5.0)
    assert info["seed"] == 99 and info["sampler_name"] == "Euler a" and (info["width"], info["height"]) == (64, 64)


ECHO_SCRIPT = titled("Echo Args", """
def ui(self, is_img2img):
    import gradio as gr
    return [gr.Slider(0, 1, value=0.5, label="Strength"), gr.Textbox(value="x", label="Word", elem_id="echo_word")]

def run(self, p, strength, word):
    from modules import processing
    p.extra_generation_params["Echo"] = f"{strength}/{word}"
    return processing.process_images(p)
""")
TAGGER_SCRIPT = titled("Tagger", """
def show(self, is_img2img):
    return scripts.AlwaysVisible

def ui(self, is_img2img):
    import gradio as gr
    return [gr.Checkbox(False, label="Enabled"), gr.Textbox(value="plain", label="Tag")]

def process(self, p, enabled, tag):
    if enabled:
        p.extra_generation_params["Tag"] = tag
""")


@pytest.fixture()
def script_client(tiny_model, ext_root):
    from modules import scripts

    write_extension(ext_root["user"], "api-scripts", {"scripts/echo.py": ECHO_SCRIPT, "scripts/tagger.py": TAGGER_SCRIPT})
    scripts.reload_scripts()
    _, test_client = make_client()
    with test_client:
        yield test_client


def _infotext(response) -> str:
    assert response.status_code == 200, response.text
    return json.loads(response.json()["info"])["infotexts"][0]


def test_scripts_by_title_with_positional_or_named_arguments(script_client):
    post = lambda **extra: script_client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 2, **extra})  # noqa: E731
    assert "Echo: 0.25/hi" in _infotext(post(script_name="echo args", script_args=[0.25, "hi"]))
    assert "Echo: 0.5/yo" in _infotext(post(script_name="ECHO ARGS", script_args={"echo_word": "yo"}))
    assert "Echo: 0.5/x" in _infotext(post(script_name="Echo Args"))  # defaults, nothing kept from before
    tagged = _infotext(post(alwayson_scripts={"TAGGER": {"args": [True]}}))
    assert "Tag: plain" in tagged and "Echo" not in tagged
    assert "Tag:" not in _infotext(post())  # the next request starts from the defaults again
    for extra, status, message in (
            ({"script_name": "nope"}, 422, "Script 'nope' not found"),
            ({"script_name": "echo args", "script_args": [1, 2, 3]}, 422, "takes 2 argument(s), got 3"),
            ({"script_name": "echo args", "script_args": {"colour": 1}}, 422, "has no argument 'colour'"),
            ({"alwayson_scripts": {"missing": {"args": []}}}, 422, "script 'missing' not found"),
            ({"alwayson_scripts": {"echo args": {"args": []}}}, 422, "is a selectable script")):
        response = post(**extra)
        assert response.status_code == status and message in response.json()["detail"], response.text
    assert script_client.get(f"{BASE}/scripts").json()["txt2img"] == ["echo args", "tagger"]
    info = {(s["name"], s["is_img2img"]): s for s in script_client.get(f"{BASE}/script-info").json()}
    assert info[("tagger", False)]["is_alwayson"] and [a["label"] for a in info[("echo args", True)]["args"]] == ["Strength", "Word"]
    assert info[("echo args", False)]["args"][0] | {"label": None} == {"label": None, "value": 0.5, "minimum": 0, "maximum": 1,
                                                                         "step": 0.01, "choices": None}


def _png_bomb() -> str:
    """A PNG header claiming 30000x30000 pixels (900 megapixels) and no real data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")).decode()


GOOD_IMAGE = b64(noise_image(64, 64))
BAD_INPUTS = [
    ("txt2img", {"width": 0}, "width must be a multiple of 8 between 64 and 2048, got 0"),
    ("txt2img", {"height": -64}, "height must be a multiple of 8"),
    ("txt2img", {"width": 100}, "width must be a multiple of 8"),
    ("txt2img", {"width": 100000, "height": 100000}, "between 64 and 2048"),
    ("txt2img", {"steps": 0}, "steps must be an integer between 1 and 1000, got 0"),
    ("txt2img", {"steps": 10 ** 6}, "steps must be an integer between 1 and 1000"),
    ("txt2img", {"enable_hr": True, "hr_second_pass_steps": 1001}, "hr_second_pass_steps must be an integer between 0 and 1000"),
    ("txt2img", {"override_settings": {"max_sampling_steps": 10 ** 6}}, "'max_sampling_steps' cannot be changed through the API"),
    ("txt2img", {"steps": 2.5}, "steps: Input should be a valid integer"),
    ("txt2img", {"cfg_scale": float("nan")}, "cfg_scale: Input should be a finite number"),
    ("txt2img", {"cfg_scale": 1e9}, "cfg_scale must be between 0 and 30"),
    ("txt2img", {"batch_size": 1000}, "batch_size must be an integer between 1 and 8"),
    ("txt2img", {"sampler_name": "Nope"}, "Unknown sampler 'Nope'"),
    ("txt2img", {"scheduler": "Sideways"}, "Unknown schedule type 'Sideways'"),
    ("txt2img", {"enable_hr": True, "hr_upscaler": "Nope"}, "hr_upscaler: unknown upscaler 'Nope'"),
    ("txt2img", {"override_settings": {"no_such_setting": 1}}, "unknown setting(s) 'no_such_setting'"),
    ("txt2img", {"override_settings": {"sd_model_checkpoint": "nowhere"}}, "unknown checkpoint 'nowhere'"),
    ("txt2img", {"width": "wide"}, "width: Input should be a valid integer"),
    ("txt2img", {"prompt": 206}, "prompt.str: Input should be a valid string"),
    ("txt2img", {"styles": [None]}, "styles.0: Input should be a valid string"),
    ("txt2img", {"refiner_checkpoint": "sd_xl_refiner_1.0", "refiner_switch_at": 0.8},
     "Could not find checkpoint with name sd_xl_refiner_1.0"),
    ("txt2img", {"sampler_name": "Heun", "s_churn": 0.5}, "s_churn: applied by the Euler sampler only here, not by Heun"),
    ("txt2img", {"sampler_name": "Euler", "s_noise": -1}, "s_noise must be between 0 and 1000"),
    ("txt2img", {"seed_resize_from_w": 87970945948959, "seed_resize_from_h": 64},
     "seed_resize_from_w must be 0 (off) or between 8 and 2048, got 87970945948959"),
    ("txt2img", {"force_task_id": "caf\u00e9 \U0007ea51"}, "force_task_id: 1 to 200 printable ASCII characters"),
    ("txt2img", {"negative_prompt": []}, "negative_prompt must be a text or a non-empty list of texts, got []"),
    ("txt2img", {"negative_prompt": ["a"], "batch_size": 2}, "negative_prompt: 1 texts for 2 prompts"),
    ("img2img", {}, "init_images: at least one input image is required"),
    ("img2img", {"init_images": ["!!not base64!!"]}, "init_images[0]: invalid base64"),
    ("img2img", {"init_images": ["data:text/plain;base64,aGVsbG8="]}, "MIME type 'text/plain'"),
    ("img2img", {"init_images": [base64.b64encode(b"just text").decode()]}, "init_images[0]: not a readable image"),
    ("img2img", {"init_images": [_png_bomb()]}, "init_images[0]:"),
    ("img2img", {"init_images": ["https://example.com/cat.png"]}, "image URLs are not fetched"),
    ("img2img", {"init_images": [GOOD_IMAGE], "mask": b64(Image.new("L", (32, 32)))},
     "mask: 32x32 does not match the first init image's 64x64"),
    ("img2img", {"init_images": [GOOD_IMAGE], "denoising_strength": 2}, "denoising_strength must be between 0 and 1"),
    ("img2img", {"init_images": [GOOD_IMAGE], "inpainting_fill": 9}, "inpainting_fill must be 0, 1, 2 or 3"),
    ("extra-single-image", {"image": GOOD_IMAGE, "upscaler_1": "Nope"}, "Unknown upscaler 'Nope'"),
    ("extra-single-image", {"image": GOOD_IMAGE, "upscaling_resize": 100}, "upscaling_resize: 100.0 is outside"),
    ("extra-batch-images", {"imageList": [{"data": "%%%", "name": "a.png"}]}, "imageList[0].data: invalid base64"),
    ("png-info", {"image": "%%%"}, "image: invalid base64"),
    ("options", {"no_such_setting": 1}, "unknown setting(s) 'no_such_setting'"),
    ("options", {"sd_model_checkpoint": "nowhere"}, "unknown checkpoint 'nowhere'"),
    ("options", {"jpeg_quality": "high"}, "'jpeg_quality' cannot be 'high'"),
]


@pytest.mark.parametrize("endpoint,body,message", BAD_INPUTS, ids=[f"{e}-{i}" for i, (e, _, _) in enumerate(BAD_INPUTS)])
def test_bad_input_is_a_4xx_naming_the_problem(client, endpoint, body, message):
    from modules.shared import opts

    before = dict(opts.data)
    payload = json.dumps({**SMALL, **body} if endpoint in ("txt2img", "img2img") else body)  # NaN as Python writes it
    response = client.post(f"{BASE}/{endpoint}", content=payload, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    error = response.json()
    assert set(error) == {"error", "detail", "body", "errors"} and message in error["detail"], error
    assert "Traceback" not in response.text
    assert opts.data == before  # nothing was half-applied
    assert client.get(f"{BASE}/progress").status_code == 200  # and the server keeps answering


def test_more_steps_than_the_slider_as_in_a1111_up_to_the_setting(client):
    from modules.shared import opts

    body = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 151, "width": 64, "height": 64})
    assert body.status_code == 200, body.text
    assert json.loads(body.json()["info"])["steps"] == 151 and "Steps: 151," in json.loads(body.json()["info"])["infotexts"][0]
    saved = opts.max_sampling_steps
    opts.set("max_sampling_steps", 100)
    try:
        refused = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 101})
        assert refused.status_code == 422 and "steps must be an integer between 1 and 100, got 101" in refused.json()["detail"]
    finally:
        opts.set("max_sampling_steps", saved)


def test_euler_applies_sigma_churn_and_records_it_as_a1111_does(client):
    from modules import infotext_utils

    plain = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 4}).json()
    churned = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 4, "s_churn": 1.0, "s_noise": 0.9}).json()
    text = json.loads(churned["info"])["infotexts"][0]
    assert "Sigma churn: 1, Sigma noise: 0.9" in text and "Sigma tmin" not in text and "Sigma" not in json.loads(
        plain["info"])["infotexts"][0]
    assert np.abs(pixels(decoded(plain["images"][0])) - pixels(decoded(churned["images"][0]))).mean() > 1  # applied
    again = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 4, "infotext": text}).json()
    assert np.array_equal(pixels(decoded(again["images"][0])), pixels(decoded(churned["images"][0])))  # pasted back
    params = infotext_utils.parse_generation_parameters(text)
    assert infotext_utils.override_settings_from_infotext(params) == {"s_churn": 1.0, "s_noise": 0.9}
    euler_a = client.post(f"{BASE}/txt2img", json={**SMALL, "sampler_name": "Euler a", "s_churn": 1.0}).json()
    assert "Sigma" not in json.loads(euler_a["info"])["infotexts"][0]  # samplers that never use them ignore them


def test_null_means_the_default_for_every_nullable_field(client):
    """Clients send null for "not set"; every field the schema allows null for must then take its default."""
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    for route, name in (("txt2img", "StableDiffusionTxt2ImgProcessingAPI"), ("img2img", "StableDiffusionImg2ImgProcessingAPI")):
        nullable = [field for field, spec in schema[name]["properties"].items()
                    if any(option.get("type") == "null" for option in spec.get("anyOf", []))]
        assert {"styles", "override_settings", "sampler_name", "restore_faces"} <= set(nullable), nullable
        body = {**SMALL, "steps": 2, **{field: None for field in nullable}}
        if route == "img2img":
            body["init_images"] = [GOOD_IMAGE]
        response = client.post(f"{BASE}/{route}", json=body)
        assert response.status_code == 200, (route, response.text)
        info = json.loads(response.json()["info"])
        assert info["styles"] == [] and info["steps"] == 2 and info["seed"] == 1234
    nulls = client.post(f"{BASE}/extra-single-image", json={"image": GOOD_IMAGE, "upscaler_1": None, "upscaling_resize": None})
    assert nulls.status_code == 200, nulls.text


def test_options_round_trip_and_checkpoint_switch(client, registry):
    from modules import sd_models, shared

    options = client.get(f"{BASE}/options").json()
    assert options["sd_model_checkpoint"].startswith("tiny.safetensors") and options["jpeg_quality"] == 80
    assert client.post(f"{BASE}/options", json={"jpeg_quality": 77}).status_code == 200
    assert client.get(f"{BASE}/options").json()["jpeg_quality"] == 77
    other = sd_models.get_closet_checkpoint_match("other")
    assert client.post(f"{BASE}/options", json={"sd_model_checkpoint": other.title}).status_code == 200
    assert sd_models.current_model().sd_checkpoint_info.filename == other.filename  # clients switch models this way
    with open(shared.config_filename(), encoding="utf8") as f:
        saved = json.load(f)
    assert saved["sd_model_checkpoint"] == other.title and saved["jpeg_quality"] == 77
    body = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 2}).json()
    assert json.loads(body["info"])["sd_model_name"] == "sub_other"


def test_cmd_flags_hide_credentials(client, monkeypatch):
    from modules import shared

    monkeypatch.setattr(shared.cmd_opts, "gradio_auth", "alice:hunter2", raising=False)
    monkeypatch.setattr(shared.cmd_opts, "api_auth", "bob:swordfish", raising=False)
    response = client.get(f"{BASE}/cmd-flags")
    flags = response.json()
    assert flags["gradio_auth"] == flags["api_auth"] == "<redacted>"
    assert "hunter2" not in response.text and "swordfish" not in response.text
    assert flags["port"] is None and "data_dir" in flags


def test_lists_fill_client_dropdowns(client):
    get = lambda path: client.get(f"{BASE}/{path}").json()  # noqa: E731
    samplers = {s["name"]: s for s in get("samplers")}
    assert "k_euler_a" in samplers["Euler a"]["aliases"] and samplers["DPM++ 2M"]["options"]["scheduler"] == "karras"
    schedulers = {s["name"]: s["label"] for s in get("schedulers")}
    assert schedulers["karras"] == "Karras" and "polyexponential" not in schedulers  # only usable ones
    assert {"Lanczos", "Nearest", "None"} <= {u["name"] for u in get("upscalers")}
    assert {"name": "Latent (bicubic antialiased)"} in get("latent-upscale-modes")
    models = {m["model_name"]: m for m in get("sd-models")}
    assert re.fullmatch(r"[0-9a-f]{10}", models["tiny"]["hash"]) and models["tiny"]["title"] == f"tiny.safetensors [{models['tiny']['hash']}]"
    assert models["tiny"]["family"] == "SD 1.x" and models["tiny-diffusers"]["family"] == "SD 1.x"  # ours, not A1111's
    assert models["tiny"]["config"] is None
    assert set(get("embeddings")) == {"loaded", "skipped"}
    assert get("hypernetworks") == [] and isinstance(get("loras"), list) and isinstance(get("sd-vae"), list)
    assert {e["name"] for e in get("extensions")} >= {"xyz-grid"}
    assert get("memory")["ram"]["total"] > 0
    assert all(set(style) == {"name", "prompt", "negative_prompt"} for style in get("prompt-styles"))


def test_png_info_reads_back_what_txt2img_wrote(client):
    body = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 2, "negative_prompt": "blurry"}).json()
    info = client.post(f"{BASE}/png-info", json={"image": "data:image/png;base64," + body["images"][0]}).json()
    assert info["info"] == json.loads(body["info"])["infotexts"][0]
    assert info["parameters"]["Prompt"] == "a cat" and info["parameters"]["Negative prompt"] == "blurry"
    assert info["parameters"]["Seed"] == "1234" and info["parameters"]["Steps"] == "2"
    assert client.post(f"{BASE}/png-info", json={"image": b64(noise_image(8, 8))}).json()["info"] == ""


def test_extras_single_and_batch(client):
    source = noise_image(32, 32, seed=5)
    body = client.post(f"{BASE}/extra-single-image", json={"image": b64(source, data_uri=True), "upscaler_1": "Nearest",
                                                            "upscaling_resize": 2}).json()
    result = decoded(body["image"])
    assert result.size == (64, 64) and np.array_equal(pixels(result), pixels(source.resize((64, 64), Image.NEAREST)))
    assert "Postprocess upscale by: 2" in body["html_info"] and "Postprocess upscaler: Nearest" in body["html_info"]
    batch = client.post(f"{BASE}/extra-batch-images", json={"upscaler_1": "Nearest", "upscaling_resize": 3, "imageList": [
        {"data": b64(source), "name": "a.png"}, {"data": b64(noise_image(16, 16)), "name": "b.png"}]}).json()
    assert [decoded(image).size for image in batch["images"]] == [(96, 96), (48, 48)]


def test_a_job_whose_client_left_finishes_is_saved_and_can_be_fetched(client, data_dir):
    """The request runs in a thread that nobody waits for; the result is fetched by its id afterwards."""
    from fastapi.testclient import TestClient

    request = {**SMALL, "steps": 2, "force_task_id": "task(keepme)", "save_images": True, "seed": 4321}
    leaving = TestClient(client.app)  # its own event loop, so nothing of it is left on the test's client
    caller = threading.Thread(target=lambda: leaving.post(f"{BASE}/txt2img", json=request), daemon=True)
    caller.start()
    deadline, job = time.time() + 60, {}
    while time.time() < deadline:
        response = client.get(f"{BASE}/jobs/task(keepme)")
        job = response.json() if response.status_code == 200 else {}
        if job.get("status") == "done":
            break
        time.sleep(0.1)
    assert job["status"] == "done" and job["description"] == "txt2img"
    info = json.loads(job["result"]["info"])
    assert info["seed"] == 4321 and decoded(job["result"]["images"][0]).info["parameters"] == info["infotexts"][0]
    saved = list((data_dir / "outputs" / "txt2img-images").rglob("*4321*.png"))
    assert saved, "save_images should write the result"
    assert "task(keepme)" in [j["id"] for j in client.get(f"{BASE}/jobs").json()]
    again = client.post(f"{BASE}/txt2img", json=request)
    assert again.status_code == 409 and "exists already" in again.json()["detail"]
    assert client.get(f"{BASE}/jobs/task(unknown)").status_code == 404
    caller.join(60)


@pytest.fixture()
def blocked_queue():
    """The job queue's worker held by a job until ``release`` is set; yields (running job, release)."""
    from modules.runtime import job_queue
    from modules.shared import state

    release, started = threading.Event(), threading.Event()

    def hold():
        state.job_count, state.sampling_steps, state.sampling_step = 1, 10, 5
        import torch

        state.current_latent = torch.zeros(4, 8, 8)
        started.set()
        deadline = time.time() + 30
        while not release.is_set() and not state.interrupted and not state.skipped and time.time() < deadline:
            time.sleep(0.01)
        return "interrupted" if state.interrupted else "skipped" if state.skipped else "released"

    job = job_queue.queue.submit(hold, "hold")
    assert started.wait(30)
    yield job, release
    release.set()
    job.wait(30)


def test_full_queue_answers_503(client, blocked_queue):
    from modules.runtime import job_queue

    job_queue.queue.max_pending = 1
    waiting = job_queue.queue.submit(lambda: None, "waiting")
    response = client.post(f"{BASE}/txt2img", json=SMALL)
    assert response.status_code == 503 and "the queue is full" in response.json()["detail"]
    blocked_queue[1].set()
    assert waiting.wait(30)


def test_progress_shows_the_running_job_and_its_preview(client, blocked_queue):
    job, release = blocked_queue
    progress = client.get(f"{BASE}/progress").json()
    assert progress["progress"] == pytest.approx(0.5) and progress["id_task"] == job.id
    assert progress["state"]["job_count"] == 1 and progress["state"]["sampling_step"] == 5
    assert decoded(progress["current_image"]).size == (64, 64)  # the live preview, at output size
    assert client.get(f"{BASE}/progress", params={"skip_current_image": True}).json()["current_image"] is None


def test_interrupt_stops_the_running_job_only(client, blocked_queue):
    job, _ = blocked_queue
    results = {}
    waiting = threading.Thread(target=lambda: results.update(r=client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 2})))
    waiting.start()
    time.sleep(0.3)  # the request's job now waits behind the running one
    assert client.post(f"{BASE}/interrupt").json() == {}
    assert job.wait(30) and job.result == "interrupted"
    waiting.join(60)
    assert results["r"].status_code == 200 and len(results["r"].json()["images"]) == 1  # the queued job ran in full


def test_skip_reaches_the_running_job(client, blocked_queue):
    job, _ = blocked_queue
    response = client.post(f"{BASE}/skip")
    assert response.status_code == 200 and response.json() is None
    assert job.wait(30) and job.result == "skipped"


def test_one_login_covers_api_extension_routes_and_docs(tiny_model):
    from starlette.middleware import Middleware

    from modules.api.auth import BasicAuthMiddleware

    app, test_client = make_client([Middleware(BasicAuthMiddleware, credentials={"alice": "pw"})])
    app.get("/extension/ping")(lambda: {"pong": True})  # a route an extension adds in on_app_started
    for path in (f"{BASE}/samplers", "/extension/ping", "/docs", "/openapi.json"):
        refused = test_client.get(path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic ")
        assert refused.json()["detail"] == "Incorrect username or password"
        assert test_client.get(path, auth=("alice", "wrong")).status_code == 401
        assert test_client.get(path, auth=("mallory", "pw")).status_code == 401
        assert test_client.get(path, auth=("alice", "pw")).status_code == 200
    assert test_client.post(f"{BASE}/txt2img", json=SMALL).status_code == 401


def test_interrogate_names_missing_files_and_unknown_models(client, data_dir):
    image = b64(noise_image(32, 32))
    missing = client.post(f"{BASE}/interrogate", json={"image": image, "model": "clip"})
    assert missing.status_code == 503 and "interrogate" in missing.json()["detail"]
    assert "model.safetensors" in missing.json()["detail"]
    unknown = client.post(f"{BASE}/interrogate", json={"image": image, "model": "nope"})
    assert unknown.status_code == 404 and "Model not found" in unknown.json()["detail"]



def test_interrogate_captions_with_blip_and_ranks_terms_with_clip(client, tmp_path, monkeypatch):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from modules import interrogate, paths
    from tests.weights import write_interrogator

    monkeypatch.setattr(paths, "models_path", str(tmp_path))
    monkeypatch.setattr(interrogate, "clip_interrogator", interrogate.ClipInterrogator())
    folder = tmp_path / "interrogate"
    mediums, flavors = ["an oil painting", "a photograph", "a pencil sketch"], ["red", "blue", "green", "grey"]
    write_interrogator(str(folder), {"mediums.txt": mediums, "flavors-2.txt": flavors})
    blip = str(folder / "blip" / "model.safetensors")
    from safetensors.torch import load_file, save_file

    state = load_file(blip)
    bias = next(k for k in state if k.endswith("predictions.bias"))
    state[bias][9] = 100.0  # the tiny captioner says "cat" (token 9) until it runs out of tokens
    save_file(state, blip, metadata={"format": "pt"})
    image = noise_image(40, 40, seed=11)
    response = client.post(f"{BASE}/interrogate", json={"image": b64(image), "model": "CLIP"})
    assert response.status_code == 200, response.text
    caption = response.json()["caption"]
    clip = CLIPModel.from_pretrained(str(folder / "clip")).eval()
    processor = CLIPProcessor.from_pretrained(str(folder / "clip"))
    with torch.no_grad():
        picture = clip.get_image_features(**processor(images=image, return_tensors="pt")).pooler_output

        def best(terms, k):
            text = clip.get_text_features(**processor.tokenizer(terms, padding=True, return_tensors="pt")).pooler_output
            scores = torch.nn.functional.cosine_similarity(picture, text)
            return [terms[i] for i in scores.topk(k).indices.tolist()]

    expected_terms = best(flavors, 2) + best(mediums, 1)  # files in name order; "-2" asks for two terms
    words = caption.split(", ")
    assert words[0].split() == ["cat"] * interrogate.CAPTION_MAX_TOKENS and words[1:] == expected_terms
    from modules import shared

    assert shared.interrogator.interrogate(image) == caption  # the Script API's shared.interrogator


def test_request_fields_are_the_processing_fields_with_their_defaults():
    import dataclasses

    from modules import processing
    from modules.api import models

    for cls, model in ((processing.StableDiffusionProcessingTxt2Img, models.StableDiffusionTxt2ImgProcessingAPI),
                       (processing.StableDiffusionProcessingImg2Img, models.StableDiffusionImg2ImgProcessingAPI)):
        defaults = model().model_dump()
        for f in dataclasses.fields(cls):
            if f.name in models.EXCLUDED_FIELDS:
                assert f.name not in models.processing_fields(model)
                continue
            expected = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            assert defaults[f.name] == expected, f.name
        assert set(models.processing_fields(model)) == {f.name for f in dataclasses.fields(cls)} - models.EXCLUDED_FIELDS


def test_hires_fields(client):
    body = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 2, "enable_hr": True, "hr_scale": 2,
                                                "hr_upscaler": "Latent", "hr_second_pass_steps": 2,
                                                "denoising_strength": 0.5}).json()
    assert decoded(body["images"][0]).size == (128, 128)
    text = json.loads(body["info"])["infotexts"][0]
    assert "Hires upscale: 2" in text and "Hires upscaler: Latent" in text and "Denoising strength: 0.5" in text
    hires = {**SMALL, "steps": 2, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent"}
    other = client.post(f"{BASE}/txt2img", json={**hires, "hr_checkpoint_name": "other"}).json()
    assert "Hires checkpoint: other [" in json.loads(other["info"])["infotexts"][0]
    missing = client.post(f"{BASE}/txt2img", json={**hires, "hr_checkpoint_name": "nope"})
    assert missing.status_code == 422 and "Could not find checkpoint with name nope" in missing.text


def test_refresh_unload_and_reload(client, registry, data_dir):
    from modules import sd_models
    from modules.loading import demo_model

    extra = data_dir / "models" / "Stable-diffusion" / "late.safetensors"
    demo_model.write_checkpoint(str(extra), seed=3)
    try:
        assert "late" not in {m["model_name"] for m in client.get(f"{BASE}/sd-models").json()}
        assert client.post(f"{BASE}/refresh-checkpoints").status_code == 200
        assert "late" in {m["model_name"] for m in client.get(f"{BASE}/sd-models").json()}
    finally:
        extra.unlink()
        sd_models.list_models()
    assert client.post(f"{BASE}/unload-checkpoint").json() == {}
    assert sd_models.current_model() is None
    assert client.post(f"{BASE}/reload-checkpoint").json() == {}
    assert sd_models.current_model().sd_checkpoint_info.model_name == "tiny"
    for path in ("refresh-embeddings", "refresh-vae", "refresh-loras"):
        assert client.post(f"{BASE}/{path}").status_code == 200


def test_face_detailer_runs_from_alwayson_scripts(client, fake_face):
    post = lambda **extra: client.post(f"{BASE}/txt2img", json={**SMALL, "batch_size": 1, **extra})  # noqa: E731
    plain = post()
    detailed = post(alwayson_scripts={"face detailer": {"args": {
        "Face detailer: re-render each face at full resolution": True, "Detailer denoising strength": 0.6,
        "Detailer padding, pixels": 8, "Detailer mask blur": 2}}})
    text = _infotext(detailed)
    assert "Face detailer: True" in text and "Face detailer denoising strength: 0.6" in text
    assert "Face detailer" not in _infotext(plain)
    before = np.asarray(decoded(plain.json()["images"][0]).convert("RGB"), dtype=float)
    after = np.asarray(decoded(detailed.json()["images"][0]).convert("RGB"), dtype=float)
    x, y, w, h = fake_face.box
    diff = np.abs(after - before).max(axis=2)
    assert diff[y:y + h, x:x + w].mean() > 5  # the face was re-rendered
    far = np.ones_like(diff, dtype=bool)
    far[y - 10:y + h + 10, x - 10:x + w + 10] = False
    assert diff[far].max() <= 2  # what is far from it was not
    bad = post(alwayson_scripts={"Face detailer": {"args": [True, "strong"]}})
    assert bad.status_code == 422 and "Face detailer" in bad.json()["detail"]


def test_interrogate_downloads_its_models_and_term_lists_on_first_use(client, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub

    from modules import interrogate, paths
    from modules.loading import model_catalog
    from tests.weights import write_interrogator

    source = tmp_path / "hub"
    write_interrogator(str(source), {"flavors.txt": ["red", "blue"]})
    monkeypatch.setattr(paths, "models_path", str(tmp_path / "models"))
    monkeypatch.setattr(interrogate, "clip_interrogator", interrogate.ClipInterrogator())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fetched = []

    def snapshot_download(repo, local_dir, allow_patterns):  # the hub, served from the tiny folders
        fetched.append(repo)
        shutil.copytree(source / dict((r, s) for s, r in interrogate.HUB_MODELS)[repo], local_dir)
        return local_dir

    def download(weights, report=None):
        fetched.append(weights.url)
        os.makedirs(os.path.dirname(weights.path()), exist_ok=True)
        shutil.copy(source / "flavors.txt", weights.path())
        return weights.path()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(model_catalog, "download", download)
    response = client.post(f"{BASE}/interrogate", json={"image": b64(noise_image(32, 32)), "model": "clip"})
    assert response.status_code == 200, response.text
    assert fetched[:2] == ["Salesforce/blip-image-captioning-large", "openai/clip-vit-large-patch14"]
    assert fetched[2:] == [f"{interrogate.TERM_LISTS_URL}/{name}" for name in interrogate.TERM_LISTS]
    assert not interrogate.missing_files()
    assert response.json()["caption"].split(", ")[-1] in ("red", "blue")

    monkeypatch.setattr(paths, "models_path", str(tmp_path / "offline"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
    failed = client.post(f"{BASE}/interrogate", json={"image": b64(noise_image(32, 32)), "model": "clip"})
    assert failed.status_code == 503
    assert "could not be downloaded (OSError: unreachable); get blip/ from https://huggingface.co/Salesforce" in \
        failed.json()["detail"]
