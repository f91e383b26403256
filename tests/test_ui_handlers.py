"""UI handlers without a browser: errors are shown to the user, results come from the queue."""
from __future__ import annotations

from webui import ui


def _args(**overrides):
    values = dict(prompt="a cat", negative_prompt="", sampler_name="Euler", scheduler="Automatic", steps=3,
                  cfg_scale=7, width=64, height=64, seed=99, use_variation=False, subseed=-1, subseed_strength=0,
                  seed_resize_from_w=0, seed_resize_from_h=0, batch_count=1, batch_size=1)
    values.update(overrides)
    return list(values.values())


def test_bad_size_shows_an_error_and_submits_nothing(tiny_model):
    updates = list(ui.generate(*_args(width=100)))
    assert len(updates) == 1
    assert "Error: width must be a multiple of 8 between 64 and 2048, got 100" in updates[0][1]


def test_generate_streams_until_the_result(tiny_model):
    updates = list(ui.generate(*_args()))
    gallery, progress, _preview, info, result, job_id = updates[-1]
    assert len(gallery) == 1 and gallery[0].endswith("-99.png")
    assert "Seed: 99" in info and result["seed"] == 99 and job_id.startswith("task(")
