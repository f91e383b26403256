"""txt2img through process_images: samplers, seeds, variations, validation, interrupt, outputs."""
from __future__ import annotations

import datetime
import os
import re

import pytest
import torch
from PIL import Image

from modules import images, infotext_utils, processing, sd_samplers
from modules.errors import UserInputError
from tests.conftest import pixels, txt2img


@pytest.mark.parametrize("sampler", [s.name for s in sd_samplers.samplers])
def test_every_supported_sampler_makes_an_image(engine_model, sampler):
    result = txt2img(sampler_name=sampler, steps=3)
    image = pixels(result.images[0])
    assert image.shape == (64, 64, 3)
    assert image.std() > 1  # not a flat colour
    assert f"Sampler: {sampler}," in result.infotexts[0]


@pytest.mark.parametrize("sampler", sorted(sd_samplers.unsupported_samplers))
def test_unsupported_samplers_are_rejected_with_the_reason(tiny_model, sampler):
    with pytest.raises(UserInputError, match=f"Sampler '{re.escape(sampler)}' is not supported: .+"):
        txt2img(sampler_name=sampler)


def test_schedule_types_change_the_result(engine_model):
    karras = pixels(txt2img(sampler_name="Euler", scheduler="Karras").images[0])
    uniform = pixels(txt2img(sampler_name="Euler", scheduler="Uniform").images[0])
    assert abs(karras - uniform).max() > 0


def test_legacy_combined_name_is_accepted_and_written_split(tiny_model):
    result = txt2img(sampler_name="DPM++ 2M Karras")
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in result.infotexts[0]


@pytest.mark.parametrize("field, value, message", [
    ("width", 100, "width must be a multiple of 8 between 64 and 2048, got 100"),
    ("height", 4096, "height must be a multiple of 8 between 64 and 2048, got 4096"),
    ("steps", 0, "steps must be an integer between 1 and 1000"),
    ("batch_size", 9, "batch_size must be an integer between 1 and 8"),
    ("sampler_name", "k_bogus", "Unknown sampler 'k_bogus'"),
    ("scheduler", "Wobbly", "Unknown schedule type 'Wobbly'"),
])
def test_bad_input_is_rejected_with_a_clear_message(tiny_model, field, value, message):
    with pytest.raises(UserInputError, match=re.escape(message)):
        txt2img(**{field: value})


def test_same_seed_same_pixels_and_other_seed_differs(engine_model):
    first = pixels(txt2img(seed=77).images[0])
    again = pixels(txt2img(seed=77).images[0])
    other = pixels(txt2img(seed=78).images[0])
    assert (first == again).all()
    assert abs(first - other).max() > 0


def test_ancestral_sampler_is_reproducible(engine_model):
    a = pixels(txt2img(seed=5, sampler_name="Euler a").images[0])
    b = pixels(txt2img(seed=5, sampler_name="Euler a").images[0])
    assert (a == b).all()


def test_batch_gives_image_i_seed_plus_i(engine_model):
    result = txt2img(seed=1000, batch_size=2, n_iter=2)
    assert result.all_seeds == [1000, 1001, 1002, 1003]
    assert len(result.images) == 4 and result.index_of_first_image == 0  # no grid: the job saves none
    seeds = [infotext_utils.parse_generation_parameters(t)["Seed"] for t in result.infotexts]
    assert seeds == ["1000", "1001", "1002", "1003"]
    alone = pixels(txt2img(seed=1003).images[0])
    assert abs(alone - pixels(result.images[3])).max() <= 2  # same noise; batching changes only rounding


def test_random_seed_is_fixed_and_recorded(tiny_model):
    result = txt2img(seed=-1)
    assert 0 <= result.seed < 4294967294
    assert f"Seed: {result.seed}," in result.infotexts[0]


def test_variation_strength_0_and_1(engine_model):
    base = pixels(txt2img(seed=10).images[0])
    variation_seed = pixels(txt2img(seed=20).images[0])
    at_zero = txt2img(seed=10, subseed=20, subseed_strength=0.0)
    at_one = txt2img(seed=10, subseed=20, subseed_strength=1.0)
    halfway = txt2img(seed=10, subseed=20, subseed_strength=0.5)
    assert (pixels(at_zero.images[0]) == base).all()
    assert abs(pixels(at_one.images[0]) - variation_seed).max() <= 1
    assert abs(pixels(halfway.images[0]) - base).max() > 0
    assert abs(pixels(halfway.images[0]) - variation_seed).max() > 1  # a blend, not either end
    assert "Variation seed: 20, Variation seed strength: 0.5" in halfway.infotexts[0]
    assert "Variation seed" not in at_zero.infotexts[0]


