"""The real server (launch.py --demo, with a login) driven by the real ``webuiapi`` client from PyPI, many
clients at once, and the web page in Chromium sharing the same queue."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from tests.conftest import noise_image, pixels
from tests.test_browser import _browser, _set_number, _start

USER, PASSWORD = "alice", "open sesame"
PROBE = '''
"""Counts jobs that run at the same time: process() opens a job, postprocess() closes it."""
import threading
import time

import modules.scripts as scripts
from modules import script_callbacks

lock = threading.Lock()
counts = {"running": 0, "most_at_once": 0, "jobs": 0, "prompts": []}


class Script(scripts.Script):
    def title(self):
        return "Concurrency probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        with lock:
            counts["running"] += 1
            counts["jobs"] += 1
            counts["most_at_once"] = max(counts["most_at_once"], counts["running"])
            counts["prompts"].append(p.prompt)
        time.sleep(0.05)

    def postprocess(self, p, processed, *args):
        with lock:
            counts["running"] -= 1


def add_route(demo, app):
    @app.get("/probe/concurrency")
    def report():
        return counts


script_callbacks.on_app_started(add_route)
'''


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A server with the demo model, a second checkpoint, the probe extension and the login alice/open sesame."""
    from modules.loading import demo_model

    root = tmp_path_factory.mktemp("api-server")
    demo_model.write_checkpoint(str(root / "models" / "Stable-diffusion" / "second.safetensors"), seed=7)
    probe = root / "extensions" / "probe" / "scripts"
    probe.mkdir(parents=True)
    (probe / "probe.py").write_text(PROBE)
    proc, port, log = _start(root, "--demo", "--api-auth", f"{USER}:{PASSWORD}")
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:  # extension routes are added by on_app_started, just after the server answers
        try:
            _get(url + "/probe/concurrency")
            break
        except urllib.error.HTTPError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    yield url, root
    proc.terminate()
    proc.wait(20)


@pytest.fixture()
def api(live):
    import webuiapi

    return webuiapi.WebUIApi(baseurl=f"{live[0]}/sdapi/v1", username=USER, password=PASSWORD, steps=3)


def _get(url: str, auth: bool = True):
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


@pytest.mark.parametrize("path", ["/", "/sdapi/v1/sd-models", "/probe/concurrency", "/docs", "/openapi.json",
                                  "/gradio_api/info", "/config"])
def test_every_route_needs_the_login(live, path):
    with pytest.raises(urllib.error.HTTPError) as refused:
        _get(live[0] + path, auth=False)
    assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"].startswith("Basic")
    assert _get(live[0] + path)[0] == 200


def test_webuiapi_txt2img_png_info_and_lists(api):
    result = api.txt2img(prompt="a red fox", seed=123, width=64, height=64, cfg_scale=6)
    assert len(result.images) == 1 and result.image.size == (64, 64)
    assert result.info["all_seeds"] == [123] and result.info["sampler_name"] == "Euler a"  # webuiapi's default
    text = result.info["infotexts"][0]
    assert text.startswith("a red fox\n") and "Steps: 3" in text and "CFG scale: 6" in text and "User:" not in text
    assert result.image.info["parameters"] == text
    png = api.png_info(result.image)
    assert png.info == text and png.json["parameters"]["Seed"] == "123"
    assert {"Euler a", "DPM++ 2M"} <= set(api.util_get_sampler_names())
    assert {"Lanczos", "Nearest"} <= {u["name"] for u in api.get_upscalers()}
    assert "karras" in api.util_get_scheduler_names()


def test_webuiapi_img2img_with_a_mask(api):
    source = noise_image(64, 64, seed=9)
    mask = Image.new("RGB", (64, 64), "black")
    mask.paste("white", (0, 0, 32, 64))
    result = api.img2img(images=[source], mask_image=mask, prompt="paint", seed=5, width=64, height=64, mask_blur=0,
                         inpainting_fill=1, inpaint_full_res=False, denoising_strength=0.9)
    assert result.image.size == (64, 64) and "Mask blur: 0" in result.info["infotexts"][0]
    out = pixels(result.image)
    assert np.array_equal(out[:, 40:], pixels(source)[:, 40:]) and np.abs(out[:, :24] - pixels(source)[:, :24]).mean() > 10


