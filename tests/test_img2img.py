"""img2img, inpainting (all options, 9-channel checkpoints), stochastic freeze and hires fix on the tiny models."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from modules import images, masking, processing, sd_samplers
from modules.engine import sampling
from modules.errors import UserInputError
from modules.shared import opts
from tests.conftest import DenoiserCalls, UNetCounts, img2img, noise_image, pixels, txt2img


def box_mask(width, height, box):
    mask = Image.new("L", (width, height))
    mask.paste(255, box)
    return mask


def far_from(mask, distance=25):
    """Pixels farther than about distance/2 from the mask (beyond blur and the widened overlay edge)."""
    return np.asarray(mask.filter(ImageFilter.MaxFilter(distance))) == 0


# --- images.resize_image -------------------------------------------------------------------------------------

def test_resize_modes_give_the_requested_size_and_their_framing():
    source = Image.new("RGB", (40, 20), "red")
    source.paste((0, 0, 255), (0, 0, 15, 20))  # blue left band
    for mode in range(4):
        assert images.resize_image(mode, source, 32, 32).size == (32, 32)
    cropped = np.asarray(images.resize_image(1, source, 32, 32))
    assert (cropped[:, -1] == [255, 0, 0]).all() and cropped[16, 0, 2] > 200  # centre crop keeps some blue
    filled = np.asarray(images.resize_image(2, source, 32, 32))
    # the picture is 32x16 in the middle; the bands above and below repeat its edge rows
    assert (filled[0] == filled[8]).all() and (filled[31] == filled[23]).all()
    assert filled[0, 0, 2] > 200 and filled[0, 31, 0] > 200


def test_resize_through_a_pixel_upscaler_and_unknown_names():
    source = noise_image(20, 20)
    assert images.resize_image(0, source, 40, 40, upscaler_name="Nearest").size == (40, 40)
    nearest = np.asarray(images.resize_image(0, source, 40, 40, upscaler_name="Nearest"))
    assert (nearest[0::2, 0::2] == np.asarray(source)).all()
    with pytest.raises(UserInputError, match="Unknown upscaler 'Nope'"):
        images.resize_image(0, source, 40, 40, upscaler_name="Nope")


# --- masks ------------------------------------------------------------------------------------------------------

def test_mask_helpers():
    mask = box_mask(100, 60, (40, 20, 50, 30))
    assert masking.get_crop_region(mask, 5) == (35, 15, 55, 35)
    assert masking.get_crop_region(Image.new("L", (10, 10))) is None
    # widened to the render aspect ratio (2:1) and moved back inside the picture
    assert masking.expand_crop_region((35, 15, 55, 35), 64, 32, 100, 60) == (25, 15, 65, 35)
    assert masking.expand_crop_region((0, 0, 10, 40), 64, 64, 100, 60) == (0, 0, 40, 40)
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 255))
    rgba.putpixel((1, 1), (0, 0, 0, 0))
    assert masking.create_binary_mask(rgba).getpixel((1, 1)) == 0 and masking.create_binary_mask(rgba).getpixel((0, 0)) == 255
    filled = np.asarray(masking.fill(Image.new("RGB", (32, 32), (10, 200, 30)), box_mask(32, 32, (8, 8, 24, 24))))
    assert np.abs(filled.astype(int) - [10, 200, 30]).max() <= 6  # the hole takes the surrounding colour


def test_colour_correction_moves_colours_toward_the_reference():
    reference = noise_image(48, 48)
    dark = Image.fromarray((np.asarray(reference) // 3).astype(np.uint8))
    corrected = masking.apply_color_correction(masking.setup_color_correction(reference), dark)
    before = np.abs(pixels(dark).mean((0, 1)) - pixels(reference).mean((0, 1))).max()
    after = np.abs(pixels(corrected).mean((0, 1)) - pixels(reference).mean((0, 1))).max()
    assert before > 50 and after < 8


# --- img2img --------------------------------------------------------------------------------------------------

def test_img2img_output_size_and_infotext(engine_model):
    p, result = img2img([noise_image(80, 48)], width=64, height=96, resize_mode=1, denoising_strength=0.6)
    assert result.images[0].size == (64, 96)
    text = result.infotexts[0]
    assert "Denoising strength: 0.6" in text and "Size: 64x96" in text
    assert result.images[0].info["parameters"] == text


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_every_resize_mode_runs(tiny_model, mode):
    with DenoiserCalls() as calls:
        _, result = img2img([noise_image(100, 60)], width=64, height=80, resize_mode=mode, steps=4)
    assert result.images[0].size == (64, 80)
    assert tuple(calls.calls[0].x.shape[-2:]) == (10, 8)


def test_denoising_strength_runs_the_tail_of_the_schedule(engine_model):
    scheduler = sd_samplers.create_scheduler(engine_model.scheduler_config, "Euler", "Automatic")
    scheduler.set_timesteps(10)
    with DenoiserCalls() as calls:
        img2img([noise_image(64, 64)], steps=10, denoising_strength=0.55)
    assert [float(c.sigma) for c in calls.calls] == [float(t) for t in scheduler.timesteps[5:]]  # int(0.55*10) = 5 steps
    with DenoiserCalls() as calls:
        img2img([noise_image(64, 64)], steps=10, denoising_strength=1.0)
    assert len(calls.calls) == 9  # min(strength, 0.999)
    opts.img2img_fix_steps = True
    with DenoiserCalls() as calls:
        img2img([noise_image(64, 64)], steps=10, denoising_strength=0.5)
    assert len(calls.calls) == 10
    scheduler.set_timesteps(20)
    assert [float(c.sigma) for c in calls.calls] == [float(t) for t in scheduler.timesteps[10:]]


def test_second_order_samplers_start_at_the_same_place(engine_model):
    with DenoiserCalls() as calls:
        _, result = img2img([noise_image(64, 64)], steps=6, denoising_strength=0.5, sampler_name="Heun")
    assert len(calls.calls) == 5  # 3 Heun steps, the last one first-order
    assert result.images[0].size == (64, 64)


def test_denoising_strength_zero_returns_the_encoded_input(engine_model):
    source = noise_image(64, 64)
    with DenoiserCalls() as calls:
        _, result = img2img([source], denoising_strength=0.0)
    assert calls.calls == []
    expected = processing._to_pil(sampling.decode(engine_model, sampling.encode(engine_model, processing._from_pil([source]))))[0]
    assert (pixels(result.images[0]) == pixels(expected)).all()


def test_initial_noise_multiplier_changes_the_start_and_is_recorded(engine_model):
    _, plain = img2img([noise_image(64, 64)])
    _, scaled = img2img([noise_image(64, 64)], initial_noise_multiplier=0.5)
    assert "Noise multiplier: 0.5" in scaled.infotexts[0] and "Noise multiplier" not in plain.infotexts[0]
    assert (pixels(plain.images[0]) != pixels(scaled.images[0])).any()


def test_colour_correction_option(tiny_model):
    source = Image.new("RGB", (64, 64), (200, 40, 40))
    _, plain = img2img([source], denoising_strength=0.9)
    opts.img2img_color_correction = True
    _, corrected = img2img([source], denoising_strength=0.9)
    distance = lambda image: np.abs(pixels(image).mean((0, 1)) - [200, 40, 40]).sum()  # noqa: E731
    assert distance(corrected.images[0]) < distance(plain.images[0]) / 2


def test_transparent_input_is_flattened_on_the_background_colour(tiny_model):
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    _, white = img2img([clear], denoising_strength=0.0)
    _, reference = img2img([Image.new("RGB", (64, 64), "white")], denoising_strength=0.0)
    assert (pixels(white.images[0]) == pixels(reference.images[0])).all()


@pytest.mark.parametrize("overrides, message", [
    ({"init_images": []}, "at least one input image"),
    ({"resize_mode": 7}, "resize_mode must be"),
    ({"denoising_strength": 1.5}, "denoising_strength must be between 0 and 1"),
    ({"inpainting_fill": 9}, "inpainting_fill must be"),
    ({"init_images": [noise_image(8, 8)] * 3, "batch_size": 2}, "3 images given, but batch_size is 2"),
    ({"init_images": ["not an image"]}, "every entry must be an image"),
])
def test_bad_img2img_input_is_rejected(tiny_model, overrides, message):
    with pytest.raises(UserInputError, match=message):
        img2img(**{"init_images": [noise_image(64, 64)], **overrides})


# --- inpainting -----------------------------------------------------------------------------------------------

def test_inpaint_original_keeps_pixels_outside_the_blurred_mask(engine_model):
    source, mask = noise_image(96, 64), box_mask(96, 64, (30, 20, 60, 44))
    p, result = img2img([source], mask=mask, width=96, height=64, inpainting_fill=1, inpaint_full_res=False,
                        sampler_name="Euler a", denoising_strength=0.75)
    diff = np.abs(pixels(result.images[0]) - pixels(source))
    assert diff[far_from(mask)].max() <= 1
    assert diff[np.asarray(mask) > 0].mean() > 20
    text = result.infotexts[0]
    assert "Mask blur: 4" in text and "Masked content: original" in text and "Inpaint area" not in text


def test_inpaint_not_masked_swaps_the_regions(engine_model):
    source, mask = noise_image(64, 64), box_mask(64, 64, (0, 0, 20, 64))
    _, result = img2img([source], mask=mask, inpainting_mask_invert=1, inpainting_fill=1, inpaint_full_res=False)
    diff = np.abs(pixels(result.images[0]) - pixels(source))
    inside = np.asarray(mask.filter(ImageFilter.MinFilter(25))) > 0  # well inside the user's mask
    assert diff[inside].max() <= 1 and diff[:, 40:].mean() > 20
    assert "Mask mode: Inpaint not masked" in result.infotexts[0]


def test_only_masked_renders_the_crop_at_full_resolution(engine_model):
    source, mask = noise_image(200, 120), box_mask(200, 120, (120, 40, 140, 60))
    with DenoiserCalls() as calls:
        p, result = img2img([source], mask=mask, width=64, height=64, inpaint_full_res=True, inpaint_full_res_padding=8,
                            inpainting_fill=1)
    assert tuple(calls.calls[0].x.shape[-2:]) == (8, 8)  # the 64x64 render, not the 200x120 picture
    assert result.images[0].size == (200, 120)
    x, y, w, h = p.paste_to
    assert w == h and x <= 112 and x + w >= 148  # square around the mask plus padding
    diff = np.abs(pixels(result.images[0]) - pixels(source))
    assert diff[far_from(mask)].max() <= 1 and diff[45:55, 125:135].mean() > 20
    assert "Inpaint area: Only masked" in result.infotexts[0] and "Masked area padding: 8" in result.infotexts[0]


def test_only_masked_with_a_blank_mask_falls_back_to_whole_picture(tiny_model):
    _, result = img2img([noise_image(64, 64)], mask=Image.new("L", (64, 64)), inpaint_full_res=True)
    assert result.images[0].size == (64, 64)
    assert 'Unable to perform "Inpaint Only mask"' in result.comments


def test_masked_content_modes_prepare_the_latents(engine_model):
    source, mask = noise_image(64, 64), box_mask(64, 64, (16, 16, 48, 48))
    latents = {}
    for fill in range(4):
        p, result = img2img([source], mask=mask, inpainting_fill=fill, inpaint_full_res=False, mask_blur=0)
        latents[fill] = (p.init_latent.clone(), p.nmask.clone())
        assert f"Masked content: {processing.INPAINTING_FILL_NAMES[fill]}" in result.infotexts[0]
    original, nmask = latents[1]
    keep = nmask[0] == 0
    assert nmask.sum() == 4 * 4 * 4  # the 32x32 hole is 4x4 latent pixels, on each of the 4 channels
    # modes other than "original" encode the "fill" picture, then change the hole's latents
    assert (latents[3][0][0][~keep] == 0).all()
    assert (latents[3][0][0][keep] == latents[2][0][0][keep]).all() and (latents[3][0][0][keep] == latents[0][0][0][keep]).all()
    assert (latents[2][0][0][~keep] - latents[0][0][0][~keep]).abs().mean() > 0.1
    assert (latents[0][0][0][~keep] - original[0][~keep]).abs().mean() > 0.01  # "fill" repaints the hole first


def test_latent_blending_keeps_the_unmasked_latents_every_step(engine_model):
    """The sampling loop puts the init latent, noised to the next step's level, back under the mask."""
    init = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 4, 8, 8)
    mask[..., :4] = 1  # keep the left half
    p = processing.StableDiffusionProcessingTxt2Img(prompt="x", steps=4, width=64, height=64, sampler_name="Euler")
    p.validate()
    p.prompts, p.negative_prompts, p.seeds = ["x"], [""], [1]
    p.setup_conds()
    from modules import rng

    p.rng = rng.ImageRNG((4, 8, 8), [1])
    seen = []
    run = p.sampling_run(p.c, p.uc, "Euler", "Automatic", 8, 4, init_latent=init, denoise_steps=4, mask=mask, nmask=1 - mask)
    original_on_step = run.on_step
    run.on_step = lambda step, total, latents: (seen.append(latents.clone()), original_on_step(step, total, latents))
    latents, completed = sampling.sample(run, noise)
    reference = sd_samplers.create_scheduler(engine_model.scheduler_config, "Euler", "Automatic")
    reference.set_timesteps(8)
    for step, latent in enumerate(seen[:-1]):
        sigma = reference.sigmas[4 + step + 1]
        assert torch.allclose(latent[..., :4], (init + noise * sigma)[..., :4], atol=1e-5)
    assert completed and torch.equal(latents[..., :4], init[..., :4])
    assert (latents[..., 4:] - init[..., 4:]).abs().mean() > 0.05


