"""The Redis online store with real servers: the shared one (own key prefix per test) and a
test-owned ``redis-server`` that is stopped and started again (the shared one keeps running).

Two engines with their own decision logs stand for two replicas on two hosts: they share only Redis.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import Result

from engage import schemas as s
from engage.config import EngageConfig
from engage.online.base import UNAVAILABLE
from engage.online.redis import RETRY_SECONDS, RedisStore, latest_rows, load_features, open_store, rebuild
from engage.scoring.core import ScoringModels
from engage.scoring.decision_log import read_decisions
from engage.scoring.feedback import read_feedback
from engage.serving.engine import ScoringEngine
from engage.serving.schemas import ScoreRequest
from tests.integration.conftest import free_port, start_redis, stop_process
from tests.unit.test_serving_feedback import (  # noqa: F401 (models: the fixture, used by name)
    CAT,
    NOW,
    RankedGains,
    _config,
    _features,
    _report,
    models,
)

pytestmark = pytest.mark.integration

USERS = [f"u{i}" for i in range(6)]


@pytest.fixture
def sender(request: pytest.FixtureRequest) -> ScoringModels:
    """Models whose policy always wants to send (every message gains): only caps and cooldowns stop it."""
    base: ScoringModels = request.getfixturevalue("models")
    return ScoringModels(churn=base.churn, catalog=CAT, offers=RankedGains(), versions=base.versions)


def _replica(tmp_path: Path, name: str, url: str, prefix: str, **overrides: object) -> EngageConfig:
    folder = tmp_path / name
    folder.mkdir()
    return _config(
        folder,
        **{
            "serve.online_store": url,
            "serve.online_prefix": prefix,
            "serve.online_timeout_ms": 500,
            **overrides,
        },
    )


def _request(users: list[str]) -> ScoreRequest:
    return ScoreRequest.model_validate({"users": [{"user_id": u} for u in users], "explain": False})


def check_contacts(log: pd.DataFrame, cap: int) -> None:
    """Every user within the 7-day cap and every message's cooldown, judged on the decision log."""
    sent = log[log[s.MESSAGE_ID] != s.CONTROL_ARM].copy()
    sent["at"] = pd.to_datetime(sent["decided_at"], utc=True)
    for user, rows in sent.groupby(s.USER_ID):
        times = rows["at"].sort_values().tolist()
        for i, start in enumerate(times):
            within = sum(start <= t < start + timedelta(days=7) for t in times[i:])
            assert within <= cap, f"{user}: {within} messages within 7 days (cap {cap})"
        for message_id, same in rows.groupby(s.MESSAGE_ID):
            cooldown = CAT.get(str(message_id)).cooldown_days  # type: ignore[union-attr]
            gaps = same["at"].sort_values().diff().dropna()
            assert (gaps >= timedelta(days=cooldown)).all(), f"{user}: {message_id} inside its cooldown"


def test_two_replicas_hammering_the_same_users_never_exceed_the_cap(
    tmp_path: Path, sender: ScoringModels, redis_url: str, redis_prefix: str
) -> None:
    configs = [_replica(tmp_path, name, redis_url, redis_prefix) for name in ("a", "b")]
    engines = [ScoringEngine(c, sender, watch_seconds=None) for c in configs]
    cap = min(configs[0].policy.max_per_7d, CAT.max_per_7d)
    errors: list[BaseException] = []

    def hammer(engine: ScoringEngine, seed: int) -> None:
        try:
            for i in range(12):
                users = [USERS[(seed + i + k) % len(USERS)] for k in range(3)]
                engine.score(_request(users))
        except BaseException as exc:  # the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(engines[i % 2], i)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for engine in engines:
            engine.close()
    assert not errors, errors
    log = pd.concat([read_decisions(c.serve.decision_log_dir)[0] for c in configs], ignore_index=True)
    assert len(log) == 8 * 12 * 3
    assert set(log[s.USER_ID]) == set(USERS)
    withheld = (log[s.MESSAGE_ID] == s.CONTROL_ARM) & (log[s.INTENDED_MESSAGE_ID] != s.CONTROL_ARM)
    sent = log[log[s.MESSAGE_ID] != s.CONTROL_ARM]
    assert sent.groupby(s.USER_ID).size().max() == cap, "every user got the full cap, and no more"
    assert withheld.sum() == 0 or set(sent[s.USER_ID]) == set(USERS)
    check_contacts(log, cap)


