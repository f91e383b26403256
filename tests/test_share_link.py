"""A --share server, with Gradio's tunnel replaced by a fake public URL (no network here): the tunnel's host is the
only foreign Host answered, a login is required, and Gradio's file routes serve nothing outside outputs and
uploads."""
from __future__ import annotations

import base64
import os
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.test_browser import _free_port

SHARE_URL = "https://abc123.gradio.live"
LOGIN = ("webui", "share-secret")


def fetch(port: int, path: str, host: str, auth: bool = True, data: bytes | None = None,
          headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers={"Host": host, **(headers or {})})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(LOGIN).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture()
def shared_server(tiny_model, data_dir, monkeypatch):
    import gradio.networking

    from modules import cmd_args, scripts, shared
    from webui import server

    calls = []
    monkeypatch.setattr(gradio.networking, "setup_tunnel", lambda **kwargs: calls.append(kwargs) or SHARE_URL)
    scripts.runner_for(False)
    opts = cmd_args.parse(["--data-dir", str(data_dir), "--share", "--api"])
    port = _free_port()
    policy = server.host_policy(opts, "127.0.0.1")
    demo = server.launch_webui(opts, "127.0.0.1", port, [LOGIN], policy)
    try:
        assert calls and calls[0]["local_port"] == port  # the tunnel was asked for, and answered with the fake URL
        yield port, data_dir
    finally:
        demo.close()
        shared.demo = None


def test_share_host_is_the_only_foreign_host_answered(shared_server):
    port, _ = shared_server
    assert fetch(port, "/sdapi/v1/samplers", "abc123.gradio.live")[0] == 200
    assert fetch(port, "/", "abc123.gradio.live")[0] == 200
    assert fetch(port, "/sdapi/v1/samplers", "abc123.gradio.live", auth=False)[0] == 401  # a share link needs the login
    for host in ("def456.gradio.live", "gradio.live", "attacker.example", "abc123.gradio.live.attacker.example"):
        status, body = fetch(port, "/sdapi/v1/samplers", host)
        assert status == 403 and b"is not served here" in body, host
    assert fetch(port, "/sdapi/v1/samplers", f"127.0.0.1:{port}")[0] == 200  # the local machine still is
    share_origin = {"Origin": SHARE_URL, "Content-Type": "application/json"}
    assert fetch(port, "/sdapi/v1/interrupt", "abc123.gradio.live", data=b"{}", headers=share_origin)[0] == 200
    foreign = {"Origin": "https://def456.gradio.live", "Content-Type": "application/json"}
    assert fetch(port, "/sdapi/v1/interrupt", "abc123.gradio.live", data=b"{}", headers=foreign)[0] == 403
    join = b'{"data": [], "fn_index": 0, "session_hash": "abc"}'
    status, body = fetch(port, "/gradio_api/queue/join", "abc123.gradio.live", data=join, headers=foreign)
    assert status == 403 and b"cross-origin request" in body  # Gradio's own queue route is covered too
    assert fetch(port, "/gradio_api/queue/join", "abc123.gradio.live", data=join, headers=share_origin)[0] != 403


def test_file_routes_serve_outputs_and_uploads_only(shared_server):
    port, data_dir = shared_server
    host = "abc123.gradio.live"
    outputs = data_dir / "outputs" / "txt2img-images"
    outputs.mkdir(parents=True, exist_ok=True)
    picture = outputs / "kept.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    secret = data_dir / "config.json"
    secret.write_text('{"secret": true}')
    link = outputs / "sneaky.json"
    if not link.exists():
        os.symlink(secret, link)

    def file(path: str) -> tuple[int, bytes]:
        return fetch(port, "/gradio_api/file=" + urllib.parse.quote(str(path)), host)

    status, body = file(picture)
    assert status == 200 and body.startswith(b"\x89PNG")
    checkpoint = data_dir / "models" / "Stable-diffusion" / "tiny.safetensors"
    for path in (secret, checkpoint, "/etc/passwd", f"{outputs}/../../config.json", os.path.join(os.getcwd(), "launch.py"),
                 link, "launch.py", "~/.bashrc"):
        status, body = file(path)
        assert status in (403, 404) and b"secret" not in body and b"root:" not in body, (path, status, body[:200])
    raw = fetch(port, f"/gradio_api/file={outputs}/%2e%2e/%2e%2e/config.json", host)
    assert raw[0] in (403, 404) and b"secret" not in raw[1]

    boundary = "webuitestboundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"up.txt\"\r\n"
            f"Content-Type: text/plain\r\n\r\nuploaded text\r\n--{boundary}--\r\n").encode()
    status, body = fetch(port, "/gradio_api/upload", host, data=form, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}", "Origin": SHARE_URL})
    assert status == 200, body
    uploaded = __import__("json").loads(body)[0]
    status, body = file(uploaded)
    assert status == 200 and body == b"uploaded text"
    status, _ = fetch(port, "/gradio_api/upload", host, data=form, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}", "Origin": "https://evil.example"})
    assert status == 403  # another site cannot upload through the user's browser either
