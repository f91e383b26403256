"""Faults: running out of memory in sampling and in VAE decode, a full disk while saving, and a process killed
(SIGKILL) in the middle of writing images and settings."""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, pixels
from tests.test_api import BASE, SMALL, decoded, make_client


@pytest.fixture()
def client(tiny_model):
    from modules import scripts

    scripts.runner_for(False)
    _, test_client = make_client()
    with test_client:
        yield test_client


class OutOfMemoryHook:
    """A forward pre-hook that raises torch's out-of-memory error the first ``times`` calls."""

    def __init__(self, times: int) -> None:
        self.left = times
        self.raised = 0

    def __call__(self, module, args):
        import torch

        if self.left > 0:
            self.left -= 1
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by the test)")


@pytest.mark.parametrize("where", ["unet", "vae"])
def test_out_of_memory_ten_times_leaves_the_server_usable_and_the_next_job_correct(client, tiny_model, where):
    """Ten jobs whose UNet or VAE always runs out of memory: each tries what the memory ladder offers (a retry,
    lower memory modes, VAE tiles), then fails with a 503 that says what to change; the next job is correct."""
    from modules import lowvram

    reference = client.post(f"{BASE}/txt2img", json={**SMALL, "batch_size": 2})
    assert reference.status_code == 200
    hook = OutOfMemoryHook(10_000)
    module = tiny_model.unet if where == "unet" else tiny_model.vae.decoder
    handle = module.register_forward_pre_hook(hook)
    try:
        for attempt in range(10):
            failed = client.post(f"{BASE}/txt2img", json={**SMALL, "batch_size": 2})
            assert failed.status_code == 503, (attempt, failed.text)
            detail = failed.json()["detail"]
            assert detail.startswith("Out of memory (CUDA out of memory. Tried to allocate 20.00 GiB")
            assert "try a smaller size or batch size" in detail and "Traceback" not in failed.text
        assert hook.raised >= 20  # every job tried again before failing
        assert lowvram.mode_of(tiny_model) == ("lowvram" if where == "unet" else "normal")
        assert client.get(f"{BASE}/progress").json()["progress"] == 0
        handle.remove()
        again = client.post(f"{BASE}/txt2img", json={**SMALL, "batch_size": 2})
    finally:
        handle.remove()
        lowvram.apply(tiny_model, "normal")
    assert again.status_code == 200, again.text
    for before, after in zip(reference.json()["images"], again.json()["images"]):
        assert np.array_equal(pixels(decoded(before)), pixels(decoded(after)))
    assert json.loads(again.json()["info"])["infotexts"] == json.loads(reference.json()["info"])["infotexts"]


def test_a_full_disk_keeps_the_image_in_the_result_and_says_so(client, data_dir, monkeypatch):
    from modules import images

    written = []
    real_write = images.write_image_with_geninfo

    def disk_full(image, geninfo, fp, extension, *args, **kwargs):
        if isinstance(fp, io.BytesIO):  # encoding the API answer in memory still works
            return real_write(image, geninfo, fp, extension, *args, **kwargs)
        fp.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)  # part of the file got out before the disk filled up
        written.append(os.readlink(f"/proc/self/fd/{fp.fileno()}"))
        raise OSError(errno.ENOSPC, "No space left on device", written[-1])

    monkeypatch.setattr(images, "write_image_with_geninfo", disk_full)
    outputs = data_dir / "outputs" / "txt2img-images"
    existing = set(str(p) for p in outputs.rglob("*")) if outputs.exists() else set()
    answer = client.post(f"{BASE}/txt2img", json={**SMALL, "save_images": True, "batch_size": 2})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 3 and decoded(body["images"][1]).size == (64, 64)  # the grid and both images
    assert "Could not save the image to " in info["comments"] and "No space left on device" in info["comments"]
    assert ".tmp" not in info["comments"] and "-1234.png: No space left" in info["comments"]  # the file it was to be
    assert "It is kept in this result only." in info["comments"] and "Could not save the grid" in info["comments"]
    assert written and not any(os.path.exists(path) for path in written)  # no partial temporary file is left
    new_files = set(str(p) for p in outputs.rglob("*")) - existing if outputs.exists() else set()
    assert not [f for f in new_files if os.path.isfile(f)], new_files


def test_a_full_disk_while_saving_settings_is_a_clear_error_and_the_old_file_stays(client, monkeypatch):
    from modules import shared
    from modules.runtime import atomic_files

    path = shared.config_filename()
    shared.opts.save(path)
    with open(path, encoding="utf8") as f:
        old = f.read()
    real_open = os.fdopen

    class FullFile:
        def __init__(self, handle, *args, **kwargs):
            self.file = real_open(handle, *args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, text):
            self.file.write(text[: len(text) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic_files.os, "fdopen", FullFile)
    response = client.post(f"{BASE}/options", json={"jpeg_quality": 55})
    monkeypatch.undo()
    assert response.status_code == 507 and "No space left on device" in response.json()["detail"]
    with open(path, encoding="utf8") as f:
        assert f.read() == old
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")]
    shared.opts.set("jpeg_quality", 80)


WRITER = textwrap.dedent('''
    """Writes images, config.json, styles.csv and cache.json in a loop until it is killed."""
    import os, sys
    sys.path.insert(0, {root!r})
    from modules import cmd_args, hashes, images, initialize, shared, styles
    from PIL import Image
    import numpy as np

    data = {data!r}
    initialize.initialize(cmd_args.parse(["--data-dir", data]))
    store = styles.StyleDatabase([os.path.join(data, "styles.csv")])
    picture = Image.fromarray((np.random.RandomState(0).rand(384, 384, 3) * 255).astype("uint8"))
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        images.save_image(picture, os.path.join(data, "out"), "", seed=i, prompt="kill me", extension="png",
                          info="kill me\\nSteps: 20, Seed: %d" % i)
        shared.opts.set("jpeg_quality", i % 100)
        shared.opts.data["filler"] = "x" * (i % 50000)
        shared.opts.save(os.path.join(data, "config.json"))
        store.save_style(styles.PromptStyle("style %d" % (i % 40), "prompt " * (i % 300), "neg"))
        hashes._write_cache({{"hashes": {{"file%d" % n: {{"sha256": "%064d" % n}} for n in range(i % 2000)}}}})
''')


def _check_whole(data) -> int:
    """Every file the writer made is complete; returns how many images there are."""
    count = 0
    for folder, _, files in os.walk(data / "out"):
        for name in files:
            if name.endswith(".tmp"):
                continue  # a write that never finished: not under the image's name
            with Image.open(os.path.join(folder, name)) as image:
                image.load()  # a truncated PNG fails here
                assert image.size == (384, 384) and image.info["parameters"].startswith("kill me\nSteps: 20")
            count += 1
    for name in ("config.json", "cache.json"):
        if (data / name).exists():
            with open(data / name, encoding="utf8") as f:
                json.load(f)
    if (data / "styles.csv").exists():
        with open(data / "styles.csv", encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
        assert all(row["negative_prompt"] == "neg" for row in rows)
    return count


def test_sigkill_while_saving_never_leaves_a_truncated_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=ROOT, data=str(data)))
    generator = random.Random(4)
    images = 0
    for kill in range(8):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout.readline().strip() == b"ready", proc.stdout.read()
        time.sleep(generator.uniform(0.05, 0.8))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        images = _check_whole(data)
    assert images > 8  # the writer got through many saves between kills
    leftovers = [name for _, _, files in os.walk(data) for name in files if name.endswith(".tmp")]
    assert len(leftovers) <= 8 * 4  # at most the writes cut short, one per kill and file kind
