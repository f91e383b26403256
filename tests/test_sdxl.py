"""SDXL base: the single-file and diffusers-folder loaders and the conditioner, checked on a tiny checkpoint in the
real layout against diffusers' own StableDiffusionXLPipeline, and the job path (sizes, hires, LoRA, embeddings,
img2img, inpainting).

Tiny geometry (reference-model-families.md §9): 3 levels, attention on levels 1 and 2 with depths 1 and 2, middle
depth 2; CLIP-L 32 wide with 2 layers; bigG 48 wide with 3 blocks and a 24-wide (non-square) projection; context
80; size embeddings 8 wide, so label_emb takes 24 + 6 x 8 = 72."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from modules.families import sd1_layout, sdxl

UNET, _, BIG_G, CLIP_L = sdxl.TINY_BASE


@pytest.fixture(scope="module")
def sdxl_model(data_dir, tmp_path_factory):
    import torch

    from modules import sd_models
    from modules.families import sdxl
    from modules.loading import demo_model

    path = str(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl.safetensors")
    demo_model.write_checkpoint(path, seed=9, shapes=sdxl.checkpoint_shapes(UNET, sd1_layout.TINY.vae, BIG_G, CLIP_L))
    components = sdxl.load_single_file(path, torch.float32, sdxl.SDXL)
    return sd_models.SDModel(**vars(components), device=torch.device("cpu"), dtype=torch.float32), path


def _pipeline(model):
    from diffusers import StableDiffusionXLPipeline

    from modules import sd_samplers

    pipe = StableDiffusionXLPipeline(vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
                                     tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=model.unet,
                                     scheduler=sd_samplers.create_scheduler(model.scheduler_config, "Euler", None))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_tiny_sdxl_checkpoint_loads_every_tensor(sdxl_model):
    import torch

    from modules.families import detection, sdxl
    from modules.loading import model_files

    model, path = sdxl_model
    assert detection.detect_family(path) is sdxl.SDXL
    config = model.unet.config
    assert config.addition_embed_type == "text_time" and config.projection_class_embeddings_input_dim == 72
    assert config.cross_attention_dim == 80 and config.use_linear_projection
    assert list(config.transformer_layers_per_block) == [1, 1, 2] and config.addition_time_embed_dim == 8
    state = model_files.read_state_dict(path)
    projection = model.text_encoder_2.text_projection.weight
    assert projection.shape == (24, 48) and torch.equal(projection, state[sdxl.BIG_G_PREFIX + "text_projection"].t())
    stored = sum(t.numel() for k, t in state.items() if not k.endswith("logit_scale"))
    built = sum(p.numel() for name in model.family.components for p in getattr(model, name).parameters())
    assert built == stored  # every tensor of the file is used, none is missing
    assert model.tokenizer.pad_token_id == 49407 and model.tokenizer_2.pad_token_id == 0
    assert model.vae.config.scaling_factor == 0.13025 and model.latent_channels == 4


def test_sdxl_conditioning_equals_diffusers_encode_prompt(sdxl_model):
    import torch

    from modules.families import sdxl

    model, _ = sdxl_model
    encoder = sdxl.PromptEncoder(model, image_size=(96, 64), crop=(16, 8))
    cond = encoder.encode(["a lighthouse at dusk"])
    uncond = encoder.encode(["ugly"], negative=True)
    prompt, negative, pooled, negative_pooled = _pipeline(model).encode_prompt(
        "a lighthouse at dusk", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
        negative_prompt="ugly")
    assert cond.shape == (1, 77, 80) and torch.allclose(cond["crossattn"], prompt, atol=1e-5)
    assert torch.allclose(uncond["crossattn"], negative, atol=1e-5)
    assert torch.allclose(cond["vector"][:, :24], pooled, atol=1e-5)
    assert torch.allclose(uncond["vector"][:, :24], negative_pooled, atol=1e-5)
    assert cond["vector"].shape == (1, 72) and cond["time_ids"].tolist() == [[64.0, 96.0, 16.0, 8.0, 64.0, 96.0]]
    empty = encoder.encode([""], negative=True)  # A1111: an empty negative prompt is zeros, its size ids are not
    assert not empty["crossattn"].any() and not empty["vector"][:, :24].any() and empty["vector"][:, 24:].any()
    assert encoder.encode([""])["crossattn"].any()  # an empty positive prompt is encoded


@pytest.mark.parametrize("negative", ["ugly", ""])
def test_sdxl_sampling_matches_diffusers_pipeline(sdxl_model, negative):
    """Our conditioning, denoiser and Euler loop against StableDiffusionXLPipeline with the same components,
    scheduler and noise: within 2 of 255 (float rounding of the batched CFG rows and the 8-bit conversion). An
    empty negative prompt is zeros in A1111, which diffusers does for ``negative_prompt=None``."""
    import torch

    from modules import rng, sd_samplers
    from modules.engine import conditioning, sampling
    from modules.families import sdxl
    from tests.conftest import pixels

    model, _ = sdxl_model
    size, steps, prompt = 64, 4, "a lighthouse at dusk"
    encoder = sdxl.PromptEncoder(model, image_size=(size, size))
    cond = conditioning.get_multicond_learned_conditioning(encoder, [prompt], steps)
    uncond = conditioning.get_learned_conditioning(encoder, [negative], steps, negative=True)
    noise = rng.ImageRNG((4, size // 8, size // 8), [21]).first()
    run = sampling.SamplingRun(model=model, scheduler=sd_samplers.create_scheduler(model.scheduler_config, "Euler", None),
                               cond=cond, uncond=uncond, cfg_scale=5.0, steps=steps,
                               empty_cond=conditioning.split_rows(encoder.encode([""]))[0])
    latents, _ = sampling.sample(run, noise)
    ours = (sampling.decode(model, latents)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.int16)
    with torch.inference_mode():
        theirs = _pipeline(model)(prompt, negative_prompt=negative or None, num_inference_steps=steps, height=size,
                                  width=size, guidance_scale=5.0, latents=noise, output_type="pil").images[0]
    assert np.abs(ours - pixels(theirs)).max() <= 2
    assert ours.std() > 1


def test_instruct_pix2pix_is_refused_by_name(sdxl_model, tmp_path):
    from modules.families import sdxl
    from modules.loading import demo_model, model_loader

    pix2pix = dataclasses.replace(UNET, in_channels=8)
    path = demo_model.write_checkpoint(str(tmp_path / "pix2pix.safetensors"),
                                       shapes=sdxl.checkpoint_shapes(pix2pix, sd1_layout.TINY.vae, BIG_G, CLIP_L))
    with pytest.raises(model_loader.ModelNotSupported, match="is a SDXL InstructPix2Pix .* support is coming"):
        model_loader.load_components(path, None)
    assert sdxl.SDXL.supported and sdxl.SDXL_INPAINT.supported and sdxl.SDXL_REFINER.supported


def test_a_linear_text_projection_loads_the_same_model(sdxl_model, tmp_path):
    import torch
    from safetensors.torch import save_file

    from modules.families import sdxl
    from modules.loading import model_files

    model, path = sdxl_model
    state = model_files.read_state_dict(path)
    state[sdxl.BIG_G_PREFIX + "text_projection.weight"] = state.pop(sdxl.BIG_G_PREFIX + "text_projection").t().contiguous()
    save_file(state, str(tmp_path / "linear.safetensors"))
    other = sdxl.load_single_file(str(tmp_path / "linear.safetensors"), torch.float32, sdxl.SDXL)
    assert torch.equal(other.text_encoder_2.text_projection.weight, model.text_encoder_2.text_projection.weight)
    assert dataclasses.is_dataclass(other)


@pytest.mark.parametrize("kind", ["base", "refiner"])
def test_the_real_sdxl_architectures_have_the_real_parameter_counts(kind):
    """SDXL's from-shapes layout (reference-model-families.md §2.5): the loader for SDXL builds on it."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from modules.families import open_clip, sd1_layout, sdxl

    arch = sdxl.FULL_SIZE_BASE if kind == "base" else sdxl.FULL_SIZE_REFINER
    shapes = sdxl.checkpoint_shapes(*arch)
    total = {"base": 3_468_837_868, "refiner": 3_037_840_364}[kind]
    assert sum(math.prod(shape) for shape in shapes.values()) == total
    assert sd1_layout.infer_unet(shapes) == arch[0]
    original = sd1_layout.original_config(sd1_layout.SD1Arch(unet=arch[0], vae=arch[1]))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(create_unet_diffusers_config_from_ldm(original, {}, image_size=1024))
        big_g = CLIPTextModelWithProjection(CLIPTextConfig(**open_clip.text_config_kwargs(arch[2], arch[2].layers)))
        clip_l = CLIPTextModel(CLIPTextConfig(**sd1_layout.text_config_kwargs(sd1_layout.TextArch())))
    assert count(unet) == {"base": 2_567_463_684, "refiner": 2_259_526_660}[kind]
    assert count(big_g) == 694_659_840 and count(clip_l) == 123_060_480


