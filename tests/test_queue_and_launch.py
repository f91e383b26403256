"""Job queue semantics, flags, launcher checks and first-start model provisioning."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from modules.families import detection, sd1
from modules.loading import model_download
from modules.runtime import job_queue
from tests.conftest import ROOT


def test_jobs_run_one_at_a_time_in_order():
    queue = job_queue.JobQueue()
    order, running = [], []
    gate = threading.Event()

    def work(n):
        running.append(n)
        assert len(running) == 1, "two jobs ran at once"
        if n == 0:
            gate.wait(5)
        order.append(n)
        running.remove(n)
        return n * 10

    jobs = [queue.submit(lambda n=n: work(n), f"job {n}") for n in range(3)]
    assert queue.position(jobs[2]) == 2
    gate.set()
    assert all(job.wait(10) for job in jobs)
    assert order == [0, 1, 2]
    assert [queue.get(job.id).result for job in jobs] == [0, 10, 20]  # results outlive their callers


def test_failed_job_keeps_its_error_and_queue_keeps_working():
    queue = job_queue.JobQueue()
    bad = queue.submit(lambda: 1 / 0)
    good = queue.submit(lambda: "ok")
    assert good.wait(10) and bad.status == job_queue.FAILED and "ZeroDivisionError" in bad.error
    assert good.result == "ok"


def test_queued_job_can_be_cancelled():
    queue = job_queue.JobQueue()
    gate = threading.Event()
    first = queue.submit(lambda: gate.wait(5))
    second = queue.submit(lambda: "never")
    assert queue.cancel(second.id)
    gate.set()
    assert first.wait(10) and second.status == job_queue.CANCELLED and second.result is None


def test_clients_take_turns_and_a_full_queue_refuses_more():
    queue = job_queue.JobQueue(max_pending=5)
    gate, started, order = threading.Event(), threading.Event(), []
    blocker = queue.submit(lambda: started.set() or gate.wait(5), "blocker", client="ui")
    assert started.wait(10)
    jobs = [queue.submit(lambda n=n: order.append(n), n, client="api:a") for n in ("a1", "a2", "a3")]
    jobs += [queue.submit(lambda n=n: order.append(n), n, client="api:b") for n in ("b1", "b2")]
    assert [j.description for j in queue.pending()] == ["a1", "b1", "a2", "b2", "a3"]
    assert queue.position(jobs[2]) == 5  # the blocker, a1, b1, a2, b2 run first
    with pytest.raises(job_queue.QueueFull, match="the queue is full"):
        queue.submit(lambda: None, client="api:c")
    with pytest.raises(job_queue.DuplicateJobId):
        queue.submit(lambda: None, job_id=blocker.id)
    gate.set()
    assert all(job.wait(10) for job in jobs)
    assert order == ["a1", "b1", "a2", "b2", "a3"]  # FIFO per client, turns between clients


def test_unknown_flag_is_a_clear_error():
    result = subprocess.run([sys.executable, "launch.py", "--skip-install", "--no-such-flag"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr


def test_launcher_sees_pinned_requirements_as_satisfied():
    sys.path.insert(0, ROOT)
    import launch

    assert launch.unsatisfied([launch.REQUIREMENTS]) == []
    constraints = open(launch.CONSTRAINTS).read()
    assert "torch==2.13.0" in constraints and "torchvision<0" in constraints


def test_launcher_reports_missing_pins(tmp_path):
    import launch

    req = tmp_path / "r.txt"
    req.write_text("# comment\nnumpy==0.0.1\nno-such-package-xyz==1.0\n")
    assert launch.unsatisfied([str(req)]) == ["numpy==0.0.1", "no-such-package-xyz==1.0"]


def test_offline_first_start_creates_the_demo_model(data_dir, tmp_path, monkeypatch):
    from modules import paths, sd_models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saved = paths.models_path
    paths.models_path = str(tmp_path)
    try:
        path, message = model_download.provide_checkpoint()
        assert os.path.basename(path) == "demo-random-weights.safetensors"
        assert "created the random-weight demo model" in message
        assert detection.detect_family(path) is sd1.SD1
    finally:
        paths.models_path = saved
        sd_models.list_models()


def test_download_offer_includes_sdxl_base(data_dir, tmp_path, monkeypatch):
    """Both official checkpoints are offered; each button asks the hub for its own file, and an unreachable hub
    names the one that failed."""
    import huggingface_hub
    from modules import paths, sd_models
    from webui import ui

    assert [offer.label for offer in model_download.OFFERS] == ["SD 1.5", "SDXL base"]
    asked = []

    def fake_download(repo, filename, local_dir, **kwargs):
        asked.append((repo, filename))
        raise ConnectionError("no route to host")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    saved = paths.models_path
    paths.models_path = str(tmp_path)
    try:
        *_, (dropdown, message) = ui._downloader("SDXL base")()
        assert asked == [("stabilityai/stable-diffusion-xl-base-1.0", "sd_xl_base_1.0.safetensors")]
        assert message.startswith("Could not download SDXL base (ConnectionError: no route to host)")
        assert dropdown["value"].startswith("demo-random-weights")
        model_download.provide_checkpoint(None, model_download.find_offer("SD 1.5"))
        assert asked[-1] == ("stable-diffusion-v1-5/stable-diffusion-v1-5", "v1-5-pruned-emaonly.safetensors")
        with pytest.raises(ValueError, match="no official checkpoint called 'SD 3'"):
            model_download.find_offer("SD 3")
        assert ui._download_elem_id("SDXL base") == "download_sdxlbase"
    finally:
        paths.models_path = saved  # before the rescan, so later tests find the fixture checkpoints again
        sd_models.list_models()


def test_credentials_parsing():
    from modules import cmd_args
    from webui.server import parse_credentials

    opts = cmd_args.parse(["--gradio-auth", "alice:pw1, bob:p:w2"])
    assert parse_credentials(opts) == [("alice", "pw1"), ("bob", "p:w2")]
    with pytest.raises(SystemExit, match="not of the form user:password"):
        parse_credentials(cmd_args.parse(["--gradio-auth", "nopassword"]))
    assert cmd_args.parse(["--share"]).webui_is_non_local and not cmd_args.parse([]).webui_is_non_local
    both = cmd_args.parse(["--gradio-auth", "alice:pw1", "--api-auth", "tool:pw2"])
    assert parse_credentials(both) == [("alice", "pw1"), ("tool", "pw2")]  # one set of accounts for every route


def test_api_is_on_for_loopback_and_opt_in_elsewhere():
    from modules import cmd_args
    from webui.server import api_enabled

    assert api_enabled(cmd_args.parse([])) and not api_enabled(cmd_args.parse(["--listen"]))
    assert api_enabled(cmd_args.parse(["--listen", "--api"])) and api_enabled(cmd_args.parse(["--share", "--nowebui"]))


def test_the_colab_notebook_is_valid_and_runs_the_readmes_commands():
    import json
    import re

    with open(os.path.join(ROOT, "notebooks", "colab.ipynb"), encoding="utf8") as f:
        notebook = json.load(f)
    assert notebook["nbformat"] == 4 and notebook["cells"]
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
    commands = [line.strip()[1:] for cell in notebook["cells"] if cell["cell_type"] == "code"
                for line in "".join(cell["source"]).splitlines() if line.strip().startswith("!")]
    with open(os.path.join(ROOT, "README.md"), encoding="utf8") as f:
        section = f.read().split("## Colab", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    readme = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]
    readme = [c.replace("<this project's git URL>", "{REPO_URL}").replace('"SD 1.5"', '"{MODEL}"') for c in readme]
    readme = [part.strip() for c in readme for part in c.split("&&") if not part.strip().startswith("cd ")]
    assert commands == readme


def test_the_model_download_command_says_why_it_cannot_download(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "modules.loading.model_download", "SD 1.5", "--data-dir",
                             str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Could not download SD 1.5: ConnectionError: HF_HUB_OFFLINE is set" in result.stderr
    wrong = subprocess.run([sys.executable, "-m", "modules.loading.model_download", "SD 9"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "choose from 'SD 1.5', 'SDXL base'" in wrong.stderr
