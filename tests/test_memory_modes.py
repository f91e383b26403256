"""--medvram / --lowvram and the out-of-memory ladder, on CPU: the compute device is the CPU too, so the moves are
recorded (which part goes where, in which order) rather than measured."""
from __future__ import annotations

import pytest
import torch

from modules import cmd_args, lowvram, shared
from tests.conftest import pixels, txt2img


@pytest.fixture()
def moves(tiny_model, monkeypatch):
    """(part name, device) for every move lowvram makes; the model is back in normal mode afterwards."""
    names = {id(module): name for name, module in [("text_encoder", tiny_model.text_encoder), ("vae", tiny_model.vae),
                                                   ("unet", tiny_model.unet)]}
    names.update({id(block): f"down_blocks.{i}" for i, block in enumerate(tiny_model.unet.down_blocks)})
    names.update({id(block): f"up_blocks.{i}" for i, block in enumerate(tiny_model.unet.up_blocks)})
    names[id(tiny_model.unet.mid_block)] = "mid_block"
    recorded = []
    real_bring, real_move = lowvram._bring, lowvram._move

    def bring(unit, device):
        if lowvram.placement(device).in_gpu is not unit:
            recorded.append((names.get(id(unit), type(unit).__name__), "to the device"))
        real_bring(unit, device)

    def move(module, device):
        if str(device) == "cpu":
            recorded.append((names.get(id(module), type(module).__name__), "cpu"))
        real_move(module, device)

    monkeypatch.setattr(lowvram, "_bring", bring)
    monkeypatch.setattr(lowvram, "_move", move)
    yield recorded
    lowvram.apply(tiny_model, "normal")


def _brought(recorded):
    return [name for name, where in recorded if where == "to the device"]


def test_medvram_brings_each_part_to_the_device_when_it_runs(tiny_model, moves):
    plain = pixels(txt2img(seed=8, steps=3).images[0])
    lowvram.setup_for_low_vram(tiny_model, use_medvram=True)
    assert lowvram.is_enabled(tiny_model) and lowvram.mode_of(tiny_model) == "medvram"
    moves.clear()
    result = txt2img(seed=8, steps=3)
    assert _brought(moves) == ["text_encoder", "unet", "vae"]  # each once: one part in VRAM at a time
    assert ("text_encoder", "cpu") in moves and ("unet", "cpu") in moves
    assert (pixels(result.images[0]) == plain).all()


def test_lowvram_moves_the_unet_block_by_block(tiny_model, moves):
    plain = pixels(txt2img(seed=8, steps=2).images[0])
    lowvram.apply(tiny_model, "lowvram")
    moves.clear()
    result = txt2img(seed=8, steps=2)
    unet = tiny_model.unet
    blocks = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))] + ["mid_block"] + \
             [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]
    assert _brought(moves) == ["text_encoder", *blocks, *blocks, "vae"]  # two steps (cond and uncond in one batch)
    assert (pixels(result.images[0]) == plain).all()


def test_the_flags_choose_the_mode_and_medvram_sdxl_spares_sd1(tiny_model, monkeypatch):
    for flags, mode in (([], "normal"), (["--medvram"], "medvram"), (["--lowvram"], "lowvram"),
                        (["--medvram-sdxl"], "normal")):
        monkeypatch.setattr(shared, "cmd_opts", cmd_args.parse(flags))
        assert lowvram.requested_mode(tiny_model) == mode, flags


