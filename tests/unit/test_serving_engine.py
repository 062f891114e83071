"""The request engine behind ``/score``, in-process: no bentoml, the batch answer, errors as exceptions."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engage import schemas as s
from engage.config import DEFAULT_CATALOG_PATH, EngageConfig, load_config
from engage.models.bundle import ChurnBundle, OfferBundle
from engage.models.churn import RecencyBaseline
from engage.models.uplift import MultiArmUplift
from engage.offers.catalog import load_catalog
from engage.scoring.core import ScoringModels, score_features
from engage.scoring.decision_log import read_decisions
from engage.serving.engine import PayloadTooLarge, ScoringEngine, Unprocessable
from engage.serving.schemas import ExplainRequest, ScoreRequest

CAT = load_catalog(DEFAULT_CATALOG_PATH)
AS_OF = datetime(2024, 6, 1, tzinfo=UTC)
OFFER_FEATURES = ["days_since_last_session", "session_count_28d"]
MAX_USERS = 5


def test_the_engine_and_its_parts_import_without_bentoml() -> None:
    """The request engine is plain Python: importing it (and what it is built from) loads no bentoml."""
    code = textwrap.dedent(
        """
        import sys
        import engage.serving
        import engage.serving.engine, engage.serving.history, engage.serving.inline
        import engage.serving.snapshot, engage.serving.auth, engage.serving.settings
        import engage.serving.process
        loaded = sorted(m for m in sys.modules if m == "bentoml" or m.startswith(("bentoml.", "_bentoml")))
        assert not loaded, loaded
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def _features(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            s.USER_ID: [f"u{i}" for i in range(n)],
            s.AS_OF: pd.Timestamp(AS_OF),
            "days_since_last_event": rng.integers(0, 60, n).astype(float),
            "cart_abandon_count_7d": rng.integers(0, 2, n).astype(float),
            "product_view_count_28d": rng.integers(0, 5, n).astype(float),
            "days_since_last_session": rng.integers(0, 40, n).astype(float),
            "session_count_28d": rng.integers(0, 5, n).astype(float),
            "top_category": "books",
            **{s.consent_column(m.channel): 1.0 for m in CAT.messages},
        }
    )


@pytest.fixture(scope="module")
def models() -> ScoringModels:
    train = _features(1500, seed=2)
    rng = np.random.default_rng(3)
    churned = (rng.random(len(train)) < train["days_since_last_event"] / 80).astype(int)
    churn = RecencyBaseline(feature="days_since_last_event").fit(train, churned)
    arms = rng.choice(CAT.arms, len(train))
    converted = (rng.random(len(train)) < 0.1 + 0.1 * (arms != s.CONTROL_ARM)).astype(float)
    uplift = MultiArmUplift(learner="t", n_estimators=5, min_child_samples=20).fit(
        train[OFFER_FEATURES], arms, converted
    )
    return ScoringModels(
        churn=ChurnBundle(model=churn, explainer=None, feature_names=["days_since_last_event"]),
        catalog=CAT,
        offers=OfferBundle(model=uplift, feature_names=OFFER_FEATURES),
        versions={"churn": "engage-churn/1", "offers": "engage-offers/1"},
    )


@pytest.fixture
def world(tmp_path: Path) -> tuple[EngageConfig, pd.DataFrame]:
    snapshot = _features(20, seed=5)
    path = tmp_path / "snapshot.parquet"
    snapshot.to_parquet(path)
    config = load_config(
        overrides={
            "serve.max_users_per_request": MAX_USERS,
            "serve.feature_snapshot_path": str(path),
            "serve.decision_log_dir": str(tmp_path / "decisions"),
        }
    )
    return config, snapshot


def _request(users: list[str], **fields: object) -> ScoreRequest:
    return ScoreRequest.model_validate({"users": [{"user_id": u} for u in users], **fields})


