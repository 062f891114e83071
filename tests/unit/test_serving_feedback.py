"""``/feedback`` in-process: reports validated, kept once, matched to decisions; caps count sends."""

from __future__ import annotations

import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from engage import schemas as s
from engage.config import DEFAULT_CATALOG_PATH, EngageConfig, load_config
from engage.models.bundle import ChurnBundle
from engage.models.churn import RecencyBaseline
from engage.offers.catalog import load_catalog
from engage.offers.outcomes import FEEDBACK_EVENTS
from engage.scoring.core import ScoringModels
from engage.scoring.feedback import read_feedback
from engage.serving.engine import ScoringEngine, Unprocessable
from engage.serving.schemas import FeedbackEvent, FeedbackRequest, ScoreRequest

CAT = load_catalog(DEFAULT_CATALOG_PATH)
AS_OF = datetime(2024, 6, 1, tzinfo=UTC)
NOW = AS_OF + timedelta(days=1)


class RankedGains:
    """An offers model stand-in: every message gains, in catalog order, so the policy sends."""

    feature_names: tuple[str, ...] = ()

    def gain_matrix(self, features: pd.DataFrame, catalog: object) -> tuple[np.ndarray, np.ndarray]:
        """Gains per catalog arm (`none` first, then each message in catalog order) and all modelled."""
        arms = [m.id for m in CAT.messages]
        row = [0.0, *(float(len(arms) - i) for i in range(len(arms)))]
        return np.tile(row, (len(features), 1)), np.ones(len(row), dtype=bool)


def _features(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return pd.DataFrame(
        {
            s.USER_ID: [f"u{i}" for i in range(n)],
            s.AS_OF: pd.Timestamp(AS_OF),
            "days_since_last_event": rng.integers(0, 60, n).astype(float),
            "cart_abandon_count_7d": np.ones(n),
            "product_view_count_28d": np.full(n, 5.0),
            "days_since_last_session": np.full(n, 30.0),
            "session_count_28d": np.ones(n),
            "top_category": "books",
            **{s.consent_column(m.channel): 1.0 for m in CAT.messages},
        }
    )


@pytest.fixture(scope="module")
def models() -> ScoringModels:
    train = _features(400)
    churned = (train["days_since_last_event"] > 30).astype(int)
    churn = RecencyBaseline(feature="days_since_last_event").fit(train, churned)
    return ScoringModels(
        churn=ChurnBundle(model=churn, explainer=None, feature_names=["days_since_last_event"]),
        catalog=CAT,
        offers=RankedGains(),  # type: ignore[arg-type]
        versions={"churn": "engage-churn/1"},
    )


def _config(tmp_path: Path, **overrides: object) -> EngageConfig:
    path = tmp_path / "snapshot.parquet"
    _features(10).to_parquet(path)
    return load_config(
        overrides={
            "policy.exploration": "none",
            "policy.holdout_pct": 0.0,
            "serve.feature_snapshot_path": str(path),
            "serve.decision_log_dir": str(tmp_path / "decisions"),
            "serve.feedback_log_dir": str(tmp_path / "feedback"),
            **overrides,
        }
    )


def _engine(config: EngageConfig, models: ScoringModels, clock: list[datetime]) -> ScoringEngine:
    return ScoringEngine(config, models, watch_seconds=None, clock=lambda: clock[0])


def _report(decision_id: str, event: str, ts: datetime, **fields: object) -> FeedbackRequest:
    return FeedbackRequest.model_validate({"decision_id": decision_id, "event": event, "ts": ts, **fields})


def test_the_api_events_are_the_outcome_events() -> None:
    assert typing.get_args(FeedbackEvent) == FEEDBACK_EVENTS


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event": "bounced"}, "event"),
        ({"event": "opened", "revenue": 3.0}, "revenue"),
        ({"event": "converted", "revenue": -1.0}, "revenue"),
        ({"event": "converted", "revenue": "nan"}, "revenue"),
        ({"ts": 1717200000}, "ts"),
        ({"ts": "1717200000"}, "ts"),
        ({"decision_id": ""}, "decision_id"),
        ({"decision_id": "x" * 129}, "decision_id"),
        ({"user_id": "u1"}, "user_id"),
        ({"idempotency_key": ""}, "idempotency_key"),
    ],
)
def test_a_bad_report_is_refused_naming_the_field(body: dict[str, object], field: str) -> None:
    good = {"decision_id": "d1", "event": "converted", "ts": NOW.isoformat(), "revenue": 12.5}
    FeedbackRequest.model_validate(good)
    with pytest.raises(ValidationError, match=field):
        FeedbackRequest.model_validate({**good, **body})