# --- 9-channel inpainting checkpoints -------------------------------------------------------------------------

@pytest.fixture()
def inpainting_model(registry, tmp_path_factory):
    """A 9-channel checkpoint outside the models folder (other tests list that folder), loaded like any other."""
    from modules import sd_models
    from modules.families import sd1_layout
    from modules.loading import demo_model
    from modules.shared import opts as options

    arch = dataclasses.replace(sd1_layout.TINY, unet=dataclasses.replace(sd1_layout.TINY.unet, in_channels=9))
    path = tmp_path_factory.mktemp("inpainting") / "tiny-inpainting.safetensors"
    info = sd_models.CheckpointInfo(demo_model.write_checkpoint(str(path), arch))
    saved = dict(options.data)
    model = sd_models.reload_model_weights(info=info)
    yield model
    options.data.clear()
    options.data.update(saved)
    sd_models.reload_model_weights(info=sd_models.get_closet_checkpoint_match("tiny.safetensors"))


def test_inpainting_checkpoint_gets_mask_and_masked_image_channels(inpainting_model):
    assert inpainting_model.unet.config.in_channels == 9 and inpainting_model.family.key == "sd1-inpaint"
    source, mask = noise_image(64, 64), box_mask(64, 64, (0, 0, 32, 64))
    with DenoiserCalls() as calls:
        _, result = img2img([source], mask=mask, inpaint_full_res=False, inpainting_fill=1, mask_blur=0)
    image_cond = calls.calls[0].image_cond
    assert image_cond.shape == (2, 5, 8, 8)  # cond and uncond rows: mask + 4 latent channels
    assert (image_cond[:, 0, :, :4] == 1).all() and (image_cond[:, 0, :, 4:] == 0).all()
    assert result.images[0].size == (64, 64)
    with DenoiserCalls() as calls:
        result = txt2img(steps=2)
    assert (calls.calls[0].image_cond[:, 0] == 1).all()  # txt2img: everything is masked
    assert result.images[0].size == (64, 64)


