"""The optional content filter: the prompt blocklist and the safety checker's notice image."""
from __future__ import annotations

import pytest

from modules.errors import UserInputError
from tests.conftest import pixels, txt2img


@pytest.fixture()
def safety_checker(tiny_model, data_dir):
    """A tiny random StableDiffusionSafetyChecker saved as the hub repo is laid out, in models/safety_checker;
    ``flag_everything(True)`` makes every image flagged (thresholds far below any cosine), False none."""
    import shutil

    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    from modules.imaging import content_filter
    from modules.shared import opts

    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    config = CLIPConfig(text_config=small, vision_config=dict(image_size=32, patch_size=16, **small), projection_dim=16)
    folder = content_filter.folder()

    def flag_everything(flag: bool) -> None:
        torch.manual_seed(0)
        checker = StableDiffusionSafetyChecker(config)
        with torch.no_grad():
            checker.concept_embeds_weights.fill_(-10.0 if flag else 10.0)
            checker.special_care_embeds_weights.fill_(10.0)
        checker.save_pretrained(folder, safe_serialization=True)
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
        content_filter._loaded.clear()

    saved = opts.content_filter, opts.prompt_blocklist
    opts.set("content_filter", True)
    yield flag_everything
    opts.set("content_filter", saved[0])
    opts.set("prompt_blocklist", saved[1])
    content_filter._loaded.clear()
    shutil.rmtree(folder, ignore_errors=True)


def test_flagged_images_become_the_notice_and_say_so(safety_checker):
    from modules.imaging import content_filter
    from modules.shared import opts

    opts.set("content_filter", False)
    plain = txt2img(seed=5, batch_size=2)
    opts.set("content_filter", True)
    safety_checker(False)
    passed = txt2img(seed=5, batch_size=2)
    assert [pixels(i).tolist() for i in passed.images] == [pixels(i).tolist() for i in plain.images]
    assert not any("Content filter" in text for text in passed.infotexts)

    safety_checker(True)
    hidden = txt2img(seed=5, batch_size=2)
    notice = pixels(content_filter.notice_image((64, 64)))
    assert all((pixels(image) == notice).all() for image in hidden.images)
    assert all("Content filter: image hidden" in text for text in hidden.infotexts)
    assert "Content filter: image 1 was hidden" in hidden.comments and "image 2 was hidden" in hidden.comments


def test_the_checker_that_cannot_be_had_fails_the_job_with_where_to_get_it(tiny_model, monkeypatch):
    from modules.imaging import content_filter
    from modules.shared import opts

    opts.set("content_filter", True)
    try:
        with pytest.raises(UserInputError, match=r"safety checker's config.json, preprocessor_config.json, "
                                                 r"model.safetensors are missing in .*safety_checker; get them from "
                                                 r"https://huggingface.co/CompVis/stable-diffusion-safety-checker"):
            txt2img(seed=5)
    finally:
        opts.set("content_filter", False)
        content_filter._loaded.clear()


def test_the_prompt_blocklist_refuses_listed_words_only(tiny_model):
    from modules.imaging import content_filter
    from modules.shared import opts

    assert content_filter.blocked_words("a red Dragon, castle", "dragon, knight") == ["dragon"]
    assert content_filter.blocked_words("dragonfly", "dragon") == []  # whole words only
    opts.set("prompt_blocklist", "dragon, dark castle")
    try:
        with pytest.raises(UserInputError, match="prompt: contains 'dragon', which the prompt blocklist setting refuses"):
            txt2img(prompt="a red Dragon")
        with pytest.raises(UserInputError, match="'dark castle'"):
            txt2img(prompt="a dark  castle".replace("  ", " "))
        assert txt2img(prompt="a dragonfly").images
    finally:
        opts.set("prompt_blocklist", "")


def test_the_api_answers_422_for_a_blocked_prompt(tiny_model):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules.api.api import Api
    from modules.shared import opts

    app = FastAPI()
    Api(app)
    opts.set("prompt_blocklist", "dragon")
    try:
        response = TestClient(app).post("/sdapi/v1/txt2img", json={"prompt": "a dragon", "steps": 2, "width": 64,
                                                                    "height": 64})
    finally:
        opts.set("prompt_blocklist", "")
    assert response.status_code == 422 and "prompt blocklist" in response.json()["detail"]
