"""One login for every route of the server: the web page, ``/sdapi``, extension routes, docs and files.

HTTP Basic, checked by an ASGI middleware in front of the whole app, so no route can be added without it
(A1111 protected only the routes of its API class). Browsers show their own login prompt and then send the
credentials with every request of the page; API clients send them as usual (``webuiapi.set_auth``).
"""
from __future__ import annotations

import base64
import binascii
import json
import secrets

REALM = "Stable Diffusion web UI"


def check_basic_auth(header: bytes | None, credentials: dict[str, str]) -> str | None:
    """The user name when ``header`` (an ``Authorization`` value) carries valid credentials, else None.
    Passwords are compared in constant time, and every account is compared, so timing leaks neither."""
    if not header or not header[:6].lower() == b"basic ":
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    found = None
    for known_user, known_password in credentials.items():
        user_ok = secrets.compare_digest(user.encode("utf8"), known_user.encode("utf8"))
        password_ok = secrets.compare_digest(password.encode("utf8"), known_password.encode("utf8"))
        if user_ok and password_ok:
            found = known_user
    return found


class BasicAuthMiddleware:
    """Answers 401 (with ``WWW-Authenticate: Basic``) to any HTTP or websocket request without valid credentials;
    the user name of an accepted request is in ``scope["state"]["user"]``. ``open_paths`` are exact paths
    answered without a login (only Gradio's start-up trigger, which its launcher calls without credentials)."""

    def __init__(self, app, credentials: dict[str, str], open_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.credentials = dict(credentials)
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.credentials or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization")
        user = check_basic_auth(header, self.credentials)
        if user is not None:
            scope.setdefault("state", {})["user"] = user
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": "Unauthorized", "detail": "Incorrect username or password", "body": "",
                           "errors": "Incorrect username or password"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode())]})
        await send({"type": "http.response.body", "body": body})