def test_resize_seed_from_keeps_the_centre_of_the_noise():
    from modules.rng import ImageRNG

    small = ImageRNG((4, 8, 8), [3]).first()
    resized = ImageRNG((4, 16, 16), [3], seed_resize_from_h=64, seed_resize_from_w=64).first()
    assert (resized[0, :, 4:12, 4:12] == small[0]).all()
    cropped = ImageRNG((4, 4, 4), [3], seed_resize_from_h=64, seed_resize_from_w=64).first()
    assert (cropped[0] == small[0, :, 2:6, 2:6]).all()


def act_on_unet_call(monkeypatch, model, call_number: int, action) -> list:
    """Count UNet calls and run ``action`` (interrupt, skip) while call number ``call_number`` starts."""
    calls = []
    original = model.unet.forward

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) == call_number:
            action()
        return original(*args, **kwargs)

    monkeypatch.setattr(model.unet, "forward", counting)
    return calls


def test_interrupt_stops_within_one_step(engine_model, monkeypatch):
    from modules.shared import state

    calls = act_on_unet_call(monkeypatch, engine_model, 3, state.interrupt)
    result = txt2img(steps=50, n_iter=3)
    assert len(calls) == 3  # the step in flight finishes, no further model call, no further batch
    assert len(result.images) == 1


def test_outputs_follow_a1111_layout_with_infotext(tiny_model, data_dir):
    result = txt2img(seed=4242, batch_size=2, do_not_save_samples=False, do_not_save_grid=False)
    day = datetime.date.today().strftime("%Y-%m-%d")
    folder = os.path.join(data_dir, "outputs", "txt2img-images", day)
    saved = [img.already_saved_as for img in result.images[1:]]
    for path, seed, infotext in zip(saved, (4242, 4243), result.infotexts[1:]):
        assert os.path.dirname(path) == folder
        assert re.fullmatch(rf"\d{{5}}-{seed}\.png", os.path.basename(path))
        with Image.open(path) as img:
            assert img.info["parameters"] == infotext
    numbers = [int(os.path.basename(p)[:5]) for p in saved]
    assert numbers[1] == numbers[0] + 1
    grid = result.images[0].already_saved_as
    assert os.path.dirname(grid) == os.path.join(data_dir, "outputs", "txt2img-grids", day)
    assert re.fullmatch(r"grid-\d{4}\.png", os.path.basename(grid))
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")]
    params = open(os.path.join(data_dir, "params.txt"), encoding="utf8").read()
    assert params == result.infotexts[1]


@pytest.mark.parametrize("do_not_save_grid, return_grid, grid_save, returned, saved", [
    (True, True, True, False, False),  # a script that makes its own grid: no grid at all (A1111 v1.10)
    (False, True, False, True, False),
    (False, False, True, False, True),  # saved, not in the answer
    (False, False, False, False, False),
])
def test_a_grid_is_made_saved_and_returned_by_a1111s_rule(tiny_model, data_dir, do_not_save_grid, return_grid,
                                                         grid_save, returned, saved):
    from modules.shared import opts

    grids = lambda: sorted((data_dir / "outputs").rglob("grid-*.png"))  # noqa: E731
    before = grids()
    saved_options = opts.return_grid, opts.grid_save
    opts.set("return_grid", return_grid)
    opts.set("grid_save", grid_save)
    try:
        result = txt2img(prompt="a house", batch_size=3, do_not_save_grid=do_not_save_grid)
    finally:
        opts.set("return_grid", saved_options[0])
        opts.set("grid_save", saved_options[1])
    assert len(result.images) == len(result.infotexts) == 3 + returned
    assert result.index_of_first_image == int(returned)
    assert [image.size for image in result.images] == [(192, 64)] * returned + [(64, 64)] * 3
    assert len(grids()) == len(before) + saved


