"""Send times everywhere the decision goes: champions load the timing model, batch scores, the decision
log and the snapshot carry the send time, and the snapshot's timing columns give the same features."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest

from engage import schemas as s
from engage.config import load_config
from engage.datasets.simulate import simulate, write_simulation
from engage.offers.catalog import load_catalog
from engage.offers.training import fit_offers, offer_table
from engage.scoring.champions import TIMING, load_champions, registry_refs
from engage.scoring.decision_log import read_decisions
from engage.scoring.job import ScoreRunSummary, score_events
from engage.timing.sendtime import quiet_mask
from engage.timing.snapshot import TIMING_COLUMNS, from_columns, scoring_counts, to_columns
from engage.training.churn import train_churn
from engage.training.offers import train_offers
from engage.training.timing import fit_timing, train_timing

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("timing-scoring")
    data = simulate(1_200, 75, seed=5, timing=True)
    write_simulation(data, root / "data")
    cfg = load_config(
        overrides={
            "tracking.uri": f"sqlite:///{root / 'mlflow.db'}",
            "labels.min_churned": 50,
            "labels.min_retained": 50,
            "labels.every_days": 14,
            "churn.n_estimators": 40,
            "offers.n_estimators": 40,
        }
    )
    train_churn(data.events, cfg, users=data.users, exposures=data.exposures)
    table = offer_table(data.events, data.exposures, cfg, users=data.users)
    train_offers(fit_offers(table, cfg, load_catalog(cfg.offers.catalog_path), n_boot=10), cfg)
    without = load_champions(cfg)  # before the timing model is registered
    fit = fit_timing(data.events, cfg, users=data.users, exposures=data.exposures, truth=data.truth)
    assert fit.model.prior.weights.size > 1  # a fitted rhythm mixture, not the empty-history fallback
    train_timing(fit, cfg)
    as_of = (data.events["ts"].max() - timedelta(days=10)).replace(hour=7, minute=30, second=0, microsecond=0)
    return {"root": root, "cfg": cfg, "data": data, "as_of": as_of, "without": without}


def test_champions_load_the_timing_model_when_registered(world: dict) -> None:
    assert world["without"].timing is None
    assert TIMING not in world["without"].versions
    models = load_champions(world["cfg"])
    assert models.timing is not None
    assert TIMING in {ref.role for ref in registry_refs(world["cfg"])}
    assert models.versions[TIMING] == f"{world['cfg'].timing.model_name}/1"


@pytest.fixture(scope="module")
def batch(world: dict) -> ScoreRunSummary:
    cfg, data, as_of, root = world["cfg"], world["data"], world["as_of"], world["root"]
    return score_events(
        data.events,
        as_of,
        load_champions(cfg),
        cfg,
        root / "scores.parquet",
        users=data.users,
        exposures=data.exposures,
        explain_share=0.1,
        users_per_chunk=500,
        snapshot=root / "snapshot.parquet",
        decision_log=root / "decisions",
    )


def test_batch_scores_log_and_snapshot_carry_the_send_time(world: dict, batch: ScoreRunSummary) -> None:
    cfg, as_of, root, summary = world["cfg"], world["as_of"], world["root"], batch
    assert summary.stages["timing"] > 0
    scores = pl.read_parquet(summary.out)
    sent = scores.filter(pl.col(s.MESSAGE_ID) != s.CONTROL_ARM)
    assert sent.height > 0
    assert sent[s.SEND_AT].null_count() == 0
    assert scores.filter(pl.col(s.MESSAGE_ID) == s.CONTROL_ARM)[s.SEND_AT].null_count() == (
        scores.height - sent.height
    )
    window = timedelta(hours=cfg.timing.window_hours)
    stamps = sent[s.SEND_AT].dt.replace_time_zone(None).to_list()
    naive = as_of.replace(tzinfo=None)
    reasons = sent[s.SEND_REASON].to_list()
    for stamp, reason in zip(stamps, reasons, strict=True):  # in the window, else quiet hours filled it
        assert naive <= stamp < naive + window or reason.startswith("quiet hours fill"), (stamp, reason)
    assert sum(naive <= t < naive + window for t in stamps) > 0.9 * len(stamps)
    assert ((sent[s.SEND_PROPENSITY] > 0) & (sent[s.SEND_PROPENSITY] <= 1)).all()
    assert sent[s.SEND_REASON].null_count() == 0

    # quiet hours hold in each user's zone (the zone the batch resolved, kept in the snapshot)
    snapshot = pl.read_parquet(summary.snapshot)
    assert set(TIMING_COLUMNS) <= set(snapshot.columns)
    zones = dict(zip(snapshot[s.USER_ID].to_list(), snapshot["timing_zone"].to_list(), strict=True))
    for ch, quiet in cfg.timing.quiet_hours.items():
        rows = sent.filter(pl.col(s.CHANNEL) == ch)
        local = np.array(
            [
                t.replace(tzinfo=ZoneInfo("UTC")).astimezone(ZoneInfo(zones[u])).hour
                for u, t in zip(rows[s.USER_ID].to_list(), rows[s.SEND_AT].to_list(), strict=True)
            ],
            dtype=np.int64,
        )
        assert not quiet_mask(local, quiet).any(), f"a {ch} send in its quiet hours {quiet}"

    # the decision log carries channel, send time and the pair's propensity
    log, skipped = read_decisions(root / "decisions")
    assert skipped == 0 and len(log) == scores.height
    merged = log.merge(scores.to_pandas(), on="decision_id", suffixes=("", "_score"))
    assert len(merged) == scores.height
    assert (merged[s.CHANNEL] == merged[f"{s.CHANNEL}_score"]).all()
    assert np.allclose(merged[s.PROPENSITY], merged[f"{s.PROPENSITY}_score"])
    logged_sent = merged[merged[s.MESSAGE_ID] != s.CONTROL_ARM]
    assert logged_sent[s.SEND_AT].notna().all()
    assert (
        pl.Series(logged_sent[s.SEND_AT].tolist()).str.to_datetime(time_zone="UTC").dt.replace_time_zone(None)
        == pl.Series(logged_sent[f"{s.SEND_AT}_score"].dt.tz_localize(None).tolist())
    ).all()
    assert np.allclose(logged_sent[s.SEND_PROPENSITY], logged_sent[f"{s.SEND_PROPENSITY}_score"])


def test_the_snapshot_columns_give_back_the_features_and_the_send_times(world: dict) -> None:
    cfg, data, as_of = world["cfg"], world["data"], world["as_of"]
    models = load_champions(cfg)
    assert models.timing is not None
    ids = [*data.users[s.USER_ID].cast(pl.String).head(300).to_list(), "nobody-seen"]
    events = data.events.filter(pl.col(s.TS) < as_of)
    direct = scoring_counts(
        models.timing, events, as_of, cfg.timing, user_ids=ids, users=data.users, exposures=data.exposures
    ).features(models.timing)
    back = from_columns(to_columns(direct), models.timing)
    assert np.array_equal(back.counts, direct.counts)
    assert np.allclose(back.profile, direct.profile)
    for column in ("zone", "zone_source", "open_lift_email", "open_lift_push", "activity_hours"):
        assert back.table[column].to_list() == direct.table[column].to_list(), column
    # a row without timing values (inline features) reads as a new user in UTC
    empty = (
        to_columns(direct)
        .head(1)
        .with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in TIMING_COLUMNS)
    )
    cold = from_columns(empty.to_pandas(), models.timing)
    assert cold.table["zone"][0] == s.UTC and cold.table["zone_source"][0] == "utc"
    assert cold.counts.sum() == 0


def test_the_service_answers_with_the_send_time_from_the_snapshot(
    world: dict, batch: ScoreRunSummary, tmp_path: Path
) -> None:
    """/score (the engine behind it) reads the snapshot's timing columns: the batch's send time for
    the same user, channel and as_of; a request without as_of gets a send time after its clock."""
    from engage.serving.engine import ScoringEngine
    from engage.serving.schemas import ScoreRequest

    cfg, as_of = world["cfg"], world["as_of"]
    assert batch.snapshot is not None
    serve = cfg.serve.model_copy(
        update={"feature_snapshot_path": str(batch.snapshot), "decision_log_dir": str(tmp_path / "log")}
    )
    now = as_of + timedelta(days=2, minutes=17)
    config = cfg.model_copy(update={"serve": serve})
    engine = ScoringEngine(config, load_champions(cfg), watch_seconds=None, clock=lambda: now)
    scores = pl.read_parquet(batch.out).filter(pl.col(s.MESSAGE_ID) != s.CONTROL_ARM).head(40)
    users = [{"user_id": u} for u in scores[s.USER_ID].to_list()]
    try:
        same = engine.score(ScoreRequest(users=users, as_of=as_of)).users
        later = engine.score(ScoreRequest(users=users)).users
    finally:
        engine.close()
    batch_rows = {r[s.USER_ID]: r for r in scores.iter_rows(named=True)}
    compared = 0
    for answer in same:
        row, message = batch_rows[answer.user_id], answer.message
        if message.message_id == s.CONTROL_ARM:
            assert message.send_at is None
            continue
        assert message.send_at is not None and message.send_reason
        if message.channel == row[s.CHANNEL]:
            compared += 1
            assert message.send_at.replace(tzinfo=None) == row[s.SEND_AT].replace(tzinfo=None)
            assert message.send_propensity == pytest.approx(row[s.SEND_PROPENSITY])
    assert compared >= 10
    window = timedelta(hours=cfg.timing.window_hours + 24)
    sent = [a.message for a in later if a.message.message_id != s.CONTROL_ARM]
    assert sent and all(now <= m.send_at < now + window for m in sent if m.send_at is not None)
    assert all(m.send_at is not None for m in sent)
    log, skipped = read_decisions(tmp_path / "log")
    assert skipped == 0 and len(log) == 2 * len(users)
    logged = log[log[s.MESSAGE_ID] != s.CONTROL_ARM]
    assert logged[s.SEND_AT].notna().all() and (logged[s.SEND_PROPENSITY] > 0).all()
