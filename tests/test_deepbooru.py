"""DeepDanbooru: the network's layout and TensorFlow padding, loading a weights file in the official key
layout (a tiny one), tag formatting, and the API's interrogate route."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch

from modules import deepbooru
from modules.arch import deepdanbooru as deepbooru_model
from tests.conftest import noise_image

TAGS = ["1girl", "long_hair", "smile_(cute)", "rating:safe", "blue_sky"]
LOGITS = [2.0, 1.0, 0.5, 5.0, -3.0]  # sigmoid: 0.881, 0.731, 0.622, 0.993, 0.047


def test_full_size_layout_has_a1111s_keys():
    with torch.device("meta"):
        model = deepbooru_model.DeepDanbooruModel()
    state = model.state_dict()
    assert model.conv_count == 179 and list(state)[-2:] == ["n_Conv_178.weight", "n_Conv_178.bias"]
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["n_Conv_0.weight"] == (64, 3, 7, 7)
    assert shapes["n_Conv_1.weight"] == (256, 64, 1, 1) and shapes["n_Conv_2.weight"] == (64, 64, 1, 1)  # shortcut first
    assert shapes["n_Conv_3.weight"] == (64, 64, 3, 3) and shapes["n_Conv_178.weight"] == (9176, 4096, 1, 1)
    stages, tags = deepbooru_model.stages_from_state_dict(state)
    assert [(s.filters, s.repeats) for s in stages] == list(zip(deepbooru_model.CUSTOM_V3_FILTERS,
                                                               deepbooru_model.CUSTOM_V3_REPEATS)) and tags == 9176


def test_tensorflow_same_padding():
    assert deepbooru_model._same_padding(512, 7, 2) == (2, 3)  # the extra row goes at the bottom
    assert deepbooru_model._same_padding(128, 3, 2) == (0, 1)
    assert deepbooru_model._same_padding(64, 1, 2) == (0, 0)
    assert deepbooru_model._same_padding(64, 3, 1) == (1, 1)
    assert deepbooru_model._same_padding(7, 3, 2) == (1, 1)


def _tiny_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    stages = (deepbooru_model.Stage(8, 1), deepbooru_model.Stage(16, 2))
    model = deepbooru_model.DeepDanbooruModel(stages, len(TAGS))
    last = model.conv_count - 1
    with torch.no_grad():
        getattr(model, f"n_Conv_{last}").weight.zero_()  # the scores are then the biases, for any image
        getattr(model, f"n_Conv_{last}").bias.copy_(torch.tensor(LOGITS))
    return {**model.state_dict(), "tags": TAGS}


@pytest.fixture()
def tagger(data_dir, tmp_path, monkeypatch):
    from modules import paths
    from modules.shared import opts

    monkeypatch.setattr(paths, "models_path", str(tmp_path))
    monkeypatch.setattr(deepbooru, "model", deepbooru.DeepDanbooru())
    (tmp_path / "torch_deepdanbooru").mkdir()
    torch.save(_tiny_state(), tmp_path / "torch_deepdanbooru" / "model-resnet_custom_v3.pt")
    saved = dict(opts.data)
    yield deepbooru.model
    opts.data.clear()
    opts.data.update(saved)


def test_tags_above_the_threshold_formatted_like_a1111(tagger):
    from modules.shared import opts

    image = noise_image(96, 64)
    assert tagger.tag(image) == r"1girl, long hair, smile \(cute\)"  # no rating:, none under 0.5
    scores = tagger.probabilities(image)
    assert scores["1girl"] == pytest.approx(0.8808, abs=1e-4) and tagger.model.tags == TAGS
    opts.set("interrogate_return_ranks", True)
    opts.set("deepbooru_sort_alpha", False)
    opts.set("deepbooru_use_spaces", False)
    opts.set("deepbooru_escape", False)
    opts.set("deepbooru_filter_tags", "long_hair")
    opts.set("interrogate_deepbooru_score_threshold", 0.6)
    assert tagger.tag(image) == "(1girl:0.881), (smile_(cute):0.622)"


def test_the_network_looks_at_the_image(tagger):
    """With real last-layer weights the scores depend on the picture, and a batch equals single images."""
    state = _tiny_state(seed=3)
    state[f"n_Conv_{len([k for k in state if k.endswith('.weight')]) - 1}.weight"].normal_(0, 1)
    stages, count = deepbooru_model.stages_from_state_dict(state)
    model = deepbooru_model.DeepDanbooruModel(stages, count)
    model.load_state_dict(state)
    a, b = (torch.from_numpy(np.asarray(noise_image(64, 64, seed=s), dtype="float32")[None] / 255)
            for s in (1, 2))
    with torch.no_grad():
        both = model(torch.cat([a, b]))
        assert both.shape == (2, len(TAGS)) and not torch.allclose(both[0], both[1])
        assert torch.allclose(both[0], model(a)[0], atol=1e-5)


def test_missing_weights_are_named(data_dir, tmp_path, monkeypatch):
    from modules import interrogate, paths

    monkeypatch.setattr(paths, "models_path", str(tmp_path))
    monkeypatch.setattr(deepbooru, "model", deepbooru.DeepDanbooru())
    with pytest.raises(deepbooru.DeepDanbooruMissing, match="model-resnet_custom_v3.pt"):
        deepbooru.model.tag(noise_image(32, 32))
    with pytest.raises(interrogate.InterrogatorFilesMissing, match="torch_deepdanbooru"):
        interrogate.find("deepdanbooru")


def test_api_interrogate_with_deepdanbooru(tagger, tiny_model):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules.api.api import Api

    app = FastAPI()
    Api(app)
    buffer = io.BytesIO()
    noise_image(48, 48).save(buffer, format="PNG")
    with TestClient(app) as client:
        response = client.post("/sdapi/v1/interrogate", json={"image": base64.b64encode(buffer.getvalue()).decode(),
                                                               "model": "deepdanbooru"})
    assert response.status_code == 200 and response.json() == {"caption": r"1girl, long hair, smile \(cute\)"}


def test_safetensors_weights_with_tags_in_the_metadata(tagger, tmp_path):
    import json

    from safetensors.torch import save_file

    state = _tiny_state()
    tags = state.pop("tags")
    (tmp_path / "torch_deepdanbooru" / "model-resnet_custom_v3.pt").unlink()
    save_file(state, str(tmp_path / "torch_deepdanbooru" / "model-resnet_custom_v3.safetensors"),
              metadata={"tags": json.dumps(tags)})
    assert tagger.tag(noise_image(32, 32)) == r"1girl, long hair, smile \(cute\)"
