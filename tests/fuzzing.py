"""Property-based fuzzing of every ``/sdapi/v1`` route from the server's own OpenAPI schema (schemathesis), shared by
the default test suite (few examples, fixed seed) and ``benchmarks/fuzz_api.py`` (many, random)."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

PREFIX = "/sdapi/v1"


@dataclass
class FuzzReport:
    cases: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # "METHOD path -> status: body" of each bad answer
    operations: list[str] = field(default_factory=list)


# 503s that say the server cannot do this now, whatever the request: optional model files not installed
SERVER_STATE_ERRORS = ('"error":"InterrogatorFilesMissing"', '"error":"DeepDanbooruMissing"', '"error":"QueueFull"')


def problem(response: Any) -> str | None:
    """What is wrong with an answer: a 5xx (other than a 503 naming missing optional model files) or a stack trace
    in the body."""
    text = response.text if hasattr(response, "text") else ""
    if response.status_code == 503 and any(marker in text for marker in SERVER_STATE_ERRORS):
        return None
    if response.status_code >= 500:
        return f"{response.status_code}: {text[:400]}"
    if "Traceback (most recent call last)" in text or 'File "/' in text:
        return f"stack trace in a {response.status_code} answer: {text[:400]}"
    return None


@contextlib.contextmanager
def small_jobs() -> Iterator[None]:
    """Limits that keep a fuzzed job small on a CPU (a request over them is still a 422 the fuzzer sees), and every
    setting restored afterwards whatever the fuzzer changed through ``/options``."""
    from modules import processing
    from modules.shared import opts

    saved = {name: getattr(processing, name) for name in ("MAX_SIDE", "MAX_HIRES_SIDE", "MAX_BATCH_SIZE", "MAX_BATCH_COUNT")}
    saved_opts = dict(opts.data)
    processing.MAX_SIDE, processing.MAX_HIRES_SIDE, processing.MAX_BATCH_SIZE, processing.MAX_BATCH_COUNT = 128, 256, 2, 2
    opts.set("max_sampling_steps", 3)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(processing, name, value)
        opts.data.clear()
        opts.data.update(saved_opts)


def fuzz(app: Any, examples: int, seed: int | None, time_budget: float, collect: bool = False) -> FuzzReport:
    """Send ``examples`` generated requests (valid and invalid by the schema) to each route. With ``collect`` every
    bad answer is recorded; otherwise the first one fails (and Hypothesis shrinks it to a minimal request)."""
    import schemathesis
    from hypothesis import HealthCheck, given, seed as hypothesis_seed, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    report = FuzzReport()
    deadline = time.monotonic() + time_budget
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if op.path.startswith(PREFIX)]
    for operation in operations:
        report.operations.append(f"{operation.method.upper()} {operation.path}")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if time.monotonic() > deadline:
                return report

            @settings(max_examples=examples, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), print_blob=False)
            @given(case=operation.as_strategy(mode))
            def run(case) -> None:
                if time.monotonic() > deadline:
                    return
                response = _keeping_settings(case.call)
                _record(report, f"{case.method} {case.formatted_path} body={str(case.body)[:300]}", response, collect)

            if seed is not None:
                run = hypothesis_seed(seed)(run)
            try:
                run()
            except Unsatisfiable:  # a route without parameters has no invalid request to generate
                continue
    _fuzz_generation(app, examples, seed, deadline, collect, report)
    return report


def _keeping_settings(send: Any) -> Any:
    """``send()``, with every setting restored afterwards whatever the request changed through ``/options``."""
    from modules.shared import opts

    saved = dict(opts.data)
    try:
        return send()
    finally:
        opts.data.clear()
        opts.data.update(saved)


def _record(report: FuzzReport, label: str, response: Any, collect: bool) -> None:
    report.cases += 1
    report.by_status[response.status_code] = report.by_status.get(response.status_code, 0) + 1
    found = problem(response)
    if found:
        if not collect:
            raise AssertionError(f"{label} -> {found}")
        report.failures.append(f"{label} -> {found}")


def _small_png() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 90)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _fuzz_generation(app: Any, examples: int, seed: int | None, deadline: float, collect: bool,
                     report: FuzzReport) -> None:
    """Valid txt2img/img2img requests with one to three fields replaced by odd values (names the server knows,
    numbers near and far from their ranges, other JSON types): the requests the schema alone rarely reaches, which
    run the engine itself."""
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, seed as hypothesis_seed, settings, strategies as st

    from modules import sd_samplers, sd_schedulers, shared, upscaler

    known = ([s.name for s in sd_samplers.samplers] + [s.label for s in sd_schedulers.schedulers]
             + list(shared.latent_upscale_modes) + [u.name for u in upscaler.all_upscalers()]
             + ["", "Use same sampler", "[a:b:0.5] (cat:1.3) AND dog :0.5", "<lora:missing:1>", "BREAK", "a" * 400])
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.integers(-2 ** 63, 2 ** 63),
                       st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([0, 1, 2, 7.5, 0.5, 64, 96, 128, -1]),
                       st.sampled_from(known), st.text(max_size=30))
    value = st.one_of(scalar, st.lists(scalar, max_size=3), st.dictionaries(st.sampled_from(known + ["x"]), scalar,
                                                                             max_size=2))
    client = TestClient(app)
    schemas = app.openapi()["components"]["schemas"]
    bases = {"txt2img": {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler"},
             "img2img": {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler",
                         "init_images": [_small_png()], "denoising_strength": 0.5}}
    models = {"txt2img": "StableDiffusionTxt2ImgProcessingAPI", "img2img": "StableDiffusionImg2ImgProcessingAPI"}
    for route, base in bases.items():
        keys = sorted(set(schemas[models[route]]["properties"]) - {"init_images", "mask", "latent_mask"})

        @settings(max_examples=examples * 2, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                  print_blob=False)
        @given(changes=st.dictionaries(st.sampled_from(keys), value, min_size=1, max_size=3))
        def run(changes: dict) -> None:
            if time.monotonic() > deadline:
                return
            response = _keeping_settings(lambda: client.post(f"{PREFIX}/{route}", json={**base, **changes}))
            _record(report, f"POST {PREFIX}/{route} changes={str(changes)[:300]}", response, collect)

        if seed is not None:
            run = hypothesis_seed(seed)(run)
        run()
