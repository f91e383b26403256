"""The UNet fast path's bookkeeping, on CPU: a stand-in for the CUDA graph capture replays the captured function on
its static inputs, which is what a CUDA graph does with the kernels it recorded."""
from __future__ import annotations

import threading

import torch

from modules.engine import denoiser, fast_path
from tests.conftest import pixels, txt2img


class StandInCapture:
    """``capture(fn, static_inputs, pool)``: counts captures; a replay calls ``fn`` on the static inputs, optionally
    perturbed to play a graph that does not match eager."""

    def __init__(self, perturb: float = 0.0, fail: Exception | None = None):
        self.captures, self.replays, self.perturb, self.fail = 0, 0, perturb, fail

    def __call__(self, fn, static_inputs, pool):
        if self.fail is not None:
            raise self.fail
        self.captures += 1

        def replay():
            self.replays += 1
            return fn(static_inputs) + self.perturb

        return replay


def _use(monkeypatch, capture):
    """Jobs on the CPU model run their UNet through a GraphRunner with ``capture``; returns the model's cache."""
    from modules import sd_models

    model = sd_models.get_sd_model()
    cache = fast_path.GraphCache()
    monkeypatch.setattr(fast_path, "runner_for",
                        lambda m, mode, eager: fast_path.GraphRunner(cache, eager, capture=capture) if mode != "off" else None)
    return model, cache


def _count_unet_calls(model):
    calls = []
    handle = model.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


def test_first_call_eager_second_captures_then_replays_with_the_eager_pixels(tiny_model, monkeypatch):
    plain = pixels(txt2img(seed=3, steps=5).images[0])
    capture = StandInCapture()
    model, cache = _use(monkeypatch, capture)
    graphed = txt2img(seed=3, steps=5)
    assert capture.captures == 1 and capture.replays == 1 + 3  # the parity check, then steps 3 to 5
    assert (pixels(graphed.images[0]) == plain).all()
    again = txt2img(seed=3, steps=5)  # the next job replays from its first step
    assert capture.captures == 1 and capture.replays == 4 + 5
    assert (pixels(again.images[0]) == plain).all()
    other_size = txt2img(seed=3, steps=3, width=96)
    assert capture.captures == 2 and other_size.images[0].size == (96, 64)


def test_a_patched_unet_is_captured_again_and_in_place_weight_changes_are_replayed(tiny_model, monkeypatch):
    capture = StandInCapture()
    model, cache = _use(monkeypatch, capture)
    txt2img(seed=3, steps=3)
    assert capture.captures == 1
    handle = model.unet.mid_block.register_forward_hook(lambda module, args, output: None)  # a script's patch
    try:
        txt2img(seed=3, steps=3)
    finally:
        handle.remove()
    assert capture.captures == 2  # new fingerprint: eager first, then a new capture
    processors = model.unet.attn_processors
    model.unet.set_attn_processor({name: type(p)() for name, p in processors.items()})
    txt2img(seed=3, steps=3)
    assert capture.captures == 3
    weight = model.unet.conv_in.weight
    before, pointer = weight.detach().clone(), weight.data_ptr()
    plain = pixels(txt2img(seed=3, steps=3).images[0])
    try:
        with torch.no_grad():
            weight.add_(0.05)  # what a LoRA merge does: the same storage, new values
        changed = pixels(txt2img(seed=3, steps=3).images[0])
    finally:
        with torch.no_grad():
            weight.copy_(before)
    assert weight.data_ptr() == pointer and capture.captures == 3  # no recapture
    assert (changed != plain).any()  # the replays read the new weights


def test_a_graph_that_differs_from_eager_or_fails_to_capture_is_dropped_for_eager(tiny_model, monkeypatch, caplog):
    plain = pixels(txt2img(seed=3, steps=4).images[0])
    for capture, message in ((StandInCapture(perturb=1e-3), "did not reproduce the eager UNet bit for bit"),
                             (StandInCapture(fail=RuntimeError("operation not permitted when stream is capturing")),
                              "CUDA graph capture failed (RuntimeError: operation not permitted")):
        model, cache = _use(monkeypatch, capture)
        calls, handle = _count_unet_calls(model)
        try:
            result = txt2img(seed=3, steps=4)
            second = txt2img(seed=3, steps=4)
        finally:
            handle.remove()
        assert (pixels(result.images[0]) == plain).all() and (pixels(second.images[0]) == plain).all()
        assert fast_path.DISABLED in cache.entries.values()
        assert capture.replays <= 1  # only the parity check ever replayed
        assert message in caplog.text and caplog.text.count(message) == 1  # said once


