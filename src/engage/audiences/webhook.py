"""Webhook delivery of audiences: signed JSON batches, retried, each decision delivered once.

The HTTP edge of ``engage export --webhook`` (standard library only: ``http.client``, ``hmac``).
Each audience's decisions go out in batches of ``export.webhook.batch_size`` as one JSON object::

    {"batch_id": "<32 hex>", "by": "message", "audience": "<id>", "decisions": [{"user_id": ...,
     "message_id": ..., "channel": ..., "message_text": ..., ["send_at": ...,] "decision_id": ...}]}

with the headers ``Idempotency-Key: <batch_id>`` (a hash of the batch's decision ids: the same
batch has the same key in every run), ``X-Engage-Timestamp: <unix seconds>`` and
``X-Engage-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>``. A receiver
recomputes the HMAC over the timestamp header, a dot and the raw body, compares in constant time and
refuses a timestamp older than a few minutes (``verify_signature``), so a captured request cannot be
replayed later; it dedupes on ``Idempotency-Key`` (and, per decision, on ``decision_id``).

A 2xx acknowledges the batch: its decision ids are appended to the ledger (``delivered.jsonl``,
flushed and fsynced) before the next batch is sent. A re-run, or the run after a kill, skips every
decision the ledger holds for the same URL, so only what was never acknowledged goes out again,
under the same batch keys. 5xx, 408, 429, timeouts and connection errors are retried with
exponential backoff and seeded jitter (``Retry-After`` respected, capped); any other status stops
the run (the request itself is wrong, sending it again cannot help).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import os
import random
import ssl
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import polars as pl

from engage.audiences.split import DECISION_ID, SEND_AT, Audiences
from engage.config import WebhookConfig

__all__ = [
    "IDEMPOTENCY_HEADER",
    "LEDGER_NAME",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Batch",
    "DeliveryError",
    "DeliveryReport",
    "Ledger",
    "batches",
    "check_url",
    "deliver",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER: Final = "X-Engage-Signature"
TIMESTAMP_HEADER: Final = "X-Engage-Timestamp"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
LEDGER_NAME: Final = "delivered.jsonl"
RETRIED: Final = frozenset({408, 429})
"""4xx statuses that are retried (request timeout, too many requests); all 5xx are retried too."""
Progress = Callable[[int, int], None]


class DeliveryError(RuntimeError):
    """A batch the receiver refused or never acknowledged; what was acknowledged stays in the ledger."""


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Engage-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of ``"<timestamp>." + body``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature(
    secret: bytes, timestamp: str, body: bytes, signature: str, *, now: float, tolerance_seconds: float = 300
) -> bool:
    """What a receiver checks: the signature over the raw body and a timestamp within the tolerance."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if abs(now - stamp) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, stamp, body), signature)


def check_url(url: str) -> str | None:
    """Why ``url`` cannot receive audiences (None when it can): http(s) with a host, and https unless
    the host is loopback (the batches carry user ids and message texts)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http(s) URL"
    if parts.scheme == "http" and not _loopback(parts.hostname):
        return f"{url}: plain http only to a loopback address; use https (the batches carry user data)"
    try:
        _ = parts.port
    except ValueError:
        return f"{url}: the port is not a number"
    return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Batch:
    """One POST: its key (a hash of its decision ids), audience, decision ids and raw JSON body."""

    key: str
    audience: str
    decision_ids: tuple[str, ...]
    body: bytes


def batches(audiences: Audiences, size: int, skip: Collection[str] = ()) -> Iterator[Batch]:
    """The batches still to send: each audience's decisions not in ``skip``, ``size`` at a time, in
    file order. The same decisions make the same batches (and keys) in every run."""
    for name, frame in audiences.frames.items():
        rows = frame.filter(~pl.col(DECISION_ID).is_in(list(skip))) if skip else frame
        if SEND_AT in rows.columns and isinstance(rows.schema[SEND_AT], pl.Datetime):
            rows = rows.with_columns(pl.col(SEND_AT).dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
        for start in range(0, rows.height, size):
            chunk = rows.slice(start, size)
            ids = tuple(chunk[DECISION_ID].to_list())
            key = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:32]
            payload = {"batch_id": key, "by": audiences.by, "audience": name, "decisions": chunk.to_dicts()}
            body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
            yield Batch(key=key, audience=name, decision_ids=ids, body=body)


class Ledger:
    """``delivered.jsonl``: one line per acknowledged batch (its key, audience, endpoint, status,
    attempts, time and decision ids), appended and fsynced before the next batch goes out. A line
    cut short by a kill is ignored (that batch is sent again, under the same key)."""

    def __init__(self, path: Path, url: str) -> None:
        self.path = path
        self.endpoint = hashlib.sha256(url.encode()).hexdigest()[:16]

    def delivered(self) -> set[str]:
        """Decision ids acknowledged by this endpoint in earlier runs."""
        done: set[str] = set()
        if not self.path.exists():
            return done
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a torn last line
                if isinstance(entry, dict) and entry.get("endpoint") == self.endpoint:
                    done.update(entry.get("decision_ids", ()))
        return done

    def append(self, batch: Batch, status: int, attempts: int, at: float) -> None:
        entry = {
            "batch_id": batch.key,
            "audience": batch.audience,
            "endpoint": self.endpoint,
            "status": status,
            "attempts": attempts,
            "acked_at": datetime.fromtimestamp(at, UTC).isoformat(),
            "decision_ids": list(batch.decision_ids),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell():  # after a torn line, start a fresh one
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
            handle.write(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())


@dataclass(frozen=True)
class DeliveryReport:
    """What one delivery run did."""

    batches: int
    decisions: int
    already_delivered: int
    retries: int
    seconds: float

    @property
    def decisions_per_second(self) -> float:
        return self.decisions / self.seconds if self.seconds else float("nan")


class _Client:
    """One keep-alive connection to the receiver, reopened after any error or a closing response."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str | None, bytes]:
        if self.conn is None:
            self.conn = (
                http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
                )
                if self.https
                else http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            )
        try:
            self.conn.request("POST", self.target, body=body, headers=headers)
            response = self.conn.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        if response.will_close:
            self.close()
        return response.status, response.getheader("Retry-After"), data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value is not None else 0.0
    except ValueError:
        return 0.0  # an HTTP date: fall back to the backoff