def test_a_contact_recorded_between_read_and_write_aborts_the_write(
    redis_url: str, redis_prefix: str
) -> None:
    """Check-and-record: a reservation whose users' contacts changed since it read them writes nothing
    (its decision ids included) and raises ContactConflict; one that raced nobody writes, trimming
    contacts older than the retention window before the newest decision."""
    from engage.online.base import ContactConflict, ns

    store = RedisStore(redis_url, prefix=redis_prefix, retention=pd.Timedelta(days=7))
    other = RedisStore(redis_url, prefix=redis_prefix, retention=pd.Timedelta(days=7))
    old = NOW - timedelta(days=9)
    try:
        other.record_decisions([("u0", ns(old), "m_old", "d-old")])
        with pytest.raises(ContactConflict), store.reserve(["u0", "u1"]) as contacts:
            assert contacts.entries == {"u0": [(ns(old), "m_old")], "u1": []}
            with other.reserve(["u1"]) as theirs:  # another replica sends to u1 meanwhile
                theirs.record("u1", NOW, "m_b", "d-b")
            contacts.record("u0", NOW, "m_a", "d-a")
            contacts.record("u1", NOW, "m_a", "d-a1")
        assert store.decision_time("d-a") is None and store.decision_time("d-a1") is None
        assert store.entries("u1") == [(ns(NOW), "m_b")]
        with store.reserve(["u0", "u1"]) as contacts:  # decided again on what is there now
            contacts.record("u0", NOW, "m_a", "d-a")
            contacts.record("u1", NOW + timedelta(seconds=1), s.CONTROL_ARM, "d-none")
        assert store.entries("u0") == [(ns(NOW), "m_a")], "the 9-day-old contact left the 7-day window"
        assert store.entries("u1") == [(ns(NOW), "m_b")], "a 'none' decision is no contact"
        assert store.decision_time("d-none") == ns(NOW + timedelta(seconds=1)) // 1000
    finally:
        store.close()
        other.close()


def assert_store_holds(config: EngageConfig, snapshot: pd.DataFrame) -> None:
    """The Redis store ``config`` names holds each user's latest row of ``snapshot``, exactly (values,
    missing values, column order and dtypes), and nothing for a user the snapshot lacks."""
    expected = latest_rows(snapshot)
    store = open_store(config, retention=pd.Timedelta(days=30))
    try:
        stored = store.feature_rows([*expected[s.USER_ID].tolist(), "nobody"], None)
    finally:
        store.close()
    assert stored is not None and stored.where[-1] is None
    got = stored.frame.iloc[[w for w in stored.where if w is not None]].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_a_loaded_feature_row_is_the_snapshot_row_and_scores_the_same(
    tmp_path: Path, sender: ScoringModels, redis_url: str, redis_prefix: str
) -> None:
    local = _replica(tmp_path, "local", "local", "x:")
    snapshot = pd.read_parquet(local.serve.feature_snapshot_path)
    snapshot.loc[0, "session_count_28d"] = float("nan")  # a missing value travels as missing
    n = len(snapshot)  # every kind of column a snapshot may carry, exactly
    snapshot["visits"] = pd.Series(range(n), dtype="int64") * 2**40
    snapshot["flag"] = pd.Series([i % 2 == 0 for i in range(n)], dtype=bool)
    snapshot["note"] = pd.Series([None if i % 3 == 0 else f"n{i}" for i in range(n)], dtype="str")
    snapshot["seen_at"] = pd.Timestamp("2024-05-31 13:14:15.123456", tz="UTC") - pd.to_timedelta(
        range(n), "us"
    )
    snapshot.loc[1, "seen_at"] = pd.NaT
    older = snapshot.assign(**{s.AS_OF: snapshot[s.AS_OF] - pd.Timedelta(days=7), "session_count_28d": -1.0})
    pd.concat([older, snapshot]).to_parquet(local.serve.feature_snapshot_path)
    written = load_features(
        redis_url,
        pd.read_parquet(local.serve.feature_snapshot_path),
        pd.Timedelta(hours=1),
        prefix=redis_prefix,
    )
    shared = _replica(tmp_path, "shared", redis_url, redis_prefix, **{"serve.online_features": True})
    users = snapshot[s.USER_ID].astype(str).tolist()
    assert written == len(users)
    assert_store_holds(shared, pd.read_parquet(local.serve.feature_snapshot_path))

    Path(shared.serve.feature_snapshot_path).unlink(missing_ok=True)  # the store is the only source
    by_file, by_store = (
        ScoringEngine(local, sender, watch_seconds=None),
        ScoringEngine(shared, sender, watch_seconds=None),
    )
    try:
        assert by_store.not_ready() is None, "feature rows in the store make the service ready"
        want = by_file.score(_request(users[:4])).users
        have = by_store.score(_request(users[:4])).users
    finally:
        by_file.close()
        by_store.close()
    assert [a.churn_probability for a in have] == [a.churn_probability for a in want]
    assert [a.feature_as_of for a in have] == [a.feature_as_of for a in want]
    assert not any(a.cold_start for a in have)