def test_webuiapi_extra_single_image(api):
    source = noise_image(32, 32, seed=2)
    result = api.extra_single_image(source, upscaler_1="Nearest", upscaling_resize=2)
    assert result.image.size == (64, 64)
    assert np.array_equal(pixels(result.image), pixels(source.resize((64, 64), Image.NEAREST)))
    assert "Postprocess upscaler: Nearest" in result.info


def test_webuiapi_switches_models_through_options(api):
    original = api.util_get_current_model()
    assert any(title.startswith("second.safetensors") for title in api.util_get_model_names())
    api.util_set_model("second")  # a fuzzy client-side match, then POST /options
    assert api.util_get_current_model().startswith("second.safetensors")
    result = api.txt2img(prompt="x", seed=1, width=64, height=64)
    assert result.info["sd_model_name"] == "second"
    api.util_set_model(original, find_closest=False)
    assert api.util_get_current_model() == original


def test_webuiapi_options_round_trip(api):
    assert api.get_options()["jpeg_quality"] == 80
    api.set_options({"jpeg_quality": 61})
    assert api.get_options()["jpeg_quality"] == 61
    api.set_options({"jpeg_quality": 80, "add_user_name_to_info": True})
    assert f"User: {USER}" in api.txt2img(prompt="x", seed=2, width=64, height=64).info["infotexts"][0]
    api.set_options({"add_user_name_to_info": False})
    refused = api.session.post(f"{api.baseurl}/options", json={"no_such_setting": True})
    assert refused.status_code == 422 and "no_such_setting" in refused.json()["detail"]


def test_webuiapi_progress_during_a_job_and_interrupt(api):
    results = {}
    worker = threading.Thread(target=lambda: results.update(r=api.txt2img(prompt="slow", seed=8, width=256, height=256,
                                                                           steps=150, sampler_name="Euler")))
    worker.start()
    seen = None
    deadline = time.time() + 120
    while time.time() < deadline and seen is None:
        progress = api.get_progress()
        if progress["state"]["sampling_step"] > 0 and progress["state"]["job"] == "txt2img":
            seen = progress
        time.sleep(0.05)
    assert seen is not None, "no progress seen"
    assert 0 < seen["progress"] < 1 and seen["eta_relative"] >= 0 and seen["state"]["sampling_steps"] == 150
    assert seen["current_image"] is None or Image.open(io.BytesIO(base64.b64decode(seen["current_image"]))).size == (256, 256)
    api.interrupt()
    worker.join(120)
    assert not worker.is_alive()
    result = results["r"]
    assert len(result.images) == 1 and result.info["seed"] == 8  # an interrupted job still answers with its image
    api.util_wait_for_ready(check_interval=0.2)


