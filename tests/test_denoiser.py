"""The denoiser seam: the per-step extension points before and after the UNet call, a replaceable UNet forward,
the model handle a job carries, and conditioning made of more than one tensor."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.conftest import DenoiserCalls, pixels


def _run(configure=None, **overrides):
    """A small txt2img job whose ``p.denoiser_hooks`` ``configure`` may change first."""
    from modules import processing
    from modules.shared import state

    params = dict(prompt="a cat", negative_prompt="", seed=77, steps=4, width=64, height=64, sampler_name="Euler",
                  do_not_save_samples=True, do_not_save_grid=True)
    p = processing.StableDiffusionProcessingTxt2Img(**{**params, **overrides})
    if configure is not None:
        configure(p.denoiser_hooks)
    state.begin("test")
    return processing.process_images(p)


def test_a_replaced_unet_forward_runs_every_model_call_and_gives_the_same_image(tiny_model):
    from modules.engine import denoiser

    plain = _run()
    seen = []

    def forward(unet, call):
        seen.append((call.step, call.total_steps, call.x.shape[0], call.guided, call.rows))
        return denoiser.call_unet(unet, call)

    same = _run(lambda hooks: setattr(hooks, "unet_forward", forward))
    assert np.array_equal(pixels(plain.images[0]), pixels(same.images[0]))
    assert [s[0] for s in seen] == [0, 1, 2, 3] and {s[1] for s in seen} == {4}
    assert all(rows == 2 and guided and layout == [[(0, 1.0)]] for _, _, rows, guided, layout in seen)  # cond, uncond


def test_before_unet_hooks_add_unet_inputs_as_controlnet_will(tiny_model):
    import torch

    config = tiny_model.unet.config
    plain = _run()
    kwargs_seen = []

    def residual(scale):
        """ControlNet's two UNet inputs: a residual per down-block output (zeros here) and one for the mid block."""
        def hook(call):
            kwargs_seen.append(sorted(call.kwargs))
            rows, size, channels = call.x.shape[0], call.x.shape[-1], config.block_out_channels
            down = [(channels[0], size)]
            for level, width in enumerate(channels):
                down += [(width, size)] * config.layers_per_block
                if level < len(channels) - 1:
                    size //= 2
                    down.append((width, size))
            call.kwargs["down_block_additional_residuals"] = [torch.zeros(rows, c, s, s, dtype=call.x.dtype)
                                                              for c, s in down]
            call.kwargs["mid_block_additional_residual"] = torch.full((rows, channels[-1], size, size), scale,
                                                                      dtype=call.x.dtype)
        return hook

    zero = _run(lambda hooks: hooks.before_unet.append(residual(0.0)))
    strong = _run(lambda hooks: hooks.before_unet.append(residual(1.0)))
    assert kwargs_seen[0] == ["encoder_hidden_states"]  # the family's UNet inputs, before the hook adds its own
    assert np.array_equal(pixels(plain.images[0]), pixels(zero.images[0]))
    assert np.abs(pixels(plain.images[0]) - pixels(strong.images[0])).max() > 10


def test_after_unet_hooks_change_the_predictions_sampling_uses(tiny_model):
    import torch

    def zero_forward(unet, call):
        return torch.zeros_like(call.x[:, :4])

    def zero_after(result):
        result.output = torch.zeros_like(result.output)

    plain = _run()
    from_forward = _run(lambda hooks: setattr(hooks, "unet_forward", zero_forward))
    from_after = _run(lambda hooks: hooks.after_unet.append(zero_after))
    assert np.array_equal(pixels(from_forward.images[0]), pixels(from_after.images[0]))
    assert np.abs(pixels(plain.images[0]) - pixels(from_after.images[0])).max() > 10


def test_the_job_carries_its_model(tiny_model):
    from modules import processing
    from modules.shared import state

    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", seed=1, steps=1, width=64, height=64,
                                                    sampler_name="Euler", do_not_save_samples=True,
                                                    do_not_save_grid=True)
    state.begin("test")
    processing.process_images(p)
    assert p.sd_model is tiny_model and p.model is tiny_model
    assert p.latent_format.channels == 4 and p.latent_format.downscale == 8  # read from the model's family
    other = dataclasses.replace(tiny_model)
    p.sd_model = other  # a second pass (a refiner, a hires checkpoint) hands its own model to the run
    assert p.sampling_run(p.c, p.uc, "Euler", "Automatic", 2, 2).model is other