def test_feedback_is_taken_once_across_replicas_and_may_name_the_others_decisions(
    tmp_path: Path, sender: ScoringModels, redis_url: str, redis_prefix: str
) -> None:
    overrides = {"policy.cap_counts": "sent"}
    configs = [_replica(tmp_path, name, redis_url, redis_prefix, **overrides) for name in ("a", "b")]
    clock = [NOW]
    a, b = (ScoringEngine(c, sender, watch_seconds=None, clock=lambda: clock[0]) for c in configs)
    try:
        first = a.score(_request(["u1"])).users[0]
        top = first.message.message_id
        assert top != s.CONTROL_ARM
        clock[0] += timedelta(minutes=1)
        assert b.score(_request(["u1"])).users[0].message.message_id == top, "not sent yet: not a contact"
        report = _report(first.decision_id, "sent", clock[0])
        assert b.feedback(report).status == "accepted", "b knows a's decision through the store"
        assert a.feedback(report).status == "duplicate", "the same report on the other replica"
        clock[0] += timedelta(minutes=1)
        assert a.score(_request(["u1"])).users[0].message.message_id != top, "b's report counts on a"
    finally:
        a.close()
        b.close()
    accepted, _ = read_feedback(configs[1].serve.feedback_log_dir)
    assert len(accepted) == 1 and read_feedback(configs[0].serve.feedback_log_dir)[0].empty


def test_the_store_is_rebuilt_from_the_logs(
    tmp_path: Path, sender: ScoringModels, redis_url: str, redis_prefix: str
) -> None:
    config = _replica(tmp_path, "a", redis_url, redis_prefix)
    engine = ScoringEngine(config, sender, watch_seconds=None)
    try:
        for _ in range(3):
            engine.score(_request(USERS[:4]))
    finally:
        engine.close()
    store = open_store(config, retention=pd.Timedelta(days=CAT.history_days))
    try:
        before = {u: store.entries(u) for u in USERS}
        assert sum(map(len, before.values())) > 0
        store.client.unlink(*store.client.keys(f"{redis_prefix}c:*"))
        assert not any(store.entries(u) for u in USERS)
        counts = rebuild(
            store,
            read_decisions(config.serve.decision_log_dir)[0],
            read_feedback(config.serve.feedback_log_dir)[0],
            NOW,
        )
        after = {u: store.entries(u) for u in USERS}
    finally:
        store.close()
    assert after == before
    assert counts["decisions"] == 12


def test_engage_online_rebuild_and_load_from_the_command_line(
    tmp_path: Path, sender: ScoringModels, redis_url: str, redis_prefix: str
) -> None:
    from typer.testing import CliRunner

    from engage.cli import app

    config = _replica(tmp_path, "a", redis_url, redis_prefix)
    engine = ScoringEngine(config, sender, watch_seconds=None)
    try:
        engine.score(_request(USERS[:3]))
    finally:
        engine.close()
    sets = [
        *("--set", f"serve.online_prefix='{redis_prefix}'"),
        *("--set", f"serve.decision_log_dir={config.serve.decision_log_dir}"),
        *("--set", f"serve.feedback_log_dir={config.serve.feedback_log_dir}"),
    ]
    runner = CliRunner()
    rebuilt = runner.invoke(app, ["online", "rebuild", "--online-store", redis_url, *sets])
    loaded = runner.invoke(
        app,
        [
            "online",
            "load",
            "--snapshot",
            config.serve.feature_snapshot_path,
            "--online-store",
            redis_url,
            *sets,
        ],
    )
    refused = runner.invoke(app, ["online", "rebuild", *sets])  # the packaged default is the local store
    assert rebuilt.exit_code == 0, rebuilt.output
    assert f"rebuilt {redis_url}: 3 decisions" in rebuilt.output
    assert loaded.exit_code == 0 and "loaded 10 feature rows" in loaded.output, loaded.output
    assert refused.exit_code == 2 and "a redis:// URL is needed" in refused.output


