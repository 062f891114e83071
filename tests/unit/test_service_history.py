"""The service's contact history and decision writer: cooldowns and caps hold across requests."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    path = writer.write([record], decided)
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


def _user_line(user_id: str, decided_at: datetime, message_id: str = MESSAGE.id) -> dict[str, object]:
    return {"decision_id": f"{user_id}-{decided_at:%Y%m%d%H%M}", s.USER_ID: user_id, s.MESSAGE_ID: message_id}


def test_a_far_future_contact_is_ignored_and_counted_and_prunes_nothing(tmp_path: Path) -> None:
    """A decision dated in 2199 (a log written before as_of was bounded) must not lift the cap for good.

    Before, it became the user's newest contact and every real one fell out of the retention window.
    """
    now = FEATURE_TIME + timedelta(days=2)
    cap = min(PolicyConfig().max_per_7d, CAT.max_per_7d)
    others = [m.id for m in CAT.messages if m.id != MESSAGE.id]
    sent = [now - timedelta(hours=cap - i) for i in range(cap)]
    for at, message_id in zip(sent, others, strict=False):
        append_decisions([_user_line("u1", at, message_id)], tmp_path, decided_at=at)
    # in its own old-layout date folder, so it is read last
    old = tmp_path / "date=2199-01-01"
    old.mkdir()
    far = datetime(2199, 1, 1, tzinfo=UTC)
    line = {**_user_line("u1", far), "decided_at": far.isoformat()}
    (old / "decisions-1.jsonl").write_text(json.dumps(line) + "\n")
    tolerance = pd.Timedelta(minutes=5)
    history = ContactHistory(tmp_path, retention=RETENTION, future_tolerance=tolerance, clock=lambda: now)
    assert history.future == 1
    assert [stamp for stamp, _ in history.entries("u1")] == [pd.Timestamp(at).value for at in sent]
    allowed = _allowed(history, ["u1"], now + timedelta(minutes=1))
    assert not allowed.loc["u1", [m.id for m in CAT.messages]].any(), "the cap still holds"
    # this process's own decisions obey the same bound; within the tolerance they count
    history.record("u2", now + timedelta(days=400), MESSAGE.id)
    history.record("u3", now + tolerance, MESSAGE.id)
    assert history.future == 2 and history.entries("u2") == []
    assert history.entries("u3") == [(pd.Timestamp(now + tolerance).value, MESSAGE.id)]


def test_a_far_future_exposure_is_ignored_too(tmp_path: Path) -> None:
    path = tmp_path / "exposures.parquet"
    pd.DataFrame(
        {
            s.USER_ID: ["e1", "e1"],
            s.TS: [pd.Timestamp(FEATURE_TIME - timedelta(days=1)), pd.Timestamp("2199-01-01", tz="UTC")],
            s.MESSAGE_ID: [MESSAGE.id, MESSAGE.id],
        }
    ).to_parquet(path)
    history = ContactHistory(
        tmp_path / "log", retention=RETENTION, exposures=path, clock=lambda: FEATURE_TIME
    )
    assert history.future == 1
    assert history.entries("e1") == [(pd.Timestamp(FEATURE_TIME - timedelta(days=1)).value, MESSAGE.id)]


def test_a_log_line_without_user_id_is_skipped_at_start_up(tmp_path: Path) -> None:
    """A well-formed decision line lacking ``user_id`` once stopped the service from starting."""
    at = FEATURE_TIME
    path = DecisionWriter(tmp_path).write([_user_line("u1", at)], at)
    good = json.loads(path.read_text())
    with path.open("a") as fh:
        fh.write(json.dumps({k: v for k, v in good.items() if k != s.USER_ID}) + "\n")
        for when in ("not a time", "now", "", "NaT"):  # pandas reads the last three as times
            fh.write(json.dumps({**good, "decided_at": when}) + "\n")
        fh.write(json.dumps({**good, s.USER_ID: "u2"}) + "\n")
    history = ContactHistory(tmp_path, retention=RETENTION, own_file="decisions-0.jsonl")
    assert history.skipped == 5
    assert history.entries("u1") == history.entries("u2") == [(pd.Timestamp(at).value, MESSAGE.id)]


@settings(max_examples=15, deadline=None)
@given(
    per_day=st.lists(st.integers(1, 200), min_size=20, max_size=40),
    offsets=st.lists(st.integers(-10_000, 1_000), min_size=1, max_size=50),
)
def test_distinct_ids_and_dates_never_grow_the_history_without_bound(
    per_day: list[int], offsets: list[int]
) -> None:
    """Before: every user id ever contacted stayed in memory for the life of the process (a caller
    sending fresh ids grew it for good). Now what a cap or cooldown can still reach is all that is
    held: after the prune, only users contacted within ``retention`` of the newest contact, whatever
    the ids and request dates (far-past replays, near-future skew) callers send."""
    days = RETENTION.days
    clock_at = [FEATURE_TIME]
    history = ContactHistory(
        Path("/nonexistent"), retention=RETENTION, clock=lambda: clock_at[0], prune_seconds=0
    )
    recent: list[set[str]] = []
    for day, count in enumerate(per_day):
        now = FEATURE_TIME + timedelta(days=day)
        clock_at[0] = now
        users = {f"d{day}-u{k}" for k in range(count)}
        for k in range(count):
            history.record(f"d{day}-u{k}", now + timedelta(minutes=offsets[k % len(offsets)]), MESSAGE.id)
        history.refresh()
        recent = [*recent, users][-(days + 2) :]
        assert history.users <= sum(len(u) for u in recent)
    last = len(per_day) - 1
    held = [k for k in range(per_day[-1]) if offsets[k % len(offsets)] <= 5]  # the future ones are refused
    assert history.users >= len(held) and all(history.entries(f"d{last}-u{k}") for k in held[:20])
