"""Predicted customer value from the feature table: BTYD purchase counts times Gamma-Gamma spend.

The value model reads four standard features (``purchase_days_total``,
``days_since_first_purchase``, ``days_since_last_purchase``, ``purchase_day_amount_mean``), which
every feature engine computes point in time, so batch scores, ``/score`` and Spark get the same
value from the same feature row. From them: frequency x = purchase days - 1, T = days since the
first purchase, recency t_x = T - days since the last purchase (in weeks, the BTYD literature's
unit), and the mean spend per purchase day over all n = x + 1 purchase days.

Per user and horizon: ``predicted_purchases`` (BTYD conditional expectation, MBG/NBD by default),
``predicted_revenue`` (that times the Gamma-Gamma expected spend per purchase, fitted on (n, mean
spend) of every buyer) and ``expected_next_order_days`` (the mean wait at the posterior purchase
rate, (alpha + T) / (r + x) weeks, for users more likely alive than not; NaN otherwise). Users
without a purchase get NaN: they are outside the BTYD population.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from engage.models.btyd import BGNBD, P_ALIVE, FloatArray, GammaGamma, expected_purchases_column
from engage.models.btyd_mbg import MBGNBD
from engage.models.btyd_snapshots import make_btyd

__all__ = [
    "EXPECTED_NEXT_ORDER_DAYS",
    "PREDICTED_PURCHASES",
    "PREDICTED_REVENUE",
    "VALUE_INPUTS",
    "CustomerValue",
    "btyd_columns",
    "btyd_feature_names",
    "expected_purchases",
    "value_inputs",
    "value_segment_summary",
]

VALUE_INPUTS: tuple[str, ...] = (
    "purchase_days_total",
    "days_since_first_purchase",
    "days_since_last_purchase",
    "purchase_day_amount_mean",
)
PREDICTED_PURCHASES = "predicted_purchases"
PREDICTED_REVENUE = "predicted_revenue"
EXPECTED_NEXT_ORDER_DAYS = "expected_next_order_days"
_WEEK = 7.0


def value_inputs(features: pd.DataFrame) -> tuple[np.ndarray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """(buyer mask, x, t_x, T in weeks of whole days, mean spend per purchase day) from a feature table.

    Rows without a purchase (or with a missing input) are not buyers; their entries are 0.
    """
    missing = [c for c in VALUE_INPUTS if c not in features.columns]
    if missing:
        raise ValueError(f"features missing for the value model: {', '.join(missing)}")
    days = features["purchase_days_total"].to_numpy(dtype=float)
    # whole days, rounded up: the calendar-day counts of the BTYD literature (and of rfm_summary)
    # when as_of is a midnight, and few distinct (x, t_x, T) rows, which the fits collapse
    first = np.ceil(features["days_since_first_purchase"].to_numpy(dtype=float))
    last = np.ceil(features["days_since_last_purchase"].to_numpy(dtype=float))
    spend = features["purchase_day_amount_mean"].to_numpy(dtype=float)
    buyer = (days >= 1) & np.isfinite(first) & np.isfinite(last) & np.isfinite(spend)
    x = np.where(buyer, np.maximum(days - 1, 0), 0.0)
    big_t = np.where(buyer, first / _WEEK, 0.0)
    t_x = np.where(buyer & (x > 0), np.clip(big_t - last / _WEEK, 0.0, big_t), 0.0)
    return buyer, x, t_x, big_t, np.where(buyer, spend, 0.0)


def btyd_feature_names(horizon_days: float) -> list[str]:
    """The BTYD columns the churn model may read: P(alive) and expected purchases in the horizon."""
    return [P_ALIVE, expected_purchases_column(horizon_days / _WEEK, "W")]


def expected_purchases(
    counts: BGNBD | MBGNBD, t: float, x: FloatArray, t_x: FloatArray, big_t: FloatArray
) -> FloatArray:
    """The count model's expected purchases in (T, T + t], kept within [0, the no-dropout bound].

    With dropout, a customer buys at most what a never-dropping one would: P(alive) times
    (r + x) / (alpha + T) * t. The closed form's hypergeometric term fails numerically when the fit
    says nobody drops out (a -> 0, b -> inf, as on Online Retail II's half year); then the bound is
    also the limit, and it replaces the non-finite or out-of-range values.
    """
    params = counts.params_
    bound = counts.p_alive(x, t_x, big_t) * (params["r"] + x) / (params["alpha"] + big_t) * t
    with np.errstate(all="ignore"):
        closed = counts.expected_purchases(t, x, t_x, big_t)
    ok = np.isfinite(closed) & (closed >= 0) & (closed <= bound * (1 + 1e-9))
    return np.where(ok, closed, bound)


def btyd_columns(features: pd.DataFrame, counts: BGNBD | MBGNBD, horizon_days: float) -> pd.DataFrame:
    """P(alive) and expected purchases in ``horizon_days`` from a fitted count model (NaN: no purchase)."""
    buyer, x, t_x, big_t, _ = value_inputs(features)
    alive = np.full(len(features), np.nan)
    expected = np.full(len(features), np.nan)
    if buyer.any():
        alive[buyer] = counts.p_alive(x[buyer], t_x[buyer], big_t[buyer])
        expected[buyer] = expected_purchases(counts, horizon_days / _WEEK, x[buyer], t_x[buyer], big_t[buyer])
    names = btyd_feature_names(horizon_days)
    return pd.DataFrame({names[0]: alive, names[1]: expected}, index=features.index)


class CustomerValue(BaseEstimator):
    """BTYD (``model``: "mbgnbd" or "bgnbd") + Gamma-Gamma on the feature table's purchase history.

    ``fit(features)`` fits both on the buyers of one snapshot; when Gamma-Gamma cannot be fitted
    (no positive spend, or a population mean that does not exist, q <= 1) the spend per purchase is
    the buyers' mean spend. ``predict(features)`` returns the value columns over ``horizon_days``
    (a model parameter, so every surface that loads the model counts the same days).
    """

    def __init__(
        self,
        *,
        horizon_days: int = 365,
        model: str = "mbgnbd",
        penalizer: float = 0.0,
        feature_horizon_days: int = 30,
    ) -> None:
        self.horizon_days = horizon_days
        self.model = model
        self.penalizer = penalizer
        self.feature_horizon_days = feature_horizon_days

    def fit(self, features: pd.DataFrame) -> CustomerValue:
        """Fit the count model on every buyer and the spend model on buyers with positive spend."""
        buyer, x, t_x, big_t, spend = value_inputs(features)
        if self.horizon_days <= 0:
            raise ValueError(f"horizon_days must be > 0, got {self.horizon_days}")
        if buyer.sum() < 2:
            raise ValueError("the value model needs at least two users with a purchase")
        counts = make_btyd(self.model).set_params(penalizer=self.penalizer)
        self.counts_: BGNBD | MBGNBD = counts.fit(x[buyer], t_x[buyer], big_t[buyer])
        positive = buyer & (spend > 0)
        self.mean_spend_ = float(spend[positive].mean()) if positive.any() else 0.0
        self.spend_: GammaGamma | None = None
        if positive.sum() >= 10:
            spend_model = GammaGamma(penalizer=self.penalizer).fit(x[positive] + 1, spend[positive])
            if spend_model.params_["q"] > 1:
                self.spend_ = spend_model
        self.n_buyers_ = int(buyer.sum())
        self.reference_revenue_ = float(np.nanmean(self.predict(features)[PREDICTED_REVENUE].to_numpy()))
        return self

    def btyd_features(self, features: pd.DataFrame) -> pd.DataFrame:
        """The churn model's BTYD columns over ``feature_horizon_days`` (the label horizon)."""
        check_is_fitted(self, "counts_")
        return btyd_columns(features, self.counts_, self.feature_horizon_days)

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        """Predicted purchases and revenue over ``horizon_days`` and days to the next order, per row."""
        check_is_fitted(self, "counts_")
        horizon_days = float(self.horizon_days)
        buyer, x, t_x, big_t, spend = value_inputs(features)
        n = len(features)
        purchases = np.full(n, np.nan)
        revenue = np.full(n, np.nan)
        wait = np.full(n, np.nan)
        if buyer.any():
            xb, tb, bigb, sb = x[buyer], t_x[buyer], big_t[buyer], spend[buyer]
            expected = expected_purchases(self.counts_, horizon_days / _WEEK, xb, tb, bigb)
            per_purchase = (
                self.spend_.conditional_expected_spend(xb + 1, np.maximum(sb, 0.0))
                if self.spend_ is not None
                else np.full(len(xb), self.mean_spend_)
            )
            params = self.counts_.params_
            alive = self.counts_.p_alive(xb, tb, bigb)
            days = (params["alpha"] + bigb) / (params["r"] + xb) * _WEEK
            purchases[buyer] = expected
            revenue[buyer] = expected * per_purchase
            wait[buyer] = np.where(alive >= 0.5, days, np.nan)
        return pd.DataFrame(
            {PREDICTED_PURCHASES: purchases, PREDICTED_REVENUE: revenue, EXPECTED_NEXT_ORDER_DAYS: wait},
            index=features.index,
        )


VALUE_SEGMENTS: tuple[tuple[str, float], ...] = (
    ("top 10%", 0.10),
    ("next 20%", 0.30),
    ("middle 40%", 0.70),
    ("bottom 30%", 1.00),
)
NO_PURCHASE_SEGMENT = "no purchase yet"


def value_segment_summary(value: pd.DataFrame) -> pd.DataFrame:
    """Users ranked by predicted revenue into top 10% / next 20% / middle 40% / bottom 30%, plus the
    users without a purchase: per segment the users, the predicted revenue (total, share, mean) and
    the mean predicted purchases. Where the value is: the few at the top usually hold most of it.
    """
    revenue = value[PREDICTED_REVENUE].to_numpy(dtype=float)
    known = np.isfinite(revenue)
    order = np.argsort(-np.where(known, revenue, -np.inf), kind="stable")
    rank = np.empty(len(revenue))
    rank[order] = np.arange(len(revenue))
    share_rank = (rank + 1) / max(int(known.sum()), 1)
    names = np.full(len(revenue), NO_PURCHASE_SEGMENT, dtype=object)
    for name, upper in reversed(VALUE_SEGMENTS):
        names[known & (share_rank <= upper)] = name
    total = float(np.nansum(revenue))
    rows = []
    for name in [n for n, _ in VALUE_SEGMENTS] + [NO_PURCHASE_SEGMENT]:
        mine = names == name
        part = float(np.nansum(revenue[mine]))
        rows.append(
            {
                "segment": name,
                "users": int(mine.sum()),
                "predicted_revenue": part,
                "revenue_share": part / total if total > 0 else float("nan"),
                "mean_predicted_revenue": part / mine.sum()
                if mine.any() and name != NO_PURCHASE_SEGMENT
                else np.nan,
                "mean_predicted_purchases": (
                    float(np.nanmean(value[PREDICTED_PURCHASES].to_numpy(dtype=float)[mine]))
                    if mine.any() and name != NO_PURCHASE_SEGMENT
                    else np.nan
                ),
            }
        )
    return pd.DataFrame(rows)
