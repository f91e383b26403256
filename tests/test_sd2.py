"""SD 2.x: detection from the header, the real architecture's size, loading both layouts and both prediction types,
the conditioning A1111 uses (OpenCLIP's penultimate block, pad token 0, no clip skip), and images equal to diffusers'
own pipeline on the same tiny model."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.conftest import pixels


def test_sd2_is_recognised_from_names_and_shapes(data_dir):
    import dataclasses

    from modules.families import detection, open_clip, sd1_layout, sd2, sdxl

    shapes = sd2.checkpoint_shapes(*sd2.TINY)
    assert detection.family_from_shapes(shapes) is sd2.SD2
    inpaint = sd2.checkpoint_shapes(dataclasses.replace(sd2.TINY[0], in_channels=9), *sd2.TINY[1:])
    assert detection.family_from_shapes(inpaint) is sd2.SD2_INPAINT
    depth = sd2.checkpoint_shapes(dataclasses.replace(sd2.TINY[0], in_channels=5), *sd2.TINY[1:])
    assert detection.family_from_shapes(depth) is sd2.SD2_DEPTH and sd2.SD2_DEPTH.supported
    sgm = {key.replace(open_clip.SD2_PREFIX, sd2.SGM_PREFIX): shape for key, shape in shapes.items()}
    assert detection.family_from_shapes(sgm) is sd2.SD2  # SD-Turbo style: the SDXL code's layout
    refiner = dict(sgm, **{sd1_layout.UNET + "label_emb.0.0.weight": (128, 64)})
    assert detection.family_from_shapes(refiner) is sdxl.SDXL_REFINER


def test_the_real_sd2_architecture_has_the_real_parameter_counts():
    """Built on the meta device from the shapes our layout lists: reference-model-families.md §2.5."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (create_unet_diffusers_config_from_ldm,
                                                     create_vae_diffusers_config_from_ldm)
    from transformers import CLIPTextConfig, CLIPTextModel

    from modules.families import open_clip, sd1_layout, sd2

    unet_arch, vae_arch, text_arch = sd2.FULL_SIZE
    shapes = sd2.checkpoint_shapes(*sd2.FULL_SIZE)
    assert sum(math.prod(shape) for shape in shapes.values()) == 1_303_597_228  # the whole checkpoint
    assert sd1_layout.infer_unet(shapes) == unet_arch and open_clip.infer(shapes, open_clip.SD2_PREFIX) == text_arch
    original = sd1_layout.original_config(sd1_layout.SD1Arch(unet=unet_arch, vae=vae_arch))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(create_unet_diffusers_config_from_ldm(original, {}, image_size=768))
        vae = AutoencoderKL.from_config(create_vae_diffusers_config_from_ldm(original, {}, image_size=768))
        text = CLIPTextModel(CLIPTextConfig(**open_clip.text_config_kwargs(text_arch, text_arch.layers - 1)))
    assert count(unet) == 865_910_724 and unet.config.attention_head_dim == [5, 10, 20, 20]
    assert count(vae) == 83_653_863
    assert count(text) == 340_387_840


@pytest.mark.parametrize("name, expected", [("tiny-sd2.safetensors", "epsilon"), ("tiny-sd2-v.safetensors", "v_prediction"),
                                            ("tiny-sd2-v-diffusers", "v_prediction"),
                                            ("tiny-sd2-inpainting.safetensors", "epsilon")])
def test_sd2_checkpoints_load_with_their_prediction_type(sd2_dir, use_checkpoint_dir, name, expected):
    from modules.families import sd2

    model = use_checkpoint_dir(sd2_dir, name)
    assert model.family in (sd2.SD2, sd2.SD2_INPAINT) and model.is_sd2 and not model.is_sd1
    assert model.scheduler_config["prediction_type"] == expected
    assert model.tokenizer.pad_token_id == 0  # OpenCLIP pads with "!"
    assert model.text_encoder.config.num_hidden_layers == 2 and model.text_encoder.config.hidden_act == "gelu"