def test_the_fast_path_is_off_on_cpu_by_setting_and_when_a_script_replaces_the_forward(tiny_model, monkeypatch):
    from modules import processing
    from modules.shared import opts

    seen = []
    real = fast_path.runner_for
    monkeypatch.setattr(fast_path, "runner_for", lambda model, mode, eager: seen.append(mode) or real(model, mode, eager))
    txt2img(steps=1)
    assert seen == ["graphs"] and real(tiny_model, "graphs", denoiser.call_unet) is None  # CPU: eager
    opts.set("unet_fast_path", "off")
    txt2img(steps=1)
    assert seen[-1] == "off"
    opts.set("unet_fast_path", "graphs")

    def own_forward(unet, call):
        return denoiser.call_unet(unet, call)

    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", steps=1, width=64, height=64,
                                                    do_not_save_samples=True, do_not_save_grid=True)
    p.denoiser_hooks.unet_forward = own_forward  # a script's own UNet call is left alone
    processing.process_images(p)
    assert len(seen) == 2


def test_signatures_and_fingerprints():
    call = denoiser.UNetCall(torch.zeros(2, 4, 8, 8), torch.tensor(999.0),
                             {"encoder_hidden_states": torch.zeros(2, 77, 32), "added_cond_kwargs": {
                                 "text_embeds": torch.zeros(2, 8), "time_ids": torch.zeros(2, 6)}}, 0, 1, [], True)
    leaves = [path for path, _ in fast_path._leaves({"kwargs": call.kwargs})]
    assert leaves == [".kwargs.added_cond_kwargs.text_embeds", ".kwargs.added_cond_kwargs.time_ids",
                      ".kwargs.encoder_hidden_states"]
    key = fast_path.signature(call, ())
    wider = denoiser.UNetCall(torch.zeros(2, 4, 8, 16), call.timestep, call.kwargs, 0, 1, [], True)
    assert fast_path.signature(wider, ()) != key and fast_path.signature(call, ("other",)) != key
    rebuilt = fast_path._rebuild(call.kwargs, [torch.ones(2, 8), torch.ones(2, 6), torch.ones(2, 77, 32)])
    assert rebuilt["added_cond_kwargs"]["time_ids"].sum() == 12 and rebuilt["encoder_hidden_states"].shape == (2, 77, 32)


def test_running_out_of_memory_while_capturing_goes_to_the_memory_ladder(tiny_model, monkeypatch):
    plain = pixels(txt2img(seed=3, steps=4).images[0])
    capture = StandInCapture(fail=torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    model, cache = _use(monkeypatch, capture)
    result = txt2img(seed=3, steps=4)
    assert "UNet ran out of GPU memory: freed the cached memory and ran the step again" in result.comments
    assert (pixels(result.images[0]) == plain).all() and fast_path.DISABLED not in cache.entries.values()


def test_the_compile_tier_compiles_in_the_background_then_captures_the_compiled_unet(tiny_model, monkeypatch):
    """Opt-in torch.compile (backend "eager" here): the first run at a listed size goes on with graphs of the eager
    UNet while its signature compiles off the sampling thread; the next run captures the compiled UNet."""
    plain = pixels(txt2img(seed=3, steps=3).images[0])
    capture = StandInCapture()
    cache = fast_path.GraphCache()
    monkeypatch.setattr(fast_path, "COMPILE_BACKEND", "eager")
    monkeypatch.setattr(fast_path, "runner_for", lambda model, mode, eager: fast_path.GraphRunner(
        cache, eager, capture=capture, compile_sizes=((8, 8),)))
    compiled = threading.Event()  # the compile ends when the test says: as with a real compile, after the first run
    start_compile = cache.compile_in_background
    monkeypatch.setattr(cache, "compile_in_background",
                        lambda key, run: start_compile(key, lambda: compiled.wait(300) and run()))
    first = txt2img(seed=3, steps=3)
    (key, future), = cache.compiling.items()
    assert capture.captures == 1 and not cache.entries[key][2]  # graphs of the eager UNet while it compiles
    compiled.set()
    assert future.result(timeout=300) is True and cache.compiled_ready(key)
    second = txt2img(seed=3, steps=3)
    assert cache.entries[key][2] is True and capture.captures == 2  # captured again, now with the compiled UNet
    assert cache.compiled_max_diff == 0.0  # the eager backend computes exactly what the UNet does
    assert (pixels(first.images[0]) == plain).all() and (pixels(second.images[0]) == plain).all()
    other_size = txt2img(seed=3, steps=2, width=96)
    assert len(cache.compiling) == 1 and other_size.images[0].size == (96, 64)  # not a listed size: graphs only


def test_compile_sizes_setting():
    from modules.shared import opts

    opts.set("unet_compile_sizes", "512x512, 1024x768, nonsense")
    try:
        assert fast_path.compile_sizes() == ((64, 64), (96, 128))
    finally:
        opts.set("unet_compile_sizes", "512x512, 1024x1024")
