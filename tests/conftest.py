"""Fixtures: a data dir with tiny random-weight SD 1.x models saved as a single-file LDM checkpoint and as
a diffusers folder, loaded through the real discovery and loading code."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def save_diffusers_folder(single_file: str, folder: str) -> None:
    """Convert a single-file checkpoint into a diffusers folder with the project's own loader."""
    import torch

    from modules.loading import model_loader

    components = model_loader.load_components(single_file, torch.float32)
    components.unet.save_pretrained(os.path.join(folder, "unet"))
    components.vae.save_pretrained(os.path.join(folder, "vae"))
    components.text_encoder.save_pretrained(os.path.join(folder, "text_encoder"))
    components.tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(components.scheduler_config, f)
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
                   "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"]}, f)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A data dir with two tiny checkpoints (single file, seeds 0 and 1) and a diffusers copy of the first."""
    from modules import cmd_args, devices, initialize
    from modules.loading import demo_model

    root = tmp_path_factory.mktemp("data")
    models = root / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    tiny = demo_model.write_checkpoint(str(models / "tiny.safetensors"), seed=0)
    demo_model.write_checkpoint(str(models / "sub" / "other.safetensors"), seed=1)
    initialize.initialize(cmd_args.parse(["--data-dir", str(root)]))
    save_diffusers_folder(tiny, str(models / "tiny-diffusers"))
    devices.configure("cpu", "full")
    return root


@pytest.fixture(scope="session")
def registry(data_dir):
    from modules import sd_models

    sd_models.list_models()
    return sd_models


@pytest.fixture()
def tiny_model(registry):
    """The single-file tiny model as the current model; settings restored afterwards."""
    from modules import sd_models
    from modules.shared import opts, state

    saved = dict(opts.data)
    info = sd_models.get_closet_checkpoint_match("tiny.safetensors")
    model = sd_models.reload_model_weights(info=info)
    opts.set("sd_model_checkpoint", info.title)  # also when the model was already loaded and the setting reset
    state.begin("test")
    yield model
    opts.data.clear()
    opts.data.update(saved)
    opts.set("sd_model_checkpoint", info.title)


@contextlib.contextmanager
def models_subdir(name: str):
    """An empty ``models/<name>`` folder of the session's data dir for one test, removed afterwards."""
    import shutil

    from modules import paths

    folder = os.path.join(paths.models_path, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def txt2img(**overrides):
    """Run a small txt2img job through process_images (nothing saved unless asked)."""
    from modules import processing
    from modules.shared import state

    params = dict(prompt="a cat", negative_prompt="", seed=1234, steps=4, width=64, height=64,
                  sampler_name="Euler", do_not_save_samples=True, do_not_save_grid=True)
    params.update(overrides)
    p = processing.StableDiffusionProcessingTxt2Img(**params)
    state.begin("test")
    return processing.process_images(p)


def pixels(image):
    import numpy as np

    return np.asarray(image.convert("RGB"), dtype=np.int16)


def write_embedding(path, vectors, fmt: str) -> str:
    """Save ``vectors`` (n, D; for "sdxl" a dict of them) as a textual-inversion file in one of the real layouts."""
    import torch

    os.makedirs(os.path.dirname(path), exist_ok=True)
    if fmt == "a1111-pt":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "ignored",
                    "step": 500, "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "v1-5"}, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({"emb_params": vectors.contiguous()}, path)
    elif fmt == "sdxl":
        from safetensors.torch import save_file

        save_file({part: tensor.contiguous() for part, tensor in vectors.items()}, path)
    elif fmt == "diffusers-bin":
        torch.save({"<concept>": vectors[0]}, path)
    else:
        raise ValueError(fmt)
    return path


def write_lora_shapes(path, shapes: dict) -> str:
    """A kohya LoRA file with random weights: kohya module key -> (rank, in features, out features)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for key, (rank, inputs, outputs) in shapes.items():
        tensors.update({f"{key}.lora_down.weight": torch.randn(rank, inputs, generator=generator),
                        f"{key}.lora_up.weight": torch.randn(outputs, rank, generator=generator),
                        f"{key}.alpha": torch.tensor(float(rank))})
    save_file(tensors, path)
    return path


def write_kohya_lora(path, model, rank: int = 4, seed: int = 0, scale: float = 0.5, peft: bool = False) -> str:
    """A random LoRA for every attention projection of ``model``'s UNet and text encoder, saved with
    kohya key names (or diffusers/PEFT names with ``peft=True``); the deltas are identical for one seed."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    targets = [("unet", "lora_unet_", model.unet), ("text_encoder", "lora_te_text_model_", model.text_encoder)]
    for peft_prefix, prefix, root in targets:
        for name, module in root.named_modules():
            if not isinstance(module, torch.nn.Linear) or not any(t in name for t in ("to_q", "to_k", "to_v", "q_proj", "v_proj")):
                continue
            down = torch.randn(rank, module.in_features, generator=generator) * scale
            up = torch.randn(module.out_features, rank, generator=generator) * scale
            if peft:
                key = f"{peft_prefix}.{'text_model.' if peft_prefix == 'text_encoder' and not name.startswith('text_model.') else ''}{name}"
                tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = down, up * (2.0 / rank)
            else:
                key = prefix + name.replace(".", "_")
                tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
                tensors[f"{key}.alpha"] = torch.tensor(2.0)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(tensors, path, metadata={"ss_network_dim": str(rank)})
    return path


class DenoiserCalls:
    """Records every model call of the sampling loop through A1111's on_cfg_denoiser callback."""

    def __init__(self):
        self.calls = []

    def __call__(self, params):
        self.calls.append(params)

    def __enter__(self):
        from modules import script_callbacks

        script_callbacks.on_cfg_denoiser(self)
        return self

    def __exit__(self, *exc):
        from modules import script_callbacks

        script_callbacks.remove_callbacks_for_function(self)


class UNetCounts:
    """The order of UNet calls and VAE decodes per checkpoint (model name), from forward pre-hooks removed on exit."""

    def __init__(self, *models):
        self.models, self.order, self.handles = models, [], []

    def __enter__(self):
        for model in self.models:
            name = model.sd_checkpoint_info.model_name
            self.handles.append(model.unet.register_forward_pre_hook(lambda module, args, name=name: self.order.append(name)))
            self.handles.append(model.vae.decoder.register_forward_pre_hook(
                lambda module, args, name=name: self.order.append(f"{name} VAE decode")))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def img2img(init_images, **overrides):
    """Run a small img2img job through process_images (nothing saved)."""
    from modules import processing
    from modules.shared import state

    params = dict(prompt="a cat", negative_prompt="", seed=1234, steps=6, width=64, height=64, sampler_name="Euler",
                  do_not_save_samples=True, do_not_save_grid=True, init_images=list(init_images))
    params.update(overrides)
    p = processing.StableDiffusionProcessingImg2Img(**params)
    state.begin("test")
    return p, processing.process_images(p)


def noise_image(width: int, height: int, seed: int = 0):
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


@pytest.fixture()
def model_dirs(data_dir, tmp_path, monkeypatch):
    """Empty ESRGAN, RealESRGAN, Codeformer and GFPGAN folders for one test (through the A1111 path flags)."""
    from modules import shared

    folders = {}
    for flag, name in (("esrgan_models_path", "ESRGAN"), ("realesrgan_models_path", "RealESRGAN"),
                       ("codeformer_models_path", "Codeformer"), ("gfpgan_models_path", "GFPGAN")):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        monkeypatch.setattr(shared.cmd_opts, flag, str(folders[name]), raising=False)
    saved = dict(shared.opts.data)
    yield folders
    shared.opts.data.clear()
    shared.opts.data.update(saved)


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return data.astronaut()


@pytest.fixture()
def fake_face(monkeypatch):
    """Every image has one face, at (16, 16) size 24x24 with eyes at the usual places."""
    import numpy as np

    from modules.imaging import face_detection

    face = face_detection.Face((16, 16, 24, 24), np.array([[23.2, 25.1], [32.8, 25.1]], np.float32))
    monkeypatch.setattr(face_detection, "detect", lambda image, min_size=32: [face])
    return face


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "extensions")