def test_a_yaml_next_to_the_checkpoint_decides_the_prediction_type(sd2_dir, tmp_path, use_checkpoint_dir):
    import shutil

    shutil.copy(sd2_dir / "tiny-sd2-v.safetensors", tmp_path / "declared.safetensors")
    (tmp_path / "declared.yaml").write_text('model:\n  params:\n    parameterization: "eps"\n')
    assert use_checkpoint_dir(tmp_path, "declared.safetensors").scheduler_config["prediction_type"] == "epsilon"
    (tmp_path / "declared-v.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    shutil.copy(sd2_dir / "tiny-sd2.safetensors", tmp_path / "declared-v.safetensors")  # no marker: the yaml says v
    assert use_checkpoint_dir(tmp_path, "declared-v.safetensors").scheduler_config["prediction_type"] == "v_prediction"


def test_sd2_conditioning_is_the_penultimate_block_and_ignores_clip_skip(sd2_dir, use_checkpoint_dir):
    import torch

    from modules.families import open_clip, sd2
    from modules.loading import model_files

    model = use_checkpoint_dir(sd2_dir, "tiny-sd2-v.safetensors")
    encoder = model.family.text_conditioner(model, clip_skip=2)
    chunk = encoder.chunks("a red house")[0][0]
    end = chunk.tokens.index(49407)
    padded = chunk.tokens[:end + 1] + [0] * (76 - end)  # OpenCLIP: every position after the first EOS is "!" (id 0)
    context = encoder.encode(["a red house"])
    assert context.shape == (1, 77, 32)
    # the same as running the checkpoint's own OpenCLIP blocks 0..1 of 3, then ln_final
    state = model_files.read_state_dict(str(sd2_dir / "tiny-sd2-v.safetensors"))
    prefix = open_clip.SD2_PREFIX
    tokens = torch.tensor([padded])
    x = state[prefix + "token_embedding.weight"][tokens] + state[prefix + "positional_embedding"]
    mask = torch.full((77, 77), float("-inf")).triu(1)
    for i in range(2):
        block = f"{prefix}transformer.resblocks.{i}."
        h = torch.nn.functional.layer_norm(x, (32,), state[block + "ln_1.weight"], state[block + "ln_1.bias"])
        q, k, v = torch.nn.functional.linear(h, state[block + "attn.in_proj_weight"], state[block + "attn.in_proj_bias"]).chunk(3, -1)
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(32) + mask, dim=-1) @ v
        x = x + torch.nn.functional.linear(attention, state[block + "attn.out_proj.weight"], state[block + "attn.out_proj.bias"])
        h = torch.nn.functional.layer_norm(x, (32,), state[block + "ln_2.weight"], state[block + "ln_2.bias"])
        h = torch.nn.functional.gelu(torch.nn.functional.linear(h, state[block + "mlp.c_fc.weight"], state[block + "mlp.c_fc.bias"]))
        x = x + torch.nn.functional.linear(h, state[block + "mlp.c_proj.weight"], state[block + "mlp.c_proj.bias"])
    expected = torch.nn.functional.layer_norm(x, (32,), state[prefix + "ln_final.weight"], state[prefix + "ln_final.bias"])
    assert torch.allclose(context.float(), expected, atol=1e-4)
    assert isinstance(encoder, sd2.PromptEncoder) and encoder.clip_skip == 1