@pytest.fixture()
def sdxl_enabled(sdxl_model, use_checkpoint_dir):
    """The tiny SDXL model through the real discovery and job code."""
    import os

    return use_checkpoint_dir(os.path.dirname(sdxl_model[1]), "tiny-sdxl.safetensors")


def test_sdxl_jobs_condition_on_each_pass_size_and_the_crop_settings(sdxl_enabled):
    from modules import processing
    from modules.shared import opts, state

    seen = []
    opts.set("sdxl_crop_top", 16)
    opts.set("sdxl_crop_left", 8)
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", negative_prompt="", seed=4, steps=2, width=96,
                                                    height=64, sampler_name="Euler", enable_hr=True, hr_scale=1.5,
                                                    hr_upscaler="Latent", denoising_strength=0.5,
                                                    do_not_save_samples=True, do_not_save_grid=True)
    p.denoiser_hooks.before_unet.append(lambda call: seen.append(call.kwargs["added_cond_kwargs"]["time_ids"].tolist()))
    state.begin("test")
    processed = processing.process_images(p)
    assert p.sd_model.is_sdxl and processed.images[0].size == (144, 96)
    assert seen[0] == [[64.0, 96.0, 16.0, 8.0, 64.0, 96.0]] * 2  # cond and uncond rows of the first pass
    assert seen[-1] == [[96.0, 144.0, 16.0, 8.0, 96.0, 144.0]] * 2  # the hires pass: its own size


