"""The online store seen from the engine, without a Redis server: the failure policy and the CI switch.

A Redis URL on a port nothing listens on is the store being down: ``/score`` still answers risk,
reasons and the message the policy would send, but sends nothing (``contact store unavailable``);
it never raises, and readiness says why.
"""

from __future__ import annotations

import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
from tests.conftest import REQUIRE_SERVICES, service_missing
from tests.unit.test_serving_feedback import (  # noqa: F401 (models: the fixture, used by name)
    CAT,
    NOW,
    RankedGains,
    _config,
    _engine,
    _report,
    models,
)

from engage import schemas as s
from engage.online.base import UNAVAILABLE
from engage.scoring.core import ScoringModels
from engage.scoring.decision_log import read_decisions
from engage.serving.schemas import ScoreRequest

USERS = ["u1", "u2", "u3"]


@pytest.fixture
def sender(request: pytest.FixtureRequest) -> ScoringModels:
    """Models whose policy always wants to send (every message gains): only caps and cooldowns stop it."""
    base: ScoringModels = request.getfixturevalue("models")
    return ScoringModels(churn=base.churn, catalog=CAT, offers=RankedGains(), versions=base.versions)


def _dead_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _request(users: list[str]) -> ScoreRequest:
    return ScoreRequest.model_validate({"users": [{"user_id": u} for u in users], "explain": False})


def test_an_unreachable_store_answers_risk_and_reasons_but_sends_nothing(
    tmp_path: Path, sender: ScoringModels
) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "down").mkdir()
    local = _engine(_config(tmp_path / "local"), sender, [NOW])
    down_config = _config(
        tmp_path / "down",
        **{"serve.online_store": f"redis://127.0.0.1:{_dead_port()}/0", "serve.online_timeout_ms": 50},
    )
    down = _engine(down_config, sender, [NOW])
    try:
        expected = local.score(_request(USERS)).users
        started = time.perf_counter()
        got = down.score(_request(USERS)).users
        again = down.score(_request(USERS)).users  # within the retry pause: the store is not even tried
        seconds = time.perf_counter() - started
        problem = down.not_ready()
        feedback = down.feedback(_report(got[0].decision_id, "opened", NOW))
    finally:
        local.close()
        down.close()
    assert all(a.message.message_id != s.CONTROL_ARM for a in expected), "the policy wants to send"
    for want, answer in zip(expected, got, strict=True):
        assert answer.churn_probability == pytest.approx(want.churn_probability)
        assert [r.feature for r in answer.reasons] == [r.feature for r in want.reasons]
        assert answer.message.message_id == s.CONTROL_ARM and answer.message.propensity == 1.0
        assert answer.message.intended_message_id == want.message.message_id
        assert answer.message.withheld == UNAVAILABLE and want.message.withheld is None
    assert [a.message.withheld for a in again] == [UNAVAILABLE] * len(USERS)
    assert seconds < 2.0, f"two requests against a dead store took {seconds:.2f} s"
    assert problem is not None and "unavailable" in problem
    assert feedback.status == "accepted", "feedback is still taken (this process's memory judges)"
    log, _ = read_decisions(down_config.serve.decision_log_dir)
    assert len(log) == 2 * len(USERS) and set(log[s.MESSAGE_ID]) == {s.CONTROL_ARM}
    assert set(log[s.INTENDED_MESSAGE_ID]) == {a.message.message_id for a in expected}


def test_the_local_store_keeps_the_cap_and_is_always_ready(tmp_path: Path, sender: ScoringModels) -> None:
    config = _config(tmp_path)
    clock = [NOW]
    engine = _engine(config, sender, clock)
    cap = min(config.policy.max_per_7d, CAT.max_per_7d)
    try:
        sent = []
        for _ in range(cap + 2):
            clock[0] += timedelta(hours=1)
            sent.append(engine.score(_request(["u1"])).users[0].message)
        assert engine.not_ready() is None
    finally:
        engine.close()
    assert sum(m.message_id != s.CONTROL_ARM for m in sent) == cap
    assert all(m.withheld is None for m in sent), "a capped answer is the policy's own none"


def test_a_store_that_is_not_a_redis_url_is_refused_naming_the_key(
    tmp_path: Path, sender: ScoringModels
) -> None:
    with pytest.raises(ValueError, match=r"serve\.online_store: 'local' or a redis:// URL"):
        _engine(_config(tmp_path, **{"serve.online_store": "memcached://x"}), sender, [NOW])


def test_missing_servers_skip_unless_ci_requires_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_SERVICES, raising=False)
    with pytest.raises(pytest.skip.Exception, match="Redis not reachable"):
        service_missing("Redis not reachable")
    monkeypatch.setenv(REQUIRE_SERVICES, "1")
    with pytest.raises(pytest.fail.Exception, match=f"Redis not reachable .*{REQUIRE_SERVICES}=1"):
        service_missing("Redis not reachable")


def test_a_live_decision_counts_contacts_recorded_ahead_of_its_clock(
    tmp_path: Path, sender: ScoringModels
) -> None:
    """Another replica whose clock runs a minute ahead has recorded the cap's worth of messages: a live
    request (no as_of) counts them; a replayed request at an explicit earlier as_of does not."""
    config = _config(tmp_path)
    cap = min(config.policy.max_per_7d, CAT.max_per_7d)
    engine = _engine(config, sender, [NOW])
    try:
        ahead = [
            engine.score(
                ScoreRequest.model_validate(
                    {"users": [{"user_id": "u1"}], "explain": False, "as_of": NOW + timedelta(minutes=1 + i)}
                )
            ).users[0]
            for i in range(cap)
        ]
        live = engine.score(_request(["u1"])).users[0]
        replay = engine.score(
            ScoreRequest.model_validate({"users": [{"user_id": "u1"}], "explain": False, "as_of": NOW})
        ).users[0]
    finally:
        engine.close()
    assert all(a.message.message_id != s.CONTROL_ARM for a in ahead)
    assert live.message.message_id == s.CONTROL_ARM and live.message.withheld is None, "the cap holds"
    assert replay.message.message_id != s.CONTROL_ARM, "a replay at an earlier as_of sees what was before it"