# --- stochastic freeze ----------------------------------------------------------------------------------------

def test_stochastic_freeze_same_noise_for_every_frame(engine_model):
    frame_a, frame_b = noise_image(64, 64, seed=1), noise_image(64, 64, seed=2)
    p, frozen = img2img([frame_a, frame_a, frame_b], batch_size=3, stochastic_freeze=True, sampler_name="Euler a")
    outputs = [pixels(image) for image in frozen.images]  # no grid: the job saves none
    assert np.abs(outputs[0] - outputs[1]).max() <= 1  # rows of one CPU batch may differ in the last float bits
    assert np.abs(outputs[0] - outputs[2]).mean() > 1
    assert p.all_seeds == [1234] * 3 and "Stochastic freeze: True" in frozen.infotexts[0]
    _, free = img2img([frame_a, frame_a], batch_size=2, sampler_name="Euler a")
    assert (pixels(free.images[0]) != pixels(free.images[1])).any()  # seeds 1234 and 1235


# --- hires fix ------------------------------------------------------------------------------------------------

def test_hires_fix_by_factor(engine_model):
    with DenoiserCalls() as calls:
        result = txt2img(enable_hr=True, hr_scale=2, steps=4, denoising_strength=0.5)
    assert result.images[0].size == (128, 128)
    assert [tuple(c.x.shape[-2:]) for c in calls.calls] == [(8, 8)] * 4 + [(16, 16)] * 4  # hires steps = steps
    text = result.infotexts[0]
    for part in ("Size: 64x64", "Denoising strength: 0.5", "Hires upscale: 2", "Hires upscaler: Latent"):
        assert part in text
    assert "Hires steps" not in text


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                                      "Latent (nearest)", "Latent (nearest-exact)", "Lanczos", "Nearest", "None"])
def test_hires_upscalers(tiny_model, upscaler):
    result = txt2img(enable_hr=True, hr_scale=1.5, hr_upscaler=upscaler, steps=2)
    assert result.images[0].size == (96, 96)
    assert f"Hires upscaler: {upscaler}" in result.infotexts[0]