def _module(root, suffix: str):
    return next(module for name, module in root.named_modules() if name.endswith(suffix))


def test_kohya_sdxl_lora_names_reach_the_intended_modules(sdxl_enabled, tmp_path):
    """kohya's SDXL files name the UNet's modules in the LDM layout and the encoders te1/te2
    (reference-model-families.md §9, item 22); the weights are restored bit for bit after the job."""
    import os
    import shutil

    import torch
    from safetensors.torch import save_file

    from modules import paths
    from modules.networks import lora
    from tests.conftest import pixels, txt2img

    model = sdxl_enabled
    lookup = lora.module_lookup(model)
    unet = model.unet
    expected = {
        "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q": unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q,
        "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_k": unet.mid_block.attentions[0].transformer_blocks[1].attn2.to_k,
        "lora_unet_output_blocks_1_2_conv": unet.up_blocks[0].upsamplers[0].conv,
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": _module(model.text_encoder, "layers.0.self_attn.q_proj"),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": _module(model.text_encoder_2, "layers.0.self_attn.q_proj"),
    }
    for key, module in expected.items():
        assert lookup[key] is module, key
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for key, module in expected.items():
        rank = 2
        if isinstance(module, torch.nn.Conv2d):
            down, up = torch.randn(rank, module.in_channels, 3, 3, generator=generator), torch.randn(module.out_channels, rank, 1, 1, generator=generator)
        else:
            down, up = torch.randn(rank, module.in_features, generator=generator), torch.randn(module.out_features, rank, generator=generator)
        tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(2.0)})
    folder = os.path.join(paths.models_path, "Lora")
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, "xl-style.safetensors"))
    try:
        before = {key: module.weight.detach().clone() for key, module in expected.items()}
        plain = pixels(txt2img(prompt="a cat", steps=2).images[0])
        styled = txt2img(prompt="a cat <lora:xl-style:1>", steps=2)
        assert "match no layer" not in str(styled.comments) and "skipped" not in str(styled.comments)
        assert np.abs(pixels(styled.images[0]) - plain).max() > 0
        assert all(torch.equal(module.weight, before[key]) for key, module in expected.items())
        # the same deltas under diffusers/PEFT names (unet., text_encoder., text_encoder_2.) give the same image
        names = {module: f"{component}.{name}" for component in ("unet", "text_encoder", "text_encoder_2")
                 for name, module in getattr(model, component).named_modules()}
        peft = {}
        for key, module in expected.items():
            peft.update({f"{names[module]}.lora_A.weight": tensors[f"{key}.lora_down.weight"],  # alpha = rank: scale 1
                         f"{names[module]}.lora_B.weight": tensors[f"{key}.lora_up.weight"]})
        save_file(peft, os.path.join(folder, "xl-peft.safetensors"))
        as_peft = txt2img(prompt="a cat <lora:xl-peft:1>", steps=2)
        assert np.abs(pixels(as_peft.images[0]) - pixels(styled.images[0])).max() <= 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lora.applied_networks().restore()


def test_a_hires_pass_on_an_sd1_checkpoint_takes_the_sdxl_latents_through_pixels(sdxl_enabled):
    """The two families' VAEs have different latent spaces (scale factors 0.13025 and 0.18215): with a latent
    upscaler the first pass is decoded by SDXL's VAE and encoded by SD 1's before it is enlarged."""
    from modules import infotext_utils, sd_models
    from tests.conftest import UNetCounts, txt2img

    sd1_model = sd_models.load_model(sd_models.get_closet_checkpoint_match("tiny.safetensors"))
    assert sd1_model.family.latent != sdxl_enabled.family.latent
    with UNetCounts(sdxl_enabled, sd1_model) as counts:
        result = txt2img(enable_hr=True, hr_upscaler="Latent", steps=2, hr_second_pass_steps=2, denoising_strength=0.5,
                         hr_checkpoint_name="tiny.safetensors")
    assert counts.order == ["tiny-sdxl"] * 2 + ["tiny-sdxl VAE decode"] + ["tiny"] * 2 + ["tiny VAE decode"]
    assert result.images[0].size == (128, 128)
    assert infotext_utils.parse_generation_parameters(result.infotexts[0])["Hires checkpoint"].startswith("tiny [")


def test_clip_skip_changes_sdxl_only_through_the_clip_l_setting(sdxl_enabled):
    """A1111: Clip skip leaves SDXL's conditioning alone (the infotext still says it); with ``sdxl_clip_l_skip`` it
    picks CLIP-L's layer (1 = the last, 2 = the default) and never bigG's (reference-model-families.md §4.2)."""
    import torch

    from modules.shared import opts
    from tests.conftest import DenoiserCalls, txt2img

    def context(clip_skip, clip_l_skip):
        opts.set("CLIP_stop_at_last_layers", clip_skip)
        opts.set("sdxl_clip_l_skip", clip_l_skip)
        with DenoiserCalls() as calls:
            result = txt2img(prompt="a lighthouse", steps=1)
        return calls.calls[0].text_cond["crossattn"][0], result.infotexts[0]

    default, _ = context(1, False)
    skipped, text = context(2, False)
    assert torch.equal(skipped, default) and "Clip skip: 2" in text
    last_l, _ = context(1, True)
    width_l = sdxl_enabled.text_encoder.config.hidden_size
    assert not torch.allclose(last_l[:, :width_l], default[:, :width_l])  # CLIP-L: its last layer
    assert torch.equal(last_l[:, width_l:], default[:, width_l:])  # bigG unchanged
    assert torch.equal(context(2, True)[0], default)