def test_conditioning_of_several_tensors_reaches_the_unet_through_the_family(tiny_model):
    """SDXL's shape of conditioning (a dict with the context and a vector): batched row by row with AND parts and
    the negative prompt, shown to on_cfg_denoiser scripts in A1111's layout, turned into UNet inputs by the
    family; the image is the single-tensor one when the family ignores the vector."""
    import torch

    from modules import sd_samplers
    from modules.engine import conditioning, sampling

    class TwoTensorEncoder(conditioning.PromptEncoder):
        def encode(self, texts, negative=False):
            context = super().encode(texts)
            vector = torch.tensor([[float(len(text.strip())), 1.0, 2.0] for text in texts])
            return conditioning.DictWithShape(crossattn=context, vector=vector)

    vectors = []

    def unet_inputs(model, cond):
        vectors.append(cond["vector"])
        return {"encoder_hidden_states": cond["crossattn"]}

    family = dataclasses.replace(tiny_model.family, text_conditioner=TwoTensorEncoder, unet_inputs=unet_inputs)
    two_tensor_model = dataclasses.replace(tiny_model, family=family)

    def sample(model):
        encoder = model.family.text_conditioner(model)
        cond = conditioning.get_multicond_learned_conditioning(encoder, ["a cat AND a red dog"], 3)
        uncond = conditioning.get_learned_conditioning(encoder, ["ugly"], 3)
        empty = conditioning.split_rows(encoder.encode([""]))[0]
        scheduler = sd_samplers.create_scheduler(model.scheduler_config, "Euler", None)
        run = sampling.SamplingRun(model=model, scheduler=scheduler, cond=cond, uncond=uncond, cfg_scale=7.0,
                                   steps=3, empty_cond=empty)
        noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
        with DenoiserCalls() as calls:
            latents, completed = sampling.sample(run, noise)
        return latents, calls.calls

    expected, _ = sample(tiny_model)
    latents, calls = sample(two_tensor_model)
    assert torch.equal(latents, expected)
    text_cond = calls[0].text_cond
    assert isinstance(text_cond, dict) and text_cond.shape == text_cond["crossattn"].shape  # A1111's DictWithShape
    assert text_cond["crossattn"].shape[0] == 2 and text_cond["vector"].tolist() == [[5.0, 1, 2], [9.0, 1, 2]]
    assert calls[0].text_uncond["vector"].tolist() == [[4.0, 1, 2]]
    assert vectors[0].tolist() == [[5.0, 1, 2], [9.0, 1, 2], [4.0, 1, 2]]  # AND parts, then the negative prompt
    assert len(vectors) == 3


def test_padding_and_rows_of_dict_conditioning():
    import torch

    from modules.engine import conditioning

    context = torch.ones(2, 77, 4)
    cond = conditioning.DictWithShape(crossattn=context, vector=torch.zeros(2, 3))
    padded = conditioning.pad_to_length(cond, 154, conditioning.DictWithShape(crossattn=torch.zeros(77, 4),
                                                                               vector=torch.zeros(3)))
    assert padded.shape == (2, 154, 4) and padded["vector"].shape == (2, 3)
    assert torch.equal(padded["crossattn"][:, 77:], torch.zeros(2, 77, 4))
    rows = conditioning.split_rows(cond)
    assert len(rows) == 2 and rows[0].shape == (77, 4) and rows[0]["vector"].shape == (3,)
    with pytest.raises(KeyError):
        conditioning.DictWithShape(vector=torch.zeros(3)).shape


def test_checking_a_hires_request_needs_no_model(registry, monkeypatch):
    """Validation runs on request threads: it must not reach for the model (which could load a checkpoint)."""
    from modules import processing, sd_models

    def no_model():
        raise AssertionError("validation asked for the model")

    monkeypatch.setattr(sd_models, "get_sd_model", no_model)
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", steps=2, width=64, height=96, sampler_name="Euler",
                                                    enable_hr=True, hr_resize_x=128, hr_resize_y=128)
    p.validate()
    assert (p.hr_upscale_to_x, p.hr_upscale_to_y, p.hr_crop_x, p.hr_crop_y) == (128, 192, 0, 64)


