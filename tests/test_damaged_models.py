"""Damaged and malicious model files: every kind a user can put in models/ gives a clean 4xx naming the file and
what is wrong with it, and a checkpoint that fails to load never leaves the server failing every job."""
from __future__ import annotations

import json
import os
import shutil
import struct
import urllib.request

import pytest

from tests.test_api import BASE, SMALL, b64, make_client
from tests.conftest import noise_image


def _safetensors_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def damaged_variants(good: str, folder) -> dict[str, tuple[str, str]]:
    """name -> (path, words the error must contain), each a copy of ``good`` broken in one way."""
    data = _safetensors_bytes(good)
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    variants: dict[str, tuple[bytes, str]] = {
        "empty": (b"", "the file is empty"),
        "truncated": (data[: len(data) // 2], "truncated"),
        "header-cut": (data[: 8 + header_len // 2], "truncated safetensors file"),
        "wrong-magic": (b"<html>404 Not Found</html>" + b"\0" * 64, "wrong magic"),
        "header-too-large": (struct.pack("<Q", 200_000_000) + b"{" + b" " * 64, "header claims 200000000 bytes"),
        "header-not-json": (struct.pack("<Q", 16) + b"{not json at all" + data[8 + header_len:], "not a JSON object"),
    }
    # one tensor says it is bigger than its bytes
    key = next(k for k in header if k != "__metadata__")
    bad = dict(header)
    bad[key] = {**header[key], "shape": [n * 2 for n in header[key]["shape"]]}
    text = json.dumps(bad).encode()
    variants["shape-vs-bytes"] = (struct.pack("<Q", len(text)) + text + data[8 + header_len:], f"tensor {key!r} has")
    paths = {}
    for name, (content, words) in variants.items():
        path = os.path.join(str(folder), f"{name}.safetensors")
        with open(path, "wb") as f:
            f.write(content)
        paths[name] = (path, words)
    return paths


def wrong_shape_checkpoint(good: str, path: str) -> str:
    """A well-formed file whose UNet input convolution has the wrong shape for the rest of the network."""
    from safetensors.torch import load_file, save_file

    state = load_file(good)
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    state[key] = state[key][:, :-1].contiguous()
    save_file(state, path)
    return path


def broken_torch_files(good: str, folder) -> dict[str, tuple[str, str]]:
    import torch
    from safetensors.torch import load_file

    zipped = os.path.join(str(folder), "whole.ckpt")
    torch.save({"state_dict": load_file(good)}, zipped)
    with open(zipped, "rb") as f:
        data = f.read()
    paths = {}
    for name, content, words in (("cut-zip", data[: len(data) // 3], "damaged PyTorch file"),
                                 ("garbage-pickle", b"\x80\x04" + b"\xff" * 100, "damaged PyTorch file")):
        path = os.path.join(str(folder), f"{name}.ckpt")
        with open(path, "wb") as f:
            f.write(content)
        paths[name] = (path, words)
    os.remove(zipped)
    return paths


@pytest.fixture()
def broken_dir(registry, data_dir, tmp_path, monkeypatch):
    """A --ckpt-dir holding a damaged copy of the tiny checkpoint for every way a file can be broken."""
    from modules import sd_models, shared

    good = str(data_dir / "models" / "Stable-diffusion" / "tiny.safetensors")
    folder = tmp_path / "broken"
    folder.mkdir()
    expected = damaged_variants(good, folder)
    expected.update(broken_torch_files(good, folder))
    expected["wrong-shape"] = (wrong_shape_checkpoint(good, str(folder / "wrong-shape.safetensors")), "cannot be loaded as a")
    monkeypatch.setattr(shared.cmd_opts, "ckpt_dir", str(folder))
    sd_models.list_models()
    yield expected
    monkeypatch.undo()
    sd_models.list_models()
    sd_models._failures.clear()
    sd_models.load_problems.clear()


def test_every_damaged_file_is_refused_with_its_name_and_reason(broken_dir):
    import torch

    from modules.loading import model_files, model_loader

    for name, (path, words) in broken_dir.items():
        with pytest.raises(model_files.UnsupportedModelFile) as refused:
            model_loader.load_components(path, torch.float32)
        message = str(refused.value)
        assert os.path.basename(path) in message and words in message, (name, message)
        assert "Traceback" not in message


def test_selecting_a_damaged_checkpoint_through_the_api_is_a_422_that_changes_nothing(tiny_model, broken_dir):
    from modules import sd_models
    from modules.shared import opts

    _, client = make_client()
    with client:
        for name, (path, words) in broken_dir.items():
            info = sd_models.get_closet_checkpoint_match(os.path.basename(path))
            response = client.post(f"{BASE}/options", json={"sd_model_checkpoint": info.title})
            assert response.status_code == 422, (name, response.text)
            assert os.path.basename(path) in response.json()["detail"] and words in response.json()["detail"], name
            assert sd_models.current_model() is tiny_model and opts.sd_model_checkpoint.startswith("tiny.safetensors")
            job = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 2, "override_settings": {
                "sd_model_checkpoint": info.title}})
            assert job.status_code == 422 and os.path.basename(path) in job.json()["detail"], name
        answer = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 2})
        assert answer.status_code == 200 and json.loads(answer.json()["info"])["sd_model_name"] == "tiny"


def test_a_setting_that_names_a_broken_file_falls_back_and_says_so(tiny_model, broken_dir):
    from modules import sd_models
    from modules.shared import opts

    broken = sd_models.get_closet_checkpoint_match("truncated.safetensors")
    opts.set("sd_model_checkpoint", broken.title)  # e.g. config.json edited by hand, or the file replaced
    _, client = make_client()
    with client:
        first = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 2})
        assert first.status_code == 200, first.text
        info = json.loads(first.json()["info"])
        assert info["sd_model_name"] == "tiny"  # the loaded model was kept
        assert "truncated.safetensors could not be loaded" in info["comments"] and "using tiny.safetensors" in info["comments"]
        assert "could not be loaded" not in info["infotexts"][0]
        assert opts.sd_model_checkpoint.startswith("tiny.safetensors")  # the setting names the model in use
        assert client.get(f"{BASE}/options").json()["sd_model_checkpoint"].startswith("tiny.safetensors")