def test_out_of_memory_retries_the_step_then_steps_down_a_memory_mode(tiny_model, moves, monkeypatch):
    plain = pixels(txt2img(seed=8, steps=3).images[0])
    failures = {"left": 0}
    real_forward = tiny_model.unet.forward

    def forward(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(tiny_model.unet, "forward", forward)
    failures["left"] = 1
    once = txt2img(seed=8, steps=3)
    assert "UNet ran out of GPU memory: freed the cached memory and ran the step again" in once.comments
    assert (pixels(once.images[0]) == plain).all() and lowvram.mode_of(tiny_model) == "normal"
    failures["left"] = 2
    twice = txt2img(seed=8, steps=3)
    assert "the model now runs in medvram mode" in twice.comments and lowvram.mode_of(tiny_model) == "medvram"
    assert (pixels(twice.images[0]) == plain).all()
    failures["left"] = 2
    txt2img(seed=8, steps=3)
    assert lowvram.mode_of(tiny_model) == "lowvram"
    failures["left"] = 2
    with pytest.raises(torch.OutOfMemoryError):  # nothing lower: the job fails with the error
        txt2img(seed=8, steps=3)


def test_no_cuda_graphs_while_weights_move(tiny_model, moves):
    from modules.engine import denoiser, fast_path

    lowvram.apply(tiny_model, "medvram")
    fake_cuda = type("Device", (), {"type": "cuda"})()
    saved = tiny_model.device
    tiny_model.device = fake_cuda
    try:
        assert fast_path.runner_for(tiny_model, "graphs", denoiser.call_unet) is None
    finally:
        tiny_model.device = saved


def test_device_id_selects_a_cuda_device_and_says_why_it_cannot(data_dir):
    from modules import devices

    assert cmd_args.parse(["--device-id", "1"]).device_id == 1 and cmd_args.parse([]).device_id is None
    try:
        with pytest.raises(RuntimeError, match="--device-id 1 selects a CUDA device, but the device is cpu"):
            devices.configure("cpu", "full", device_id=1)
        if not torch.cuda.is_available():
            with pytest.raises(RuntimeError, match="--device cuda was given but torch reports no CUDA device"):
                devices.configure("cuda", "full", device_id=0)
    finally:
        devices.configure("cpu", "full")
    assert str(devices.device) == "cpu"


def test_a_parked_model_keeps_one_reusable_ram_copy_and_is_parked_before_the_next_takes_the_device(tiny_model,
                                                                                                     monkeypatch):
    from modules import sd_models

    weights = {key: value.clone() for key, value in tiny_model.unet.state_dict().items()}
    tiny_model.park(on_device=lambda tensor: True)  # as if every tensor were on the GPU
    first = {slot: host.data_ptr() for slot, host in tiny_model.host_copies.items()}
    assert len(first) == sum(1 for name in tiny_model.family.components
                              for _ in [*getattr(tiny_model, name).named_parameters(),
                                        *getattr(tiny_model, name).named_buffers()])
    assert tiny_model.unet.conv_in.weight.data_ptr() == first["unet.conv_in.weight"]  # the weights live there now
    assert all(torch.equal(value, weights[key]) for key, value in tiny_model.unet.state_dict().items())
    tiny_model.park(on_device=lambda tensor: True)
    assert {slot: host.data_ptr() for slot, host in tiny_model.host_copies.items()} == first  # reused, not allocated

    events = []
    real_park, real_to = sd_models.SDModel.park, sd_models.SDModel.to
    def park(self, *args, **kwargs):
        events.append(("park", self.sd_checkpoint_info.model_name))
        return real_park(self, *args, **kwargs)

    def to(self, device):
        events.append(("to", self.sd_checkpoint_info.model_name, str(device)))
        return real_to(self, device)

    monkeypatch.setattr(sd_models.SDModel, "park", park)
    monkeypatch.setattr(sd_models.SDModel, "to", to)
    other = sd_models.reload_model_weights(info=sd_models.get_closet_checkpoint_match("other"))
    assert events.index(("park", "tiny")) < events.index(("to", "sub_other", "cpu"))  # one model on the device at a time
    sd_models.reload_model_weights(info=sd_models.get_closet_checkpoint_match("tiny.safetensors"))
    assert other is not tiny_model and sd_models.current_model() is tiny_model


def test_without_flags_a_model_too_big_for_the_free_gpu_memory_gets_a_lighter_mode(tiny_model, monkeypatch, caplog):
    from modules import devices

    sizes = {name: sum(t.numel() * t.element_size() for t in getattr(tiny_model, name).parameters())
             for name in tiny_model.family.components}
    total, largest = sum(sizes.values()), max(sizes.values())
    working = lowvram.DEFAULT_WORKING_MEMORY
    assert lowvram.fitting_mode(tiny_model, total + working + 1024) == "normal"
    assert lowvram.fitting_mode(tiny_model, largest + working + 1024) == "medvram"
    assert lowvram.fitting_mode(tiny_model, largest + working - 1) == "lowvram"

    monkeypatch.setattr(devices, "_device", type("FakeCuda", (), {"type": "cuda"})())
    monkeypatch.setattr(lowvram, "available_memory", lambda device: largest + working + 1024)
    assert lowvram.requested_mode(tiny_model) == "medvram" and "running it in medvram mode" in caplog.text
    monkeypatch.setattr(shared, "cmd_opts", cmd_args.parse(["--lowvram"]))
    assert lowvram.requested_mode(tiny_model) == "lowvram"  # a flag wins