def _ours_and_diffusers(model, prompt: str, steps: int = 4, seed: int = 11, size: int = 64):
    import torch
    from diffusers import StableDiffusionPipeline

    from modules import rng, sd_samplers
    from tests.conftest import txt2img

    ours = txt2img(prompt=prompt, negative_prompt="", seed=seed, steps=steps, width=size, height=size,
                   sampler_name="Euler", cfg_scale=7.0).images[0]
    noise = rng.ImageRNG((4, size // 8, size // 8), [seed]).first()
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=sd_samplers.create_scheduler(model.scheduler_config, "Euler", None),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        theirs = pipe(prompt, negative_prompt="", num_inference_steps=steps, height=size, width=size, guidance_scale=7.0,
                      latents=noise, output_type="pil").images[0]
    return pixels(ours), pixels(theirs)


@pytest.mark.parametrize("name", ["tiny-sd2-v.safetensors", "tiny-sd2.safetensors"])
def test_sd2_txt2img_matches_diffusers_pipeline(sd2_dir, use_checkpoint_dir, name):
    """Same components, scheduler, noise and an unweighted prompt: the images agree to within 2 of 255 (float
    rounding of the batched versus separate CFG rows and of the final conversion to 8 bits)."""
    model = use_checkpoint_dir(sd2_dir, name)
    ours, theirs = _ours_and_diffusers(model, "a lighthouse on a cliff")
    assert np.abs(ours - theirs).max() <= 2
    assert ours.std() > 1  # not a flat image


def test_single_file_and_diffusers_folder_give_the_same_pixels(sd2_dir, use_checkpoint_dir):
    from tests.conftest import txt2img

    use_checkpoint_dir(sd2_dir, "tiny-sd2-v.safetensors")
    single = txt2img(prompt="a boat", seed=3, steps=3).images[0]
    use_checkpoint_dir(sd2_dir, "tiny-sd2-v-diffusers")
    folder = txt2img(prompt="a boat", seed=3, steps=3).images[0]
    assert np.array_equal(pixels(single), pixels(folder))


def test_sd2_inpainting_model_inpaints(sd2_dir, use_checkpoint_dir):
    from PIL import Image

    from tests.conftest import img2img, noise_image

    use_checkpoint_dir(sd2_dir, "tiny-sd2-inpainting.safetensors")
    source = noise_image(64, 64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    p, processed = img2img([source], mask=mask, denoising_strength=1.0, inpainting_fill=1)
    assert p.image_conditioning is not None and p.image_conditioning.shape[1] == 5  # mask + masked-image latent
    result = pixels(processed.images[0])
    assert np.abs(result[:, 48:] - pixels(source)[:, 48:]).max() <= 1  # the unmasked half is kept (past the blur)
    assert np.abs(result[:, :24] - pixels(source)[:, :24]).mean() > 10


def test_lora_and_hires_fix_work_on_sd2(sd2_dir, use_checkpoint_dir):
    import os
    import shutil

    import torch

    from modules import paths
    from modules.networks import lora
    from tests.conftest import txt2img, write_kohya_lora

    model = use_checkpoint_dir(sd2_dir, "tiny-sd2-v.safetensors")
    folder = os.path.join(paths.models_path, "Lora")
    write_kohya_lora(os.path.join(folder, "sd2-style.safetensors"), model)
    try:
        weights = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
        before = pixels(txt2img(prompt="a cat").images[0])
        styled = txt2img(prompt="a cat <lora:sd2-style:1>")
        assert np.abs(pixels(styled.images[0]) - before).max() > 10
        assert "Lora hashes" in styled.info and "match no layer" not in str(styled.comments)  # every layer matched
        assert all(torch.equal(v, weights[k]) for k, v in model.text_encoder.state_dict().items())  # restored
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lora.applied_networks().restore()
    hires = txt2img(prompt="a cat", enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", denoising_strength=0.5)
    assert hires.images[0].size == (96, 96) and "Hires upscale: 1.5" in hires.info



def test_the_checkpoint_list_shows_each_family_and_its_yaml(sd2_dir, use_checkpoint_dir):
    from modules import sd_models
    from webui import ui

    use_checkpoint_dir(sd2_dir, "tiny-sd2.safetensors")
    infos = {info.name_for_extra: info for info in sd_models.checkpoints_list.values()}
    assert infos["tiny-sd2"].family.label == "SD 2.x" and infos["tiny-sd2"].config == str(sd2_dir / "tiny-sd2.yaml")
    assert infos["tiny-sd2-inpainting"].family.label == "SD 2.x inpainting" and infos["tiny-sd2-v"].config is None
    labels = dict((value, label) for label, value in ui._checkpoint_choices())
    assert labels[infos["tiny-sd2-v"].title] == infos["tiny-sd2-v"].title + " · SD 2.x"
    assert labels[infos["tiny"].title].endswith(" · SD 1.x")


def test_depth_to_image_conditions_img2img_on_the_input_images_depth(sd2_dir, use_checkpoint_dir, astronaut):
    """A 5-channel SD 2 depth checkpoint (with the ``depth_model.*`` keys of the real file) in img2img: the UNet's
    5th input channel is the MiDaS depth of the input image at the latent size, scaled to -1..1 (A1111's
    depth2img); txt2img is refused with a message."""
    import dataclasses

    import torch
    from PIL import Image

    from modules import processing
    from modules.controlnet import annotators
    from modules.errors import UserInputError
    from modules.families import sd2
    from modules.loading import demo_model
    from modules.shared import state
    from tests.conftest import models_subdir, save_diffusers_folder
    from tests.test_controlnet_preprocessors import write_annotators

    unet, vae, text = sd2.TINY
    demo_model.write_checkpoint(str(sd2_dir / "tiny-sd2-depth.safetensors"), seed=8,
                                shapes=sd2.checkpoint_shapes(dataclasses.replace(unet, in_channels=5), vae, text),
                                extra={"depth_model.model.pretrained.act_postprocess3.0.project.0.bias": torch.zeros(4)})
    save_diffusers_folder(str(sd2_dir / "tiny-sd2-depth.safetensors"), str(sd2_dir / "tiny-sd2-depth-diffusers"))
    folder_model = use_checkpoint_dir(sd2_dir, "tiny-sd2-depth-diffusers")
    assert folder_model.family is sd2.SD2_DEPTH and folder_model.unet.config.in_channels == 5
    model = use_checkpoint_dir(sd2_dir, "tiny-sd2-depth.safetensors")
    assert model.family is sd2.SD2_DEPTH and model.unet.config.in_channels == 5
    assert model.scheduler_config["prediction_type"] == "epsilon"
    source = Image.fromarray(astronaut).resize((64, 64))
    with models_subdir("annotator") as folder:
        write_annotators(folder)
        seen = []
        p = processing.StableDiffusionProcessingImg2Img(
            init_images=[source], prompt="a portrait", seed=3, steps=3, width=64, height=64, denoising_strength=0.7,
            sampler_name="Euler", do_not_save_samples=True, do_not_save_grid=True)
        p.denoiser_hooks.before_unet.append(lambda call: seen.append(call.x.detach().clone()))
        state.begin("test")
        result = processing.process_images(p)
        assert result.images[0].size == (64, 64)
        depth = torch.from_numpy(annotators.raw_depth(np.asarray(source), "depth_midas", size=(8, 8)))
        expected = 2 * (depth - depth.min()) / (depth.max() - depth.min()) - 1
        assert seen and all(x.shape[1] == 5 for x in seen)
        assert torch.allclose(seen[0][:, 4], expected.expand_as(seen[0][:, 4]), atol=1e-5)
        assert seen[0][:, 4].min() == -1 and seen[0][:, 4].max() == 1
        txt2img = processing.StableDiffusionProcessingTxt2Img(prompt="a portrait", steps=2, width=64, height=64,
                                                              do_not_save_samples=True, do_not_save_grid=True)
        with pytest.raises(UserInputError, match="depth-to-image checkpoint .* use it in img2img"):
            processing.process_images(txt2img)
