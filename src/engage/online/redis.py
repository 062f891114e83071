"""The Redis online store: contacts, decisions, feedback keys and feature rows shared by replicas.

Keys (all under ``serve.online_prefix``):

- ``c:<user>``: the user's recent contacts, a sorted set (score: decision time in microseconds;
  member ``<ns>|<message_id>|<decision_id>``), trimmed to the catalog's history window on each write.
- ``d:<decision_id>``: a decision feedback may name (JSON: time, user, message, sent), kept for
  ``serve.feedback_max_age_days``; with ``policy.cap_counts: sent`` a ``sent`` report moves it into
  ``c:<user>`` (one Lua script, so a report counts once).
- ``fb:<feedback_id>``: a feedback report already taken (``SET NX``), kept as long.
- ``f:<user>`` and ``fs:<digest>``: the latest feature row per user (JSON values, with a TTL) and the
  column names and dtypes of the load that wrote it.

Check-and-record is optimistic, in two round trips: :meth:`RedisStore.reserve` reads the users'
contacts (one script), lets the caller decide with the one policy, and records with a second script
that first compares each user's contacts with what was read; if another replica recorded one in
between, nothing is written (:class:`ContactConflict`: decide again). Every call has
``serve.online_timeout_ms``; a failure marks the store down for ``RETRY_SECONDS`` (requests do not
wait on a dead server) and the watcher's ping brings it back. The only module that imports redis.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import redis
from redis.exceptions import RedisError

from engage import schemas as s
from engage.config import EngageConfig
from engage.online.base import ContactConflict, Entry, StoredRows, StoreUnavailable, contacts_frame, ns
from engage.scoring.decision_log import LogTail
from engage.serving.history import NONE_MARK, logged_contacts

__all__ = [
    "RETRY_SECONDS",
    "RedisStore",
    "connect",
    "latest_rows",
    "load_features",
    "open_store",
    "rebuild",
]

logger = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
"""After a failure, requests skip the store this long (the watcher's ping may bring it back sooner)."""
LOAD_BATCH = 10_000
RECORD_BATCH = 1_000
"""Decisions per write script when recording logged decisions (one script blocks the server)."""
# KEYS: contact keys. Each key's members, oldest first.
_READ = "local out = {} for i, k in ipairs(KEYS) do out[i] = redis.call('ZRANGE', k, 0, -1) end return out"
# Check-and-record. KEYS: n contact keys read before deciding, then per decision its d:<id> key and
# its user's contact key. ARGV: n, decision TTL s, contact TTL s, each read key's members joined by
# newlines, then per decision: record JSON, score, member ('' when it is not a contact yet) and the
# score below which its user's older contacts are dropped. 0 (nothing written) when a read key's
# members changed since; else 1.
_WRITE = """
local n = tonumber(ARGV[1])
for i = 1, n do
  if table.concat(redis.call('ZRANGE', KEYS[i], 0, -1), '\\n') ~= ARGV[3 + i] then return 0 end
end
local m = (#KEYS - n) / 2
local trim = {}
for j = 0, m - 1 do
  local a = 4 + n + 4 * j
  redis.call('SET', KEYS[n + 1 + 2 * j], ARGV[a], 'EX', ARGV[2])
  if ARGV[a + 2] ~= '' then
    local key = KEYS[n + 2 + 2 * j]
    redis.call('ZADD', key, ARGV[a + 1], ARGV[a + 2])
    if trim[key] == nil or tonumber(ARGV[a + 3]) > tonumber(trim[key]) then trim[key] = ARGV[a + 3] end
  end
end
for key, bound in pairs(trim) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. bound)
  redis.call('EXPIRE', key, ARGV[3])
end
return 1
"""
# KEYS: d:<id>; ARGV: contact key prefix, contact TTL seconds. 1 when the decision became a contact.
_MARK_SENT = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local d = cjson.decode(v)
if d.s == 1 then return 0 end
d.s = 1
redis.call('SET', KEYS[1], cjson.encode(d), 'KEEPTTL')
if d.m == 'none' then return 0 end
local key = ARGV[1] .. d.u
redis.call('ZADD', key, math.floor(tonumber(d.t) / 1000), d.t .. '|' .. d.m .. '|' .. d.i)
redis.call('EXPIRE', key, ARGV[2])
return 1
"""


def connect(url: str, timeout_ms: float) -> redis.Redis:
    """A client for ``url`` whose every call (connect included) gives up after ``timeout_ms``."""
    seconds = timeout_ms / 1000.0
    return redis.Redis.from_url(url, socket_timeout=seconds, socket_connect_timeout=seconds)


def _member(stamp: int, message_id: str, decision_id: str) -> str:
    return f"{stamp}|{message_id}|{decision_id}"


def _entry(member: Any) -> Entry:
    text = member.decode() if isinstance(member, bytes) else str(member)
    stamp, message_id, _ = text.split("|", 2)
    return int(stamp), message_id


class _Contacts:
    """The reserved users' contacts as read, and the decisions to record with them."""

    def __init__(self, entries: dict[str, list[Entry]], seen: list[bytes]) -> None:
        self.entries = entries
        self.seen = seen
        self.decisions: list[tuple[str, int, str, str]] = []

    def frame(
        self, user_ids: Sequence[str], decided_at: datetime, policy_time: pd.Timestamp
    ) -> pd.DataFrame | None:
        wanted = {u: self.entries.get(u, []) for u in dict.fromkeys(user_ids)}
        return contacts_frame(wanted, decided_at, policy_time)

    def record(self, user_id: str, decided_at: datetime, message_id: str, decision_id: str) -> None:
        self.decisions.append((user_id, ns(decided_at), message_id, decision_id))


class RedisStore:
    """The online store in Redis (thread-safe: the client pools connections). See the module doc."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "engage:",
        timeout_ms: float = 50.0,
        retention: pd.Timedelta = pd.Timedelta(days=30),
        decision_ttl: pd.Timedelta = pd.Timedelta(days=30),
        count: Literal["decisions", "sent"] = "decisions",
        log_dir: str | Path | None = None,
        own_file: str | None = None,
    ) -> None:
        self.name = url
        self.prefix = prefix
        self.client = connect(url, timeout_ms)
        self.retention_ns = ns(pd.Timestamp(0) + pd.Timedelta(retention))
        self.contact_ttl = max(1, int(pd.Timedelta(retention).total_seconds()) + 86_400)
        self.decision_ttl = max(1, int(pd.Timedelta(decision_ttl).total_seconds()))
        self.count_sent = count == "sent"
        self._mark = self.client.register_script(_MARK_SENT)
        self._read = self.client.register_script(_READ)
        self._write = self.client.register_script(_WRITE)
        self._down_until = 0.0
        self._problem: str | None = None
        self._schemas: dict[str, _Schema] = {}
        self._lock = threading.Lock()
        self.features_loaded = False
        # batch runs append to the decision log only: their messages reach the store from here
        self._tail = (
            LogTail(log_dir, skip_file=own_file, skip_lines_with=NONE_MARK.encode()) if log_dir else None
        )
        self._unsent: list[tuple[str, int, str, str]] = []
        self.refresh()

    # --- availability -------------------------------------------------------------------------
    @contextmanager
    def _calls(self) -> Iterator[None]:
        """Redis calls: skipped while marked down; a failure marks the store down and raises."""
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(self._problem or "contact store unavailable")
        try:
            yield
        except RedisError as exc:
            self._down(exc)
            raise StoreUnavailable(f"{self.name}: {type(exc).__name__}") from None

    def _down(self, exc: BaseException) -> None:
        with self._lock:
            if self._problem is None:
                logger.warning("online store %s unavailable: %s", self.name, type(exc).__name__)
            self._problem = f"online store {self.name} unavailable ({type(exc).__name__})"
            self._down_until = time.monotonic() + RETRY_SECONDS

    def problem(self) -> str | None:
        return self._problem

    def refresh(self) -> None:
        """Ping the server (the watcher's tick): the store is back as soon as it answers. Messages
        that other writers (batch runs) appended to the decision log are recorded too."""
        if self._tail is not None:
            self._unsent += [(u, t, m, d or "") for d, u, t, m in logged_contacts(self._tail)]
        try:
            self.client.ping()
            self.features_loaded = bool(self.client.exists(self._key("fs:current")))
        except RedisError as exc:
            self._down(exc)
            return
        with self._lock:
            if self._problem is not None:
                logger.info("online store %s available again", self.name)
            self._problem = None
            self._down_until = 0.0
        if self._unsent:
            try:
                self.record_decisions(self._unsent)
            except StoreUnavailable:
                return  # kept for the next tick
            self._unsent = []

    def close(self) -> None:
        self.client.close()

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    # --- contacts -----------------------------------------------------------------------------
    @contextmanager
    def reserve(self, user_ids: Sequence[str]) -> Iterator[_Contacts]:
        users = list(dict.fromkeys(user_ids))
        keys = [self._key(f"c:{u}") for u in users]
        with self._calls():
            found = self._read(keys=keys)
        contacts = _Contacts(
            {u: [_entry(m) for m in got] for u, got in zip(users, found, strict=True)},
            [b"\n".join(got) for got in found],
        )
        yield contacts
        with self._calls():
            written = self._write_call(self.client, keys, contacts.seen, contacts.decisions)
        if not written:
            raise ContactConflict("a user's contacts changed while deciding")

    def _write_call(
        self,
        client: Any,
        read_keys: Sequence[str],
        seen: Sequence[bytes],
        decisions: Sequence[tuple[str, int, str, str]],
    ) -> Any:
        """One ``_WRITE``: the new decisions, each a contact (unless ``none`` or waiting for
        ``sent``) in its user's window, if the ``read_keys`` still hold what was ``seen``."""
        keys: list[str] = list(read_keys)
        args: list[Any] = [len(read_keys), self.decision_ttl, self.contact_ttl, *seen]
        for user_id, stamp, message_id, decision_id in decisions:
            counted = message_id != s.CONTROL_ARM and not self.count_sent
            record = {"t": str(stamp), "u": user_id, "m": message_id, "i": decision_id, "s": 0}
            keys += [self._key(f"d:{decision_id}"), self._key(f"c:{user_id}")]
            args += [
                json.dumps(record),
                stamp // 1000,
                _member(stamp, message_id, decision_id) if counted else "",
                (stamp - self.retention_ns) // 1000,
            ]
        return self._write(keys=keys, args=args, client=client)

    def record_decisions(
        self, decisions: Sequence[tuple[str, int, str, str]], batch: int = RECORD_BATCH
    ) -> None:
        """Write logged decisions (user, time ns, message, id) without a check (``engage online rebuild``)."""
        with self._calls(), self.client.pipeline(transaction=False) as pipe:
            for start in range(0, len(decisions), batch):
                self._write_call(pipe, [], [], decisions[start : start + batch])
            pipe.execute()

    def entries(self, user_id: str) -> list[Entry]:
        """The user's contacts as stored (time ns, message id), oldest first."""
        with self._calls():
            return [_entry(m) for m in self.client.zrange(self._key(f"c:{user_id}"), 0, -1)]

    def mark_sent(self, decision_id: str, sent_at: datetime | str) -> None:
        """A ``sent`` report (``policy.cap_counts: sent``): the decision becomes a contact, once."""
        if not self.count_sent:
            return
        with self._calls():
            self._mark(keys=[self._key(f"d:{decision_id}")], args=[self._key("c:"), self.contact_ttl])

    def decision_time(self, decision_id: str) -> int | None:
        with self._calls():
            raw = self.client.get(self._key(f"d:{decision_id}"))
        return None if raw is None else int(json.loads(raw)["t"]) // 1000

    # --- feedback -----------------------------------------------------------------------------
    def claim_feedback(self, feedback_id: str, ttl_seconds: int) -> bool:
        with self._calls():
            return bool(self.client.set(self._key(f"fb:{feedback_id}"), 1, nx=True, ex=max(1, ttl_seconds)))

    # --- features -----------------------------------------------------------------------------
    def feature_rows(self, user_ids: Sequence[str], as_of: datetime | None) -> StoredRows:
        """The users' feature rows (None where absent, or dated after ``as_of``)."""
        keys = [self._key(f"f:{u}") for u in user_ids]
        with self._calls():
            raw = self.client.mget(keys) if keys else []
            rows = _decode(raw, self._schema)
        if as_of is not None and len(rows.frame):
            late = rows.frame[s.AS_OF] > pd.Timestamp(as_of)
            if late.any():
                rows = rows.without(np.flatnonzero(late.to_numpy()))
        return rows

    def _schema(self, digest: str) -> _Schema:
        cached = self._schemas.get(digest)
        if cached is None:
            raw = self.client.get(self._key(f"fs:{digest}"))
            if raw is None:
                raise StoreUnavailable(f"feature schema {digest} missing from {self.name}")
            got = json.loads(raw)
            cached = self._schemas[digest] = _Schema(got["columns"], got["dtypes"])
        return cached


class _Schema:
    """The columns of one feature load: numbers travel as float64 bytes, the rest as JSON values."""

    def __init__(self, columns: Sequence[str], dtypes: Sequence[str]) -> None:
        self.columns, self.dtypes = list(columns), list(dtypes)
        self.numeric = [c for c, d in zip(self.columns, self.dtypes, strict=True) if _is_number(d)]
        self.other = [c for c in self.columns if c not in set(self.numeric)]
        self.text = json.dumps({"columns": self.columns, "dtypes": self.dtypes})
        self.digest = hashlib.sha256(self.text.encode()).hexdigest()[:DIGEST]

    def encode(self, part: pd.DataFrame) -> list[bytes]:
        """One value per row: digest, the JSON list of the other columns, newline, the float64 block."""
        numbers = np.ascontiguousarray(part[self.numeric].to_numpy(dtype=np.float64, na_value=np.nan))
        others = [_encodable(part[c]) for c in self.other]
        head = self.digest.encode()
        texts = (
            [json.dumps(list(values)).encode() for values in zip(*others, strict=True)] if others else None
        )
        return [
            head + (texts[i] if texts is not None else b"[]") + b"\n" + numbers[i].tobytes()
            for i in range(len(part))
        ]

    def decode(self, items: Sequence[bytes]) -> pd.DataFrame:
        width = len(self.numeric)
        split = [item.index(b"\n", DIGEST) for item in items]
        numbers = np.frombuffer(
            b"".join(item[cut + 1 :] for item, cut in zip(items, split, strict=True)), np.float64
        )
        numbers = numbers.reshape(len(items), width)
        others = [json.loads(item[DIGEST:cut]) for item, cut in zip(items, split, strict=True)]
        out: dict[str, Any] = {}
        dtypes = dict(zip(self.columns, self.dtypes, strict=True))
        for j, name in enumerate(self.numeric):
            out[name] = pd.Series(numbers[:, j]).astype(dtypes[name])
        for j, name in enumerate(self.other):
            out[name] = _typed([row[j] for row in others], dtypes[name])
        return pd.DataFrame(out, columns=self.columns)


DIGEST = 16


def _is_number(dtype: str) -> bool:
    """Integers, floats and booleans (numpy kinds), which float64 holds exactly (integers up to 2**53)."""
    try:
        return np.dtype(dtype).kind in "biuf"
    except TypeError:
        return False


def _decode(raw: Sequence[Any], schema: Any) -> StoredRows:
    """Rows read with MGET (schema digest, other columns as JSON, numbers as float64) as one frame."""
    groups: dict[str, list[bytes]] = {}
    where_digest: list[tuple[str, int] | None] = []
    for item in raw:
        if item is None:
            where_digest.append(None)
            continue
        digest = item[:DIGEST].decode()
        group = groups.setdefault(digest, [])
        where_digest.append((digest, len(group)))
        group.append(item)
    frames, offsets, total = [], {}, 0
    for digest, items in groups.items():
        frames.append(schema(digest).decode(items))
        offsets[digest] = total
        total += len(items)
    frame = (
        pd.concat(frames, ignore_index=True) if len(frames) > 1 else (frames[0] if frames else pd.DataFrame())
    )
    where = [None if w is None else offsets[w[0]] + w[1] for w in where_digest]
    return StoredRows(frame, where)


def _typed(values: list[Any], dtype: str) -> pd.Series:
    """JSON values back in their column's dtype (times travel as integer ns since the epoch)."""
    if dtype.startswith("datetime64"):
        stamps = pd.to_datetime(pd.array(values, dtype="Int64"), unit="ns", utc=True)
        zone = dtype.partition(", ")[2].rstrip("]")
        series = pd.Series(stamps.tz_convert(zone) if zone else stamps.tz_localize(None))
        return series.astype(dtype)
    return pd.Series(values, dtype=object).astype(dtype)


def _encodable(column: pd.Series) -> list[Any]:
    """A column as JSON values: times as ns since the epoch, missing values as null."""
    if isinstance(column.dtype, pd.DatetimeTZDtype) or column.dtype.kind == "M":
        stamps = column.dt.tz_convert("UTC") if isinstance(column.dtype, pd.DatetimeTZDtype) else column
        values = stamps.dt.as_unit("ns").astype("int64").tolist()
        return [None if missing else v for v, missing in zip(values, column.isna().tolist(), strict=True)]
    return column.astype(object).where(column.notna(), None).tolist()


def latest_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per user: the latest ``as_of`` (what ``/score`` answers from)."""
    ordered = frame.assign(**{s.USER_ID: frame[s.USER_ID].astype(str)}).sort_values(
        [s.USER_ID, s.AS_OF], kind="stable"
    )
    return ordered.drop_duplicates(s.USER_ID, keep="last").reset_index(drop=True)


# KEYS: the rows' keys; ARGV: TTL seconds, then one value per key. One command per batch of rows.
_SET_MANY = "for i, k in ipairs(KEYS) do redis.call('SET', k, ARGV[i + 1], 'EX', ARGV[1]) end return #KEYS"


def load_features(
    url: str,
    frame: pd.DataFrame,
    ttl: pd.Timedelta,
    *,
    prefix: str = "engage:",
    timeout_ms: float = 5_000.0,
    batch: int = LOAD_BATCH,
) -> int:
    """Write each user's latest feature row into the store at ``url`` (pipelined, with ``ttl``).

    Returns the rows written. The column names and dtypes go once under ``fs:<digest>``; every
    row names its digest, so rows of an older load stay readable until they are replaced or expire.
    :class:`StoreUnavailable` when the server does not answer within ``timeout_ms``.
    """
    rows = latest_rows(frame)
    schema = _Schema([str(c) for c in rows.columns], [str(t) for t in rows.dtypes])
    seconds = max(1, int(pd.Timedelta(ttl).total_seconds()))
    client = connect(url, timeout_ms)
    try:
        _write_rows(client, rows, prefix, schema, seconds, batch)
    except RedisError as exc:
        raise StoreUnavailable(f"{url}: {type(exc).__name__}: {exc}") from None
    finally:
        client.close()
    return len(rows)


def _write_rows(
    client: redis.Redis, rows: pd.DataFrame, prefix: str, schema: _Schema, seconds: int, batch: int
) -> None:
    """Schema first, rows in pipelined batches (one Lua call per 1,000 rows), then ``fs:current``."""
    client.set(f"{prefix}fs:{schema.digest}", schema.text)
    keys = (prefix + "f:" + rows[s.USER_ID].astype(str)).tolist()
    chunk = 1_000
    for start in range(0, len(rows), batch):
        values = schema.encode(rows.iloc[start : start + batch])
        with client.pipeline(transaction=False) as pipe:
            for at in range(0, len(values), chunk):
                part = keys[start + at : start + at + chunk]
                pipe.eval(_SET_MANY, len(part), *part, seconds, *values[at : at + chunk])
            pipe.execute()
    client.set(f"{prefix}fs:current", schema.digest)


def open_store(
    config: EngageConfig, *, retention: pd.Timedelta, own_file: str | None = None, tail_log: bool = False
) -> RedisStore:
    """The Redis store ``serve.online_store`` names, with the serve settings (ValueError: not a URL).

    ``tail_log``: the service's store, which records the messages batch runs append to
    ``serve.decision_log_dir`` (``own_file``, this process's own, is not re-read)."""
    serve = config.serve
    if not serve.online_store.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"serve.online_store: 'local' or a redis:// URL, got {serve.online_store!r}")
    return RedisStore(
        serve.online_store,
        prefix=serve.online_prefix,
        timeout_ms=serve.online_timeout_ms,
        retention=retention,
        decision_ttl=pd.Timedelta(days=serve.feedback_max_age_days),
        count=config.policy.cap_counts,
        log_dir=serve.decision_log_dir if tail_log else None,
        own_file=own_file,
    )


def rebuild(
    store: RedisStore, decisions: pd.DataFrame, feedback: pd.DataFrame, now: datetime
) -> dict[str, int]:
    """Rebuild the store's contacts, decisions and feedback keys from the logs (the durable record).

    Clears the ``c:``, ``d:`` and ``fb:`` keys under the store's prefix (feature rows stay), then
    writes the decisions made within the history window or the feedback age of ``now``, and takes
    the accepted feedback reports (a ``sent`` one counts its decision with ``cap_counts: sent``).
    """
    horizon = ns(now) - max(store.retention_ns, store.decision_ttl * 1_000_000_000)
    removed = 0
    with store._calls():
        for pattern in ("c:*", "d:*", "fb:*"):
            batch: list[bytes] = []
            for key in store.client.scan_iter(match=store._key(pattern), count=LOAD_BATCH):
                batch.append(key)
                if len(batch) >= LOAD_BATCH:
                    removed += int(store.client.unlink(*batch))
                    batch = []
            if batch:
                removed += int(store.client.unlink(*batch))
    stamps = [ns(datetime.fromisoformat(str(t))) for t in decisions["decided_at"]]
    rows = [
        (str(u), stamp, str(m), str(d))
        for u, stamp, m, d in zip(
            decisions[s.USER_ID], stamps, decisions[s.MESSAGE_ID], decisions["decision_id"], strict=True
        )
        if stamp >= horizon
    ]
    rows.sort(key=lambda row: row[1])
    store.record_decisions(rows)
    ttl = store.decision_ttl
    with store._calls():
        for start in range(0, len(feedback), LOAD_BATCH):
            part = feedback.iloc[start : start + LOAD_BATCH]
            with store.client.pipeline(transaction=False) as pipe:
                for fid, decision_id, event in zip(
                    part["feedback_id"], part["decision_id"], part["event"], strict=True
                ):
                    pipe.set(store._key(f"fb:{fid}"), 1, ex=ttl)
                    if event == "sent" and store.count_sent:
                        pipe.eval(
                            _MARK_SENT, 1, store._key(f"d:{decision_id}"), store._key("c:"), store.contact_ttl
                        )
                pipe.execute()
    return {"removed_keys": removed, "decisions": len(rows), "feedback": len(feedback)}
