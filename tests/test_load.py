"""Load: 50 clients at once (48 API users and 2 browser pages) on the real server. Every job completes, every answer
is its own request's, a client with many jobs takes turns with the others, and memory stays bounded."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

from tests.test_api_server import PROBE
from tests.test_browser import _browser, _set_number, _start

SINGLES = 47
GREEDY_JOBS = 12
USERS = {f"user{i}": f"pw{i}" for i in range(SINGLES + 2)}  # user0 greedy, user1..47 one job each, user48 blocks
BLOCKER = f"user{SINGLES + 1}"
PAGES = 2


def call(url: str, path: str, user: str, body: dict | None = None, timeout: float = 600) -> tuple[int, dict]:
    token = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
    request = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                     method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, {"detail": e.read().decode(errors="replace")}


def job(user: str, n: int) -> dict:
    return {"prompt": f"{user} job {n}", "seed": 10_000 + int(user[4:]) * 100 + n, "steps": 2, "width": 64,
            "height": 64, "sampler_name": "Euler"}


def rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    probe = root / "extensions" / "probe" / "scripts"
    probe.mkdir(parents=True)
    (probe / "probe.py").write_text(PROBE)
    accounts = ",".join(f"{user}:{password}" for user, password in USERS.items())
    proc, port, log = _start(root, "--demo", "--api-auth", accounts, "--max-queued-jobs", "200")
    yield proc, f"http://127.0.0.1:{port}", log
    proc.terminate()
    proc.wait(20)


def test_fifty_clients_all_answered_in_turn_with_their_own_images(server):
    from playwright.sync_api import sync_playwright

    proc, url, _ = server
    for n in range(20):  # warm up: the model is loaded and the first allocations are made
        assert call(url, "/sdapi/v1/txt2img", "user1", {**job("user1", 90 + n)})[0] == 200
    rss_warm = rss(proc.pid)
    answers: dict[tuple[str, int], tuple[int, dict]] = {}

    def send(user: str, n: int, **changes) -> None:
        answers[(user, n)] = call(url, "/sdapi/v1/txt2img", user, {**job(user, n), **changes})

    # a long job holds the queue while everyone else arrives
    blocker = threading.Thread(target=send, args=(BLOCKER, 0), kwargs={"steps": 1000, "width": 256, "height": 256})
    threads = [threading.Thread(target=send, args=("user0", n)) for n in range(GREEDY_JOBS)]
    threads += [threading.Thread(target=send, args=(f"user{i}", 0)) for i in range(1, SINGLES + 1)]
    with sync_playwright() as pw:
        browser = _browser(pw)
        context = browser.new_context(http_credentials={"username": "user1", "password": USERS["user1"]},
                                      viewport={"width": 1400, "height": 1000})
        pages = []
        for i in range(PAGES):
            page = context.new_page()
            page.goto(url)
            page.wait_for_selector("#txt2img_generate")
            page.fill("#txt2img_prompt textarea", f"page {i}")
            for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 2)):
                _set_number(page, elem_id, value)
            page.locator("#txt2img_seed input").fill(str(500 + i))
            pages.append(page)
        blocker.start()
        while call(url, "/sdapi/v1/progress?skip_current_image=true", "user1")[1].get("id_task") is None:
            time.sleep(0.05)
        for thread in threads:
            thread.start()
        for page in pages:
            page.click("#txt2img_generate")
        expected = GREEDY_JOBS + SINGLES + PAGES
        deadline = time.time() + 120
        while call(url, "/sdapi/v1/progress?skip_current_image=true", "user1")[1].get("queued", 0) < expected:
            assert time.time() < deadline, "the requests did not all reach the queue"
            time.sleep(0.1)
        assert call(url, "/sdapi/v1/interrupt", BLOCKER, {})[0] == 200  # the queue now runs in its fair order
        for thread in threads:
            thread.join(600)
        for i, page in enumerate(pages):
            page.wait_for_function(f"document.querySelector('#html_info_txt2img').innerText.includes('Seed: {500 + i}')",
                                   timeout=300_000)
            assert page.locator("#html_info_txt2img").inner_text().startswith(f"page {i}\n")
        browser.close()
    blocker.join(60)

    assert len(answers) == GREEDY_JOBS + SINGLES + 1
    for (user, n), (status, body) in answers.items():
        assert status == 200, (user, n, body)
        if user == BLOCKER:
            continue
        wanted = job(user, n)
        info = json.loads(body["info"])
        assert info["seed"] == wanted["seed"] and info["prompt"] == wanted["prompt"], (user, n, info)
        image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
        assert image.info["parameters"] == info["infotexts"][0] and f"Seed: {wanted['seed']}," in info["infotexts"][0]

    with urllib.request.urlopen(urllib.request.Request(url + "/probe/concurrency", headers={
            "Authorization": "Basic " + base64.b64encode(f"user1:{USERS['user1']}".encode()).decode()})) as response:
        counts = json.loads(response.read())
    assert counts["most_at_once"] == 1 and counts["running"] == 0
    order = counts["prompts"][counts["prompts"].index(f"{BLOCKER} job 0") + 1:]
    assert len(order) == GREEDY_JOBS + SINGLES + PAGES
    first_round = order[:SINGLES + 2]  # every client had a job waiting: one each before anyone's second
    assert sum(p.startswith("user0 ") for p in first_round) == 1, first_round
    assert sum(p.startswith("page ") for p in first_round) == 1, first_round  # the page is one client too
    assert [p for p in order if p.startswith("user0 ")][-1] == order[-1]  # the greedy client's jobs finish last

    for n in range(40):  # and more jobs after the burst, to see where memory settles
        assert call(url, "/sdapi/v1/txt2img", "user2", job("user2", 10 + n))[0] == 200
    growth = rss(proc.pid) - rss_warm
    print(f"server RSS after warm-up {rss_warm / 2**20:.0f} MiB, growth over {len(order) + 41} jobs "
          f"{growth / 2**20:.0f} MiB")
    assert growth < 400 * 2**20