def test_redis_stopped_mid_load_degrades_and_recovers_by_itself(
    tmp_path: Path, sender: ScoringModels, own_redis: tuple[int, list[subprocess.Popen[bytes]]]
) -> None:
    port, processes = own_redis
    config = _replica(tmp_path, "a", f"redis://127.0.0.1:{port}/0", "e:", **{"serve.online_timeout_ms": 100})
    engine = ScoringEngine(config, sender, watch_seconds=0.2)
    try:
        before = engine.score(_request(["u1"])).users[0]
        assert before.message.withheld is None and before.message.message_id != s.CONTROL_ARM
        stop_process(processes[0])
        started = time.perf_counter()
        during = [engine.score(_request(["u2", "u3"])).users for _ in range(5)]
        seconds = time.perf_counter() - started
        time.sleep(0.5)  # the watcher's ping sees it too
        problem = engine.not_ready()
        processes.append(start_redis(port, tmp_path / "redis.log"))
        deadline = time.monotonic() + RETRY_SECONDS + 5
        while engine.not_ready() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        ready_again = engine.not_ready()
        after = engine.score(_request(["u4"])).users[0]
    finally:
        engine.close()
    assert all(a.message.withheld == UNAVAILABLE for answers in during for a in answers)
    assert all(a.message.message_id == s.CONTROL_ARM for answers in during for a in answers)
    assert all(a.message.intended_message_id != s.CONTROL_ARM for answers in during for a in answers)
    assert all(a.churn_probability > 0 and not a.cold_start for answers in during for a in answers)
    assert seconds < 3.0, f"5 requests against a stopped store took {seconds:.2f} s"
    assert problem is not None and "unavailable" in problem
    assert ready_again is None, "ready again once Redis answers"
    assert after.message.withheld is None and after.message.message_id != s.CONTROL_ARM


def test_a_redis_that_stops_answering_is_slow_not_down_and_still_no_5xx(
    tmp_path: Path, sender: ScoringModels, own_redis: tuple[int, list[subprocess.Popen[bytes]]]
) -> None:
    """SIGSTOP: connections stay open but nothing answers (a stalled server): every call times out."""
    port, processes = own_redis
    config = _replica(tmp_path, "a", f"redis://127.0.0.1:{port}/0", "e:", **{"serve.online_timeout_ms": 50})
    engine = ScoringEngine(config, sender, watch_seconds=None)
    try:
        engine.score(_request(["u1"]))  # connections made while it answers
        processes[0].send_signal(signal.SIGSTOP)
        try:
            started = time.perf_counter()
            stalled = engine.score(_request(["u2", "u3"])).users
            seconds = time.perf_counter() - started
            feedback = engine.feedback(_report(stalled[0].decision_id, "opened", datetime.now(UTC)))
        finally:
            processes[0].send_signal(signal.SIGCONT)
        time.sleep(RETRY_SECONDS + 0.1)
        engine.refresh()
        after = engine.score(_request(["u4"])).users[0]
    finally:
        engine.close()
    assert [a.message.withheld for a in stalled] == [UNAVAILABLE, UNAVAILABLE]
    assert all(a.message.intended_message_id != s.CONTROL_ARM for a in stalled)
    assert seconds < 1.0, f"a stalled store held the request {seconds:.2f} s (timeout 50 ms)"
    assert feedback.status == "accepted"
    assert after.message.withheld is None and after.message.message_id != s.CONTROL_ARM


