"""Cross-site requests and DNS rebinding: the Host and Origin checks in front of every route, in process and with
a real browser whose page lives on another origin."""
from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.test_browser import _browser, _start

BASE = "/sdapi/v1"


def guarded_client(*flags: str, bind: str = "127.0.0.1", credentials=()):
    """The API app behind the same middleware stack the server builds from ``flags``."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules import cmd_args
    from modules.api.api import Api
    from webui.server import app_middleware, host_policy

    opts = cmd_args.parse(list(flags))
    policy = host_policy(opts, bind)
    app = FastAPI(middleware=app_middleware(opts, list(credentials), policy))
    Api(app)
    hits = []
    app.post("/extension/action")(lambda: hits.append(1) or {"done": True})  # a route an extension adds
    return TestClient(app, base_url="http://127.0.0.1:7860"), hits, policy


@pytest.fixture()
def client(tiny_model):
    test_client, hits, _ = guarded_client()
    with test_client:
        yield test_client, hits


def test_host_and_origin_rules():
    from modules.api.cross_site import HostPolicy, is_loopback, split_host

    assert all(is_loopback(h) for h in ("localhost", "127.0.0.1", "127.8.9.10", "[::1]", "::1", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("attacker.example", "10.0.0.1", "0.0.0.0", "localhost.attacker.example"))
    assert split_host("[::1]:7860") == ("::1", 7860) and split_host("Example.COM") == ("example.com", None)
    assert split_host("a b") is None and split_host("evil.example:99999x") is None and split_host("") is None
    policy = HostPolicy.from_flags("127.0.0.1", None, "studio.lan, [fd00::5]", "https://krita.example", r"https://.*\.tool\.example")
    for host in ("127.0.0.1:7860", "localhost:7860", "[::1]:7860", "localhost", "studio.lan:80", "[fd00::5]:7860"):
        assert policy.host_allowed(host), host
    for host in ("attacker.example:7860", "127.0.0.1.attacker.example", "", None, "localhost:7860@evil", "10.0.0.2:7860"):
        assert not policy.host_allowed(host), host
    assert policy.origin_allowed("http://127.0.0.1:7860", "127.0.0.1:7860")
    assert policy.origin_allowed("http://localhost", "localhost:80")
    assert policy.origin_allowed("https://krita.example", "127.0.0.1:7860")
    assert policy.origin_allowed("https://a.tool.example", "127.0.0.1:7860")
    for origin in ("https://evil.example", "http://127.0.0.1:7861", "null", "file://",
                   "http://localhost:7860", "https://a.tool.example.evil.example"):
        assert not policy.origin_allowed(origin, "127.0.0.1:7860"), origin
    listening = HostPolicy.from_flags("0.0.0.0", None, None, None, None)
    assert listening.host_allowed("anything.example")  # --listen needs a login; hosts are open unless limited
    assert not HostPolicy.from_flags("0.0.0.0", None, "box.lan", None, None).host_allowed("other.lan")
    assert HostPolicy.from_flags("127.0.0.1", None, "*", None, None).host_allowed("anything.example")
    named = HostPolicy.from_flags("127.0.0.1", "mybox", None, None, None)
    assert named.host_allowed("mybox:7860") and not named.host_allowed("yourbox:7860")
    named.add_public_url("https://abc123.gradio.live")
    assert named.host_allowed("abc123.gradio.live") and not named.host_allowed("def456.gradio.live")
    assert named.origin_allowed("https://abc123.gradio.live", "127.0.0.1:7860")


@pytest.mark.parametrize("path", ["interrupt", "skip", "refresh-checkpoints", "refresh-vae", "refresh-loras",
                                  "unload-checkpoint", "reload-checkpoint"])
def test_other_sites_cannot_post_to_bodyless_routes(client, path):
    test_client, _ = client
    refused = test_client.post(f"{BASE}/{path}", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403 and "cross-origin request from 'https://evil.example'" in refused.json()["detail"]
    assert "--cors-allow-origins" in refused.json()["detail"]
    assert test_client.post(f"{BASE}/{path}", headers={"Origin": "http://127.0.0.1:7860"}).status_code == 200
    assert test_client.post(f"{BASE}/{path}").status_code == 200  # no Origin: not a browser


def test_other_sites_cannot_read_or_use_extension_routes(client):
    test_client, hits = client
    evil = {"Origin": "http://localhost:3000"}  # another local app is another origin too
    assert test_client.get(f"{BASE}/options", headers=evil).status_code == 403
    assert test_client.post("/extension/action", headers=evil).status_code == 403 and hits == []
    assert test_client.post("/extension/action", headers={"Origin": "null"}).status_code == 403 and hits == []
    marked = test_client.post("/extension/action", headers={"Sec-Fetch-Site": "cross-site"})
    assert marked.status_code == 403 and "Sec-Fetch-Site: cross-site" in marked.json()["detail"] and hits == []
    assert test_client.get(f"{BASE}/samplers", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # a link
    assert test_client.post("/extension/action", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert test_client.post("/extension/action", headers={"Sec-Fetch-Site": "none"}).status_code == 200
    assert hits == [1, 1]
    with pytest.raises(Exception):
        with test_client.websocket_connect("/extension/socket", headers={"Origin": "https://evil.example"}):
            pass


def test_dns_rebinding_hosts_are_refused(client):
    test_client, hits = client
    refused = test_client.get(f"{BASE}/options", headers={"Host": "attacker.example:7860"})
    assert refused.status_code == 403 and "'attacker.example:7860' is not served here" in refused.json()["detail"]
    assert "--allowed-hosts" in refused.json()["detail"]
    same_origin = {"Host": "attacker.example:7860", "Origin": "http://attacker.example:7860"}
    assert test_client.post("/extension/action", headers=same_origin).status_code == 403 and hits == []
    for host in ("localhost:7860", "127.0.0.1:7860", "[::1]:7860"):
        assert test_client.get(f"{BASE}/samplers", headers={"Host": host}).status_code == 200


def test_flags_open_what_they_name(tiny_model):
    test_client, hits, _ = guarded_client("--allowed-hosts", "studio.lan", "--cors-allow-origins", "https://krita.example")
    with test_client:
        assert test_client.get(f"{BASE}/samplers", headers={"Host": "studio.lan:7860"}).status_code == 200
        assert test_client.get(f"{BASE}/samplers", headers={"Host": "other.lan:7860"}).status_code == 403
        preflight = test_client.options("/extension/action", headers={
            "Origin": "https://krita.example", "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "https://krita.example"
        allowed = test_client.post("/extension/action", headers={"Origin": "https://krita.example"})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://krita.example"
        assert test_client.post("/extension/action", headers={"Origin": "https://evil.example"}).status_code == 403
        assert hits == [1]


def test_the_host_check_comes_before_the_login(tiny_model):
    test_client, _, _ = guarded_client("--listen", "--allowed-hosts", "box.lan", bind="0.0.0.0",
                                       credentials=[("alice", "pw")])
    with test_client:
        assert test_client.get(f"{BASE}/samplers", headers={"Host": "box.lan"}).status_code == 401
        assert test_client.get(f"{BASE}/samplers", headers={"Host": "box.lan"}, auth=("alice", "pw")).status_code == 200
        assert test_client.get(f"{BASE}/samplers", headers={"Host": "evil.lan"}, auth=("alice", "pw")).status_code == 403


# --- with a real browser --------------------------------------------------------------------------------------

EVIL_PAGE = """<!doctype html><title>evil</title><script>
const target = "%s";
window.results = {};
async function attack() {
  for (const path of ["/sdapi/v1/unload-checkpoint", "/sdapi/v1/interrupt", "/gradio_api/queue/join"]) {
    try {
      await fetch(target + path, {method: "POST", mode: "no-cors", body: "{}"});
      window.results[path] = "sent";
    } catch (e) { window.results[path] = "network error"; }
  }
  try {
    const r = await fetch(target + "/sdapi/v1/options");
    window.results.read = await r.text();
  } catch (e) { window.results.read = "blocked"; }
  window.done = true;
}
attack();
</script>"""


def _serve_page(html: str) -> tuple[ThreadingHTTPServer, int]:
    class Page(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def _jobs(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}{BASE}/jobs", timeout=30) as response:
        return [job["description"] for job in json.loads(response.read())]


def test_a_browser_page_on_another_site_cannot_drive_or_rebind_the_server(tmp_path):
    from playwright.sync_api import sync_playwright

    proc, port, log = _start(tmp_path, "--demo")
    url = f"http://127.0.0.1:{port}"
    evil, evil_port = _serve_page(EVIL_PAGE % url)
    try:
        with sync_playwright() as pw:
            # evil.example and attacker.example resolve to this machine, as after a DNS rebinding
            browser = _browser(pw, "--host-resolver-rules=MAP attacker.example 127.0.0.1, MAP evil.example 127.0.0.1")
            page = browser.new_page()
            page.goto(f"http://evil.example:{evil_port}/")
            page.wait_for_function("window.done === true", timeout=60_000)
            results = page.evaluate("window.results")
            assert results["read"] == "blocked"
            rebound = page.goto(f"http://attacker.example:{port}/")
            assert rebound.status == 403 and "is not served here" in page.content()
            assert page.goto(f"http://attacker.example:{port}{BASE}/options").status == 403
            own = page.goto(f"http://localhost:{port}/")
            assert own.status == 200
            browser.close()
        time.sleep(1)
        assert _jobs(url) == []  # no unload or interrupt job was made for the other site
        log.seek(0)
        assert "unload" not in log.read().lower()
    finally:
        evil.shutdown()
        proc.terminate()
        proc.wait(20)
