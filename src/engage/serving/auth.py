"""The HTTP edge (pure ASGI, outermost): known routes only, the bearer token, bounded JSON bodies.

:class:`ApiGuard` wraps the whole BentoML app, in front of BentoML's own metrics and access-log
middleware, so what it turns away never reaches them: an unknown path is a 404 here and never
becomes a metric label (BentoML labels its HTTP metrics by the raw path). It also serves the API
docs page itself, one that loads nothing from outside the server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from http import HTTPStatus
from typing import Any

from engage.serving.settings import api_token

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DOCS_PATH", "PROTECTED_PATHS", "UNKNOWN_ROUTE", "ApiGuard"]

logger = logging.getLogger(__name__)

PROTECTED_PATHS = frozenset({"/score", "/explain", "/feedback"})
DOCS_PATH = "/"
UNKNOWN_ROUTE = "<unknown>"
"""How a path outside the declared routes is named in logs and metrics (never the path itself)."""
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
OnReject = Callable[[int, str], None]

_DOCS_SCRIPT = (
    "window.onload = function () { window.ui = SwaggerUIBundle({"
    'url: "./docs.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null, '
    "presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], "
    'plugins: [SwaggerUIBundle.plugins.DownloadUrl], layout: "StandaloneLayout"}); };'
)
DOCS_HTML = f"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>engage scoring API</title>
    <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css">
    <link rel="stylesheet" type="text/css" href="./static_content/index.css">
    <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png" sizes="32x32">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="./static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script>{_DOCS_SCRIPT}</script>
  </body>
</html>
""".encode()
"""BentoML's Swagger page without its tag-manager script and GitHub link, and with Swagger's online
validator badge off (it would send the spec's address to validator.swagger.io)."""
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_DOCS_SCRIPT.encode()).digest()).decode()
DOCS_CSP = (
    f"default-src 'self'; script-src 'self' 'sha256-{_SCRIPT_HASH}'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
"""The browser loads scripts, styles, images and data from this server only."""


class ApiGuard:
    """ASGI middleware around the whole app: the routes it declares, auth, JSON bodies, body size.

    - A path outside ``paths`` is a 404 here (``paths`` None: every path passes).
    - ``GET /`` is :data:`DOCS_HTML`, with a Content-Security-Policy that keeps the browser on this
      server.
    - With a token (``ENGAGE_API_TOKEN`` unless given), ``/score``, ``/explain`` and ``/feedback`` need
      ``Authorization: Bearer <token>`` (401); health, readiness, metrics and the OpenAPI document
      stay open for probes.
    - On those routes a non-JSON content type is a 415, and a body over ``max_body_bytes`` a
      413: from its Content-Length before anything is read, else while it streams in; the body is
      read here, whole, before the app sees it, so no parser ever meets an oversized one.

    Each answer given here is one log line (status, route, reason; never request content) and a
    call of ``on_reject(status, route)``, the route being :data:`UNKNOWN_ROUTE` for unknown paths.
    """

    def __init__(
        self,
        app: App,
        *,
        paths: Collection[str] | None = None,
        token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        on_reject: OnReject | None = None,
    ) -> None:
        self.app = app
        self.paths = frozenset(paths) if paths is not None else None
        self.token = (token if token is not None else api_token()).encode()
        self.max_body_bytes = max_body_bytes
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        if self.paths is not None and path not in self.paths:
            await self._reject(scope, send, HTTPStatus.NOT_FOUND, UNKNOWN_ROUTE, "no such route")
            return
        if path == DOCS_PATH and scope.get("method") in ("GET", "HEAD"):
            await _docs_page(scope, send)
            return
        if path not in PROTECTED_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.token:
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
                reason = "missing or invalid bearer token"
                await self._reject(scope, send, HTTPStatus.UNAUTHORIZED, path, reason)
                return
        media = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if media not in (b"application/json", b""):
            await self._reject(
                scope, send, HTTPStatus.UNSUPPORTED_MEDIA_TYPE, path, "Content-Type must be application/json"
            )
            return
        if _content_length(headers) > self.max_body_bytes:
            await self._reject(scope, send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, path, self._too_large())
            return
        body = await _read_body(receive, self.max_body_bytes)
        if body is None:  # the client went away
            return
        if len(body) > self.max_body_bytes:
            await self._reject(scope, send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, path, self._too_large())
            return
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self) -> str:
        return f"request body over {self.max_body_bytes} bytes (serve.max_request_bytes)"

    async def _reject(self, scope: Scope, send: Send, status: HTTPStatus, route: str, reason: str) -> None:
        logger.info("client error %d on %s [%s]: %s", status, route, _method(scope), reason)
        if self.on_reject is not None:
            self.on_reject(int(status), route)
        headers = [(b"content-type", b"application/json")]
        if status == HTTPStatus.UNAUTHORIZED:
            headers.append((b"www-authenticate", b"Bearer"))
        if status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            headers.append((b"connection", b"close"))  # the unread rest of the body is not drained
        body = json.dumps({"error": reason}).encode()
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": int(status), "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _method(scope: Scope) -> str:
    method = str(scope.get("method", "?"))
    return method if method.isalpha() and len(method) <= 10 else "?"


def _content_length(headers: dict[bytes, bytes]) -> int:
    try:
        return int(headers.get(b"content-length", b"0"))
    except ValueError:
        return 0


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, read until its end or until it passes ``limit`` (None: the client left)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = bytes(message.get("body", b""))
        chunks.append(chunk)
        size += len(chunk)
        if size > limit or not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the buffered body once, then the client's own messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _docs_page(scope: Scope, send: Send) -> None:
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(DOCS_HTML)).encode()),
        (b"content-security-policy", DOCS_CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else DOCS_HTML})