def deliver(
    audiences: Audiences,
    config: WebhookConfig,
    secret: bytes,
    ledger_path: Path,
    *,
    seed: int,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> DeliveryReport:
    """Post every decision of ``audiences`` not yet acknowledged to ``config.url``; see the module
    docstring for the protocol. Raises ``DeliveryError`` naming the batch when one is refused (4xx)
    or still unacknowledged after ``config.max_retries`` retries."""
    url = config.url
    if not url:
        raise DeliveryError("export.webhook.url is not set: put the receiver's URL in the config")
    problem = check_url(url)
    if problem:
        raise DeliveryError(f"export.webhook.url: {problem}")
    ledger = Ledger(ledger_path, url)
    done = ledger.delivered()
    already = sum(int(frame[DECISION_ID].is_in(list(done)).sum()) for frame in audiences.frames.values())
    total = audiences.exported
    rng = random.Random(seed)
    client = _Client(url, config.timeout_seconds)
    sent = sent_batches = retries = 0
    start = time.perf_counter()
    if progress:
        progress(already, total)
    try:
        for batch in batches(audiences, config.batch_size, done):
            status, attempts = _post(batch, client, config, secret, rng, sleep, clock, url)
            retries += attempts - 1
            ledger.append(batch, status, attempts, clock())
            sent += len(batch.decision_ids)
            sent_batches += 1
            if progress:
                progress(already + sent, total)
    except DeliveryError as exc:
        raise DeliveryError(
            f"{exc}; {already + sent:,} of {total:,} decisions are acknowledged (in {ledger_path}): "
            "run the same command again to send the rest"
        ) from exc
    finally:
        client.close()
    return DeliveryReport(
        batches=sent_batches,
        decisions=sent,
        already_delivered=already,
        retries=retries,
        seconds=time.perf_counter() - start,
    )


def _post(
    batch: Batch,
    client: _Client,
    config: WebhookConfig,
    secret: bytes,
    rng: random.Random,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    url: str,
) -> tuple[int, int]:
    """Send one batch until acknowledged: (status, attempts). Signed afresh at every attempt."""
    where = f"{url}: batch {batch.key} ({batch.audience}, {len(batch.decision_ids)} decisions)"
    last = ""
    for attempt in range(config.max_retries + 1):
        stamp = int(clock())
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: batch.key,
            TIMESTAMP_HEADER: str(stamp),
            SIGNATURE_HEADER: sign(secret, stamp, batch.body),
        }
        wait = _backoff(config, attempt, rng)
        try:
            status, retry_after, answer = client.post(batch.body, headers)
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(f"{where}: the receiver's certificate does not verify ({exc})") from exc
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, dropped, timed out
            last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            if 200 <= status < 300:
                return status, attempt + 1
            text = answer[:200].decode("utf-8", "replace").strip()
            if status < 500 and status not in RETRIED:
                raise DeliveryError(f"{where}: refused with HTTP {status} {text!r}; not retried")
            last = f"HTTP {status}"
            wait = min(config.max_backoff_seconds, max(wait, _retry_after(retry_after)))
        if attempt < config.max_retries:
            sleep(wait)
    raise DeliveryError(f"{where}: not acknowledged after {config.max_retries + 1} attempts (last: {last})")


def _backoff(config: WebhookConfig, attempt: int, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: half the step fixed, half drawn (seeded)."""
    step = min(config.max_backoff_seconds, config.backoff_seconds * 2**attempt)
    return step / 2 + rng.uniform(0, step / 2)
