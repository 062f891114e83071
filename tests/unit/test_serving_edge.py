"""The HTTP edge: the guard in front of the whole app, the 4xx log line, and the bind-address check."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engage.serving.auth import DOCS_CSP, DOCS_HTML, UNKNOWN_ROUTE, ApiGuard
from engage.serving.settings import InsecureBind, check_exposure, is_loopback

KNOWN = frozenset({"/", "/score", "/explain", "/readyz", "/metrics", "/docs.json"})


class Inner:
    """An app that records what reached it and echoes the body it read."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append(scope["path"])
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(
    app: Any,
    path: str,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    chunks: list[bytes] | None = None,
) -> tuple[int, dict[str, str], bytes, int]:
    """Drive an ASGI app with one request; return (status, headers, body, chunks the app pulled)."""
    pending = list(chunks if chunks is not None else [b""])
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if not pending:
            return {"type": "http.disconnect"}
        pulled += 1
        return {"type": "http.request", "body": pending.pop(0), "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 3000),
        "client": ("127.0.0.1", 50000),
        "root_path": "",
        "query_string": b"",
        "method": method,
        "path": path,
        "raw_path": path.encode(errors="replace"),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    asyncio.run(app(scope, receive, send))
    if not sent:
        return 0, {}, b"", pulled
    start = sent[0]
    out_headers = {k.decode(): v.decode() for k, v in start.get("headers", [])}
    return start["status"], out_headers, b"".join(m.get("body", b"") for m in sent[1:]), pulled


# --- unknown paths (metrics labels) ---------------------------------------------------------------
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(min_size=0, max_size=60).map(lambda s: "/" + s))
def test_no_path_outside_the_declared_routes_reaches_the_app(path: str) -> None:
    inner, rejected = Inner(), []
    guard = ApiGuard(inner, paths=KNOWN, token="", on_reject=lambda s, r: rejected.append((s, r)))
    status, _, body, _ = call(guard, path, method="GET")
    if path in KNOWN:
        assert status == 200 and (inner.calls == [path] or path == "/")
    else:
        assert status == 404 and inner.calls == [], path
        assert rejected == [(404, UNKNOWN_ROUTE)]
        assert path not in body.decode() or path == "/"


