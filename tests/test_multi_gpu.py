"""One job-queue worker per GPU (``--gpus``): jobs at once, each with its own device, state, model and settings.

A CPU has no second GPU, so the workers here are two on the CPU device: what is tested is the wiring (two jobs
really run at the same time, each sees its own worker's ``devices.device``, ``shared.state`` and loaded model, a
job's override_settings stay its own), which is the same for two CUDA devices.
"""
from __future__ import annotations

import os
import shutil
import threading

import pytest

from modules.runtime import job_queue, worker_context
from tests.conftest import pixels, txt2img, write_kohya_lora

TIMEOUT = 60


def two_worker_queue() -> job_queue.JobQueue:
    queue = job_queue.JobQueue()
    queue.set_workers(["cpu", "cpu"])
    return queue


def test_two_workers_run_two_jobs_at_once_each_with_its_own_state_and_device():
    from modules import devices
    from modules.shared import state

    queue = two_worker_queue()
    together = threading.Barrier(2, timeout=TIMEOUT)  # broken (an error) unless both jobs run at the same time
    release, seen = threading.Event(), {}

    def work(name: str, step: int):
        together.wait()
        state.sampling_steps, state.sampling_step, state.job_count = 10, step, 1
        seen[name] = (worker_context.current().index, devices.device, state.target())
        release.wait(TIMEOUT)
        return state.interrupted

    first = queue.submit(lambda: work("first", 3), "first", client="ui")
    second = queue.submit(lambda: work("second", 7), "second", client="ui")
    for _ in range(TIMEOUT * 20):
        if len(seen) == 2:
            break
        release.wait(0.05)
    assert len(seen) == 2, f"the two jobs did not run at once: {seen}"
    assert {seen["first"][0], seen["second"][0]} == {0, 1}
    assert all(str(device) == "cpu" for _, device, _ in seen.values())
    states = {name: job_state for name, (_, _, job_state) in seen.items()}
    assert states["first"] is not states["second"] and state.primary in states.values()
    assert [job.id for job in queue.running()] and len(queue.running()) == 2
    assert queue.progress(first)["step"] == 3 and queue.progress(second)["step"] == 7  # each job's own progress
    assert queue.state_of(first) is states["first"] and queue.state_of(second) is states["second"]

    queue.interrupt(second.id)  # only that job
    release.set()
    assert first.wait(TIMEOUT) and second.wait(TIMEOUT)
    assert (first.result, second.result) == (False, True)
    assert first.final_progress["status"] == second.final_progress["status"] == job_queue.DONE
    with pytest.raises(RuntimeError, match="before its first job"):
        queue.set_workers(["cpu"])


def test_a_worker_with_a_device_torch_does_not_see_fails_its_job_with_a_message():
    queue = job_queue.JobQueue()
    queue.set_workers(["cpu", "cuda:7"])
    gate = threading.Event()
    jobs = [queue.submit(lambda: gate.wait(TIMEOUT) and "ran", f"job {n}", client=str(n)) for n in range(2)]
    for _ in range(TIMEOUT * 20):
        failed = next((job for job in jobs if job.status == job_queue.FAILED), None)
        if failed is not None:
            break
        gate.wait(0.05)
    assert failed is not None, [job.status for job in jobs]
    assert "cuda:7 is not a CUDA device torch sees" in failed.error
    gate.set()
    assert next(job for job in jobs if job is not failed).wait(TIMEOUT)


def test_gpus_flag_names_cuda_devices_and_refuses_what_torch_does_not_see():
    from modules import cmd_args, devices

    assert cmd_args.parse(["--gpus", "0,1"]).gpus == "0,1" and cmd_args.parse([]).gpus is None
    with pytest.raises(RuntimeError, match="torch sees 0 CUDA device"):
        devices.gpu_worker_devices("0,1")  # this machine has no GPU
    with pytest.raises(RuntimeError, match="numbers separated by commas"):
        devices.gpu_worker_devices("first,second")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        devices.gpu_worker_devices("all")


@pytest.fixture()
def lora_file(tiny_model):
    from modules import paths
    from modules.networks import lora

    folder = os.path.join(paths.models_path, "Lora")
    os.makedirs(folder, exist_ok=True)
    write_kohya_lora(os.path.join(folder, "multi-gpu-style.safetensors"), tiny_model, seed=3, scale=2.0)
    yield "<lora:multi-gpu-style:1>"
    shutil.rmtree(folder, ignore_errors=True)
    lora.applied_networks().restore()


