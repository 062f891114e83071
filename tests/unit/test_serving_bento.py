"""The Bento's start-up contract without a server: readiness and its reason, workers from the config,
what ``engage serve`` does before starting anything."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engage.config import load_config
from engage.serving.edge import READYZ, ReadyGate
from engage.serving.settings import readiness_problem


@pytest.mark.parametrize("required", [True, False])
def test_readiness_waits_for_a_snapshot_unless_it_is_optional(required: bool) -> None:
    config = load_config(overrides={"serve.require_snapshot": required})
    without = readiness_problem(config, snapshot_users=0)
    assert readiness_problem(config, snapshot_users=12) is None
    if required:
        assert without is not None
        assert config.serve.feature_snapshot_path in without and "require_snapshot" in without
    else:
        assert without is None


class Inner:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"\n"})


def call(app: Any, path: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send))
    return int(sent[0]["status"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_the_ready_gate_answers_503_with_the_reason_and_passes_everything_else() -> None:
    inner = Inner()
    reason: list[str | None] = ["no feature snapshot loaded from s.parquet"]
    gate = ReadyGate(inner, lambda: reason[0])
    status, body = call(gate, READYZ)
    assert status == 503 and b"s.parquet" in body and inner.calls == []
    assert call(gate, "/livez") == (200, b"\n") and inner.calls == ["/livez"]
    reason[0] = None
    assert call(gate, READYZ)[0] == 200 and inner.calls == ["/livez", READYZ]


def test_workers_and_resources_come_from_the_engage_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engage.serving.service import EngageService

    config = tmp_path / "config.yaml"
    config.write_text("serve:\n  workers: 3\n  resources:\n    cpu: '2'\n")
    monkeypatch.setenv("ENGAGE_CONFIG", str(config))
    monkeypatch.delenv("BENTOML_CONFIG_OVERRIDES", raising=False)
    EngageService.inject_config()  # type: ignore[attr-defined]
    assert EngageService.config["workers"] == 3  # type: ignore[attr-defined]
    assert EngageService.config["resources"] == {"cpu": "2"}  # type: ignore[attr-defined]
    monkeypatch.delenv("ENGAGE_CONFIG")
    EngageService.inject_config()  # type: ignore[attr-defined]
    assert EngageService.config["workers"] == 1  # type: ignore[attr-defined]
    assert "resources" not in EngageService.config  # type: ignore[attr-defined]


@pytest.mark.parametrize(("args", "workers"), [([], 1), (["--workers", "2"], 2), (["--workers", "0"], None)])
def test_engage_serve_workers_flag(
    monkeypatch: pytest.MonkeyPatch, args: list[str], workers: int | None
) -> None:
    from typer.testing import CliRunner

    import engage.serving.process
    from engage.cli import app

    seen: list[int] = []

    def fake_serve(config: Any, host: str | None, port: int | None, **_: Any) -> int:
        seen.append(config.serve.workers)
        return 0

    monkeypatch.setattr(engage.serving.process, "serve", fake_serve)
    result = CliRunner().invoke(app, ["serve", *args])
    if workers is None:
        assert result.exit_code == 2 and seen == [], result.output
    else:
        assert result.exit_code == 0 and seen == [workers], result.output


def test_engage_serve_says_to_build_first_when_nothing_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before any process starts: the real preflight against an empty Bento store."""
    from typer.testing import CliRunner

    import engage.serving.process
    import engage.serving.service
    from engage.cli import app

    started: list[Any] = []
    monkeypatch.setattr(engage.serving.process, "supervise", lambda *a, **k: started.append(a) or 0)
    monkeypatch.setattr(engage.serving.service, "_in_store", lambda tag: False)
    for args in ([], ["--target", "engage:missing"]):
        result = CliRunner().invoke(app, ["serve", *args])
        assert result.exit_code == 2 and "run `engage build` first" in result.output, result.output
    assert started == []


def test_a_target_is_the_service_path_or_a_bento_tag() -> None:
    from engage.serving.process import SERVICE_PATH, installed_versions, is_import_path

    assert is_import_path(SERVICE_PATH)
    assert not is_import_path("engage:abc123") and not is_import_path("engage_scoring:latest")
    assert not is_import_path("no.such.module:Service")
    pins = installed_versions().splitlines()
    assert pins == sorted(pins) and all("==" in pin for pin in pins)
    import importlib.metadata

    assert f"lightgbm=={importlib.metadata.version('lightgbm')}" in pins