def test_with_no_model_loaded_the_first_checkpoint_that_works_is_used(registry, broken_dir, monkeypatch):
    from modules import sd_models
    from modules.shared import opts

    saved = dict(opts.data)
    sd_models.unload_model_weights()
    broken = {path for path, _ in broken_dir.values()}
    ordered = {title: info for title, info in sorted(sd_models.checkpoints_list.items(),
                                                     key=lambda item: item[1].filename not in broken)}
    monkeypatch.setattr(sd_models, "checkpoints_list", ordered)  # every broken file comes first
    opts.set("sd_model_checkpoint", sd_models.get_closet_checkpoint_match("empty.safetensors").title)
    try:
        model = sd_models.get_sd_model()
        assert model.sd_checkpoint_info.filename not in broken
        assert opts.sd_model_checkpoint == model.sd_checkpoint_info.title
        assert any("empty.safetensors could not be loaded" in p for p in sd_models.load_problems)
        assert broken == set(sd_models._failures)  # each tried once, in list order, before the first good one
    finally:
        opts.data.clear()
        opts.data.update(saved)


def test_only_broken_files_give_a_clear_error_or_the_demo_model(data_dir, tmp_path, monkeypatch):
    from modules import cmd_args, paths, sd_models, shared
    from modules.loading import demo_model
    from modules.errors import UserInputError

    models = tmp_path / "models"
    folder = models / "Stable-diffusion"
    folder.mkdir(parents=True)
    good = str(data_dir / "models" / "Stable-diffusion" / "tiny.safetensors")
    damaged_variants(good, folder)
    saved_opts = dict(shared.opts.data)
    monkeypatch.setattr(paths, "models_path", str(models))
    monkeypatch.setattr(shared, "cmd_opts", cmd_args.parse(["--data-dir", str(tmp_path)]))
    sd_models.unload_model_weights()
    sd_models._failures.clear()
    shared.opts.data.pop("sd_model_checkpoint", None)
    try:
        sd_models.list_models()
        with pytest.raises(UserInputError) as refused:
            sd_models.get_sd_model()
        message = str(refused.value)
        assert message.startswith("No checkpoint could be loaded")
        for name in ("empty", "truncated", "wrong-magic", "header-too-large", "header-not-json", "shape-vs-bytes"):
            assert f"{name}.safetensors" in message, name
        monkeypatch.setattr(shared.cmd_opts, "demo", True)
        model = sd_models.get_sd_model()
        assert demo_model.DEMO_NAME in model.sd_checkpoint_info.name
        assert shared.opts.sd_model_checkpoint == model.sd_checkpoint_info.title
        assert "using demo-random-weights.safetensors instead" in sd_models.load_problems[0]
    finally:
        monkeypatch.undo()
        shared.opts.data.clear()
        shared.opts.data.update(saved_opts)
        sd_models.unload_model_weights()
        sd_models.list_models()
        sd_models._failures.clear()
        sd_models.load_problems.clear()


