"""Churn estimators: out-of-time split, calibration, invariance to user_id, direction of recency."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from engage import schemas as s
from engage.evaluation.classification import classification_metrics, expected_calibration_error
from engage.explain import ReasonExplainer, global_drivers
from engage.models.churn import ChurnModel, LogisticBaseline, RecencyBaseline, out_of_time_split


def _table(n: int = 800, snapshots: int = 5, seed: int = 0, drift: float = 0.0) -> pd.DataFrame:
    """Churn driven by recency and a session trend; ``drift`` raises the base rate of the last two dates."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(snapshots):
        recency = rng.exponential(15, n)
        trend = rng.normal(0, 1, n)
        logit = -2.5 + (drift if k >= snapshots - 2 else 0.0) + 0.12 * recency - 0.8 * trend
        y = rng.random(n) < 1 / (1 + np.exp(-logit))
        parts.append(
            pd.DataFrame(
                {
                    s.USER_ID: [f"u{i}" for i in range(n)],
                    s.AS_OF: datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=28 * k),
                    "days_since_last_purchase": recency,
                    "days_since_last_event": recency * 0.8,
                    "session_rate_ratio_7d_28d": np.exp(trend),
                    "noise": rng.normal(size=n),
                    "top_category": rng.choice(["books", "toys"], n),
                    s.LABEL: y.astype(int),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _fit(table):
    train, calib, test = out_of_time_split(table)
    cols = [c for c in table.columns if c not in (s.USER_ID, s.AS_OF, s.LABEL)]
    model = ChurnModel(n_estimators=200, random_state=0).fit(
        train[cols], train[s.LABEL], X_calib=calib[cols], y_calib=calib[s.LABEL]
    )
    return model, train, calib, test, cols


def test_split_is_out_of_time_and_needs_three_dates() -> None:
    table = _table(50)
    train, calib, test = out_of_time_split(table)
    assert train[s.AS_OF].max() < calib[s.AS_OF].min() < test[s.AS_OF].min()
    with pytest.raises(ValueError, match="at least 3 snapshot dates"):
        out_of_time_split(table[table[s.AS_OF] <= table[s.AS_OF].min() + timedelta(days=28)])


def test_model_beats_baselines_is_calibrated_and_keys_are_exact() -> None:
    table = _table(drift=1.5)  # the base rate moved: raw trees are off, calibration on recent data fixes it
    model, train, _, test, cols = _fit(table)
    p = model.predict_proba(test[cols])[:, 1]
    metrics = classification_metrics(test[s.LABEL], p)
    assert set(metrics) == {
        "oot_auc",
        "oot_pr_auc",
        "oot_logloss",
        "oot_brier",
        "oot_ece",
        "oot_lift_top_decile",
    }
    assert metrics["oot_auc"] > 0.75
    raw = 1 / (1 + np.exp(-model.predict_raw(test[cols])))
    assert (
        expected_calibration_error(test[s.LABEL], p) < expected_calibration_error(test[s.LABEL], raw) - 0.05
    )
    logreg = LogisticBaseline().fit(train[cols], train[s.LABEL]).predict_proba(test[cols])[:, 1]
    recency = RecencyBaseline().fit(train[cols], train[s.LABEL]).predict_proba(test[cols])[:, 1]
    assert (
        classification_metrics(test[s.LABEL], recency, suffix="_recency")["oot_auc_recency"]
        < metrics["oot_auc"]
    )
    assert np.isfinite(logreg).all()
    assert model.best_iteration_ < 200


def test_predictions_are_invariant_to_user_id_and_recency_raises_risk() -> None:
    table = _table()
    model, _, _, test, cols = _fit(table)
    renamed = test.assign(**{s.USER_ID: "someone-else"})
    np.testing.assert_array_equal(model.predict_proba(test), model.predict_proba(renamed))
    later = test[cols].assign(
        days_since_last_purchase=test["days_since_last_purchase"] + 30,
        days_since_last_event=test["days_since_last_event"] + 30,
    )
    drop = model.predict_proba(test[cols])[:, 1] - model.predict_proba(later)[:, 1]
    assert (drop > 0.05).mean() < 0.02


def test_pred_contrib_equals_shap_and_reasons_read_well() -> None:
    import shap

    table = _table(300)
    model, train, _, test, cols = _fit(table)
    numeric = [c for c in cols if c != "top_category"]
    contrib = model.contributions(test[cols].head(50))
    explainer = shap.TreeExplainer(model.booster_)
    values = explainer.shap_values(model._prepare(test[cols].head(50)))
    values = values[1] if isinstance(values, list) else values
    np.testing.assert_allclose(contrib[cols].to_numpy(), values, atol=1e-6)
    reasons = (
        ReasonExplainer({"days_since_last_purchase": "Days since the last purchase"})
        .fit(train[cols])
        .explain(contrib, test[cols].head(50))
    )
    texts = [r["text"] for row in reasons for r in row]
    assert any(t.startswith("No purchase for") for t in texts)
    assert all(r["contribution"] > 0 for row in reasons for r in row)
    drivers = global_drivers(contrib, test[cols].head(50), test[s.LABEL].head(50))
    assert drivers.iloc[0]["feature"] in numeric
