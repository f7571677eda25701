"""What stands in front of the routes: API keys, the request id, the body-size limit, and request metrics.

One pure ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``: it can read a chunked body (which has no
Content-Length to check) up to the limit before the app sees it, and it wraps each response's start to add
``X-Request-ID`` and record the status.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Optional

from llmops.models.serving.logs import access
from llmops.models.serving.metrics import ServerMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_ROUTES = ("/health",)
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces: safe to echo and to log


class InsecureBind(RuntimeError):
    """A non-loopback address without an API key, and ``serve.insecure`` not set."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keys: list[str], insecure: bool) -> None:
    """Refuse to serve a non-loopback address to anyone who can reach it, unless told to."""
    if not keys and not insecure and not is_loopback(host):
        raise InsecureBind(f"refusing to serve on {host} without an API key: set LLMOPS_API_KEY (or "
                           "LLMOPS_API_KEY_FILE), or pass --insecure (serve.insecure=true) to serve it open")


class Keys:
    """The accepted keys; ``admin`` is minted per process when no key is configured, so /admin/* is never open."""

    def __init__(self, keys: list[str]):
        self.keys = [k.encode() for k in keys]
        self.admin = keys[0] if keys else secrets.token_urlsafe(32)

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def accepts(self, presented: Optional[str], admin: bool) -> bool:
        """Constant-time comparison against every key (each compared, whatever matched)."""
        if presented is None:
            return False
        candidates = self.keys + ([self.admin.encode()] if admin else [])
        given = presented.encode()
        return any([hmac.compare_digest(given, key) for key in candidates])


def _bearer(headers: dict[bytes, bytes]) -> Optional[str]:
    value = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class Guard:
    """The middleware: request id, size limit, keys, and per-route metrics, in that order."""

    def __init__(self, app: ASGIApp, *, keys: Keys, max_body_bytes: int, metrics: ServerMetrics):
        self.app, self.keys, self.max_body, self.metrics = app, keys, max_body_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path, started, status = scope["path"], time.perf_counter(), [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            problem = self._refuse(path, headers)
            if problem is None and b"content-length" not in headers and scope["method"] in ("POST", "PUT", "PATCH"):
                receive, problem = await self._buffered(receive)
            if problem is not None:
                await _error(send_with_id, *problem)
                return
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            self.metrics.observe(path, status[0], seconds)
            client = scope.get("client") or ("-", 0)
            access(request_id, scope["method"], path, status[0], seconds, str(client[0]))

    def _refuse(self, path: str, headers: dict[bytes, bytes]) -> Optional[tuple[int, str, str, str]]:
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return (413, f"the request body ({int(length)} bytes) exceeds serve.max_body_bytes ({self.max_body})",
                    "request_too_large", "invalid_request_error")
        admin = path.startswith("/admin/")
        if path in OPEN_ROUTES or not (admin or self.keys.required):
            return None
        if self.keys.accepts(_bearer(headers), admin):
            return None
        what = "an admin key" if admin and not self.keys.required else "an API key"
        return (401, f"{path} needs {what}: send `Authorization: Bearer <key>`", "invalid_api_key",
                "authentication_error")

    async def _buffered(self, receive: Receive) -> tuple[Receive, Optional[tuple[int, str, str, str]]]:
        """A chunked body (no Content-Length to check) read up to the limit and replayed to the app."""
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return receive, None
            body += message.get("body", b"")
            if len(body) > self.max_body:
                return receive, (413, f"the request body exceeds serve.max_body_bytes ({self.max_body} bytes)",
                                 "request_too_large", "invalid_request_error")
            more = message.get("more_body", False)
        replayed = [False]

        async def replay() -> Message:
            if replayed[0]:
                return await receive()
            replayed[0] = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay, None


async def _error(send: Send, status: int, message: str, code: str, kind: str) -> None:
    """An error in OpenAI's shape, sent by the middleware itself."""
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
