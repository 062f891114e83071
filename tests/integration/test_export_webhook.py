"""engage export --webhook against a real receiver on loopback that fails some calls.

The receiver (http.server in a thread, 127.0.0.1, a free port) checks every signature itself with
``hmac`` and the timestamp tolerance, dedupes on ``Idempotency-Key`` and records which decisions it
acknowledged under which key; scripted failures: a 500, a dropped connection, a 429 with
Retry-After, an answer slower than the client's timeout (after the batch was taken), a 400, and a
hang after K batches while the sender is killed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from engage.cli import app
from tests.unit.test_audiences import scores_frame

pytestmark = pytest.mark.integration

SECRET = "loopback-secret"
runner = CliRunner()


class Receiver:
    """What the receiving platform did: batches acknowledged (first time per key), duplicates, refusals."""

    def __init__(self, script: dict[int, str] | None = None, hang_after: int | None = None) -> None:
        self.script = dict(script or {})
        self.hang_after = hang_after
        self.requests = 0
        self.acked: dict[str, list[str]] = {}
        self.duplicates: list[str] = []
        self.bad_signatures = 0
        self.failures: list[str] = []
        self.hanging = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers["Content-Length"]))
        with self.lock:
            self.requests += 1
            action = self.script.pop(self.requests, "ok")
        stamp = handler.headers.get("X-Engage-Timestamp", "")
        expected = (
            "sha256=" + hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
        )
        fresh = stamp.isdigit() and abs(time.time() - int(stamp)) <= 300
        if not (fresh and hmac.compare_digest(expected, handler.headers.get("X-Engage-Signature", ""))):
            self.bad_signatures += 1
            return self.answer(handler, 401, {"error": "bad signature"})
        if action == "drop":
            self.failures.append(action)
            handler.close_connection = True
            handler.connection.shutdown(2)  # no status line at all
            return None
        if action in ("500", "429", "400"):
            self.failures.append(action)
            return self.answer(handler, int(action), {"error": action}, retry_after="0")
        key = handler.headers["Idempotency-Key"]
        ids = [d["decision_id"] for d in json.loads(body)["decisions"]]
        with self.lock:
            if key in self.acked:
                self.duplicates.append(key)
            else:
                self.acked[key] = ids
            hang = self.hang_after is not None and len(self.acked) > self.hang_after
        if action == "slow":  # taken, but answered after the client gave up: it must resend the same key
            self.failures.append(action)
            time.sleep(1.0)
        if hang:
            self.hanging.set()
            self.release.wait(30)
            return None
        return self.answer(handler, 200, {"accepted": len(ids)})

    @staticmethod
    def answer(
        handler: BaseHTTPRequestHandler, status: int, payload: Any, retry_after: str | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        if retry_after is not None and status in (429, 503):
            handler.send_header("Retry-After", retry_after)
        handler.end_headers()
        handler.wfile.write(data)

    def decisions(self) -> list[str]:
        return [i for ids in self.acked.values() for i in ids]


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(receiver: Receiver) -> str:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver.handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (timeout, kill) leaves a broken pipe behind: expected here

        server = Server(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/hooks/engage"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _args(scores: Path, out: Path, url: str, batch_size: int = 100) -> list[str]:
    sets = {
        "export.webhook.url": url,
        "export.webhook.batch_size": batch_size,
        "export.webhook.backoff_seconds": 0.01,
        "export.webhook.max_retries": 4,
        "export.webhook.timeout_seconds": 0.5,
    }
    extra = [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    return ["export", "--scores", str(scores), "--out", str(out), "--webhook", *extra]


def _exported(out: Path) -> set[str]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        i for f in manifest["files"] for i in pl.read_parquet(out / f["parquet"])["decision_id"].to_list()
    }


def _ledger(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "delivered.jsonl").read_text().splitlines()]


@pytest.fixture
def scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ENGAGE_WEBHOOK_SECRET", SECRET)
    path = tmp_path / "scores.parquet"
    scores_frame(3_000, seed=21).write_parquet(path)
    return path


def test_every_decision_is_acknowledged_once_through_failures_and_a_rerun_sends_nothing(
    scores: Path, tmp_path: Path, serve: Any
) -> None:
    receiver = Receiver(script={2: "500", 5: "drop", 7: "429", 9: "slow", 12: "500", 13: "500"})
    url = serve(receiver)
    out = tmp_path / "audiences"
    result = runner.invoke(app, _args(scores, out, url))
    assert result.exit_code == 0, result.output
    assert sorted(receiver.failures) == sorted(["500", "drop", "429", "slow", "500", "500"])
    assert receiver.bad_signatures == 0
    delivered = receiver.decisions()
    assert len(delivered) == len(set(delivered))  # no decision under two batch keys
    assert set(delivered) == _exported(out) and len(delivered) > 2_000
    assert receiver.duplicates  # the slow answer's batch came again, under the same key
    ledger = _ledger(out)
    assert {e["batch_id"] for e in ledger} == set(receiver.acked)
    assert {i for e in ledger for i in e["decision_ids"]} == set(delivered)
    assert max(e["attempts"] for e in ledger) >= 3  # the batch that met two 500s in a row
    seen = receiver.requests
    again = runner.invoke(app, _args(scores, out, url))
    assert again.exit_code == 0, again.output
    assert receiver.requests == seen  # nothing new sent
    assert f"nothing new to send; {len(delivered):,} acknowledged before" in again.output


def test_a_refusal_stops_the_run_and_the_next_run_resumes(scores: Path, tmp_path: Path, serve: Any) -> None:
    receiver = Receiver(script={4: "400"})
    url = serve(receiver)
    out = tmp_path / "audiences"
    result = runner.invoke(app, _args(scores, out, url))
    assert (
        result.exit_code == 1
        and "HTTP 400" in result.output
        and "run the same command again" in result.output
    )
    assert len(_ledger(out)) == 3 == len(receiver.acked)
    result = runner.invoke(app, _args(scores, out, url))
    assert result.exit_code == 0, result.output
    delivered = receiver.decisions()
    assert len(delivered) == len(set(delivered)) and set(delivered) == _exported(out)
    assert not receiver.duplicates


def test_a_killed_run_resumes_and_completes(scores: Path, tmp_path: Path, serve: Any) -> None:
    """The sender is killed while the receiver holds batch K+1 (taken, never answered)."""
    receiver = Receiver(hang_after=5)
    url = serve(receiver)
    out = tmp_path / "audiences"
    env = {**os.environ, "ENGAGE_WEBHOOK_SECRET": SECRET}
    command = [sys.executable, "-m", "engage.cli", *_args(scores, out, url)]
    command[command.index("export.webhook.timeout_seconds=0.5")] = "export.webhook.timeout_seconds=60"
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert receiver.hanging.wait(120), process.communicate(timeout=5)[0]
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert len(_ledger(out)) == 5 and len(receiver.acked) == 6  # the sixth was taken, not acknowledged
    receiver.hang_after = None
    receiver.release.set()
    result = runner.invoke(app, _args(scores, out, url))
    assert result.exit_code == 0, result.output
    delivered = receiver.decisions()
    assert len(delivered) == len(set(delivered)) and set(delivered) == _exported(out)
    assert len(receiver.duplicates) == 1  # the held batch, sent again under its key
    assert {i for e in _ledger(out) for i in e["decision_ids"]} == set(delivered)