def test_batch_decisions_appended_to_the_log_count_in_the_shared_store(
    tmp_path: Path, sender: ScoringModels, redis_url: str, redis_prefix: str
) -> None:
    config = _replica(tmp_path, "a", redis_url, redis_prefix)
    clock = [NOW]
    engine = ScoringEngine(config, sender, watch_seconds=None, clock=lambda: clock[0])
    cap = min(config.policy.max_per_7d, CAT.max_per_7d)
    try:
        assert engine.score(_request(["u2"])).users[0].message.message_id != s.CONTROL_ARM
        folder = Path(config.serve.decision_log_dir) / f"date={NOW:%Y-%m-%d}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = [
            {
                "decision_id": f"batch-{i}",
                s.USER_ID: "u1",
                s.MESSAGE_ID: CAT.messages[i].id,
                "decided_at": (NOW - timedelta(hours=2 - i)).isoformat(),
            }
            for i in range(cap)
        ]
        (folder / "decisions-999999.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        engine.refresh()  # the watcher's tick
        clock[0] += timedelta(minutes=1)
        capped = engine.score(_request(["u1"])).users[0]
        store = engine.store
        assert isinstance(store, RedisStore)
        held = store.entries("u1")
    finally:
        engine.close()
    assert capped.message.message_id == s.CONTROL_ARM and capped.message.withheld is None
    assert sorted(m for _, m in held) == sorted(line[s.MESSAGE_ID] for line in lines)


# --- engage score --online-store: the run's snapshot into Redis ---------------------------------


def _events(path: Path) -> Path:
    """Three events each for eight users before ``NOW``, the last one at a different age per user."""
    rows = [
        {
            s.USER_ID: f"u{i}",
            s.TS: NOW - timedelta(days=2 + 5 * i + k),
            s.EVENT_TYPE: ("purchase", "page_view", "add_to_cart")[k],
            "amount": 10.0 + i if k == 0 else None,
        }
        for i in range(8)
        for k in range(3)
    ]
    pd.DataFrame(rows).to_parquet(path)
    return path


def _score(
    tmp_path: Path, champions: ScoringModels, monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[Result, Path, Path]:
    """``engage score`` on :func:`_events` with ``champions`` as the champion models (no reason explainer:
    no reasons): (result, scores, snapshot)."""
    from typer.testing import CliRunner

    import engage.scoring.champions
    from engage.cli import app

    monkeypatch.setattr(engage.scoring.champions, "load_champions", lambda cfg: champions)
    scores, snapshot = tmp_path / "scores.parquet", tmp_path / "snapshot.parquet"
    command = [
        *("score", "--events", str(_events(tmp_path / "events.parquet")), "--as-of", NOW.isoformat()),
        *("--out", str(scores), "--snapshot", str(snapshot), "--decision-log", str(tmp_path / "log")),
        *("--explain-top", "0", "--set", "policy.exploration=none", "--set", "policy.holdout_pct=0.0"),
        *args,
    ]
    return CliRunner().invoke(app, command), scores, snapshot


@pytest.mark.parametrize("by", ["flag", "config"])
def test_engage_score_loads_its_snapshot_into_the_store(
    tmp_path: Path,
    sender: ScoringModels,
    redis_url: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    by: str,
) -> None:
    """``--online-store URL``, or ``serve.online_store`` with ``serve.online_features`` on: the rows in
    Redis are the Parquet snapshot's latest row per user, as ``engage online load`` writes them."""
    prefix = ["--set", f"serve.online_prefix='{redis_prefix}'"]
    if by == "flag":
        extra = ["--online-store", redis_url]
    else:
        extra = ["--set", f"serve.online_store={redis_url}", "--set", "serve.online_features=true"]
    result, scores, snapshot = _score(tmp_path, sender, monkeypatch, *prefix, *extra)
    assert result.exit_code == 0, result.output
    assert f"loaded 8 feature rows into {redis_url}" in result.output
    assert "rows/s" in result.output
    assert len(pd.read_parquet(scores)) == 8
    shared = _replica(tmp_path, "shared", redis_url, redis_prefix, **{"serve.online_features": True})
    assert_store_holds(shared, pd.read_parquet(snapshot))


def test_engage_score_without_the_flag_leaves_the_store_alone(
    tmp_path: Path, sender: ScoringModels, redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default (features off), and ``--online-store local`` over a config that would load."""
    import redis

    store = ["--set", f"serve.online_store={redis_url}", "--set", f"serve.online_prefix='{redis_prefix}'"]
    for extra in ([], ["--set", "serve.online_features=true", "--online-store", "local"]):
        result, _, snapshot = _score(tmp_path, sender, monkeypatch, *store, *extra)
        assert result.exit_code == 0 and "feature rows" not in result.output, result.output
        assert snapshot.exists()
    client = redis.Redis.from_url(redis_url)
    try:
        assert not list(client.scan_iter(match=f"{redis_prefix}*"))
    finally:
        client.close()


def test_engage_score_names_an_unreachable_store_and_keeps_its_files(
    tmp_path: Path, sender: ScoringModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    result, scores, snapshot = _score(tmp_path, sender, monkeypatch, "--online-store", url)
    output = " ".join(result.output.split())
    assert result.exit_code == 2, output
    assert f"error: --online-store {url}" in output and f"--snapshot {snapshot}" in output
    assert len(pd.read_parquet(scores)) == 8 and len(pd.read_parquet(snapshot)) == 8
    assert "decisions ->" in output, "the decisions are logged before the load"


def test_engage_score_refuses_a_store_that_is_not_redis_before_scoring(
    tmp_path: Path, sender: ScoringModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, scores, snapshot = _score(
        tmp_path, sender, monkeypatch, "--online-store", "http://127.0.0.1:6379"
    )
    assert result.exit_code == 2 and "a redis:// URL is needed" in result.output, result.output
    assert not scores.exists() and not snapshot.exists()