def test_the_page_switches_an_untouched_size_to_the_family_native_one(sdxl_enabled):
    from webui.tabs import txt2img as txt2img_tab

    sdxl_title = sdxl_enabled.sd_checkpoint_info.title
    width, height, hint = txt2img_tab.native_size(sdxl_title, 512, 512)
    assert (width, height) == (1024, 1024) and hint.startswith("Size set to 1024×1024, the native size of SDXL models")
    assert txt2img_tab.native_size(sdxl_title, 1024, 1024)[2] == ""  # already there: nothing to say
    kept = txt2img_tab.native_size(sdxl_title, 768, 512)  # the user's own size stays
    assert kept[2] == "" and all(not isinstance(value, int) for value in kept[:2])
    assert txt2img_tab.native_size("tiny.safetensors", 1024, 1024)[:2] == (512, 512)


def test_zero_terminal_snr_from_the_marker_and_the_setting_uses_a1111s_last_sigma(sdxl_model, tiny_model, tmp_path):
    """A ``v_pred`` + ``ztsnr`` checkpoint samples v-prediction on the zero-terminal-SNR schedule ending at A1111's
    alpha_bar 4.8973451890853435e-08 (sigma_max ~ 4518.76, not diffusers' 4096); the Noise schedule setting does the
    same for any model and is recorded (reference-model-families.md §2 and §9, item 3)."""
    import torch

    from modules import infotext_utils, sd_samplers
    from modules.families import sdxl
    from modules.loading import demo_model
    from modules.shared import opts
    from tests.conftest import pixels, txt2img

    path = demo_model.write_checkpoint(str(tmp_path / "vpred-ztsnr.safetensors"), seed=9,
                                       shapes=sdxl.checkpoint_shapes(*sdxl.TINY_BASE),
                                       extra={"v_pred": torch.zeros(0), "ztsnr": torch.zeros(0)})
    config = sdxl.load_single_file(path, torch.float32, sdxl.SDXL).scheduler_config
    assert config["prediction_type"] == "v_prediction" and config["rescale_betas_zero_snr"] is True
    for sampler in ("Euler", "DPM++ 2M", "DDIM"):
        scheduler = sd_samplers.create_scheduler(config, sampler, "Automatic")
        assert abs(float(scheduler.alphas_cumprod[-1]) - 4.8973451890853435e-08) < 1e-12
    euler = sd_samplers.create_scheduler(config, "Euler", "Automatic")
    euler.set_timesteps(4)
    assert abs(float(euler.sigmas.max()) - 4518.76) < 0.5

    plain = txt2img(steps=3)
    opts.set("sd_noise_schedule", "Zero Terminal SNR")
    ztsnr = txt2img(steps=3)
    assert "Noise Schedule: Zero Terminal SNR" in ztsnr.infotexts[0] and "Noise Schedule" not in plain.infotexts[0]
    assert np.abs(pixels(ztsnr.images[0]) - pixels(plain.images[0])).max() > 0
    opts.set("sd_noise_schedule", "Default")
    params = infotext_utils.parse_generation_parameters(ztsnr.infotexts[0])
    assert infotext_utils.override_settings_from_infotext(params) == {"sd_noise_schedule": "Zero Terminal SNR"}


