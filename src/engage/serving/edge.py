"""Pure pieces of the HTTP edge (no bentoml): readiness gate, route listing, short client-error reasons.

:mod:`engage.serving.service` wires them into the BentoML app.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any

from engage.serving.auth import App, Receive, Scope, Send

__all__ = ["READYZ", "ReadyGate", "declared_paths", "short_reason"]

READYZ = "/readyz"


class ReadyGate:
    """ASGI: ``GET /readyz`` answers 503 with the reason while this worker is not ready, else passes on.

    BentoML's own ``/readyz`` asks ``__is_ready__`` too (it agrees) but answers a fixed text.
    """

    def __init__(self, app: App, problem: Callable[[], str | None]) -> None:
        self.app = app
        self.problem = problem

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "http" and scope.get("path") == READYZ:
            reason = self.problem()
            if reason is not None:
                body = f"not ready: {reason}\n".encode()
                headers = [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"%d" % len(body)),
                ]
                await send(
                    {
                        "type": "http.response.start",
                        "status": int(HTTPStatus.SERVICE_UNAVAILABLE),
                        "headers": headers,
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def short_reason(exc: BaseException, shown: int = 3) -> str:
    """A client error in one line: field locations and error types (never the input), or the message."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        fields = ", ".join(f"{_location(e['loc'])} ({e['type']})" for e in errors[:shown])
        more = f" and {len(errors) - shown} more" if len(errors) > shown else ""
        return f"{len(errors)} validation error(s): {fields}{more}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def _location(loc: Sequence[int | str]) -> str:
    """A field location with only schema field names and positions: other parts (a client's
    attribute names, unknown keys) are request content and become ``*``."""
    names = _field_names()
    return ".".join(str(p) if isinstance(p, int) or p in names else "*" for p in loc) or "body"


@functools.cache
def _field_names() -> frozenset[str]:
    from pydantic import BaseModel

    from engage.serving import schemas

    models = [m for m in vars(schemas).values() if isinstance(m, type) and issubclass(m, BaseModel)]
    return frozenset(name for model in models for name in model.model_fields)


def declared_paths(app: Any) -> frozenset[str]:
    """Every path the BentoML app answers: its routes without parameters and its static files.

    A parametrized route or a mount other than static files would make the set unbounded, so they
    are refused: the guard's 404 list would no longer keep ``/metrics`` bounded.
    """
    paths: set[str] = set()
    for route in app.routes:  # Starlette routes: a Route has an endpoint, a Mount an app
        directory = None if hasattr(route, "endpoint") else getattr(route.app, "directory", None)
        if directory is not None:
            files = [f for f in Path(directory).rglob("*") if f.is_file()]
            paths |= {f"{route.path}/{f.relative_to(directory).as_posix()}" for f in files}
        elif hasattr(route, "endpoint") and not route.param_convertors:
            paths.add(route.path)
        else:
            path = getattr(route, "path", route)
            raise ValueError(f"route {path!r}: its paths cannot be listed for the HTTP guard")
    return frozenset(paths)
