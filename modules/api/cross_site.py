"""Refuse what a page on another site could make the user's browser send: DNS rebinding and cross-site requests.

Two ASGI middlewares in front of every route (page, Gradio's queue and upload routes, ``/sdapi``, extension routes):

- **Host check.** A page on ``attacker.example`` that rebinds its name to 127.0.0.1 is same-origin with itself, so the
  browser lets it read and drive the whole server. On a loopback bind only Host headers naming the loopback
  (``localhost``, ``127.x.x.x``, ``[::1]``), the ``--server-name``, the share link's host and ``--allowed-hosts`` are
  answered; anything else gets 403 before any route runs. A server bound to other machines (``--listen``) always
  requires a login, so there the check applies only when ``--allowed-hosts`` is given.
- **Origin check.** Browsers put an ``Origin`` header on every cross-origin ``fetch`` (GET included), on every
  POST and on websocket handshakes. A request whose ``Origin`` is not the server's own (the scheme-less host and port
  it was sent to) and not allowed by ``--cors-allow-origins``/``--cors-allow-origins-regex`` is refused with 403. A
  state-changing request that the browser marks ``Sec-Fetch-Site: cross-site`` or ``same-site`` but sends without
  an ``Origin`` is refused too. Clients that are not browsers (curl, ``webuiapi``, plugins) send no ``Origin``
  and are not affected.
"""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ::1 (``host`` without port or brackets)."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None] | None:
    """``(host, port)`` of a Host header (``name``, ``name:port``, ``[v6]:port``); None when it is malformed."""
    value = value.strip().lower()
    match = re.fullmatch(r"\[([0-9a-f:.]+)\](?::(\d{1,5}))?|([^:\[\]/@\s]+)(?::(\d{1,5}))?", value)
    if not match:
        return None
    host = match.group(1) or match.group(3)
    port = match.group(2) or match.group(4)
    return host, int(port) if port else None


@dataclass
class HostPolicy:
    """Which Host headers and browser origins the server answers; the share link adds its own once it exists."""
    enforce_hosts: bool = True
    allowed_hosts: set[str] = field(default_factory=set)  # lower-case names or addresses without port; "*": any
    allowed_origins: set[str] = field(default_factory=set)  # "scheme://host[:port]" as browsers send them
    allowed_origin_regex: re.Pattern | None = None

    @classmethod
    def from_flags(cls, bind_host: str, server_name: str | None, allowed_hosts: str | None,
                   cors_origins: str | None, cors_origin_regex: str | None) -> "HostPolicy":
        extra = {h.strip().lower().strip("[]") for h in (allowed_hosts or "").split(",") if h.strip()}
        policy = cls(enforce_hosts=is_loopback(bind_host) or bool(extra), allowed_hosts=extra)
        if server_name:
            policy.allowed_hosts.add(server_name.lower().strip("[]"))
        policy.allowed_origins = {o.strip().rstrip("/").lower() for o in (cors_origins or "").split(",") if o.strip()}
        if cors_origin_regex:
            policy.allowed_origin_regex = re.compile(cors_origin_regex)
        return policy

    def add_public_url(self, url: str) -> None:
        """Answer requests that come through ``url`` (the share link): its host, and its origin for the page's POSTs."""
        parts = urlsplit(url)
        if parts.hostname:
            self.allowed_hosts.add(parts.hostname.lower())
            self.allowed_origins.add(f"{parts.scheme}://{parts.netloc}".lower())

    def host_allowed(self, host_header: str | None) -> bool:
        if not self.enforce_hosts or "*" in self.allowed_hosts:
            return True
        parsed = split_host(host_header or "")
        if parsed is None:
            return False
        return is_loopback(parsed[0]) or parsed[0] in self.allowed_hosts

    def origin_allowed(self, origin: str, host_header: str | None) -> bool:
        """Same origin as the request's Host, or allowed by the CORS flags."""
        origin = origin.strip().lower()
        if origin in self.allowed_origins or (self.allowed_origin_regex and self.allowed_origin_regex.fullmatch(origin)):
            return True
        parts = urlsplit(origin)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            return False  # "null" (sandboxed frames, file: pages) and anything odd
        try:
            origin_port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            return False
        target = split_host(host_header or "")
        if target is None:
            return False
        return parts.hostname == target[0].strip("[]") and origin_port == (target[1] or DEFAULT_PORTS[parts.scheme])


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}


async def refuse(scope, send, detail: str) -> None:
    """403 with A1111's error body (a websocket handshake is closed with policy violation instead)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"error": "Forbidden", "detail": detail, "body": "", "errors": detail}).encode()
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _PolicyMiddleware:
    def __init__(self, app, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy


class HostCheckMiddleware(_PolicyMiddleware):
    """403 for a Host header the policy does not answer (DNS rebinding)."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = _headers(scope).get("host")
            if not self.policy.host_allowed(host):
                await refuse(scope, send, f"Host {host!r} is not served here. This server answers its loopback "
                                          f"names; start it with --allowed-hosts NAME to serve another name.")
                return
        await self.app(scope, receive, send)


class CrossSiteMiddleware(_PolicyMiddleware):
    """403 for a request another site's page made the browser send (see the module docstring)."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = _headers(scope)
            origin = headers.get("origin")
            method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
            if origin is not None and not self.policy.origin_allowed(origin, headers.get("host")):
                await refuse(scope, send, f"cross-origin request from {origin!r} refused; a page on another origin "
                                          f"may call this server only when started with --cors-allow-origins")
                return
            if (origin is None and method not in SAFE_METHODS
                    and headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site")):
                await refuse(scope, send, "cross-site request refused (the browser marked it Sec-Fetch-Site: "
                                          f"{headers['sec-fetch-site']})")
                return
        await self.app(scope, receive, send)