def test_sequence_numbers_continue_after_existing_files(tmp_path):
    (tmp_path / "00007-1.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    assert images.get_next_sequence_number(str(tmp_path), "") == 8
    (tmp_path / "grid-0003.png").write_bytes(b"")
    assert images.get_next_sequence_number(str(tmp_path), "grid") == 4


def test_processing_objects_copy_safely():
    import copy

    p = processing.StableDiffusionProcessingTxt2Img(prompt="x", extra_generation_params={"a": 1})
    q = copy.copy(p)
    q.prompt = "y"
    assert p.prompt == "x" and q.steps == 50 and q.cfg_scale == 7.0 and q.width == 512


def test_skip_abandons_only_the_current_batch(engine_model, monkeypatch):
    from modules.shared import state

    calls = act_on_unet_call(monkeypatch, engine_model, 2, state.skip)
    result = txt2img(steps=5, n_iter=2)
    assert len(calls) == 2 + 5  # batch 1 stops after the step in flight, batch 2 runs in full
    assert len(result.images) == 2  # both images (no grid: the job saves none)


def test_live_previews_every_n_steps(engine_model):
    from modules.engine import previews
    from modules.shared import opts, state

    opts.set("show_progress_every_n_steps", 2)
    seen = []
    original = engine_model.unet.forward

    def watch(*args, **kwargs):
        seen.append(state.id_live_preview)
        return original(*args, **kwargs)

    engine_model.unet.forward = watch
    try:
        txt2img(steps=6, sampler_name="Euler")
    finally:
        del engine_model.unet.forward
    assert seen == [0, 0, 1, 1, 2, 2] and state.id_live_preview == 3
    image = previews.current_preview(state, engine_model)
    assert image.size == (64, 64) and pixels(image).std() > 0
    # the family's own latent-to-RGB matrix (A1111's "Approx cheap" coefficients differ for SDXL)
    latent = state.current_latent.float()
    rows = {"sd1": (0.298, 0.207, 0.208), "sdxl": (0.3448, 0.4168, 0.4395)}[engine_model.family.base]
    assert engine_model.family.latent.preview_rgb[0] == rows
    red = ((latent[:, 0, 0] * torch.tensor([row[0] for row in engine_model.family.latent.preview_rgb])).sum() + 1) / 2
    assert abs(pixels(image)[0, 0, 0] - round(float(red.clamp(0, 1)) * 255)) <= 1


def test_queue_reports_step_and_eta_while_running(tiny_model):
    from modules import txt2img as txt2img_module
    from modules.runtime import job_queue

    queue = job_queue.JobQueue()
    seen = []
    original = tiny_model.unet.forward
    job_holder = {}

    def watch(*args, **kwargs):
        seen.append(queue.progress(job_holder["job"]))
        return original(*args, **kwargs)

    p = txt2img_module.make_txt2img("a cat", "", "Euler", "Automatic", 8, 7, 64, 64, 5)
    p.do_not_save_samples = p.do_not_save_grid = True
    tiny_model.unet.forward = watch
    try:
        job_holder["job"] = queue.submit(lambda: txt2img_module.run(p))
        assert job_holder["job"].wait(120)
    finally:
        del tiny_model.unet.forward
    assert [s["step"] for s in seen] == list(range(8))
    assert all(s["steps"] == 8 for s in seen[1:]) and seen[-1]["eta"] is not None
    assert 0.8 < seen[-1]["progress"] < 1.0
    assert queue.progress(job_holder["job"])["status"] == job_queue.DONE


def test_clip_skip_changes_the_conditioning_and_is_recorded(tiny_model):
    from modules.shared import opts

    base = txt2img(seed=3)
    opts.set("CLIP_stop_at_last_layers", 2)
    skipped = txt2img(seed=3)
    assert abs(pixels(base.images[0]) - pixels(skipped.images[0])).max() > 0
    assert "Clip skip: 2," in skipped.infotexts[0] and "Clip skip" not in base.infotexts[0]


def test_tiling_wraps_the_image_around_and_is_undone_after_the_job(tiny_model):
    """With Tiling every convolution pads circularly, so the networks are shift-equivariant: a latent rolled by a
    whole number of UNet cells gives the same prediction and picture rolled. The left edge of a tiled image thus
    continues its right edge, as A1111 users expect of seamless textures."""
    import numpy as np
    import torch

    model = tiny_model
    latent = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(3))
    context = torch.randn(1, 77, model.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(4))
    shift = 8  # latent columns: a multiple of every downsampling factor

    def run(x):
        with torch.no_grad():
            eps = model.unet(x, torch.tensor([500]), encoder_hidden_states=context).sample
            return eps, model.vae.decode(x).sample

    with processing.circular_padding((model.unet, model.vae), True):
        eps, picture = run(latent)
        eps_rolled, picture_rolled = run(torch.roll(latent, shift, dims=3))
    assert torch.allclose(torch.roll(eps, shift, dims=3), eps_rolled, atol=1e-4)
    assert torch.allclose(torch.roll(picture, shift * 8, dims=3), picture_rolled, atol=1e-4)
    plain_eps, _ = run(torch.roll(latent, shift, dims=3))
    assert not torch.allclose(torch.roll(eps, shift, dims=3), plain_eps, atol=1e-3)  # zero padding is not
    assert all(layer.padding_mode == "zeros" for layer in model.unet.modules() if isinstance(layer, torch.nn.Conv2d))

    before = txt2img(width=128, height=64, steps=3)
    tiled = txt2img(width=128, height=64, steps=3, tiling=True)
    after = txt2img(width=128, height=64, steps=3)
    assert "Tiling: True" in tiled.infotexts[0] and "Tiling" not in before.infotexts[0]
    assert not np.array_equal(pixels(tiled.images[0]), pixels(before.images[0]))
    assert np.array_equal(pixels(after.images[0]), pixels(before.images[0]))  # restored after the job