def test_reports_are_kept_once_matched_to_decisions_and_set_aside_when_unknown(
    tmp_path: Path, models: ScoringModels
) -> None:
    config = _config(tmp_path)
    clock = [NOW]
    engine = _engine(config, models, clock)
    try:
        answer = engine.score(
            ScoreRequest.model_validate({"users": [{"user_id": "u1"}], "explain": False})
        ).users[0]
        did = answer.decision_id
        sent = _report(did, "sent", NOW)
        assert engine.feedback(sent).status == "accepted"
        assert engine.feedback(sent).status == "duplicate"
        converted = _report(did, "converted", NOW + timedelta(minutes=1), revenue=20.0)
        assert engine.feedback(converted).status == "accepted"
        keyed = _report(did, "opened", NOW, idempotency_key="k-1")
        assert engine.feedback(keyed).status == "accepted"
        again = _report(did, "opened", NOW + timedelta(seconds=5), idempotency_key="k-1")
        assert engine.feedback(again).status == "duplicate", "the caller's key decides"
        unknown = engine.feedback(_report("no-such-decision", "clicked", NOW))
        assert (unknown.status, unknown.reason) == ("aside", "unknown_decision_id")
        assert engine.feedback(_report("no-such-decision", "clicked", NOW)).status == "duplicate"
        early = engine.feedback(_report(did, "opened", NOW - timedelta(days=2)))
        assert (early.status, early.reason) == ("aside", "before_decision")
        for ts in (NOW + timedelta(minutes=6), NOW - timedelta(days=31)):
            with pytest.raises(Unprocessable, match="ts: must lie within 30 days before and 5 minutes"):
                engine.feedback(_report(did, "opened", ts))
    finally:
        engine.close()
    kept, skipped = read_feedback(config.serve.feedback_log_dir)
    aside, _ = read_feedback(config.serve.feedback_log_dir, aside=True)
    assert skipped == 0 and kept["event"].tolist() == ["sent", "converted", "opened"]
    assert kept["revenue"].tolist()[1] == 20.0 and kept["feedback_id"].is_unique
    assert aside["reason"].tolist() == ["unknown_decision_id", "before_decision"]
    # a new process (or a second worker) remembers what was reported: a repeat stays a duplicate
    engine = _engine(config, models, clock)
    try:
        assert engine.feedback(sent).status == "duplicate"
        assert engine.feedback(_report(did, "delivered", NOW)).status == "accepted"
    finally:
        engine.close()


def test_a_batch_decision_published_a_moment_ago_is_known(tmp_path: Path, models: ScoringModels) -> None:
    from engage.scoring.core import score_features
    from engage.scoring.decision_log import DecisionWriter

    config = _config(tmp_path)
    engine = _engine(config, models, [NOW])
    try:
        batch = score_features(
            _features(5), models, policy=config.policy, seed=config.seed, reasons_top_k=None
        )
        with DecisionWriter(config.serve.decision_log_dir, clock=lambda: NOW) as writer:
            writer.write_frame(batch, AS_OF)
        verdict = engine.feedback(_report(batch["decision_id"].iloc[3], "sent", NOW))
        assert verdict.status == "accepted"
    finally:
        engine.close()


@pytest.mark.parametrize("cap_counts", ["decisions", "sent"])
def test_caps_and_cooldowns_count_decisions_or_only_sends(
    tmp_path: Path, models: ScoringModels, cap_counts: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``decisions``: every answer is a contact (the next call picks another message); ``sent``: the
    same message comes back until a ``sent`` report names it, from this process or another."""
    config = _config(tmp_path, **{"policy.cap_counts": cap_counts})
    clock = [NOW]
    engine = _engine(config, models, clock)
    request = ScoreRequest.model_validate({"users": [{"user_id": "u1"}, {"user_id": "u2"}], "explain": False})
    try:
        first = engine.score(request).users
        clock[0] += timedelta(minutes=1)
        second = engine.score(request).users
        top = first[0].message.message_id
        assert top != s.CONTROL_ARM
        if cap_counts == "decisions":
            assert second[0].message.message_id != top, "the first answer counts as a contact"
            return
        assert [a.message.message_id for a in second] == [top, top], "nothing was reported sent"
        engine.feedback(_report(second[0].decision_id, "sent", clock[0]))
        clock[0] += timedelta(minutes=1)
        third = engine.score(request).users
        assert third[0].message.message_id != top and third[1].message.message_id == top
    finally:
        engine.close()
    # another worker reads the decisions and the report back from the logs
    engine = _engine(config, models, clock)
    with monkeypatch.context() as patch:
        patch.setattr("os.getpid", lambda: 2**22 + 7)  # another worker: its own log files
        other = _engine(config, models, clock)
    try:
        assert engine.score(request).users[0].message.message_id != top
        other.feedback(_report(third[1].decision_id, "sent", clock[0]))
        engine.refresh()
        clock[0] += timedelta(minutes=1)
        assert engine.score(request).users[1].message.message_id != top, "the other worker's report counts"
    finally:
        engine.close()
        other.close()