def test_two_jobs_at_once_load_their_own_models_and_keep_their_own_settings(tiny_model, lora_file):
    """Each worker loads the checkpoint its job asks for on its own device and merges its job's LoRA into it; a
    job's override_settings are seen by that job only (the other job, running at the same moment, sees the stored
    setting) and are not stored."""
    from modules import processing, script_callbacks, sd_models
    from modules.networks import lora
    from modules.shared import opts

    other = sd_models.get_closet_checkpoint_match("other")
    job_settings = {"sd_model_checkpoint": other.title, "CLIP_stop_at_last_layers": 2}
    styled_prompt = "a cat " + lora_file
    expected_other = txt2img(prompt=styled_prompt, override_settings=job_settings)
    lora.applied_networks().restore()
    expected_plain = txt2img()
    assert pixels(expected_other.images[0]).tolist() != pixels(txt2img(override_settings=job_settings).images[0]).tolist()
    stored_checkpoint = opts.sd_model_checkpoint
    assert opts.CLIP_stop_at_last_layers == 1

    together = threading.Barrier(2, timeout=TIMEOUT)
    met = set()

    def meet_at_first_step(params) -> None:  # both jobs are sampling at the same time before either goes on
        worker = worker_context.slot()
        if worker not in met:
            met.add(worker)
            together.wait()

    def run(prompt="a cat", **overrides):
        params = dict(prompt=prompt, negative_prompt="", seed=1234, steps=4, width=64, height=64,
                      sampler_name="Euler", do_not_save_samples=True, do_not_save_grid=True, **overrides)
        return processing.process_images(processing.StableDiffusionProcessingTxt2Img(**params))

    queue = two_worker_queue()
    script_callbacks.on_cfg_denoiser(meet_at_first_step)
    try:
        with_settings = queue.submit(lambda: run(styled_prompt, override_settings=job_settings), "other", client="a")
        plain = queue.submit(run, "plain", client="b")
        assert with_settings.wait(TIMEOUT * 4) and plain.wait(TIMEOUT * 4)
    finally:
        script_callbacks.remove_callbacks_for_function(meet_at_first_step)
        models = {queue.slot_of(job): sd_models.current_model(queue.slot_of(job)) for job in (with_settings, plain)}
        sd_models._slots.pop(1, None)  # the second worker's model is not kept for later tests
    assert with_settings.status == plain.status == job_queue.DONE, (with_settings.error, plain.error)
    assert met == {0, 1}

    assert pixels(with_settings.result.images[0]).tolist() == pixels(expected_other.images[0]).tolist()
    assert pixels(plain.result.images[0]).tolist() == pixels(expected_plain.images[0]).tolist()
    assert "Clip skip: 2" in with_settings.result.infotexts[0] and "Clip skip" not in plain.result.infotexts[0]
    assert "Lora hashes" in with_settings.result.infotexts[0] and "Lora" not in plain.result.infotexts[0]
    assert "other" in with_settings.result.infotexts[0].split("Model: ")[1].split(",")[0]

    used_other, used_plain = models[queue.slot_of(with_settings)], models[queue.slot_of(plain)]
    assert used_other is not used_plain
    assert used_other.sd_checkpoint_info.filename == other.filename
    assert used_plain.sd_checkpoint_info.filename == tiny_model.sd_checkpoint_info.filename
    assert opts.sd_model_checkpoint == stored_checkpoint and opts.CLIP_stop_at_last_layers == 1


def test_a_jobs_settings_are_read_on_its_thread_only_and_never_saved(tmp_path):
    from modules.options import OptionInfo, Options

    opts = Options({"steps_cap": OptionInfo(20), "name": OptionInfo("a")})
    inside, other_thread = {}, {}
    with opts.overridden({"steps_cap": "30", "unknown": 1}):
        inside.update(attr=opts.steps_cap, item=opts.data["steps_cap"], get=opts.data.get("steps_cap"))
        reader = threading.Thread(target=lambda: other_thread.update(attr=opts.steps_cap, get=opts.data.get("steps_cap")))
        reader.start()
        reader.join()
        opts.set("steps_cap", 40)  # a script changing the job's own setting changes it for the job
        inside["after_set"] = opts.steps_cap
        opts.set("name", "b")  # a setting the job did not override is stored as usual
        opts.save(str(tmp_path / "config.json"))
    assert inside == {"attr": 30, "item": 30, "get": 30, "after_set": 40}
    assert other_thread == {"attr": 20, "get": 20}
    assert opts.steps_cap == 20 and opts.name == "b"
    assert (tmp_path / "config.json").read_text().count('"steps_cap": 20') == 1


def test_memory_modes_keep_one_part_per_gpu(monkeypatch):
    """--medvram on two GPUs: bringing a part to one GPU moves back only the part that was on that GPU."""
    from modules import lowvram

    moves = []
    monkeypatch.setattr(lowvram, "_move", lambda module, device: moves.append((module, str(device))))
    monkeypatch.setattr(lowvram, "_placements", {})
    lowvram._bring("unet A", "cuda:0")
    lowvram._bring("unet B", "cuda:1")
    lowvram._bring("vae A", "cuda:0")
    assert moves == [("unet A", "cuda:0"), ("unet B", "cuda:1"), ("unet A", "cpu"), ("vae A", "cuda:0")]
    assert lowvram.placement("cuda:1").in_gpu == "unet B"
    lowvram.send_everything_to_cpu()
    assert moves[-2:] == [("vae A", "cpu"), ("unet B", "cpu")]


def test_gpus_beside_device_flags_is_refused_at_start():
    from modules import cmd_args
    from webui import server

    for flags in (["--device-id", "1"], ["--device", "cpu"]):
        with pytest.raises(SystemExit, match="leave out --device-id and --device"):
            server.gpu_workers(cmd_args.parse(["--gpus", "0,1", *flags]))
    with pytest.raises(SystemExit, match="torch sees 0 CUDA device"):
        server.gpu_workers(cmd_args.parse(["--gpus", "0,1"]))
