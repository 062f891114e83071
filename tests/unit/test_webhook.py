"""Webhook delivery without a network: signatures, batch keys, the ledger, which answers are retried."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from tests.unit.test_audiences import scores_frame

from engage.audiences.split import split_audiences
from engage.audiences.webhook import (
    Batch,
    DeliveryError,
    Ledger,
    _post,
    batches,
    check_url,
    sign,
    verify_signature,
)
from engage.config import WebhookConfig

SECRET = b"s3cret"


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"decisions":[]}'
    expected = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1_700_000_000, body) == f"sha256={expected}"
    header = sign(SECRET, 1_700_000_000, body)
    assert verify_signature(SECRET, "1700000000", body, header, now=1_700_000_100)
    assert not verify_signature(SECRET, "1700000000", body + b" ", header, now=1_700_000_100)  # tampered
    assert not verify_signature(SECRET, "1700000001", body, header, now=1_700_000_100)  # timestamp moved
    assert not verify_signature(b"other", "1700000000", body, header, now=1_700_000_100)
    assert not verify_signature(SECRET, "1700000000", body, header, now=1_700_000_000 + 301)  # replayed late
    assert not verify_signature(SECRET, "soon", body, header, now=1_700_000_000)


def test_batches_are_the_same_in_every_run_and_skip_what_was_delivered() -> None:
    audiences = split_audiences(scores_frame(1_000, seed=11), "message")
    first = list(batches(audiences, 64))
    assert [b.key for b in first] == [b.key for b in batches(audiences, 64)]
    ids = [i for b in first for i in b.decision_ids]
    assert sorted(ids) == sorted(i for f in audiences.frames.values() for i in f["decision_id"].to_list())
    assert len(set(b.key for b in first)) == len(first)
    for b in first:
        payload = json.loads(b.body)
        assert payload["batch_id"] == b.key and payload["audience"] == b.audience
        assert [d["decision_id"] for d in payload["decisions"]] == list(b.decision_ids)
        assert {d["message_id"] for d in payload["decisions"]} == {b.audience}
        assert len(b.decision_ids) <= 64
    done = {i for b in first[:3] for i in b.decision_ids}
    rest = list(batches(audiences, 64, done))
    assert not done & {i for b in rest for i in b.decision_ids}
    # what follows an acknowledged prefix of an audience is batched as before: same keys
    assert {b.key for b in rest} <= {b.key for b in first}


def test_the_ledger_counts_its_own_endpoint_and_survives_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "delivered.jsonl"
    a, b = Ledger(path, "https://a.example/h"), Ledger(path, "https://b.example/h")
    a.append(Batch("k1", "m", ("d1", "d2"), b"{}"), 200, 1, 0.0)
    b.append(Batch("k2", "m", ("d3",), b"{}"), 202, 2, 0.0)
    with path.open("ab") as handle:
        handle.write(
            b'{"batch_id":"k3","endpoint":"' + a.endpoint.encode() + b'","decision_ids":["d9"'
        )  # killed
    assert a.delivered() == {"d1", "d2"} and b.delivered() == {"d3"}
    a.append(Batch("k4", "m", ("d4",), b"{}"), 200, 1, 0.0)
    assert a.delivered() == {"d1", "d2", "d4"}
    assert all(json.loads(line)["batch_id"] for line in path.read_text().splitlines()[-1:])


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://hooks.example.com/engage", True),
        ("http://127.0.0.1:8080/h", True),
        ("http://[::1]:8080/h", True),
        ("http://localhost/h", True),
        ("http://hooks.example.com/engage", False),
        ("ftp://127.0.0.1/h", False),
        ("https:///nohost", False),
        ("https://h.example:port/x", False),
    ],
)
def test_urls(url: str, ok: bool) -> None:
    assert (check_url(url) is None) == ok, check_url(url)


class FakeClient:
    """Answers from a script: an int status, (status, Retry-After), or an exception to raise."""

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.headers: list[dict[str, str]] = []

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str | None, bytes]:
        self.headers.append(headers)
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        status, retry_after = step if isinstance(step, tuple) else (step, None)
        return status, retry_after, b"nope"


def _send(script: list[Any], **settings: Any) -> tuple[tuple[int, int], list[float], FakeClient]:
    import random

    config = WebhookConfig(url="https://h.example/x", **settings)
    client, sleeps = FakeClient(script), []
    clock = iter(range(1_000, 2_000))
    batch = Batch("key1", "m", ("d1",), b'{"x":1}')
    result = _post(
        batch, client, config, SECRET, random.Random(0), sleeps.append, lambda: next(clock), config.url or ""
    )  # type: ignore[arg-type]
    return result, sleeps, client


def test_server_errors_timeouts_dropped_connections_and_429_are_retried_with_growing_waits() -> None:
    script = [500, TimeoutError("timed out"), ConnectionResetError("reset"), (429, "7"), 503, 200]
    (status, attempts), sleeps, client = _send(script, backoff_seconds=1.0, max_backoff_seconds=60)
    assert (status, attempts) == (200, 6) and len(sleeps) == 5
    for attempt, wait in enumerate(sleeps):
        step = 2.0**attempt
        assert step / 2 <= wait <= step or (attempt == 3 and wait == 7.0)  # Retry-After: 7 wins over 4
    assert {h["Idempotency-Key"] for h in client.headers} == {"key1"}  # one key for every attempt
    for h in client.headers:  # signed afresh each time, over its own timestamp
        assert verify_signature(
            SECRET, h["X-Engage-Timestamp"], b'{"x":1}', h["X-Engage-Signature"], now=1_003
        )
    assert len({h["X-Engage-Timestamp"] for h in client.headers}) == len(client.headers)


def test_the_jitter_is_seeded() -> None:
    script = [500, 500, 200]
    assert _send(script)[1] == _send(script)[1]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 301])
def test_a_refusal_is_not_retried(status: int) -> None:
    with pytest.raises(DeliveryError, match=rf"HTTP {status} 'nope'; not retried"):
        _send([status, 200])


def test_retries_end_with_the_last_problem_named() -> None:
    with pytest.raises(DeliveryError, match=r"not acknowledged after 3 attempts \(last: HTTP 502\)"):
        _send([500, 503, 502, 200], max_retries=2)
