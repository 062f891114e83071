"""Pure ASGI middleware in front of the API routes: the bearer token when set, JSON bodies only."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from engage.serving.settings import api_token

__all__ = ["PROTECTED_PATHS", "ApiGuard"]

PROTECTED_PATHS = frozenset({"/score", "/explain"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ApiGuard:
    """ASGI middleware in front of the API routes: JSON bodies only, and the bearer token when set.

    With ``ENGAGE_API_TOKEN`` set, ``/score`` and ``/explain`` need ``Authorization: Bearer <token>``
    (401 otherwise). Health, readiness, metrics and the OpenAPI document stay open for probes.
    A non-JSON content type is a 415 here rather than a parser error deeper in the server.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], token: str | None = None) -> None:
        self.app = app
        self.token = (token if token is not None else api_token()).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "http" and scope.get("path") in PROTECTED_PATHS:
            headers = dict(scope.get("headers") or [])
            if self.token:
                scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
                if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
                    await _reply(send, HTTPStatus.UNAUTHORIZED, "missing or invalid bearer token", auth=True)
                    return
            media = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
            if media not in (b"application/json", b""):
                await _reply(send, HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json")
                return
        await self.app(scope, receive, send)


async def _reply(send: Send, status: HTTPStatus, error: str, *, auth: bool = False) -> None:
    headers = [(b"content-type", b"application/json")]
    if auth:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": int(status), "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps({"error": error}).encode()})
