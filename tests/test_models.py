"""Model files: format by magic bytes, family detection, hashing and its cache, loading both formats, LRU."""
from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest

from modules import hashes
from modules.families import detection, sd1, sd1_layout, sd2, sdxl
from modules.loading import model_files, model_loader
from tests.conftest import pixels, txt2img


def write_header_only_safetensors(path, shapes: dict) -> None:
    """A valid safetensors file whose tensors are all empty except for their declared shapes (F16, zero-filled)."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = 2
        for dim in shape:
            size *= dim
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)


def test_clip_tokenizer_matches_original_ids():
    tokenizer = model_loader.load_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer(",").input_ids[1] == 267  # A1111's comma back-off looks for this id


def test_format_is_decided_by_magic_bytes(data_dir, tmp_path):
    tiny = os.path.join(data_dir, "models", "Stable-diffusion", "tiny.safetensors")
    disguised = tmp_path / "model.ckpt"
    disguised.write_bytes(open(tiny, "rb").read())
    assert model_files.detect_format(str(disguised)) == model_files.SAFETENSORS
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a model at all")
    with pytest.raises(model_files.UnsupportedModelFile, match="not a safetensors, PyTorch or diffusers model"):
        model_files.detect_format(str(junk))


def test_torch_checkpoint_loads_through_weights_only(tmp_path):
    import torch

    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {"a.weight": torch.ones(2, 3)}}, path)
    assert model_files.detect_format(str(path)) == model_files.TORCH_ZIP
    assert model_files.read_shapes(str(path)) == {"a.weight": (2, 3)}


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/pwned-by-pickle",))


def test_malicious_pickle_is_refused(tmp_path):
    import torch

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": Exploit()}}, path)
    with pytest.raises(model_files.UnsupportedModelFile, match="refused to load"):
        model_files.read_state_dict(str(path))
    assert not os.path.exists("/tmp/pwned-by-pickle")


def test_family_detection_from_keys_and_shapes(data_dir, tmp_path):
    tiny = os.path.join(data_dir, "models", "Stable-diffusion", "tiny.safetensors")
    assert detection.detect_family(tiny) is sd1.SD1
    full = sd1_layout.checkpoint_shapes(sd1_layout.SD1Arch())
    assert detection.family_from_shapes(full) is sd1.SD1
    inpaint = dict(full, **{sd1_layout.UNET + "input_blocks.0.0.weight": (320, 9, 3, 3)})
    assert detection.family_from_shapes(inpaint) is sd1.SD1_INPAINT
    open_clip = {k: v for k, v in full.items() if not k.startswith("cond_stage_model.")}
    open_clip["cond_stage_model.model.token_embedding.weight"] = (49408, 1024)
    assert detection.family_from_shapes(open_clip) is sd2.SD2
    assert detection.family_from_shapes(dict(open_clip, **{sd1_layout.UNET + "input_blocks.0.0.weight": (320, 9, 3, 3)})) \
        is sd2.SD2_INPAINT
    two_encoders = {sd1_layout.UNET + "input_blocks.0.0.weight": (320, 4, 3, 3),
                    "conditioner.embedders.1.model.ln_final.weight": (1280,)}
    assert detection.family_from_shapes(two_encoders) is sdxl.SDXL
    assert detection.family_from_shapes({"foo": (1,)}) is detection.UNKNOWN
    assert detection.detect_family(os.path.join(data_dir, "models", "Stable-diffusion", "tiny-diffusers")) is sd1.SD1


def test_unsupported_family_is_refused_with_its_name(tmp_path):
    import torch

    path = tmp_path / "pix2pix.safetensors"
    shapes = sd1_layout.checkpoint_shapes(sd1_layout.TINY)
    shapes[sd1_layout.UNET + "input_blocks.0.0.weight"] = (32, 8, 3, 3)
    write_header_only_safetensors(path, shapes)
    with pytest.raises(model_loader.ModelNotSupported,
                       match=r"pix2pix.safetensors is a SD 1.x InstructPix2Pix \(8-channel UNet\) checkpoint: .*support is coming"):
        model_loader.load_components(str(path), torch.float32)


def test_real_sd15_layout_round_trips_through_shape_inference():
    shapes = sd1_layout.checkpoint_shapes(sd1_layout.SD1Arch())
    assert sum(__import__("math").prod(s) for s in shapes.values()) == 1_066_235_307  # SD 1.5's parameter count
    assert sd1_layout.infer_architecture(shapes) == sd1_layout.SD1Arch()


def test_sha256_is_cached_by_path_size_and_mtime(data_dir, registry, monkeypatch):
    info = registry.get_closet_checkpoint_match("tiny.safetensors")
    expected = hashlib.sha256(open(info.filename, "rb").read()).hexdigest()
    assert info.calculate_shorthash() == expected[:10]
    assert info.title == f"tiny.safetensors [{expected[:10]}]"
    cache = json.load(open(os.path.join(data_dir, "cache.json")))
    entry = cache["hashes"]["checkpoint/tiny.safetensors"]
    assert entry["sha256"] == expected and entry["size"] == os.path.getsize(info.filename)

    def fail(_):
        raise AssertionError("hash recomputed although cached")

    monkeypatch.setattr(hashes, "calculate_sha256", fail)
    assert hashes.sha256(info.filename, "checkpoint/tiny.safetensors") == expected
    os.utime(info.filename, (1, 1))  # a changed mtime invalidates the entry
    with pytest.raises(AssertionError, match="recomputed"):
        hashes.sha256(info.filename, "checkpoint/tiny.safetensors")


def test_discovery_lists_files_folders_and_subdirectories(registry):
    names = sorted(info.name for info in registry.checkpoints_list.values())
    assert names == ["sub/other.safetensors", "tiny-diffusers", "tiny.safetensors"]


def test_single_file_and_diffusers_folder_give_the_same_image(tiny_model, registry):
    single = pixels(txt2img().images[0])
    registry.reload_model_weights(info=registry.get_closet_checkpoint_match("tiny-diffusers"))
    folder = pixels(txt2img().images[0])
    assert single.shape == (64, 64, 3)
    assert abs(single - folder).max() <= 1


def test_lru_keeps_recent_models_in_ram(tiny_model, registry, monkeypatch):
    from modules.shared import opts

    opts.set("sd_checkpoint_cache", 2)
    other = registry.get_closet_checkpoint_match("sub/other.safetensors")
    tiny = registry.get_closet_checkpoint_match("tiny.safetensors")
    other_model = registry.reload_model_weights(info=other)
    loads = []
    original = model_loader.load_components
    monkeypatch.setattr(model_loader, "load_components", lambda *a: loads.append(a) or original(*a))
    assert registry.reload_model_weights(info=tiny) is tiny_model
    assert registry.reload_model_weights(info=other) is other_model
    assert loads == []
    image_other = pixels(txt2img().images[0])
    registry.reload_model_weights(info=tiny)
    assert abs(image_other - pixels(txt2img().images[0])).max() > 0  # different weights, different image


def test_legacy_non_zip_torch_checkpoint_loads(tmp_path):
    import torch

    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, path, _use_new_zipfile_serialization=False)
    assert model_files.detect_format(str(path)) == model_files.TORCH_PICKLE
    assert model_files.read_shapes(str(path)) == {"w": (3,)}


def test_a_separate_vae_file_replaces_the_models_vae_and_none_restores_it(tiny_model, data_dir, tmp_path, monkeypatch):
    import numpy as np
    from safetensors.torch import save_file

    from modules import sd_vae, shared
    from modules.errors import UserInputError

    other = model_files.read_state_dict(str(data_dir / "models" / "Stable-diffusion" / "sub" / "other.safetensors"))
    ldm_vae = {k[len("first_stage_model."):]: v for k, v in other.items() if k.startswith("first_stage_model.")}
    folder = tmp_path / "vae"
    folder.mkdir()
    save_file(ldm_vae, str(folder / "mse.safetensors"))  # the LDM layout, as vae-ft-mse-840000 ships
    save_file(ldm_vae, str(folder / "tiny.vae.safetensors"))  # named like the checkpoint: Automatic picks it
    save_file({k: v.contiguous() for k, v in tiny_model.vae.state_dict().items()}, str(folder / "own.safetensors"))
    monkeypatch.setattr(shared.cmd_opts, "vae_dir", str(folder))
    sd_vae.refresh_vae_list()
    assert {"mse.safetensors", "tiny.vae.safetensors", "own.safetensors"} <= set(sd_vae.vae_dict)
    try:
        shared.opts.set("sd_vae", "None")
        own = txt2img(seed=9)
        assert "VAE" not in own.info
        shared.opts.set("sd_vae", "mse.safetensors")
        swapped = txt2img(seed=9)
        digest = hashes.sha256(str(folder / "mse.safetensors"), "vae/mse.safetensors")[:10]
        assert f"VAE hash: {digest}, VAE: mse.safetensors" in swapped.info
        assert not np.array_equal(pixels(own.images[0]), pixels(swapped.images[0]))
        shared.opts.set("sd_vae", "own.safetensors")  # diffusers' layout
        assert np.array_equal(pixels(txt2img(seed=9).images[0]), pixels(own.images[0]))
        shared.opts.set("sd_vae", "Automatic")
        automatic = txt2img(seed=9)
        assert "VAE: tiny.vae.safetensors" in automatic.info
        assert np.array_equal(pixels(automatic.images[0]), pixels(swapped.images[0]))
        shared.opts.set("sd_vae", "None")
        assert np.array_equal(pixels(txt2img(seed=9).images[0]), pixels(own.images[0]))
        shared.opts.set("sd_vae", "missing.pt")
        with pytest.raises(UserInputError, match="no VAE file named 'missing.pt'"):
            txt2img(seed=9)
    finally:
        shared.opts.set("sd_vae", "None")
        sd_vae.reload_vae_weights()
        monkeypatch.undo()
        sd_vae.refresh_vae_list()
