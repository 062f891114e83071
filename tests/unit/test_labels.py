"""Churn labels read only [as_of + lead, as_of + lead + horizon); the gate says what is short."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from engage import schemas as s
from engage.config import LabelConfig
from engage.labels import InsufficientDataError, check_sufficiency, churn_labels, snapshot_dates

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)


def _ev(rows):
    return pl.DataFrame(
        {
            s.USER_ID: [r[0] for r in rows],
            s.TS: [AS_OF + timedelta(days=r[1]) for r in rows],
            s.EVENT_TYPE: [r[2] for r in rows],
        },
        schema={s.USER_ID: pl.String, s.TS: s.TS_DTYPE, s.EVENT_TYPE: pl.String},
    )


def test_inactivity_label_and_eligibility() -> None:
    events = _ev(
        [
            ("stay", -5, "page_view"),
            ("stay", 10, "page_view"),
            ("gone", -5, "page_view"),
            ("gone", 40, "page_view"),
            ("old", -200, "page_view"),
            ("old", 5, "page_view"),
        ]
    )
    labels = churn_labels(events, [AS_OF], config=LabelConfig(horizon_days=30, lookback_days=90)).set_index(
        s.USER_ID
    )
    assert labels.loc["stay", s.LABEL] == 0
    assert labels.loc["gone", s.LABEL] == 1  # came back only after the horizon
    assert "old" not in labels.index  # not active in the lookback window


def test_a_label_never_reads_events_before_as_of() -> None:
    base = _ev([("u", -1, "page_view"), ("u", 50, "page_view")])
    noisy = _ev([("u", -1, "page_view"), ("u", -0.5, "purchase"), ("u", 50, "page_view")])
    cfg = LabelConfig()
    assert (
        churn_labels(base, [AS_OF], config=cfg)[s.LABEL].tolist()
        == churn_labels(noisy, [AS_OF], config=cfg)[s.LABEL].tolist()
        == [1]
    )


def test_lead_time_and_cancel_event() -> None:
    events = _ev([("u", -1, "page_view"), ("u", 2, "cancel")])
    lead = churn_labels(
        events, [AS_OF], config=LabelConfig(definition="cancel_event", cancel_event="cancel", lead_days=3)
    )
    now = churn_labels(events, [AS_OF], config=LabelConfig(definition="cancel_event", cancel_event="cancel"))
    assert lead[s.LABEL].tolist() == [0] and now[s.LABEL].tolist() == [1]


def test_snapshots_and_sufficiency_message() -> None:
    dates = snapshot_dates(AS_OF, AS_OF + timedelta(days=56), 28)
    assert dates == [AS_OF, AS_OF + timedelta(days=28), AS_OF + timedelta(days=56)]
    import pandas as pd

    table = pd.DataFrame({s.LABEL: [1] * 10 + [0] * 2000, s.AS_OF: [AS_OF] * 2010})
    with pytest.raises(InsufficientDataError, match=r"10 churned rows \(need 1,000\)"):
        check_sufficiency(table, LabelConfig())
    check_sufficiency(table, LabelConfig(min_churned=10))