def test_the_real_app_keeps_metrics_bounded_under_many_unknown_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app the BentoML worker serves: 200 distinct unknown paths add no metric label."""
    from prometheus_client import generate_latest  # one process: BentoML's metrics live in REGISTRY

    from engage.serving.service import EngageService

    monkeypatch.delenv("ENGAGE_CONFIG", raising=False)
    app = EngageService.to_asgi()  # type: ignore[attr-defined]
    assert call(app, "/livez", method="GET")[0] == 200  # a declared route passes
    call(app, "/probe-warm-up", method="GET")  # the first rejection creates the rejection counter
    before = generate_latest()
    assert b'endpoint="/livez"' in before, "BentoML's HTTP metrics must be there to test"
    statuses = {call(app, f"/probe-{i}", method="GET")[0] for i in range(200)}
    after = generate_latest()
    assert statuses == {404}
    assert b"/probe-" not in after
    assert len(after) - len(before) < 100, "unknown paths grew /metrics"


def test_declared_paths_are_the_routes_and_static_files(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from engage.serving.service import declared_paths

    (tmp_path / "css").mkdir()
    (tmp_path / "a.js").write_text("1")
    (tmp_path / "css" / "b.css").write_text("2")

    def ok(_: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/score", ok), Route("/", ok), Mount("/static", StaticFiles(directory=tmp_path))]
    )
    assert declared_paths(app) == {"/score", "/", "/static/a.js", "/static/css/b.css"}
    with pytest.raises(ValueError, match="cannot be listed"):
        declared_paths(Starlette(routes=[Route("/users/{id}", ok)]))


# --- request size ---------------------------------------------------------------------------------
def test_a_declared_length_over_the_limit_is_413_before_the_body_is_read() -> None:
    inner = Inner()
    guard = ApiGuard(inner, paths=KNOWN, token="", max_body_bytes=100)
    status, headers, body, pulled = call(
        guard, "/score", headers={"Content-Length": "101"}, chunks=[b"x" * 101]
    )
    assert status == 413 and pulled == 0 and inner.calls == []
    assert "max_request_bytes" in json.loads(body)["error"]
    assert headers["content-type"] == "application/json"


def test_a_streamed_body_over_the_limit_is_413_and_never_reaches_the_app() -> None:
    inner = Inner()
    guard = ApiGuard(inner, paths=KNOWN, token="", max_body_bytes=100)
    chunks = [b"x" * 40] * 10  # no Content-Length: chunked
    status, _, _, pulled = call(guard, "/explain", chunks=chunks)
    assert status == 413 and inner.calls == []
    assert pulled == 3, "reading stops once the limit is passed"


@pytest.mark.parametrize("chunks", [[b'{"users": []}'], [b'{"us', b'ers"', b": []}"], [b""]])
def test_a_body_within_the_limit_reaches_the_app_whole(chunks: list[bytes]) -> None:
    inner = Inner()
    guard = ApiGuard(inner, paths=KNOWN, token="", max_body_bytes=100)
    status, _, _, _ = call(guard, "/score", chunks=chunks)
    assert status == 200 and inner.bodies == [b"".join(chunks)]


def test_a_client_that_leaves_mid_body_gets_no_answer() -> None:
    inner = Inner()
    guard = ApiGuard(inner, paths=KNOWN, token="", max_body_bytes=100)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(guard({"type": "http", "method": "POST", "path": "/score", "headers": []}, receive, send))
    assert sent == [] and inner.calls == []


def test_the_limit_comes_from_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engage.serving.service import EngageService

    config = tmp_path / "config.yaml"
    config.write_text("serve:\n  max_request_bytes: 1234\n")
    monkeypatch.setenv("ENGAGE_CONFIG", str(config))
    app = EngageService.to_asgi()  # type: ignore[attr-defined]
    assert isinstance(app, ApiGuard) and app.max_body_bytes == 1234
    status, _, _, _ = call(app, "/score", headers={"Content-Length": "1235"})
    assert status == 413


# --- auth and media type (unchanged behaviour, now at the outer edge) ----------------------------
def test_token_and_media_type_on_the_api_routes_only() -> None:
    inner = Inner()
    guard = ApiGuard(inner, paths=KNOWN, token="s3cret")
    assert call(guard, "/score")[0] == 401
    assert call(guard, "/score", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert call(guard, "/score", headers={"Authorization": "Bearer s3cret"})[0] == 200
    bad_media = {"Authorization": "Bearer s3cret", "Content-Type": "text/plain"}
    assert call(guard, "/explain", headers=bad_media)[0] == 415
    assert call(guard, "/readyz", method="GET")[0] == 200


# --- the docs page --------------------------------------------------------------------------------
def test_the_docs_page_loads_nothing_from_outside() -> None:
    inner = Inner()
    status, headers, body, _ = call(ApiGuard(inner, paths=KNOWN, token=""), "/", method="GET")
    html = body.decode()
    assert status == 200 and body == DOCS_HTML and inner.calls == []
    assert not re.search(r"https?://", html), "no absolute URL on the page"
    for match in re.finditer(r'(?:src|href)="([^"]+)"', html):
        assert match.group(1).startswith("./static_content/"), match.group(1)
    assert "validatorUrl: null" in html
    assert headers["content-security-policy"] == DOCS_CSP
    assert "default-src 'self'" in DOCS_CSP and "connect-src 'self'" in DOCS_CSP


def test_the_docs_page_script_is_allowed_by_its_hash() -> None:
    import base64
    import hashlib

    (script,) = re.findall(r"<script>(.*?)</script>", DOCS_HTML.decode(), flags=re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in DOCS_CSP


# --- client errors in the log ---------------------------------------------------------------------
class _Url:
    path = "/score"


class _Request:
    url = _Url()
    method = "POST"


@pytest.fixture
def bentoml_error_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    from engage.serving.service import BENTOML_ERROR_LOGGER, OneLineClientErrors

    logger = logging.getLogger(BENTOML_ERROR_LOGGER)
    one_line = OneLineClientErrors()
    logger.addFilter(one_line)
    caplog.set_level(logging.INFO, logger=BENTOML_ERROR_LOGGER)
    try:
        yield caplog
    finally:
        logger.removeFilter(one_line)


@pytest.mark.parametrize(
    ("user", "location"),
    [
        ({"user_id": "u1", "SECRET-KEY": 1}, "users.0.* (extra_forbidden)"),
        ({"user_id": "u1", "attributes": {"SECRET_NAME": ["SECRET-VALUE"]}}, "users.0.attributes.*"),
        ({"user_id": "u1", "events": [{"ts": "SECRET-TIME", "event_type": "x"}]}, "users.0.events.0.ts"),
    ],
)
def test_a_validation_error_is_one_line_without_request_content(
    bentoml_error_log: pytest.LogCaptureFixture, user: dict[str, Any], location: str
) -> None:
    from bentoml._internal.server.http_app import log_exception
    from pydantic import ValidationError

    from engage.serving.schemas import ScoreRequest

    try:
        ScoreRequest.model_validate({"users": [user]})
    except ValidationError:
        log_exception(_Request())  # what BentoML calls for a request it answers 400
    (record,) = bentoml_error_log.records
    text = bentoml_error_log.text
    assert record.levelno == logging.INFO and record.exc_info is None
    assert "Traceback" not in text and "SECRET" not in text
    message = record.getMessage()
    assert "\n" not in message and message.startswith("client error 400 on /score [POST]: ")
    assert location in message


def test_an_engine_client_error_is_one_line(bentoml_error_log: pytest.LogCaptureFixture) -> None:
    from bentoml._internal.server.http_app import log_exception
    from bentoml.exceptions import BentoMLException

    try:
        raise BentoMLException("users: at most 2 users per request, got 3", error_code=413)  # type: ignore[arg-type]
    except BentoMLException:
        log_exception(_Request())
    (record,) = bentoml_error_log.records
    assert record.exc_info is None
    assert record.getMessage() == (
        "client error 413 on /score [POST]: BentoMLException: users: at most 2 users per request, got 3"
    )


def test_a_server_error_keeps_its_traceback(bentoml_error_log: pytest.LogCaptureFixture) -> None:
    from bentoml._internal.server.http_app import log_exception

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log_exception(_Request())
    (record,) = bentoml_error_log.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "Traceback" in bentoml_error_log.text


# --- exposure -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("example.internal", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_public_bind_needs_a_token_or_insecure() -> None:
    with pytest.raises(InsecureBind, match="ENGAGE_API_TOKEN"):
        check_exposure("0.0.0.0", "")
    check_exposure("0.0.0.0", "a-token")
    check_exposure("0.0.0.0", "", insecure=True)
    check_exposure("127.0.0.1", "")


@pytest.mark.parametrize(
    ("args", "token", "starts"),
    [
        (["--host", "0.0.0.0"], "", False),
        (["--host", "::"], "", False),
        (["--host", "0.0.0.0", "--insecure"], "", True),
        (["--host", "0.0.0.0"], "a-token", True),
        ([], "", True),
        (["--set", "serve.host=10.0.0.7"], "", False),
    ],
)
def test_engage_serve_refuses_an_open_public_bind(
    monkeypatch: pytest.MonkeyPatch, args: list[str], token: str, starts: bool
) -> None:
    from typer.testing import CliRunner

    import engage.serving.process
    from engage.cli import app

    started: list[str | None] = []

    def fake_serve(config: Any, host: str | None, port: int | None, **_: Any) -> int:
        started.append(host)
        return 0

    monkeypatch.setattr(engage.serving.process, "serve", fake_serve)
    monkeypatch.setenv("ENGAGE_API_TOKEN", token)
    result = CliRunner().invoke(app, ["serve", *args])
    if starts:
        assert result.exit_code == 0 and len(started) == 1, result.output
    else:
        assert result.exit_code == 2 and started == [], result.output
        assert "ENGAGE_API_TOKEN" in result.output and "--insecure" in result.output
