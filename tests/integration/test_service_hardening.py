"""The HTTP edge of a real ``bentoml serve``: bounded metrics, request size, 4xx log lines, docs page.

One server (auth on, models from the temp MLflow store of ``test_service``'s world) with a small
``serve.max_request_bytes``, so every limit is reached with small requests.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.integration.test_service import (  # noqa: F401 (world: the fixture, used by name)
    TOKEN,
    Server,
    World,
    known_user,
    post,
    ready,
    start_server,
    stop_server,
    world,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def trained(request: pytest.FixtureRequest) -> World:
    """``test_service``'s world (simulated data, a champion in a temp MLflow store, a snapshot)."""
    built: World = request.getfixturevalue("world")
    return built


@pytest.fixture(scope="module")
def edge(trained: World) -> Iterator[Server]:
    """The service with auth on and a 64 KiB body limit, its decisions in a folder of its own."""
    config = yaml.safe_load(trained.config_path.read_text())
    config["serve"]["max_request_bytes"] = MAX_BYTES
    config["serve"]["decision_log_dir"] = str(trained.root / "edge-decisions")
    path = trained.root / "edge-config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {
        **trained.env,
        "ENGAGE_CONFIG": str(path),
        "ENGAGE_MODEL_SOURCE": "mlflow",
        "ENGAGE_API_TOKEN": TOKEN,
    }
    server = start_server("engage.serving.service:EngageService", env, trained.root / "edge.log")
    try:
        yield ready(server)
    finally:
        stop_server(server)


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def metrics_text(server: Server) -> str:
    status, _, body = get(f"{server.url}/metrics")
    assert status == 200
    return body.decode()


def raw_post(server: Server, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST over one connection; a server that answers and closes mid-upload counts as its answer."""
    parsed = urlparse(server.url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


# --- 1. /metrics stays bounded --------------------------------------------------------------------
def test_unknown_paths_add_no_metric_label(edge: Server) -> None:
    assert post(f"{edge.url}/score", {"users": [{"user_id": "warm-up"}]}, TOKEN)[0] == 200
    get(f"{edge.url}/warm-up-unknown")  # the first rejection creates the rejection counter
    before = metrics_text(edge)
    parsed = urlparse(edge.url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    statuses = set()
    for i in range(300):
        conn.request("GET", f"/probe-{i}/x?q={i}")
        response = conn.getresponse()
        response.read()
        statuses.add(response.status)
    after = metrics_text(edge)
    assert statuses == {404}
    assert "/probe-" not in after
    assert len(after) - len(before) < 1_000, f"/metrics grew from {len(before)} to {len(after)} bytes"
    assert re.search(r'engage_http_rejected_total\{route="<unknown>",status="404"\} 30[01]', after), after


def test_declared_routes_still_answer(edge: Server) -> None:
    for path in ("/livez", "/healthz", "/readyz", "/metrics", "/docs.json", "/schema.json", "/"):
        assert get(f"{edge.url}{path}")[0] == 200, path


# --- 3. request size ------------------------------------------------------------------------------
def test_a_body_over_the_limit_is_413_before_parsing(trained: World, edge: Server) -> None:
    """One user, 1,000 inline events: within every count limit, over the byte limit."""
    user = known_user(trained, 0)
    event = {"ts": str(trained.as_of - timedelta(days=1)), "event_type": "page_view", "session_id": "s"}
    body = json.dumps({"users": [{"user_id": user, "events": [event] * 1_000}]}).encode()
    assert len(body) > MAX_BYTES
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    status, answer = raw_post(edge, "/score", body, headers)
    assert status == 413 and "max_request_bytes" in json.loads(answer)["error"]
    small = json.dumps({"users": [{"user_id": user, "events": [event] * 100}]}).encode()
    assert raw_post(edge, "/score", small, headers)[0] == 200


def test_a_streamed_body_over_the_limit_is_413(edge: Server) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"users": ['
        for _ in range(20_000):
            yield b'{"user_id": "streamed-user"},'

    parsed = urlparse(edge.url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.request("POST", "/score", body=chunks(), headers=headers, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413
    assert "max_request_bytes" in json.loads(response.read())["error"]


def test_a_body_within_the_limit_is_scored(trained: World, edge: Server) -> None:
    users = [{"user_id": known_user(trained, 0)}] + [{"user_id": f"u{i}"} for i in range(30)]
    status, body = post(f"{edge.url}/score", {"users": users}, TOKEN)
    assert status == 200 and len(body["users"]) == len(users)


# --- 5. client errors are one log line ------------------------------------------------------------
def test_client_errors_are_one_log_line_each(edge: Server) -> None:
    secret = "SENTINEL-EDGE-5521"
    cases: list[tuple[str, Any, bytes | None, str | None]] = [
        ("/score", None, b"{not json " + secret.encode(), TOKEN),
        ("/score", {"users": [{"user_id": "u1", secret: 1}]}, None, TOKEN),
        ("/score", {"users": [{"user_id": "u1", "attributes": {secret: [secret]}}]}, None, TOKEN),
        ("/score", {"users": [{"user_id": f"u{i}"} for i in range(41)]}, None, TOKEN),
        ("/explain", {"user_id": "u1"}, None, None),
        ("/score", None, b"[" * (MAX_BYTES + 1), TOKEN),
        (f"/{secret}", {"users": []}, None, TOKEN),
    ]
    start = len(edge.log.read_text(errors="replace").splitlines())
    statuses = [post(f"{edge.url}{path}", body, token, raw=raw)[0] for path, body, raw, token in cases]
    assert statuses == [400, 400, 400, 413, 401, 413, 404]
    time.sleep(1.0)
    new = "\n".join(edge.log.read_text(errors="replace").splitlines()[start:])
    assert "Traceback" not in new and secret not in new, new[-3000:]
    errors = re.findall(r"client error (\d{3}) on (\S+) \[POST\]: (.*)", new)
    assert [int(e[0]) for e in errors] == statuses, new[-3000:]
    assert errors[-1][1] == "<unknown>" and errors[3][1] == "/score"


# --- 8. the docs page loads nothing from outside --------------------------------------------------
def test_the_docs_page_loads_only_from_the_server(edge: Server) -> None:
    status, headers, body = get(f"{edge.url}/")
    html = body.decode()
    assert status == 200 and "swagger-ui" in html
    assert not re.search(r"https?://(?!127\.0\.0\.1|localhost)", html), "an outside URL on the docs page"
    assets = re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', html)
    assert assets, "the page must load Swagger UI from the server"
    for asset in assets:
        assert get(f"{edge.url}/{asset.removeprefix('./')}")[0] == 200, asset
    csp = {k.lower(): v for k, v in headers.items()}["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    spec = json.loads(get(f"{edge.url}/docs.json")[2])
    assert {"/score", "/explain"} <= set(spec["paths"])


def test_the_served_log_has_no_traceback(edge: Server) -> None:
    assert "Traceback" not in edge.log.read_text(errors="replace")
