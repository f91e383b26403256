"""Hypernetworks in A1111's file layout: ``<hypernet:name:strength>``, the listing, the paste conversion."""
from __future__ import annotations

import os

import pytest
import torch

from modules.errors import UserInputError
from tests.conftest import models_subdir, pixels, txt2img


class NotAWeight:  # a pickled object that weights_only loading must refuse
    pass


def _linear(generator, width_in: int, width_out: int, scale: float) -> dict:
    return {"weight": torch.randn(width_out, width_in, generator=generator) * scale,
            "bias": torch.randn(width_out, generator=generator) * scale}


def write_hypernetwork(path: str, widths=(32, 64), seed: int = 0, scale: float = 0.5, **extra) -> str:
    """A [1, 2, 1] relu hypernetwork as A1111 saves it: ``linear.0`` (d -> 2d), ReLU (index 1), ``linear.2``."""
    generator = torch.Generator().manual_seed(seed)
    state = {"layer_structure": [1, 2, 1], "activation_func": "relu", "is_layer_norm": False,
             "use_dropout": False, "activate_output": False, "last_layer_dropout": False, "step": 1200,
             "name": os.path.splitext(os.path.basename(path))[0], "sd_checkpoint": None, **extra}
    for width in widths:
        pair = []
        for _ in range(2):  # key, value
            first, second = _linear(generator, width, 2 * width, scale), _linear(generator, 2 * width, width, scale)
            pair.append({"linear.0.weight": first["weight"], "linear.0.bias": first["bias"],
                         "linear.2.weight": second["weight"], "linear.2.bias": second["bias"]})
        state[width] = pair
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture()
def hypernetwork_dir(tiny_model, data_dir):
    with models_subdir("hypernetworks") as folder:
        yield folder


def test_a1111_layer_order_with_layer_norm_dropout_and_output_activation(tmp_path):
    """[1, 2, 2, 1], relu, layer norm, dropout 0.3 in the hidden layers, activate_output: A1111's Sequential indices
    are Linear 0, ReLU 1, LayerNorm 2, Dropout 3, Linear 4 ... Linear 8, ReLU 9, LayerNorm 10."""
    from modules.networks import hypernetwork

    generator = torch.Generator().manual_seed(1)
    d = 8
    weights = {0: _linear(generator, d, 2 * d, 0.3), 4: _linear(generator, 2 * d, 2 * d, 0.3),
               8: _linear(generator, 2 * d, d, 0.3)}
    norms = {2: (torch.rand(2 * d, generator=generator) + 0.5, torch.randn(2 * d, generator=generator)),
             6: (torch.rand(2 * d, generator=generator) + 0.5, torch.randn(2 * d, generator=generator)),
             10: (torch.rand(d, generator=generator) + 0.5, torch.randn(d, generator=generator))}
    layers = {f"linear.{i}.{k}": v for i, w in weights.items() for k, v in w.items()}
    layers.update({f"linear.{i}.{k}": v for i, (w, b) in norms.items() for k, v in (("weight", w), ("bias", b))})
    torch.save({"layer_structure": [1, 2, 2, 1], "activation_func": "relu", "is_layer_norm": True,
                "dropout_structure": [0, 0.3, 0.3, 0], "activate_output": True, d: [layers, layers]},
               tmp_path / "deep.pt")
    network = hypernetwork.load("deep", str(tmp_path / "deep.pt"))
    x = torch.randn(3, d, generator=generator)

    def by_hand(h):
        for linear, norm in ((0, 2), (4, 6), (8, 10)):
            h = torch.relu(h @ weights[linear]["weight"].T + weights[linear]["bias"])
            h = torch.nn.functional.layer_norm(h, h.shape[-1:], *norms[norm])
        return h

    assert torch.allclose(network.layers[d][0](x), by_hand(x), atol=1e-5)  # dropout is off outside training
    assert network.layers[d][0](x).shape == x.shape


def test_hypernet_tag_changes_the_image_by_its_strength_and_is_removed_after(hypernetwork_dir):
    write_hypernetwork(os.path.join(hypernetwork_dir, "anime.pt"))
    plain = pixels(txt2img(seed=3).images[0])
    styled = txt2img(seed=3, prompt="a cat <hypernet:anime:1>")
    assert (pixels(styled.images[0]) != plain).any()
    assert "<hypernet:anime:1>" in styled.infotexts[0]  # the prompt keeps its tag, as in A1111
    assert (pixels(txt2img(seed=3, prompt="a cat <hypernet:anime:0>").images[0]) == plain).all()  # x + 0 * mlp(x)
    assert (pixels(txt2img(seed=3).images[0]) == plain).all()  # nothing left hooked after the jobs
    half = pixels(txt2img(seed=3, prompt="a cat <hypernet:anime:0.5>").images[0])
    assert (half != plain).any() and (half != pixels(styled.images[0])).any()


def test_unusable_hypernetworks_are_refused_or_skipped_with_a_message(hypernetwork_dir):
    write_hypernetwork(os.path.join(hypernetwork_dir, "sdxl-only.pt"), widths=(640, 2048))
    skipped = txt2img(prompt="a cat <hypernet:sdxl-only:1>")
    assert "Hypernetwork sdxl-only has no layers for this SD 1.x model's 32-wide text conditioning" in skipped.comments
    assert "Hypernetworks not found: nowhere" in txt2img(prompt="a cat <hypernet:nowhere>").comments
    with pytest.raises(UserInputError, match="strength 'lots' is not a number"):
        txt2img(prompt="a cat <hypernet:sdxl-only:lots>")
    torch.save({32: [{}, {}], "extra": NotAWeight()}, os.path.join(hypernetwork_dir, "sneaky.pt"))
    with pytest.raises(UserInputError, match="refused to load, the pickle contains objects other than tensors"):
        txt2img(prompt="a cat <hypernet:sneaky>")


def test_listed_by_the_api_and_old_infotexts_become_the_tag(hypernetwork_dir):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules import infotext_utils
    from modules.api.api import Api

    path = write_hypernetwork(os.path.join(hypernetwork_dir, "sub", "anime.pt"))
    app = FastAPI()
    Api(app)
    assert TestClient(app).get("/sdapi/v1/hypernetworks").json() == [{"name": "anime", "path": path}]
    params = infotext_utils.parse_generation_parameters(
        "a cat\nSteps: 20, Sampler: Euler, Seed: 1, Size: 512x512, Hypernet: anime, Hypernet strength: 0.8")
    assert params["Prompt"] == "a cat<hypernet:anime:0.8>" and "Hypernet" not in params