def test_a_vae_that_gives_nans_in_half_precision_decodes_in_float32_and_the_job_says_so(tiny_model, monkeypatch):
    """SDXL's VAE overflows in float16; simulated here: the decode of a half-precision VAE returns NaNs."""
    import torch

    from modules.engine import sampling

    vae = tiny_model.vae
    real_decode = vae.decode

    def decode(latents, return_dict=True):
        if vae.dtype == torch.float16:
            b, _, h, w = latents.shape
            return (torch.full((b, 3, h * 8, w * 8), float("nan"), dtype=torch.float16),)
        return real_decode(latents, return_dict=False)

    monkeypatch.setattr(vae, "decode", decode)
    weights = {k: v.clone() for k, v in vae.state_dict().items()}  # the model is shared: float16 would round them
    vae.to(torch.float16)
    try:
        processed = _run()
        assert sampling.UPCAST_NOTE in str(processed.comments) and vae.dtype == torch.float32
        assert "VAE precision: float32 (float16 gave NaNs)" in processed.infotexts[0]
        assert pixels(processed.images[0]).std() > 1  # the float32 decode gave a real image
        later = _run()  # starts in float32, and still says why it is slower
        assert sampling.UPCAST_NOTE in str(later.comments) and "VAE precision: float32" in later.infotexts[0]
    finally:
        tiny_model.extra.pop(sampling.UPCAST_FLAG, None)
        vae.to(torch.float32)
        vae.load_state_dict(weights)


def test_no_half_vae_keeps_the_vae_in_float32_beside_a_half_precision_model(registry, monkeypatch):
    import torch

    from modules import cmd_args, devices, sd_models, shared

    assert cmd_args.parse(["--no-half-vae"]).no_half_vae and not cmd_args.parse([]).no_half_vae
    info = sd_models.get_closet_checkpoint_match("other")
    cached = sd_models._here().loaded.pop(info.filename, None)
    monkeypatch.setattr(devices, "_dtype", torch.float16)
    try:
        monkeypatch.setattr(shared.cmd_opts, "no_half_vae", False, raising=False)
        assert sd_models.load_model(info).vae.dtype == torch.float16
        sd_models._here().loaded.pop(info.filename)
        monkeypatch.setattr(shared.cmd_opts, "no_half_vae", True)
        model = sd_models.load_model(info)
        assert model.unet.dtype == torch.float16 and model.vae.dtype == torch.float32
    finally:
        sd_models._here().loaded.pop(info.filename, None)
        if cached is not None:
            sd_models._here().loaded[info.filename] = cached


def test_sgm_noise_multiplier_scales_the_txt2img_start_noise_of_k_diffusion_samplers(tiny_model):
    """A1111's sgm_noise_multiplier: noise x sqrt(1 + sigma_max^2) instead of sigma_max (reference-model-families.md
    §4.8); timestep samplers (DDIM, PLMS, UniPC) and img2img are unchanged, and only an applied option is recorded."""
    import torch

    from modules import processing
    from modules.shared import opts, state

    def first_input(**overrides):
        seen = []
        p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", seed=5, steps=4, width=64, height=64,
                                                        do_not_save_samples=True, do_not_save_grid=True,
                                                        **{"sampler_name": "Euler", **overrides})
        p.denoiser_hooks.before_unet.append(lambda call: seen.append(call.x.clone()))
        state.begin("test")
        result = processing.process_images(p)
        return seen[0], result.infotexts[0]

    plain, plain_text = first_input()
    opts.set("sgm_noise_multiplier", True)
    sgm, sgm_text = first_input()
    sigma = float(processing.sd_samplers.create_scheduler(tiny_model.scheduler_config, "Euler", "Automatic").sigmas.max())
    assert torch.allclose(sgm, plain * ((1 + sigma ** 2) ** 0.5 / sigma), atol=1e-5)
    assert "SGM noise multiplier: True" in sgm_text and "SGM noise" not in plain_text
    ddim, ddim_text = first_input(sampler_name="DDIM")
    opts.set("sgm_noise_multiplier", False)
    assert torch.equal(ddim, first_input(sampler_name="DDIM")[0]) and "SGM noise" not in ddim_text


def test_a_job_frees_no_device_memory_caches(tiny_model, monkeypatch):
    """gc.collect + empty_cache cost 0.29 s per job on a GPU and make the next job allocate again: only model unload
    and out-of-memory errors free memory (performance.md §3)."""
    import gc

    from modules import devices, sd_models

    calls = []
    monkeypatch.setattr(devices, "torch_gc", lambda: calls.append("torch_gc"))
    monkeypatch.setattr(devices, "_device", type("FakeCuda", (), {"type": "cuda"})())  # what the old code checked
    monkeypatch.setattr(gc, "collect", lambda *args: calls.append("gc.collect") or 0)
    _run()
    assert calls == []
    monkeypatch.undo()
    monkeypatch.setattr(gc, "collect", lambda *args: calls.append("gc.collect") or 0)
    sd_models.unload_model_weights()
    assert calls[:1] == ["gc.collect"]
    sd_models.reload_model_weights(info=sd_models.get_closet_checkpoint_match("tiny.safetensors"))