def test_damaged_vae_lora_embedding_and_upscaler_files_are_named(tiny_model, data_dir, tmp_path, monkeypatch):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from modules import sd_vae, shared
    from modules.networks import lora
    from modules.textual_inversion import textual_inversion

    good = str(data_dir / "models" / "Stable-diffusion" / "tiny.safetensors")
    variants = damaged_variants(good, tmp_path)
    truncated, words = variants["truncated"]
    for folder in ("VAE", "Lora", "embeddings", "ESRGAN"):
        os.makedirs(data_dir / "models" / folder, exist_ok=True)
    vae_file = data_dir / "models" / "VAE" / "broken.safetensors"
    lora_file = data_dir / "models" / "Lora" / "brokenlora.safetensors"
    embedding_file = data_dir / "models" / "embeddings" / "brokenemb.safetensors"
    esrgan_dir = tmp_path / "esrgan"
    esrgan_dir.mkdir()
    esrgan_file = esrgan_dir / "4x_broken.safetensors"
    for target in (vae_file, lora_file, embedding_file, esrgan_file):
        shutil.copy(truncated, target)
    misfit_vae = data_dir / "models" / "VAE" / "misfit.safetensors"  # well formed, one tensor of the wrong shape
    wrong_shape_checkpoint(good, str(misfit_vae))
    monkeypatch.setattr(shared.cmd_opts, "esrgan_models_path", str(esrgan_dir), raising=False)
    _, client = make_client()
    try:
        sd_vae.refresh_vae_list()
        lora.list_available_networks(force=True)
        with client:
            vae = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 2,
                                                       "override_settings": {"sd_vae": "broken.safetensors"}})
            assert vae.status_code == 422 and "broken.safetensors" in vae.json()["detail"] and words in vae.json()["detail"]
            before = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 2}).json()["images"][0]
            with safe_open(str(misfit_vae), "pt") as f:  # the VAE's own weights, one of them cut
                cut = {k: f.get_tensor(k) for k in f.keys() if k.startswith("first_stage_model.")}
            key = "first_stage_model.decoder.conv_in.weight"
            cut[key] = cut[key][:, :-1].contiguous()
            save_file(cut, str(misfit_vae))
            sd_vae.refresh_vae_list()
            misfit = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 2,
                                                          "override_settings": {"sd_vae": "misfit.safetensors"}})
            assert misfit.status_code == 422 and "misfit.safetensors is not a VAE for this model" in misfit.json()["detail"]
            assert "has shape" in misfit.json()["detail"], misfit.text
            after = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 2}).json()["images"][0]
            assert before == after  # no weight of the model's own VAE was replaced
            net = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 2, "prompt": "a cat <lora:brokenlora:1>"})
            assert net.status_code == 422 and "brokenlora.safetensors" in net.json()["detail"], net.text
            embeddings = client.get(f"{BASE}/embeddings").json()
            skipped = {os.path.basename(path): problem["error"] for path, problem in embeddings["skipped"].items()}
            assert "brokenemb.safetensors" in skipped and words in skipped["brokenemb.safetensors"], skipped
            upscalers = [u["name"] for u in client.get(f"{BASE}/upscalers").json()]
            name = next(n for n in upscalers if "broken" in n)
            extras = client.post(f"{BASE}/extra-single-image", json={"image": b64(noise_image(16, 16)), "upscaler_1": name,
                                                                      "upscaling_resize": 2})
            assert extras.status_code == 422 and "4x_broken.safetensors" in extras.json()["detail"], extras.text
            after = client.post(f"{BASE}/txt2img", json={**SMALL, "steps": 2})
            assert after.status_code == 200  # and the server keeps generating
    finally:
        for target in (vae_file, misfit_vae, lora_file, embedding_file):
            os.remove(target)
        sd_vae.refresh_vae_list()
        lora.list_available_networks(force=True)
        textual_inversion.refresh_for_model(force_reload=True)


def test_the_page_says_which_checkpoint_failed_and_keeps_the_one_in_use(tmp_path):
    """A broken file first in the list at start-up: the page shows the model used instead; choosing the broken
    file in the dropdown shows why it fails and the dropdown goes back to the model in use."""
    from playwright.sync_api import sync_playwright

    from modules.loading import demo_model
    from tests.test_browser import _browser, _start

    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    (folder / "aaa-broken.safetensors").write_bytes(b"<html>not a model</html>")
    demo_model.write_checkpoint(str(folder / "zzz-good.safetensors"), seed=3)
    proc, port, _ = _start(tmp_path)
    try:
        with sync_playwright() as pw:
            browser = _browser(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#txt2img_generate")
            page.wait_for_function("document.querySelector('#model_notice').innerText.includes('could not be loaded')",
                                   timeout=60_000)
            notice = page.locator("#model_notice").inner_text()
            assert "aaa-broken.safetensors could not be loaded" in notice and "wrong magic" in notice
            assert "using zzz-good.safetensors instead" in notice
            dropdown = page.locator("#setting_sd_model_checkpoint input")
            assert dropdown.input_value().startswith("zzz-good.safetensors [")
            box = page.locator("#setting_sd_model_checkpoint input")
            box.click()  # the title has the file's hash by now: it was read when the load failed
            page.locator(f"#{box.get_attribute('aria-controls')} [role=option][aria-label^='aaa-broken.safetensors']").click()
            page.wait_for_function("document.querySelector('#model_status').innerText.includes('wrong magic')",
                                   timeout=60_000)
            page.wait_for_function("document.querySelector('#setting_sd_model_checkpoint input').value"
                                   ".startsWith('zzz-good')", timeout=30_000)
            browser.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/sdapi/v1/options", timeout=30) as response:
            assert json.loads(response.read())["sd_model_checkpoint"].startswith("zzz-good.safetensors")
    finally:
        proc.terminate()
        proc.wait(20)
