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

    from modules.shared import opts

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
                saved = dict(opts.data)
                try:
                    response = case.call()
                finally:
                    opts.data.clear()
                    opts.data.update(saved)
                report.cases += 1
                report.by_status[response.status_code] = report.by_status.get(response.status_code, 0) + 1
                found = problem(response)
                if found:
                    line = f"{case.method} {case.formatted_path} body={str(case.body)[:300]} -> {found}"
                    if collect:
                        report.failures.append(line)
                    else:
                        raise AssertionError(line)

            if seed is not None:
                run = hypothesis_seed(seed)(run)
            try:
                run()
            except Unsatisfiable:  # a route without parameters has no invalid request to generate
                continue
    return report
