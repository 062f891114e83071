"""Offer training data: exposures with their outcome after the exposure and features before it.

Point in time: the outcome of an exposure at ``ts`` only uses events in ``[ts, ts + window)``
(purchase) or in the horizon window after it (retention); the features come from a callable that
computes them as of each exposure's ``ts`` (only events strictly before it). This module does not
know the feature engine: the caller passes ``features_at``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from engage import schemas as s

Outcome = Literal["purchase", "retention"]
FeaturesAt = Callable[[list[pd.Timestamp]], pd.DataFrame]
# Events the business sends or logs about its own messages: not a sign the user is still there.
MESSAGE_EVENTS: tuple[str, ...] = ("email_open", "email_click", "push_open")


def _require(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{name}: missing column(s) {', '.join(missing)} (has {', '.join(frame.columns)})")


def attach_outcomes(
    exposures: pd.DataFrame,
    events: pd.DataFrame,
    *,
    attribution_days: int = 7,
    outcome: Outcome = "purchase",
    horizon_days: int = 28,
) -> pd.DataFrame:
    """Exposures with ``converted`` (bool) and ``revenue`` (float); given outcomes are kept as they are.

    - ``purchase``: converted = at least one purchase in ``[ts, ts + attribution_days)``; revenue = the
      summed ``amount`` of those purchases (refunds are not netted here).
    - ``retention``: converted = the user is active (any event other than message opens/clicks) in
      ``[ts + horizon_days, ts + horizon_days + attribution_days)``; revenue = purchase amounts in that
      window.
    Rows, order and index of ``exposures`` are preserved.
    """
    if s.CONVERTED in exposures.columns:
        out = exposures.copy()
        if s.REVENUE not in out.columns:
            out[s.REVENUE] = 0.0
        return out
    if attribution_days <= 0 or horizon_days < 0:
        raise ValueError("attribution_days must be > 0 and horizon_days >= 0")
    if outcome not in ("purchase", "retention"):
        raise ValueError(f"outcome must be 'purchase' or 'retention', got {outcome!r}")
    _require(exposures, (s.USER_ID, s.TS), "exposures")
    _require(events, (s.USER_ID, s.TS, s.EVENT_TYPE), "events")
    start = pd.to_timedelta(horizon_days if outcome == "retention" else 0, unit="D")
    window = pd.to_timedelta(attribution_days, unit="D")
    keyed = pd.DataFrame(
        {
            "__row": np.arange(len(exposures)),
            s.USER_ID: exposures[s.USER_ID].astype(str).to_numpy(),
            "__from": (pd.to_datetime(exposures[s.TS], utc=True) + start).to_numpy(dtype="datetime64[us]"),
        }
    )
    keyed["__to"] = keyed["__from"] + window
    if outcome == "purchase":
        hits = events[events[s.EVENT_TYPE] == "purchase"]
    else:
        hits = events[~events[s.EVENT_TYPE].isin(MESSAGE_EVENTS)]
    amount = (
        pd.to_numeric(hits["amount"], errors="coerce").fillna(0.0)
        if "amount" in hits
        else pd.Series(0.0, index=hits.index)
    )
    is_purchase = (hits[s.EVENT_TYPE] == "purchase").to_numpy()
    ev = pd.DataFrame(
        {
            s.USER_ID: hits[s.USER_ID].astype(str).to_numpy(),
            "__ets": pd.to_datetime(hits[s.TS], utc=True).to_numpy(dtype="datetime64[us]"),
            "__amt": np.where(is_purchase, amount.to_numpy(dtype=float), 0.0),
        }
    )
    joined = keyed.merge(ev, on=s.USER_ID, how="inner")
    inside = joined[(joined["__ets"] >= joined["__from"]) & (joined["__ets"] < joined["__to"])]
    agg = inside.groupby("__row").agg(__n=("__ets", "size"), __rev=("__amt", "sum"))
    n = agg["__n"].reindex(np.arange(len(exposures)), fill_value=0).to_numpy()
    rev = agg["__rev"].reindex(np.arange(len(exposures)), fill_value=0.0).to_numpy(dtype=float)
    out = exposures.copy()
    out[s.CONVERTED] = n > 0
    out[s.REVENUE] = rev
    return out


def offer_training_table(
    exposures: pd.DataFrame,
    features_at: FeaturesAt,
    *,
    events: pd.DataFrame | None = None,
    attribution_days: int = 7,
    outcome: Outcome = "purchase",
    horizon_days: int = 28,
) -> pd.DataFrame:
    """One row per exposure: the exposure (ts renamed ``as_of``), its outcome, and the user's features.

    ``features_at(dates)`` must return one row per (user_id, as_of) for the given dates, computed from
    events strictly before each date. Outcomes come from ``events`` unless the exposures carry them.
    An exposure whose user has no feature row keeps NaN features (never dropped silently: the row
    count equals the number of exposures).
    """
    _require(exposures, (s.USER_ID, s.TS, s.MESSAGE_ID), "exposures")
    if s.CONVERTED not in exposures.columns:
        if events is None:
            raise ValueError("exposures carry no 'converted' column: pass the events to derive outcomes")
        logged = attach_outcomes(
            exposures, events, attribution_days=attribution_days, outcome=outcome, horizon_days=horizon_days
        )
    else:
        logged = attach_outcomes(exposures, pd.DataFrame())
    table = logged.rename(columns={s.TS: s.AS_OF}).reset_index(drop=True)
    table[s.AS_OF] = pd.to_datetime(table[s.AS_OF], utc=True)
    table[s.USER_ID] = table[s.USER_ID].astype(str)
    dates = sorted(pd.Timestamp(d) for d in table[s.AS_OF].unique())
    features = features_at(dates)
    _require(features, (s.USER_ID, s.AS_OF), "features")
    features = features.copy()
    features[s.AS_OF] = pd.to_datetime(features[s.AS_OF], utc=True)
    features[s.USER_ID] = features[s.USER_ID].astype(str)
    if features.duplicated([s.USER_ID, s.AS_OF]).any():
        raise ValueError("features: more than one row per (user_id, as_of)")
    clash = [c for c in features.columns if c in table.columns and c not in (s.USER_ID, s.AS_OF)]
    features = features.drop(columns=clash)
    merged = table.merge(features, on=[s.USER_ID, s.AS_OF], how="left", validate="many_to_one")
    if len(merged) != len(table):  # defensive: the merge must not add or drop exposures
        raise AssertionError("feature join changed the number of exposures")
    return merged