@contextlib.contextmanager
def isolated_script_registry():
    """Settings restored, and the extension list, scripts, runners and callbacks emptied, when the block ends."""
    from modules import extensions, script_callbacks, scripts, shared

    saved = dict(shared.opts.data)
    try:
        yield
    finally:
        shared.opts.data.clear()
        shared.opts.data.update(saved)
        script_callbacks.clear_callbacks()
        extensions.extensions.clear()
        scripts.scripts_data.clear()
        scripts.scripts_txt2img = scripts.scripts_img2img = scripts.scripts_current = None


@pytest.fixture()
def ext_root(data_dir, tmp_path, monkeypatch):
    """Empty built-in and user extension folders; the script registry is reset afterwards."""
    from modules import paths

    builtin, user = tmp_path / "extensions-builtin", tmp_path / "extensions"
    builtin.mkdir()
    user.mkdir()
    monkeypatch.setattr(paths, "extensions_builtin_dir", str(builtin))
    monkeypatch.setattr(paths, "extensions_dir", str(user))
    with isolated_script_registry():
        yield {"builtin": builtin, "user": user}


def write_extension(root, name: str, files: dict[str, str]):
    folder = root / name
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def titled(title: str, body: str = "", show: str = "True") -> str:
    """A script file with one Script class; ``body`` holds extra methods, indented for the class body."""
    head = (f"import modules.scripts as scripts\n\n\nclass Script(scripts.Script):\n"
            f"    def title(self):\n        return {title!r}\n\n    def show(self, is_img2img):\n        return {show}\n")
    return head + textwrap.dedent(body).replace("\n", "\n    ").rstrip() + "\n"