def test_hires_upscalers_differ(engine_model):
    results = {name: pixels(txt2img(enable_hr=True, hr_upscaler=name, steps=2, seed=7).images[0])
               for name in ("Latent", "Latent (nearest)", "Lanczos")}
    assert (results["Latent"] != results["Latent (nearest)"]).any() and (results["Latent"] != results["Lanczos"]).any()


def test_hires_resize_with_own_steps_sampler_and_prompts(engine_model):
    from modules import infotext_utils

    with DenoiserCalls() as calls:
        result = txt2img(enable_hr=True, hr_resize_x=128, hr_resize_y=96, hr_second_pass_steps=3, hr_sampler_name="DDIM",
                         hr_scheduler="Uniform", hr_prompt="a dog", hr_negative_prompt="blurry", steps=4)
    assert result.images[0].size == (128, 96)  # covers 128x128, then cropped
    assert len(calls.calls) == 4 + 3
    params = infotext_utils.parse_generation_parameters(result.infotexts[0])
    assert params["Hires resize-1"] == "128" and params["Hires resize-2"] == "96"
    assert params["Hires steps"] == "3" and params["Hires sampler"] == "DDIM" and params["Hires schedule type"] == "Uniform"
    assert params["Hires prompt"] == "a dog" and params["Hires negative prompt"] == "blurry"
    assert "Hires upscale" not in params
    first, second = (c.text_cond["crossattn"] if isinstance(c.text_cond, dict) else c.text_cond
                     for c in (calls.calls[0], calls.calls[-1]))
    assert not torch.equal(first, second)  # the second pass uses the hires prompt


