"""The API fuzzed from its own OpenAPI schema: no 5xx and no stack trace for any request, and the server still
generates the same image afterwards. Bounded here; ``benchmarks/fuzz_api.py`` runs it longer with random seeds."""
from __future__ import annotations

import numpy as np

from tests.conftest import pixels
from tests.fuzzing import fuzz, small_jobs
from tests.test_api import BASE, SMALL, decoded, make_client

EXAMPLES_PER_ROUTE = 40
TIME_BUDGET_S = 240


def test_fuzzing_every_route_finds_no_server_error(tiny_model):
    from modules import scripts

    scripts.runner_for(False)
    app, client = make_client()
    with client:
        reference = client.post(f"{BASE}/txt2img", json=SMALL).json()["images"][0]
        with small_jobs():
            report = fuzz(app, EXAMPLES_PER_ROUTE, seed=16, time_budget=TIME_BUDGET_S)
        assert len(report.operations) >= 35 and "POST /sdapi/v1/txt2img" in report.operations
        assert report.cases >= 600, report
        assert sum(n for status, n in report.by_status.items() if 400 <= status < 500) > 50  # it did try bad input
        after = client.post(f"{BASE}/txt2img", json=SMALL)
        assert after.status_code == 200
        assert np.array_equal(pixels(decoded(after.json()["images"][0])), pixels(decoded(reference)))