SD2_EPS_CONFIG = 'model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n    scale_factor: 0.18215\n'


@pytest.fixture(scope="session")
def sd2_dir(tmp_path_factory, data_dir):
    """Tiny SD 2.x checkpoints in the LDM single-file layout: epsilon (declared by a v2-inference style yaml next
    to it), v-prediction (the ``v_pred`` marker), inpainting (9 channels), and a diffusers copy of the v model."""
    import dataclasses

    import torch

    from modules.families import sd2
    from modules.loading import demo_model

    root = tmp_path_factory.mktemp("sd2-models")
    unet, vae, text = sd2.TINY
    eps = demo_model.write_checkpoint(str(root / "tiny-sd2.safetensors"), seed=5, shapes=sd2.checkpoint_shapes(*sd2.TINY))
    (root / "tiny-sd2.yaml").write_text(SD2_EPS_CONFIG)
    v_model = demo_model.write_checkpoint(str(root / "tiny-sd2-v.safetensors"), seed=5,
                                          shapes=sd2.checkpoint_shapes(*sd2.TINY), extra={"v_pred": torch.zeros(0)})
    demo_model.write_checkpoint(str(root / "tiny-sd2-inpainting.safetensors"), seed=6,
                                shapes=sd2.checkpoint_shapes(dataclasses.replace(unet, in_channels=9), vae, text))
    save_diffusers_folder(v_model, str(root / "tiny-sd2-v-diffusers"))
    assert os.path.isfile(eps)
    return root


@pytest.fixture()
def use_checkpoint_dir(registry):
    """Call with a folder: its checkpoints join the list (as ``--ckpt-dir`` does) until the test ends."""
    from modules import sd_models, shared
    from modules.shared import opts, state

    saved_dir, saved_options = shared.cmd_opts.ckpt_dir, dict(opts.data)

    def use(folder, name: str):
        shared.cmd_opts.ckpt_dir = str(folder)
        sd_models.list_models()
        info = sd_models.get_closet_checkpoint_match(name)
        model = sd_models.reload_model_weights(info=info)
        opts.set("sd_model_checkpoint", info.title)
        state.begin("test")
        return model

    yield use
    shared.cmd_opts.ckpt_dir = saved_dir
    sd_models.list_models()
    opts.data.clear()
    opts.data.update(saved_options)
    sd_models.reload_model_weights(info=sd_models.get_closet_checkpoint_match("tiny.safetensors"))


@pytest.fixture(scope="session")
def sdxl_dir(tmp_path_factory, data_dir):
    """A folder with the tiny random-weight SDXL base checkpoint ``tiny-sdxl.safetensors`` (families.sdxl.TINY_BASE),
    to join the checkpoint list through ``use_checkpoint_dir``."""
    from modules.families import sdxl
    from modules.loading import demo_model

    root = tmp_path_factory.mktemp("sdxl-models")
    demo_model.write_checkpoint(str(root / "tiny-sdxl.safetensors"), seed=9,
                                shapes=sdxl.checkpoint_shapes(*sdxl.TINY_BASE))
    return root


@pytest.fixture(params=["sd1", "sdxl"])
def engine_model(request, tiny_model, use_checkpoint_dir):
    """The engine tests' model, once SD 1.x and once SDXL (both tiny, random weights), as the current model."""
    if request.param == "sd1":
        return tiny_model
    return use_checkpoint_dir(request.getfixturevalue("sdxl_dir"), "tiny-sdxl.safetensors")


@pytest.fixture()
def controlnet_dir(tiny_model, data_dir):
    """An empty models/ControlNet folder, with the tiny model loaded."""
    with models_subdir("ControlNet") as folder:
        yield folder


@pytest.fixture()
def api_client(controlnet_dir):
    """The HTTP API (with the extensions' routes and scripts freshly loaded) over a test client."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules import scripts
    from modules.api.api import Api

    scripts.reload_scripts()
    app = FastAPI()
    Api(app)
    return TestClient(app)