def test_images_are_written_on_a_worker_while_the_next_batch_samples(tiny_model, data_dir, monkeypatch):
    """PNG encoding overlaps sampling; the job returns only once every file it names is on disk, each with its own
    sequence number although the previous files were not written yet when the next name was chosen."""
    import threading
    import time

    events = []
    real_save = images.save_image_with_geninfo

    def slow_save(image, geninfo, filename, *args, **kwargs):
        events.append(("write start", threading.current_thread().name, time.monotonic()))
        time.sleep(0.3)
        real_save(image, geninfo, filename, *args, **kwargs)
        events.append(("write end", filename, time.monotonic()))

    monkeypatch.setattr(images, "save_image_with_geninfo", slow_save)
    unet_calls = []
    original = tiny_model.unet.forward
    tiny_model.unet.forward = lambda *a, **k: unet_calls.append(time.monotonic()) or original(*a, **k)
    try:
        result = txt2img(seed=5, n_iter=3, steps=2, do_not_save_samples=False, do_not_save_grid=False)
    finally:
        del tiny_model.unet.forward
    saved = [image.already_saved_as for image in result.images[1:]]
    assert all(os.path.isfile(path) for path in saved + [result.images[0].already_saved_as])
    for path, infotext in zip(saved, result.infotexts[1:]):
        with Image.open(path) as image:
            assert image.info["parameters"] == infotext
    numbers = [int(os.path.basename(path)[:5]) for path in saved]
    assert numbers == [numbers[0], numbers[0] + 1, numbers[0] + 2]
    assert {name for kind, name, _ in events if kind == "write start"} == {"image-writer_0"}
    first_write_end = next(t for kind, _, t in events if kind == "write end")
    assert any(t < first_write_end for t in unet_calls[2:])  # batch 2 sampled while batch 1 was being written


def _write_taesd(path, seed: int = 0):
    """A random TAESD decoder in the original file's layout (nn.Sequential indices, 0 being the clamp)."""
    from diffusers.models.autoencoders.vae import DecoderTiny

    generator = torch.Generator().manual_seed(seed)
    decoder = DecoderTiny(in_channels=4, out_channels=3, num_blocks=(3, 3, 3, 1), block_out_channels=(64,) * 4,
                          upsampling_scaling_factor=2, act_fn="relu", upsample_fn="nearest")
    state = {}
    for key, value in decoder.state_dict().items():
        index, _, rest = key.removeprefix("layers.").partition(".")
        state[f"{int(index) + 1}.{rest}"] = torch.randn(value.shape, generator=generator) * 0.1
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)
    return state


def test_taesd_live_previews_from_the_original_file_and_the_fallback(engine_model, data_dir, caplog):
    from modules.engine import previews
    from modules.loading import model_catalog
    from modules.shared import opts, state

    weights = next(w for w in model_catalog.PREVIEW_DECODERS if w.name == engine_model.family.latent.preview_decoder)
    assert weights.filename == {"sd1": "taesd_decoder.pth", "sdxl": "taesdxl_decoder.pth"}[engine_model.family.base]
    engine_model.extra.pop("taesd", None)
    opts.set("show_progress_type", "TAESD")
    opts.set("show_progress_every_n_steps", 1)
    txt2img(steps=2)
    missing = previews.current_preview(state, engine_model, "TAESD")  # no file: the cheap preview, said once
    assert missing.size == (64, 64) and f"Live preview: {weights.name}: weights {weights.path()} are missing" in caplog.text
    assert (pixels(missing) == pixels(previews.latent_to_image(state.current_latent, engine_model.family.latent))).all()
    written = _write_taesd(weights.path())
    engine_model.extra.pop("taesd", None)
    try:
        image = previews.current_preview(state, engine_model, "TAESD")
        decoder = previews.build_taesd_decoder(written)
        with torch.no_grad():
            expected = ((decoder(state.current_latent[None].float()) + 1) / 2).clamp(0, 1)[0].permute(1, 2, 0) * 255
        assert image.size == (64, 64)
        assert abs(pixels(image) - expected.round().numpy()).max() <= 1
        full = previews.current_preview(state, engine_model, "Full")
        assert full.size == (64, 64) and (pixels(full) != pixels(image)).any()
    finally:
        os.remove(weights.path())
        engine_model.extra.pop("taesd", None)
