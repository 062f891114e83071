"""The service's contact history and decision writer: cooldowns and caps hold across requests."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engage import schemas as s
from engage.config import DEFAULT_CATALOG_PATH, PolicyConfig
from engage.offers.catalog import load_catalog
from engage.offers.policy import allowed_arms
from engage.scoring.decision_log import DecisionWriter, read_decisions
from engage.serving.history import ContactHistory

CAT = load_catalog(DEFAULT_CATALOG_PATH)
FEATURE_TIME = datetime(2024, 6, 1, tzinfo=UTC)
RETENTION = pd.Timedelta(days=max([7, *(m.cooldown_days for m in CAT.messages)]))
# the message with the shortest positive cooldown, so "inside" and "after" both fit in its window
MESSAGE = min((m for m in CAT.messages if m.cooldown_days > 0), key=lambda m: m.cooldown_days)


def _features(users: list[str]) -> pd.DataFrame:
    """Users eligible for every message of the default catalog, with consent on every channel."""
    n = len(users)
    return pd.DataFrame(
        {
            s.USER_ID: users,
            s.AS_OF: [pd.Timestamp(FEATURE_TIME)] * n,
            "cart_abandon_count_7d": np.ones(n),
            "product_view_count_28d": np.full(n, 5.0),
            "days_since_last_session": np.full(n, 30.0),
            "session_count_28d": np.ones(n),
            "top_category": "books",
            **{s.consent_column(m.channel): np.ones(n) for m in CAT.messages},
        }
    )


def _allowed(history: ContactHistory, users: list[str], decided_at: datetime) -> pd.DataFrame:
    features = _features(users)
    frame = history.frame(users, decided_at, pd.Timestamp(FEATURE_TIME))
    cap = min(PolicyConfig().max_per_7d, CAT.max_per_7d)
    return allowed_arms(features, CAT, history=frame, as_of=FEATURE_TIME, max_per_7d=cap).set_index(
        features[s.USER_ID]
    )


def test_own_decision_blocks_the_message_inside_its_cooldown_only(tmp_path: Path) -> None:
    history = ContactHistory(tmp_path, retention=RETENTION)
    sent_at = FEATURE_TIME + timedelta(days=3)  # a request days after the snapshot's as_of
    history.record("u1", sent_at, MESSAGE.id)
    inside = _allowed(history, ["u1", "u2"], sent_at + timedelta(hours=1))
    assert not inside.loc["u1", MESSAGE.id]
    assert inside.loc["u2", MESSAGE.id], "another user is not affected"
    after = _allowed(history, ["u1"], sent_at + timedelta(days=MESSAGE.cooldown_days, hours=1))
    assert after.loc["u1", MESSAGE.id], "the cooldown ends"
    same_time = _allowed(history, ["u1"], sent_at)
    assert same_time.loc["u1", MESSAGE.id], "only contacts strictly before the decision count"


def append_decisions(records: list[dict[str, object]], log_dir: Path, *, decided_at: datetime) -> None:
    with DecisionWriter(log_dir) as writer:
        writer.write(records, decided_at)


def test_batch_decisions_and_other_workers_are_read_from_the_log(tmp_path: Path) -> None:
    batch_time = FEATURE_TIME
    append_decisions(
        [
            {s.USER_ID: "b1", s.MESSAGE_ID: MESSAGE.id},
            {s.USER_ID: "b2", s.MESSAGE_ID: s.CONTROL_ARM},
        ],
        tmp_path,
        decided_at=batch_time,
    )
    history = ContactHistory(tmp_path, retention=RETENTION, own_file="decisions-0.jsonl")
    later = batch_time + timedelta(days=1)
    allowed = _allowed(history, ["b1", "b2"], later)
    assert not allowed.loc["b1", MESSAGE.id]
    assert allowed.loc["b2", MESSAGE.id], "'none' is not a contact"
    # batch scoring as of the same time is not affected by its own decisions (parity)
    assert _allowed(history, ["b1"], batch_time).loc["b1", MESSAGE.id]
    # another worker appends after startup: picked up by refresh
    append_decisions([{s.USER_ID: "b2", s.MESSAGE_ID: MESSAGE.id}], tmp_path, decided_at=batch_time)
    assert _allowed(history, ["b2"], later).loc["b2", MESSAGE.id]
    history.refresh()
    assert not _allowed(history, ["b2"], later).loc["b2", MESSAGE.id]


def test_contact_cap_counts_every_message(tmp_path: Path) -> None:
    cap = min(PolicyConfig().max_per_7d, CAT.max_per_7d)
    history = ContactHistory(tmp_path, retention=RETENTION)
    start = FEATURE_TIME + timedelta(days=1)
    others = [m.id for m in CAT.messages if m.id != MESSAGE.id]
    for i in range(cap):
        history.record("u1", start + timedelta(hours=i), others[i % len(others)])
    allowed = _allowed(history, ["u1"], start + timedelta(days=1))
    assert not allowed.loc["u1", [m.id for m in CAT.messages]].any()
    assert allowed.loc["u1", s.CONTROL_ARM]


def test_exposures_table_counts_as_history(tmp_path: Path) -> None:
    path = tmp_path / "exposures.parquet"
    pd.DataFrame(
        {
            s.USER_ID: ["e1", "e2"],
            s.TS: [pd.Timestamp(FEATURE_TIME - timedelta(days=1))] * 2,
            s.MESSAGE_ID: [MESSAGE.id, s.CONTROL_ARM],
            s.CHANNEL: [MESSAGE.channel, None],
        }
    ).to_parquet(path)
    history = ContactHistory(tmp_path / "log", retention=RETENTION, exposures=path)
    allowed = _allowed(history, ["e1", "e2"], FEATURE_TIME)
    assert not allowed.loc["e1", MESSAGE.id] and allowed.loc["e2", MESSAGE.id]


def test_writer_lines_are_read_back_and_a_torn_line_never_breaks_the_reader(tmp_path: Path) -> None:
    decided = datetime(2024, 6, 2, 12, tzinfo=UTC)
    writer = DecisionWriter(tmp_path)
    record = {
        "decision_id": "d1",
        s.USER_ID: "u1",
        s.AS_OF: pd.Timestamp(FEATURE_TIME),
        s.MESSAGE_ID: MESSAGE.id,
        s.PROPENSITY: np.float64(0.95),
        "model_versions": {"churn": "c/1"},
    }
    writer.write([record], decided)
    path = tmp_path / f"date={decided:%Y-%m-%d}" / writer.file_name
    writer.close()
    with path.open("ab") as fh:  # a machine crash in the middle of a line
        fh.write(b'{"decision_id":"d2","user_')
    writer = DecisionWriter(tmp_path)
    writer.write([{**record, "decision_id": "d3"}], decided)
    writer.sync()
    log, skipped = read_decisions(tmp_path)
    assert skipped == 1
    assert log["decision_id"].tolist() == ["d1", "d3"]
    assert log["propensity"].tolist() == [pytest.approx(0.95)] * 2
    assert json.loads(path.read_text().splitlines()[0])["decided_at"] == decided.isoformat()
    history = ContactHistory(tmp_path, retention=RETENTION, own_file=f"decisions-{os.getpid() + 1}.jsonl")
    assert history.skipped == 1
    assert history.entries("u1") == [(pd.Timestamp(decided).value, MESSAGE.id)]
    writer.close()