def test_hires_prompt_editing_uses_the_hires_timeline(tiny_model):
    from modules.engine import conditioning

    encoder = conditioning.PromptEncoder(tiny_model)
    cat, dog = encoder.encode(["cat"])[0], encoder.encode(["dog"])[0]
    with DenoiserCalls() as calls:
        txt2img(prompt="[cat:dog:1.5]", enable_hr=True, steps=2, hr_second_pass_steps=4)
    which = ["cat" if torch.allclose(c.text_cond[0], cat, atol=1e-4) else "dog" if torch.allclose(c.text_cond[0], dog, atol=1e-4)
             else "?" for c in calls.calls]
    # a fraction above 1 counts into the hires pass: (1.5 - 1) x 4 hires steps = "cat" until hires step 2
    assert which == ["cat", "cat", "cat", "cat", "cat", "dog"]


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_pass_on_its_own_checkpoint(tiny_model, upscaler):
    """hr_checkpoint_name: the second pass runs on that checkpoint (loaded next to the job's; the setting and the
    current model stay), its VAE decodes, the infotext names it and pasting it fills the field again."""
    from modules import infotext_utils, sd_models
    from modules.shared import opts

    other_info = sd_models.get_closet_checkpoint_match("other")
    other = sd_models.load_model(other_info)
    setting = opts.sd_model_checkpoint
    same = txt2img(enable_hr=True, hr_upscaler=upscaler, steps=3, hr_second_pass_steps=2, denoising_strength=0.6)
    with UNetCounts(tiny_model, other) as counts:
        result = txt2img(enable_hr=True, hr_upscaler=upscaler, steps=3, hr_second_pass_steps=2, denoising_strength=0.6,
                         hr_checkpoint_name="other")
    first_pass_decode = ["tiny VAE decode"] if upscaler == "Lanczos" else []  # for the pixel upscaler
    # one UNet call per step (the rows go in one batch); the hires checkpoint's VAE decodes the result
    assert counts.order == ["tiny"] * 3 + first_pass_decode + ["sub_other"] * 2 + ["sub_other VAE decode"]
    assert result.images[0].size == (128, 128) and (pixels(result.images[0]) != pixels(same.images[0])).any()
    assert sd_models.current_model() is tiny_model and opts.sd_model_checkpoint == setting
    params = infotext_utils.parse_generation_parameters(result.infotexts[0])
    assert params["Hires checkpoint"] == other_info.short_title and "Hires checkpoint" not in same.infotexts[0]
    assert params["Model"] == "tiny"  # the job's model, as in A1111
    assert infotext_utils.txt2img_fields_from_infotext(params)["hr_checkpoint_name"] == other_info.title
    assert infotext_utils.txt2img_fields_from_infotext(
        infotext_utils.parse_generation_parameters(same.infotexts[0]))["hr_checkpoint_name"] == "Use same checkpoint"
    with UNetCounts(tiny_model, other) as counts:
        again = txt2img(enable_hr=True, hr_upscaler=upscaler, steps=3, hr_second_pass_steps=2, denoising_strength=0.6,
                        hr_checkpoint_name=tiny_model.sd_checkpoint_info.title)  # the job's own model: no switch
    assert counts.order == ["tiny"] * 3 + first_pass_decode + ["tiny"] * 2 + ["tiny VAE decode"]
    assert "Hires checkpoint" not in again.infotexts[0]
    assert (pixels(again.images[0]) == pixels(same.images[0])).all()


