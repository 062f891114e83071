"""The customer-value model of a churn training run, and the BTYD columns of its churn table.

The value model (BTYD + Gamma-Gamma, ``engage.models.value``) is fitted on the features of every
user with an event before the table's latest snapshot date, the same features scoring reads, and
travels in the churn bundle: one registered model, one loading path, and the churn model's BTYD
columns (``churn.btyd_features``) come from the same fitted counts at scoring time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl

from engage import schemas as s
from engage.config import EngageConfig
from engage.models.btyd import FREQUENCY, RECENCY, T_COL, rfm_summary
from engage.models.btyd_snapshots import MIN_BUYERS, make_btyd
from engage.models.value import CustomerValue, btyd_columns, btyd_feature_names

__all__ = ["add_btyd_features", "fit_value"]


def fit_value(events: pl.DataFrame, table: pd.DataFrame, config: EngageConfig) -> CustomerValue | None:
    """The value model fitted as of the table's latest snapshot date; None with too few buyers."""
    from engage.features import build_features

    as_of = pd.Timestamp(table[s.AS_OF].max()).to_pydatetime()
    features = build_features(events.filter(pl.col(s.TS) < as_of), [as_of], config=config.features)
    if int((features["purchase_days_total"] > 0).sum()) < MIN_BUYERS:
        return None
    model = CustomerValue(
        horizon_days=config.value.horizon_days,
        model=config.value.model,
        feature_horizon_days=config.labels.horizon_days,
    )
    return model.fit(features)


def add_btyd_features(table: pd.DataFrame, events: pl.DataFrame, config: EngageConfig) -> pd.DataFrame:
    """The table with BTYD P(alive) and expected purchases in the label horizon, point in time.

    Each snapshot's count model is fitted on purchases before its as_of only and applied to the
    snapshot's own feature rows (as the bundle's value model is at scoring time); NaN for users
    without a purchase and for snapshots with fewer than ``MIN_BUYERS`` buyers.
    """
    purchases = events.filter(pl.col(s.EVENT_TYPE) == "purchase").select(s.USER_ID, s.TS).to_pandas()
    stamps = pd.to_datetime(purchases[s.TS], utc=True)
    as_of = pd.to_datetime(table[s.AS_OF], utc=True)
    names = btyd_feature_names(config.labels.horizon_days)
    out = pd.DataFrame(np.nan, index=table.index, columns=names)
    for cutoff in as_of.unique():
        before = purchases[(stamps < cutoff).to_numpy()]
        if before[s.USER_ID].nunique() < MIN_BUYERS:
            continue
        summary = rfm_summary(before, s.USER_ID, s.TS, cutoff, unit="W")
        counts = make_btyd(config.value.model).fit(summary[FREQUENCY], summary[RECENCY], summary[T_COL])
        rows = (as_of == cutoff).to_numpy()
        out.loc[rows, names] = btyd_columns(table.loc[rows], counts, config.labels.horizon_days).to_numpy()
    return pd.concat([table.drop(columns=[c for c in names if c in table.columns]), out], axis=1)