def test_vae_tiling_always_and_after_an_out_of_memory_error(tiny_model):
    import pytest
    import torch

    from modules.shared import opts
    from tests.conftest import img2img, noise_image

    decoder_inputs, encoder_inputs = [], []

    def out_of_memory_when_whole(module, args):
        decoder_inputs.append(tuple(args[0].shape[-2:]))
        if args[0].shape[-1] > 4:  # more than one 32-pixel tile: "the GPU is full"
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handles = [tiny_model.vae.encoder.register_forward_pre_hook(
        lambda module, args: encoder_inputs.append(tuple(args[0].shape[-2:])))]
    opts.set("vae_tile_size", 32)
    try:
        opts.set("vae_tiling", "always")
        whole = tiny_model.vae.decoder.register_forward_pre_hook(lambda m, args: decoder_inputs.append(tuple(args[0].shape[-2:])))
        tiled = _run(width=128, height=64)
        whole.remove()
        assert tiled.images[0].size == (128, 64) and len(decoder_inputs) > 1
        assert max(max(size) for size in decoder_inputs) <= 4  # 32-pixel tiles: 4 latent pixels a side
        assert "tiles" not in str(tiled.comments)
        img2img([noise_image(128, 64)], denoising_strength=0.5, steps=2)
        assert len(encoder_inputs) > 1 and max(size[-1] for size in encoder_inputs) <= 32  # encoded in tiles too

        opts.set("vae_tiling", "auto")
        decoder_inputs.clear()
        handles.append(tiny_model.vae.decoder.register_forward_pre_hook(out_of_memory_when_whole))
        rescued = _run(width=128, height=64)
        assert rescued.images[0].size == (128, 64) and decoder_inputs[0] == (8, 16) and len(decoder_inputs) > 2
        assert "VAE decode ran out of memory, so it ran in 32x32 tiles (setting vae_tiling)" in rescued.comments

        opts.set("vae_tiling", "off")
        with pytest.raises(torch.OutOfMemoryError):
            _run(width=128, height=64)
    finally:
        for handle in handles:
            handle.remove()


def test_the_context_is_built_once_per_prompt_schedule_segment(tiny_model):
    """Without cfg_denoiser callbacks the UNet context is reused while the prompt schedule stays in one segment;
    the image equals the one made with a callback present (which rebuilds it every call)."""
    import torch

    from modules import script_callbacks
    from tests.conftest import pixels

    contexts = []

    def record(hooks):
        hooks.before_unet.append(lambda call: contexts.append(call.kwargs["encoder_hidden_states"]))

    cached = _run(record, prompt="a [cat:dog:2]", steps=4)
    assert contexts[0] is contexts[1] is contexts[2]  # one build per segment: "cat" for model calls 0 to 2
    assert not torch.equal(contexts[2], contexts[3])  # then "dog"
    contexts.clear()
    def watcher(params):
        pass

    script_callbacks.on_cfg_denoiser(watcher)
    try:
        rebuilt = _run(record, prompt="a [cat:dog:2]", steps=4)
    finally:
        script_callbacks.remove_callbacks_for_function(watcher)
    assert contexts[0] is not contexts[1] and torch.equal(contexts[0], contexts[1])
    assert (pixels(cached.images[0]) == pixels(rebuilt.images[0])).all()


def test_a_vae_pass_that_runs_out_of_memory_in_tiles_too_runs_on_the_cpu(tiny_model, monkeypatch):
    import torch

    from tests.conftest import pixels

    plain = _run(width=128, height=64)
    moves = []
    real_to = tiny_model.vae.to
    monkeypatch.setattr(tiny_model.vae, "to", lambda *args, **kwargs: moves.append(args) or real_to(*args, **kwargs))

    def out_of_memory_until_moved(module, args):
        if not moves:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    handle = tiny_model.vae.decoder.register_forward_pre_hook(out_of_memory_until_moved)
    try:
        rescued = _run(width=128, height=64)
    finally:
        handle.remove()
    assert "VAE decode ran out of memory, so it ran in 512x512 tiles (setting vae_tiling)" in rescued.comments
    assert "VAE decode ran out of GPU memory in tiles too, so it ran on the CPU (slow)" in rescued.comments
    assert [str(args[0]) for args in moves] == ["cpu", "cpu"]  # to the CPU, then back where it was (the CPU here)
    assert (pixels(rescued.images[0]) == pixels(plain.images[0])).all()
