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

    def bring(unit, device, following=None):
        if lowvram.placement(device).in_gpu is not unit:
            recorded.append((names.get(id(unit), type(unit).__name__), "to the device"))
        real_bring(unit, device, following)

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


def test_lowvram_copies_the_next_unet_block_while_one_computes(tiny_model, moves, monkeypatch):
    """While each UNet block runs, the next one (after the last up block: the first down block, for the next step)
    is on its way; only those two blocks are there; the images are unchanged."""
    plain = pixels(txt2img(seed=8, steps=2).images[0])
    lowvram.apply(tiny_model, "lowvram")
    unet = tiny_model.unet
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    seen, prefetches = [], []
    real_prefetch = lowvram._prefetch
    monkeypatch.setattr(lowvram, "_prefetch", lambda unit, device: prefetches.append(unit) or real_prefetch(unit, device))

    def record(block, args):
        where = lowvram.placement(tiny_model.device)
        seen.append((where.in_gpu is block, blocks.index(where.prefetched) if where.prefetched is not None else None))

    hooks = [block.register_forward_pre_hook(record) for block in blocks]  # after lowvram's own hooks: they ran
    try:
        result = txt2img(seed=8, steps=2)
    finally:
        for hook in hooks:
            hook.remove()
    n = len(blocks)
    assert seen == [(True, (i + 1) % n) for i in range(n)] * 2  # two steps (cond and uncond in one batch)
    where = lowvram.placement(tiny_model.device)
    assert len(prefetches) == 2 * n
    assert where.in_gpu is tiny_model.vae and where.prefetched is None  # the VAE's turn gave the next block back
    assert (pixels(result.images[0]) == plain).all()
    lowvram.send_everything_to_cpu()
    assert where.in_gpu is None


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


def test_a_switch_to_a_model_of_the_same_layout_copies_it_into_the_gpu_tensors_the_previous_one_leaves(
        tiny_model, monkeypatch):
    """No GPU memory is allocated or freed by the switch: the next model's weights go into the tensors the current one
    used (the current one into its RAM copies), and both still make their own images afterwards."""
    from modules import sd_models
    from tests.conftest import pixels, txt2img

    other_info = sd_models.get_closet_checkpoint_match("other")
    tiny_info = tiny_model.sd_checkpoint_info
    other = sd_models.reload_model_weights(info=other_info)
    other_image = pixels(txt2img().images[0])
    sd_models.reload_model_weights(info=tiny_info)
    tiny_image = pixels(txt2img().images[0])
    assert other_image.tolist() != tiny_image.tolist()

    on_gpu = {id(tiny_model)}  # this machine has no GPU: the current model counts as being on one
    monkeypatch.setattr(sd_models, "_on_gpu", lambda model: id(model) in on_gpu)
    addresses = {slot: tensor.data_ptr() for slot, tensor in tiny_model._tensors().items()}
    assert sd_models.reload_model_weights(info=other_info) is other
    assert {slot: tensor.data_ptr() for slot, tensor in other._tensors().items()} == addresses
    assert all(tiny_model.host_copies[slot].data_ptr() == tensor.data_ptr()
               for slot, tensor in tiny_model._tensors().items())  # the one left lives in its RAM copies
    assert pixels(txt2img().images[0]).tolist() == other_image.tolist()

    on_gpu = {id(other)}
    assert sd_models.reload_model_weights(info=tiny_info) is tiny_model  # and back, into the same tensors
    assert {slot: tensor.data_ptr() for slot, tensor in tiny_model._tensors().items()} == addresses
    assert pixels(txt2img().images[0]).tolist() == tiny_image.tolist()


def test_models_of_different_layouts_are_not_copied_into_each_other(tiny_model, use_checkpoint_dir, sdxl_dir):
    sdxl = use_checkpoint_dir(sdxl_dir, "tiny-sdxl.safetensors")
    models = (sdxl, tiny_model)
    before = [{slot: tensor.clone() for slot, tensor in model._tensors().items()} for model in models]
    assert not sdxl.hand_device_memory_to(tiny_model)
    for model, weights in zip(models, before):
        assert all(torch.equal(tensor, weights[slot]) for slot, tensor in model._tensors().items())


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