def test_more_users_than_the_limit_is_payload_too_large_and_decides_nothing(
    world: tuple[EngageConfig, pd.DataFrame], models: ScoringModels
) -> None:
    config, _ = world
    engine = ScoringEngine(config, models, watch_seconds=None)
    try:
        with pytest.raises(PayloadTooLarge, match=f"at most {MAX_USERS} users per request, got 6"):
            engine.score(_request([f"u{i}" for i in range(MAX_USERS + 1)], explain=False))
        assert issubclass(PayloadTooLarge, ValueError)
        assert len(engine.score(_request([f"u{i}" for i in range(MAX_USERS)], explain=False)).users) == 5
    finally:
        engine.close()
    log, _ = read_decisions(config.serve.decision_log_dir)
    assert len(log) == MAX_USERS, "only the request within the limit is logged"


def test_a_snapshot_user_gets_the_batch_answer_and_it_is_logged(
    world: tuple[EngageConfig, pd.DataFrame], models: ScoringModels
) -> None:
    config, snapshot = world
    users = ["u3", "u0", "u11"]
    engine = ScoringEngine(config, models, watch_seconds=None)
    try:
        answers = engine.score(_request(users, as_of=AS_OF, explain=False)).users
    finally:
        engine.close()
    rows = snapshot.set_index(s.USER_ID).loc[users].reset_index()
    batch = score_features(rows, models, policy=config.policy, seed=config.seed, reasons_top_k=None)
    assert [a.user_id for a in answers] == users
    for answer, (_, expected) in zip(answers, batch.iterrows(), strict=True):
        assert answer.cold_start is False and answer.reasons == []
        assert answer.churn_probability == pytest.approx(float(expected["churn_probability"]), abs=1e-12)
        assert answer.message.message_id == expected[s.MESSAGE_ID]
        assert answer.message.propensity == pytest.approx(float(expected[s.PROPENSITY]))
        assert answer.message.intended_message_id == expected[s.INTENDED_MESSAGE_ID]
        assert answer.decision_id != expected["decision_id"], "a /score decision is not the batch's"
        assert answer.model_versions == models.versions
    log, skipped = read_decisions(config.serve.decision_log_dir)
    assert skipped == 0
    assert sorted(log["decision_id"]) == sorted(a.decision_id for a in answers)
    by_id = log.set_index("decision_id")
    for answer in answers:
        assert by_id.loc[answer.decision_id, s.INTENDED_MESSAGE_ID] == answer.message.intended_message_id


def test_repeated_calls_for_one_user_and_day_are_distinct_decisions(
    world: tuple[EngageConfig, pd.DataFrame], models: ScoringModels
) -> None:
    """The same request twice gives the same answer (same draws) but two decision ids, snapshot
    users and cold starts alike, and across engines (processes)."""
    config, _ = world
    users = ["u1", "u2", "nobody"]
    answers = []
    for _ in range(2):
        engine = ScoringEngine(config, models, watch_seconds=None)
        try:
            for _ in range(25):
                answers += engine.score(_request(users, as_of=AS_OF, explain=False)).users
        finally:
            engine.close()
    ids = [a.decision_id for a in answers]
    assert len(set(ids)) == len(ids) == 150
    for user in users:
        mine = [a for a in answers if a.user_id == user]
        assert len({(a.message.message_id, a.message.propensity) for a in mine}) == 1
    log, _ = read_decisions(config.serve.decision_log_dir)
    assert log["decision_id"].is_unique and len(log) == 150


def test_an_unknown_user_is_a_cold_start_at_the_population_prior(
    world: tuple[EngageConfig, pd.DataFrame], models: ScoringModels
) -> None:
    config, snapshot = world
    engine = ScoringEngine(config, models, watch_seconds=None)
    try:
        (answer,) = engine.score(_request(["nobody"])).users
        explained = engine.explain(ExplainRequest(user_id="nobody"))
    finally:
        engine.close()
    prior = float(np.mean(models.churn.churn_probability(snapshot)))
    assert answer.cold_start is True and answer.feature_as_of is None
    assert answer.churn_probability == pytest.approx(prior)
    assert answer.message.message_id == s.CONTROL_ARM and answer.message.propensity == 1.0
    assert explained.cold_start is True and explained.contributions == []