def test_sd1_networks_are_skipped_on_sdxl_by_name_and_family(sdxl_enabled):
    import os
    import shutil

    from modules import paths
    from modules.networks import lora
    from tests.conftest import pixels, txt2img, write_lora_shapes

    folder = os.path.join(paths.models_path, "Lora")
    os.makedirs(folder, exist_ok=True)
    write_lora_shapes(os.path.join(folder, "sd15.safetensors"), {
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": (4, 768, 640),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (4, 768, 768)})
    write_lora_shapes(os.path.join(folder, "sd15-text.safetensors"), {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (4, 768, 768)})
    try:
        plain = pixels(txt2img(prompt="a cat", steps=2).images[0])
        for name, family in [("sd15", "SD 1.x"), ("sd15-text", "SD 1.x/2.x")]:
            processed = txt2img(prompt=f"a cat <lora:{name}:1>", steps=2)
            assert f"LoRA {name} is for {family}, not for this SDXL model: skipped" in processed.comments
            assert (pixels(processed.images[0]) == plain).all()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lora.applied_networks().restore()


def test_a_folder_saved_by_diffusers_gives_the_single_file_pixels(sdxl_model, sdxl_enabled, use_checkpoint_dir):
    """diffusers' own StableDiffusionXLPipeline.save_pretrained writes the folder; discovery finds it, detection
    calls it SDXL (not the refiner) from its components, and the same seed gives the same image."""
    import os

    from modules.families import detection, sdxl
    from tests.conftest import pixels, txt2img

    model, path = sdxl_model
    folder = os.path.join(os.path.dirname(path), "tiny-sdxl-diffusers")
    if not os.path.isdir(folder):
        _pipeline(model).save_pretrained(folder)
    assert detection.family_from_diffusers_folder(folder).key == sdxl.SDXL.key
    single = txt2img(prompt="a red boat", seed=5, steps=3).images[0]
    loaded = use_checkpoint_dir(os.path.dirname(path), "tiny-sdxl-diffusers")
    assert loaded.text_encoder_2 is not None and loaded.tokenizer_2.pad_token_id == 0
    assert loaded.scheduler_config["_class_name"] == "EulerDiscreteScheduler"
    folder_image = txt2img(prompt="a red boat", seed=5, steps=3).images[0]
    assert pixels(single).std() > 1 and np.array_equal(pixels(single), pixels(folder_image))


def test_sdxl_variants_are_told_apart_from_the_header(data_dir):
    from modules.families import detection, sdxl

    for channels, family in ((4, sdxl.SDXL), (9, sdxl.SDXL_INPAINT), (8, sdxl.SDXL_PIX2PIX)):
        unet = dataclasses.replace(UNET, in_channels=channels)
        assert detection.family_from_shapes(sdxl.checkpoint_shapes(unet, sd1_layout.TINY.vae, BIG_G, CLIP_L)) is family
    refiner = dataclasses.replace(UNET, adm_in_channels=64)
    assert detection.family_from_shapes(sdxl.checkpoint_shapes(refiner, sd1_layout.TINY.vae, BIG_G)) is sdxl.SDXL_REFINER
    assert not sdxl.SDXL_PIX2PIX.supported and sdxl.SDXL_INPAINT.is_inpainting


def test_sdxl_embeddings_reach_both_encoders_and_others_are_skipped(sdxl_enabled):
    """An SDXL embedding (clip_l + clip_g) changes both halves of the context from its position on; a single-tensor
    (SD 1.x-style) embedding is listed as skipped with the reason (reference-model-families.md §9, item 24)."""
    import os
    import shutil

    import torch
    from safetensors.torch import save_file

    from modules import paths
    from modules.families import sdxl
    from modules.textual_inversion import textual_inversion

    model = sdxl_enabled
    folder = os.path.join(paths.models_path, "embeddings")
    os.makedirs(folder, exist_ok=True)
    try:
        save_file({"clip_l": torch.randn(2, 32), "clip_g": torch.randn(2, 48)}, os.path.join(folder, "xlstyle.safetensors"))
        save_file({"emb_params": torch.randn(2, 32)}, os.path.join(folder, "oldstyle.safetensors"))
        usable = textual_inversion.refresh_for_model(model, force_reload=True)
        assert "xlstyle" in usable.word_embeddings and "oldstyle" in usable.skip_reasons
        assert "clip_l + clip_g" in usable.skip_reasons["oldstyle"]
        plain = sdxl.PromptEncoder(model, embeddings=usable).encode(["a cat"])["crossattn"]
        encoder = sdxl.PromptEncoder(model, embeddings=usable)
        styled = encoder.encode(["xlstyle cat"])["crossattn"]
        assert "xlstyle" in encoder.used_embeddings
        changed = (styled - plain).abs().amax(dim=1)[0]  # per channel, over the tokens
        assert changed[:32].max() > 0 and changed[32:].max() > 0  # CLIP-L's channels and bigG's
        words = sdxl.PromptEncoder(model, embeddings=usable).encode(["a cat"])["crossattn"]
        assert torch.equal(words, plain)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        textual_inversion.refresh_for_model(model, force_reload=True)


def test_img2img_and_inpainting_run_on_sdxl(sdxl_model, sdxl_enabled, use_checkpoint_dir, tmp_path):
    import os

    from PIL import Image

    from modules.families import sdxl
    from modules.loading import demo_model
    from tests.conftest import img2img, noise_image, pixels

    source = noise_image(64, 64)
    p, processed = img2img([source], denoising_strength=0.5, steps=4)
    assert p.sd_model.is_sdxl and pixels(processed.images[0]).std() > 1
    assert np.abs(pixels(processed.images[0]) - pixels(source)).max() > 0
    inpaint_unet = dataclasses.replace(UNET, in_channels=9)
    demo_model.write_checkpoint(os.path.join(os.path.dirname(sdxl_model[1]), "tiny-sdxl-inpainting.safetensors"),
                                seed=3, shapes=sdxl.checkpoint_shapes(inpaint_unet, sd1_layout.TINY.vae, BIG_G, CLIP_L))
    model = use_checkpoint_dir(os.path.dirname(sdxl_model[1]), "tiny-sdxl-inpainting.safetensors")
    assert model.family is sdxl.SDXL_INPAINT
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    p, processed = img2img([source], mask=mask, denoising_strength=1.0, inpainting_fill=1)
    assert p.image_conditioning.shape[1] == 5  # mask + masked-image latent, the same path as SD 1.x
    result = pixels(processed.images[0])
    assert np.abs(result[:, 48:] - pixels(source)[:, 48:]).max() <= 1
    assert np.abs(result[:, :24] - pixels(source)[:, :24]).mean() > 10


def test_an_inpainting_folder_saved_by_diffusers_inpaints_like_the_single_file(sdxl_model, sdxl_enabled,
                                                                               use_checkpoint_dir):
    import os

    import torch
    from diffusers import StableDiffusionXLInpaintPipeline
    from PIL import Image

    from modules import sd_samplers
    from modules.families import detection, sdxl
    from modules.loading import demo_model
    from tests.conftest import img2img, noise_image, pixels

    folder_root = os.path.dirname(sdxl_model[1])
    path = os.path.join(folder_root, "tiny-sdxl-inpainting.safetensors")
    if not os.path.isfile(path):
        demo_model.write_checkpoint(path, seed=3, shapes=sdxl.checkpoint_shapes(
            dataclasses.replace(UNET, in_channels=9), sd1_layout.TINY.vae, BIG_G, CLIP_L))
    model = sdxl.load_single_file(path, torch.float32, sdxl.SDXL_INPAINT)
    folder = os.path.join(folder_root, "tiny-sdxl-inpainting-diffusers")
    if not os.path.isdir(folder):
        StableDiffusionXLInpaintPipeline(
            vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
            tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=model.unet,
            scheduler=sd_samplers.create_scheduler(model.scheduler_config, "Euler", None)).save_pretrained(folder)
    assert detection.family_from_diffusers_folder(folder).key == sdxl.SDXL_INPAINT.key
    source, mask = noise_image(64, 64), Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    results = []
    for name in ("tiny-sdxl-inpainting.safetensors", "tiny-sdxl-inpainting-diffusers"):
        assert use_checkpoint_dir(folder_root, name).family is sdxl.SDXL_INPAINT
        results.append(pixels(img2img([source], mask=mask, denoising_strength=1.0, inpainting_fill=1, steps=3)[1].images[0]))
    assert results[0].std() > 1 and np.array_equal(results[0], results[1])


REFINER_UNET = sd1_layout.UNetArch(model_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
                                   attention_levels=(False, True, True, False), context_dim=48, linear_projection=True,
                                   head_channels=32, adm_in_channels=64)


def test_the_refiner_continues_the_run_from_the_switch_step(sdxl_model, tmp_path):
    """Groundwork for A1111's refiner (the job path does not offer it yet): bigG-only conditioning with the
    aesthetic scores, and the switch inside one sampling run at the first model call with t <= 199 for 0.8
    (reference-model-families.md §5 and §9, items 11 and 18)."""
    import torch

    from modules import rng, sd_models, sd_samplers
    from modules.engine import conditioning, denoiser, sampling
    from modules.families import sdxl
    from modules.loading import demo_model

    base, _ = sdxl_model
    path = demo_model.write_checkpoint(str(tmp_path / "tiny-refiner.safetensors"), seed=4,
                                       shapes=sdxl.checkpoint_shapes(REFINER_UNET, sd1_layout.TINY.vae, BIG_G))
    components = sdxl.load_single_file(path, torch.float32, sdxl.SDXL_REFINER)
    refiner = sd_models.SDModel(**vars(components), device=torch.device("cpu"), dtype=torch.float32)
    assert refiner.text_encoder is None and refiner.unet.config.projection_class_embeddings_input_dim == 64

    def conds(model, negative):
        encoder = sdxl.PromptEncoder(model, image_size=(64, 64))
        return (conditioning.get_multicond_learned_conditioning(encoder, ["a lighthouse"], 10),
                conditioning.get_learned_conditioning(encoder, [negative], 10, negative=True),
                conditioning.split_rows(encoder.encode([""]))[0])

    def run(switch_at, negative="fog"):
        calls = []

        def forward(unet, call):
            calls.append((unet, call.kwargs["added_cond_kwargs"]["time_ids"].tolist(), call.kwargs["encoder_hidden_states"]))
            return denoiser.call_unet(unet, call)

        cond, uncond, empty = conds(base, negative)
        switch = sampling.RefinerSwitch(switch_at, refiner, *conds(refiner, negative)) if switch_at else None
        sampling_run = sampling.SamplingRun(
            model=base, scheduler=sd_samplers.create_scheduler(base.scheduler_config, "Euler", None), cond=cond,
            uncond=uncond, cfg_scale=5.0, steps=10, empty_cond=empty, hooks=denoiser.DenoiserHooks(unet_forward=forward),
            refiner=switch)
        latents, _ = sampling.sample(sampling_run, rng.ImageRNG((4, 8, 8), [3]).first())
        return latents, calls, sampling_run

    latents, calls, sampling_run = run(0.8)
    timesteps = sampling_run.scheduler.timesteps
    on_base = sum(1 for t in timesteps if (999 - round(float(t))) / 1000 < 0.8)
    assert 0 < on_base < len(timesteps) and sampling_run.refiner.switched_at == on_base
    assert all(unet is base.unet for unet, _, _ in calls[:on_base])
    assert all(unet is refiner.unet for unet, _, _ in calls[on_base:])
    _, time_ids, context = calls[-1]
    assert time_ids == [[64.0, 64.0, 0.0, 0.0, 6.0], [64.0, 64.0, 0.0, 0.0, 2.5]] and context.shape[-1] == 48
    plain, _, _ = run(None)
    never, never_calls, _ = run(1.0)
    assert torch.equal(never, plain) and all(unet is base.unet for unet, _, _ in never_calls)
    assert not torch.equal(latents, plain)
    _, empty_calls, _ = run(0.8, negative="")
    assert not empty_calls[-1][2][1:].any()  # the refiner zeroes an empty negative prompt too


@pytest.fixture(scope="module")
def refiner_file(sdxl_model):
    import os

    from modules.families import sdxl
    from modules.loading import demo_model

    path = os.path.join(os.path.dirname(sdxl_model[1]), "tiny-refiner.safetensors")
    if not os.path.isfile(path):
        demo_model.write_checkpoint(path, seed=4, shapes=sdxl.checkpoint_shapes(REFINER_UNET, sd1_layout.TINY.vae, BIG_G))
    return path


def _job(**overrides):
    from modules import processing
    from modules.shared import state

    params = dict(prompt="a cat", negative_prompt="fog", seed=4, steps=10, width=64, height=64, sampler_name="Euler",
                  do_not_save_samples=True, do_not_save_grid=True)
    p = processing.StableDiffusionProcessingTxt2Img(**{**params, **overrides})
    calls = []
    p.denoiser_hooks.before_unet.append(lambda call: calls.append(call.kwargs["added_cond_kwargs"]["time_ids"].shape[1]))
    state.begin("test")
    return p, processing.process_images(p), calls


def test_a_job_switches_to_the_refiner_and_says_so(refiner_file, sdxl_enabled):
    from modules import infotext_utils, sd_models
    from tests.conftest import pixels

    p, processed, calls = _job(refiner_checkpoint="tiny-refiner", refiner_switch_at=0.8)
    on_base = calls.count(6)
    assert 0 < on_base < 10 and calls == [6] * on_base + [5] * (10 - on_base)  # base ids, then the refiner's
    params = infotext_utils.parse_generation_parameters(processed.infotexts[0])
    refiner = sd_models.get_closet_checkpoint_match("tiny-refiner")
    assert params["Refiner"] == refiner.short_title and params["Refiner switch at"] == "0.8"
    assert params["Model"] == "tiny-sdxl" and sd_models.current_model() is p.sd_model  # the base stays loaded
    _, plain, plain_calls = _job()
    _, never, never_calls = _job(refiner_checkpoint="tiny-refiner", refiner_switch_at=1.0)
    assert plain_calls == never_calls == [6] * 10 and "Refiner" not in never.infotexts[0]
    assert np.array_equal(pixels(plain.images[0]), pixels(never.images[0]))
    assert not np.array_equal(pixels(plain.images[0]), pixels(processed.images[0]))
    _, hires, hires_calls = _job(refiner_checkpoint="tiny-refiner", enable_hr=True, hr_scale=1.5, hr_upscaler="Latent",
                                 denoising_strength=0.5, steps=6)
    assert hires_calls[:6] == [6] * 6 and hires_calls[-1] == 5  # the first pass stays on the base model
    assert "Refiner: " in hires.infotexts[0]


def test_the_refiner_by_sampling_steps_and_in_either_hires_pass(refiner_file, sdxl_enabled):
    """A1111's options: ``refiner_switch_by_sample_steps`` switches at the 17th of 20 model calls for 0.8 (16 done);
    ``hires_fix_refiner_pass`` picks the pass(es) that may switch, and a first-pass switch does not carry into the
    hires pass, which starts on the base again (reference-model-families.md §9, items 18 and 19)."""
    from modules import infotext_utils
    from modules.shared import opts

    opts.set("refiner_switch_by_sample_steps", True)
    _, processed, calls = _job(refiner_checkpoint="tiny-refiner", refiner_switch_at=0.8, steps=20, scheduler="Karras")
    assert calls == [6] * 16 + [5] * 4
    params = infotext_utils.parse_generation_parameters(processed.infotexts[0])
    assert params["Refiner switch by sampling steps"] == "True"
    assert infotext_utils.override_settings_from_infotext(params) == {}  # the setting it was made with
    opts.set("refiner_switch_by_sample_steps", False)
    assert infotext_utils.override_settings_from_infotext(params) == {"refiner_switch_by_sample_steps": True}

    hires = dict(refiner_checkpoint="tiny-refiner", refiner_switch_at=0.5, enable_hr=True, hr_scale=1.5,
                 hr_upscaler="Latent", denoising_strength=1.0, steps=4)
    expected = {"first pass": [6, 6, 5, 5] + [6] * 4, "second pass": [6] * 4 + [6, 6, 5, 5],
                "both passes": [6, 6, 5, 5] * 2}
    for option, pattern in expected.items():
        opts.set("hires_fix_refiner_pass", option)
        _, processed, calls = _job(**hires)
        assert calls == pattern, option
        text = processed.infotexts[0]
        assert (f"Hires refiner: {option}" in text) == (option != "second pass")


def test_old_infotexts_mean_what_old_a1111_did():
    from modules import infotext_utils

    old = infotext_utils.parse_generation_parameters(
        "a [cat:dog:3]\nSteps: 20, Refiner: base [abc], Refiner switch at: 0.8, Version: v1.7.0")
    assert old["Refiner switch by sampling steps"] is True and "Old prompt editing timelines" not in old
    older = infotext_utils.parse_generation_parameters("a [cat:dog:3]\nSteps: 20, Sampler: Euler, Version: 1.5.1")
    assert older["Old prompt editing timelines"] is True and older["Refiner switch by sampling steps"] is False
    new = infotext_utils.parse_generation_parameters(
        "a [cat:dog:3]\nSteps: 20, Refiner: base [abc], Refiner switch at: 0.8, Version: v1.10.1")
    assert new["Refiner switch by sampling steps"] is False and "Old prompt editing timelines" not in new


def test_refiner_requests_are_checked(refiner_file, sdxl_enabled):
    from modules import processing
    from modules.errors import UserInputError

    for value, message in ((dict(refiner_checkpoint="missing-model"), "Could not find checkpoint with name missing"),
                           (dict(refiner_checkpoint="tiny-refiner", refiner_switch_at=1.5), "refiner_switch_at")):
        p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", steps=2, width=64, height=64, **value)
        with pytest.raises(UserInputError, match=message):
            p.validate()


def test_the_refiner_from_the_page_the_api_and_a_pasted_infotext(refiner_file, sdxl_enabled):
    import json

    from modules import scripts, sd_models
    from tests.test_api import BASE, make_client
    from tests.test_ui_handlers import _args
    from webui.tabs import txt2img as txt2img_tab

    refiner = sd_models.get_closet_checkpoint_match("tiny-refiner")
    values = {**_args(width=64, height=64, steps=6), "refiner_enabled": True, "refiner_checkpoint": refiner.title,
              "refiner_switch_at": 0.7}
    result = list(txt2img_tab.generate(values))[-1][4]
    text = result["infotexts"][0]
    assert f"Refiner: {refiner.short_title}" in text and "Refiner switch at: 0.7" in text
    off = list(txt2img_tab.generate({**values, "refiner_enabled": False}))[-1][4]["infotexts"][0]
    assert "Refiner" not in off  # the accordion is off: its values are not used
    pasted = dict(zip(txt2img_tab.PASTE_FIELDS, txt2img_tab.paste_parameters(text)))
    assert pasted["refiner_enabled"]["value"] is True and pasted["refiner_checkpoint"]["value"] == refiner.title
    assert pasted["refiner_switch_at"]["value"] == 0.7
    scripts.runner_for(False)
    _, client = make_client()
    with client:
        response = client.post(f"{BASE}/txt2img", json={"prompt": "a cat", "steps": 6, "width": 64, "height": 64,
                                                         "refiner_checkpoint": "tiny-refiner", "refiner_switch_at": 0.7})
        assert response.status_code == 200, response.text
        assert "Refiner switch at: 0.7" in json.loads(response.json()["info"])["infotexts"][0]
        bad = client.post(f"{BASE}/txt2img", json={"prompt": "a cat", "steps": 2, "refiner_checkpoint": "nothing-here"})
        assert bad.status_code == 422 and "Could not find checkpoint with name nothing-here" in bad.json()["detail"]


def test_a_refiner_folder_saved_by_diffusers_refines_like_the_single_file(refiner_file, sdxl_enabled):
    """diffusers' StableDiffusionXLImg2ImgPipeline.save_pretrained writes the refiner without CLIP-L; discovery calls
    it the refiner, and as ``refiner_checkpoint`` it gives the single file's pixels."""
    import os

    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from modules import sd_models, sd_samplers
    from modules.families import detection, sdxl
    from tests.conftest import pixels

    refiner = sdxl.load_single_file(refiner_file, torch.float32, sdxl.SDXL_REFINER)
    folder = os.path.join(os.path.dirname(refiner_file), "tiny-refiner-diffusers")
    if not os.path.isdir(folder):
        StableDiffusionXLImg2ImgPipeline(
            vae=refiner.vae, text_encoder=None, text_encoder_2=refiner.text_encoder_2, tokenizer=None,
            tokenizer_2=refiner.tokenizer_2, unet=refiner.unet, requires_aesthetics_score=True,
            scheduler=sd_samplers.create_scheduler(refiner.scheduler_config, "Euler", None)
        ).save_pretrained(folder)
    assert not os.path.exists(os.path.join(folder, "text_encoder"))
    assert detection.family_from_diffusers_folder(folder).key == sdxl.SDXL_REFINER.key
    sd_models.list_models()
    _, single, single_calls = _job(refiner_checkpoint="tiny-refiner.safetensors", refiner_switch_at=0.6)
    _, from_folder, folder_calls = _job(refiner_checkpoint="tiny-refiner-diffusers", refiner_switch_at=0.6)
    loaded = sd_models.load_beside_current("tiny-refiner-diffusers")
    assert loaded.text_encoder is None and loaded.tokenizer is loaded.tokenizer_2
    assert single_calls == folder_calls and 5 in folder_calls  # the refiner's 5 size ids after the switch
    assert np.array_equal(pixels(single.images[0]), pixels(from_folder.images[0]))
    assert "Refiner: tiny-refiner-diffusers" in from_folder.infotexts[0]

