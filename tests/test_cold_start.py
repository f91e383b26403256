"""The first requests to a server that has just started (the model still loading, the heavy libraries still
importing) all succeed: generation waits for the model instead of failing."""
from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request

from PIL import Image

from tests.test_browser import _start

COLD_STARTS = 3


def _call(url: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_first_generation_and_other_calls_race_a_cold_server(tmp_path):
    calls = [("/sdapi/v1/txt2img", {"prompt": f"cold start {i}", "seed": 100 + i, "steps": 2, "width": 64,
                                    "height": 64, "sampler_name": sampler})
             for i, sampler in enumerate(("DPM++ 2M", "Euler a", "UniPC", "DDIM"))]
    calls += [("/sdapi/v1/img2img", {"init_images": [_png_b64()], "steps": 2, "width": 64, "height": 64, "seed": 9,
                                     "sampler_name": "DPM++ SDE", "denoising_strength": 0.5}),
              ("/sdapi/v1/embeddings", None), ("/sdapi/v1/loras", None), ("/sdapi/v1/samplers", None),
              ("/sdapi/v1/options", None), ("/sdapi/v1/progress", None), ("/sdapi/v1/sd-models", None),
              ("/sdapi/v1/png-info", {"image": _png_b64()}), ("/sdapi/v1/script-info", None)]
    for attempt in range(COLD_STARTS):
        root = tmp_path / f"start{attempt}"
        root.mkdir()
        proc, port, log = _start(root, "--demo")
        url = f"http://127.0.0.1:{port}"
        try:
            results: dict[int, tuple[int, bytes]] = {}
            barrier = threading.Barrier(len(calls))

            def fire(index: int, path: str, body: dict | None) -> None:
                barrier.wait()
                results[index] = _call(url, path, body)

            threads = [threading.Thread(target=fire, args=(i, *call)) for i, call in enumerate(calls)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(300)
            for index, (path, body) in enumerate(calls):
                status, content = results[index]
                assert status == 200, (attempt, path, status, content[:500])
                if path.endswith("2img"):
                    answer = json.loads(content)
                    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
                    assert image.size == (64, 64) and f"Seed: {body['seed']}" in image.info["parameters"]
                    assert f"Sampler: {body['sampler_name']}" in image.info["parameters"]
            log.seek(0)
            output = log.read()
            assert "Traceback" not in output and "ImportError" not in output and "AttributeError" not in output, output
        finally:
            proc.terminate()
            proc.wait(20)