@pytest.mark.parametrize("overrides, message", [
    ({"hr_upscaler": "Best"}, "unknown upscaler 'Best'"),
    ({"hr_scale": 100}, "hires width must be between 64 and 4096"),
    ({"hr_sampler_name": "Nope"}, "Unknown sampler 'Nope'"),
    ({"hr_checkpoint_name": "nope.safetensors"}, "Could not find checkpoint with name nope.safetensors"),
])
def test_bad_hires_input(tiny_model, overrides, message):
    with pytest.raises(UserInputError, match=message):
        txt2img(enable_hr=True, **overrides)


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M", "Heun", "DPM2", "LMS", "DDIM", "PLMS", "UniPC"])
def test_inpaint_known_latents_computed_ahead_equal_the_in_loop_ones(tiny_model, sampler):
    """The blend path is built before the loop (no host sync per step) and equals what add_noise gives inside it."""
    from modules.engine import sampling

    generator = torch.Generator().manual_seed(0)
    init, noise = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 4, 8, 8, generator=generator)
    steps, denoise = 6, 4

    def scheduler_at_start():
        scheduler = sd_samplers.create_scheduler(tiny_model.scheduler_config, sampler, "Automatic")
        scheduler.set_timesteps(steps)
        start = (steps - denoise) * scheduler.order
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        return scheduler, scheduler.timesteps[start:]

    scheduler, timesteps = scheduler_at_start()
    ahead = sampling.known_latents(scheduler, init, noise, timesteps)
    scheduler, timesteps = scheduler_at_start()
    latents = scheduler.add_noise(init, noise, timesteps[:1])
    for i, t in enumerate(timesteps):
        output = torch.randn(latents.shape, generator=generator)
        scheduler.scale_model_input(latents, t)
        latents = scheduler.step(output, t, latents, return_dict=False)[0]
        in_loop = scheduler.add_noise(init, noise, timesteps[i + 1:i + 2]) if i + 1 < len(timesteps) else init
        assert torch.equal(ahead[i], in_loop), i