def test_twenty_api_clients_and_a_browser_share_one_queue(live, api):
    """20 txt2img requests at once plus a job from the page: all finish, each answer is its own, never two at once."""
    from playwright.sync_api import sync_playwright

    url, _ = live
    before = json.loads(_get(url + "/probe/concurrency")[1])
    answers: dict[int, object] = {}

    def request(i: int) -> None:
        answers[i] = api.txt2img(prompt=f"request {i}", seed=1000 + i, width=64, height=64)

    with sync_playwright() as pw:
        browser = _browser(pw)
        context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                      viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#txt2img_generate")
        page.fill("#txt2img_prompt textarea", "from the browser")
        for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 3)):
            _set_number(page, elem_id, value)
        page.locator("#txt2img_seed input").fill("777")
        threads = [threading.Thread(target=request, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        page.click("#txt2img_generate")
        for thread in threads:
            thread.join(300)
        page.wait_for_function("document.querySelector('#html_info_txt2img').innerText.includes('Seed: 777')",
                               timeout=300_000)
        browser_info = page.locator("#html_info_txt2img").inner_text()
        browser.close()
    assert browser_info.startswith("from the browser") and "Size: 64x64" in browser_info
    assert sorted(answers) == list(range(20))
    for i, result in answers.items():
        text = result.info["infotexts"][0]
        assert result.info["seed"] == 1000 + i and text.startswith(f"request {i}\n") and f"Seed: {1000 + i}," in text
        assert result.image.info["parameters"] == text
    counts = json.loads(_get(url + "/probe/concurrency")[1])
    assert counts["jobs"] - before["jobs"] == 21 and counts["most_at_once"] == 1 and counts["running"] == 0
    assert "from the browser" in counts["prompts"]
    again = api.txt2img(prompt="request 7", seed=1007, width=64, height=64)
    assert np.array_equal(pixels(again.image), pixels(answers[7].image))  # the image answered was request 7's own


def test_a_client_that_hangs_up_does_not_lose_its_job(live):
    import http.client
    from urllib.parse import urlparse

    url, root = live
    body = json.dumps({"prompt": "hung up", "seed": 606, "steps": 3, "width": 64, "height": 64,
                       "force_task_id": "task(hangup)", "save_images": True})
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    connection = http.client.HTTPConnection(urlparse(url).hostname, urlparse(url).port, timeout=30)
    connection.request("POST", "/sdapi/v1/txt2img", body, {"Content-Type": "application/json",
                                                            "Authorization": f"Basic {token}"})
    connection.close()  # gone before the answer
    deadline, job = time.time() + 120, {}
    while time.time() < deadline and job.get("status") != "done":
        try:
            job = json.loads(_get(f"{url}/sdapi/v1/jobs/task(hangup)")[1])
        except urllib.error.HTTPError:
            pass
        time.sleep(0.2)
    assert job.get("status") == "done", job
    info = json.loads(job["result"]["info"])
    assert info["seed"] == 606 and info["prompt"] == "hung up"
    assert list((root / "outputs" / "txt2img-images").rglob("*-606.png"))  # saved, as asked


def test_nowebui_serves_the_api_alone(tmp_path):
    proc, port, log = _start(tmp_path, "--demo", "--nowebui", "--skip-load-model-at-start")
    try:
        url = f"http://127.0.0.1:{port}"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url + "/config", timeout=10)  # no Gradio page or routes
        assert missing.value.code == 404
        with urllib.request.urlopen(url + "/sdapi/v1/sd-models", timeout=30) as response:
            assert json.loads(response.read())[0]["model_name"] == "demo-random-weights"
        with urllib.request.urlopen(url + "/docs", timeout=30) as response:
            assert b"swagger" in response.read().lower()
    finally:
        proc.terminate()
        proc.wait(20)


def test_webuiapi_controlnet_units_and_detect(api, live, astronaut):
    import cv2
    import webuiapi

    from modules import hashes
    from tests.test_controlnet import write_controlnet

    model_file = write_controlnet(str(live[1] / "models" / "ControlNet" / "control_tiny_canny.safetensors"))
    title = f"control_tiny_canny [{hashes.legacy_model_hash(model_file)}]"
    assert api.controlnet_version() == 2
    assert api.controlnet_model_list() == [title]
    assert {"none", "canny", "depth_midas", "openpose", "inpaint_only"} <= set(api.controlnet_module_list())
    picture = Image.fromarray(astronaut).resize((64, 64))
    detected = api.controlnet_detect([picture], module="canny", processor_res=64, threshold_a=100, threshold_b=200)
    edges = np.asarray(detected.images[0].convert("L"))
    assert (edges == cv2.Canny(np.asarray(picture), 100, 200)).all()  # OpenCV's own output

    unit = webuiapi.ControlNetUnit(image=picture, module="canny", model=title, threshold_a=100, threshold_b=200,
                                   processor_res=64, weight=1.5)
    job = dict(prompt="a red fox", seed=123, width=64, height=64)
    controlled = api.txt2img(**job, controlnet_units=[unit])
    entry = controlled.info["infotexts"][0].split("ControlNet 0: ")[1]
    assert entry.startswith(f'"Module: canny, Model: {title}, Weight: 1.5, Resize Mode: Resize and Fill, '
                            f'Processor Res: 64, Threshold A: 100.0, Threshold B: 200.0')
    plain = api.txt2img(**job, alwayson_scripts={})  # webuiapi's own default dict keeps the last call's units
    assert "ControlNet 0" not in plain.info["infotexts"][0]
    assert (pixels(controlled.image) != pixels(plain.image)).any()
    with pytest.raises(RuntimeError, match=r"^\(422, .*controlnet unit 0: resize_mode .{1,3}Stretch"):
        api.txt2img(**job, controlnet_units=[webuiapi.ControlNetUnit(image=picture, model=title,
                                                                     resize_mode="Stretch")])