def test_inline_events_that_give_no_features_are_unprocessable(
    world: tuple[EngageConfig, pd.DataFrame], models: ScoringModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise TypeError("SENTINEL-value-that-must-not-leak")

    monkeypatch.setattr("engage.serving.engine.inline_features", broken)
    config, _ = world
    engine = ScoringEngine(config, models, watch_seconds=None)
    event = {"ts": AS_OF - timedelta(days=1), "event_type": "page_view"}
    try:
        with pytest.raises(Unprocessable, match=r"users\[\]\.events.*\(TypeError\)") as caught:
            engine.score(ScoreRequest.model_validate({"users": [{"user_id": "i1", "events": [event]}]}))
    finally:
        engine.close()
    assert "SENTINEL" not in str(caught.value) and caught.value.__cause__ is None


# --- hardening: the server's clock, request size, a hostile log -------------------------------
NOW = AS_OF + timedelta(days=1)  # the server's clock in these tests: a day after the snapshot


def _engine(
    config: EngageConfig, models: ScoringModels, clock: list[datetime] | None = None
) -> ScoringEngine:
    now = clock or [NOW]
    return ScoringEngine(config, models, watch_seconds=None, clock=lambda: now[0])


@pytest.mark.parametrize(
    ("as_of", "accepted"),
    [
        (NOW + timedelta(minutes=5), True),
        (NOW + timedelta(minutes=5, seconds=1), False),
        (datetime(2199, 12, 31, tzinfo=UTC), False),
        (NOW - timedelta(days=3650), True),
        (NOW - timedelta(days=3650, seconds=1), False),
    ],
)
def test_as_of_must_lie_near_the_server_clock(
    world: tuple[EngageConfig, pd.DataFrame], models: ScoringModels, as_of: datetime, accepted: bool
) -> None:
    """``serve.max_future_minutes`` (5) ahead and ``serve.max_past_days`` (3650) behind; 422 beyond."""
    config, _ = world
    engine = _engine(config, models)
    try:
        if accepted:
            assert len(engine.score(_request(["u1"], as_of=as_of, explain=False)).users) == 1
            assert engine.explain(ExplainRequest(user_id="nobody", as_of=as_of)).cold_start
        else:
            with pytest.raises(
                Unprocessable, match=r"^as_of: must lie within 3650 days before and 5 minutes"
            ):
                engine.score(_request(["u1"], as_of=as_of, explain=False))
            with pytest.raises(Unprocessable, match=r"^as_of: "):
                engine.explain(ExplainRequest(user_id="u1", as_of=as_of))
    finally:
        engine.close()
    log, _ = read_decisions(config.serve.decision_log_dir)
    assert len(log) == int(accepted)


def test_the_log_is_partitioned_by_the_server_clock_and_keeps_the_decision_time(
    world: tuple[EngageConfig, pd.DataFrame], models: ScoringModels
) -> None:
    config, _ = world
    engine = _engine(config, models)
    past = NOW - timedelta(days=400)
    try:
        engine.score(_request(["u1"], as_of=past, explain=False))
        engine.score(_request(["u2"], explain=False))
    finally:
        engine.close()
    folders = sorted(p.name for p in Path(config.serve.decision_log_dir).iterdir())
    assert folders == [f"date={NOW:%Y-%m-%d}"]
    log, skipped = read_decisions(config.serve.decision_log_dir)
    assert skipped == 0
    assert log["decided_at"].tolist() == [past.isoformat(), NOW.isoformat()]


def test_too_many_inline_events_is_payload_too_large_before_any_feature_work(
    world: tuple[EngageConfig, pd.DataFrame], models: ScoringModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve.max_inline_events`` counts every user's events of one request (413), then nothing runs."""
    config, _ = world
    config = config.model_copy(update={"serve": config.serve.model_copy(update={"max_inline_events": 50})})

    def no_feature_work(*_: object) -> None:
        raise AssertionError("features were computed for a request over the limit")

    monkeypatch.setattr("engage.serving.engine.inline_features", no_feature_work)
    event = {"ts": AS_OF - timedelta(hours=1), "event_type": "page_view"}
    over = {
        "users": [{"user_id": f"i{i}", "events": [event] * 25} for i in range(2)]
        + [{"user_id": "i2", "events": [event]}]
    }
    engine = _engine(config, models)
    try:
        with pytest.raises(
            PayloadTooLarge, match=r"users\[\]\.events: at most 50 inline events per request, got 51"
        ):
            engine.score(ScoreRequest.model_validate(over))
        with pytest.raises(PayloadTooLarge, match="got 51"):
            engine.explain(ExplainRequest(user_id="i1", events=[event] * 51))
    finally:
        engine.close()
    log, _ = read_decisions(config.serve.decision_log_dir)
    assert log.empty


class RankedGains:
    """An offers model stand-in: every message gains, in catalog order, so the policy sends."""

    feature_names: tuple[str, ...] = ()

    def gain_matrix(self, features: pd.DataFrame, catalog: object) -> tuple[np.ndarray, np.ndarray]:
        """Gains per catalog arm (`none` first, then each message in catalog order) and all modelled."""
        arms = [m.id for m in CAT.messages]
        row = [0.0, *(float(len(arms) - i) for i in range(len(arms)))]
        return np.tile(row, (len(features), 1)), np.ones(len(row), dtype=bool)


def test_the_contact_cap_holds_with_a_far_future_decision_in_the_log(
    world: tuple[EngageConfig, pd.DataFrame], models: ScoringModels
) -> None:
    """The reported attack: after a decision dated 2199, a user got 4 messages against a cap of 2.

    At start-up that line (in its ``date=2199-...`` folder of the old layout, read last) became the
    user's newest contact and pruned the real ones.
    """
    config, _ = world
    config = config.model_copy(update={"policy": config.policy.model_copy(update={"exploration": "none"})})
    sender = ScoringModels(churn=models.churn, catalog=CAT, offers=RankedGains(), versions=models.versions)
    cap = min(config.policy.max_per_7d, CAT.max_per_7d)
    clock = [NOW]
    sent: list[str] = []
    for _ in range(2):  # a worker, then its replacement that reads everything back from the log
        engine = _engine(config, sender, clock)
        try:
            for _ in range(cap + 1):
                clock[0] += timedelta(hours=1)
                sent.append(engine.score(_request(["u1"], explain=False)).users[0].message.message_id)
        finally:
            engine.close()
        far = datetime(2199, 1, 1, tzinfo=UTC)
        folder = Path(config.serve.decision_log_dir) / f"date={far:%Y-%m-%d}"
        folder.mkdir(exist_ok=True)
        line = {"decision_id": "x", s.USER_ID: "u1", s.MESSAGE_ID: CAT.messages[0].id, "decided_at": str(far)}
        (folder / "decisions-1.jsonl").write_text(json.dumps(line) + "\n")
    assert sum(m != s.CONTROL_ARM for m in sent) == cap, sent
    assert engine.history.future == 1, "the far-future line is ignored and counted"


@pytest.mark.parametrize("rows", [[3], [2, 3, 4], [4, 3], [0, 2], [], [5]])
def test_snapshot_rows_by_slice_or_take_are_the_same_rows(rows: list[int]) -> None:
    """A request's consecutive snapshot rows are sliced, others taken: the same frame either way."""
    from engage.serving.engine import _rows

    frame = pd.DataFrame(
        {
            s.USER_ID: pd.Series([f"u{i}" for i in range(6)], dtype="str"),
            "x": np.arange(6, dtype=float),
            "plan": pd.Series(["a", None, "b", "c", None, "d"], dtype="str"),
        },
        index=pd.RangeIndex(10, 16),
    )
    got = _rows(frame, rows)
    expected = frame.iloc[rows].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)
    assert got.index.equals(pd.RangeIndex(len(rows)))
