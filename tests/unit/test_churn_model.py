"""Churn estimators: out-of-time split, early stopping, calibration, invariances, direction of recency."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import cloudpickle
import numpy as np
import pandas as pd
import pytest

from engage import schemas as s
from engage.config import ChurnModelConfig, load_config
from engage.evaluation.classification import classification_metrics, expected_calibration_error
from engage.models.churn import ChurnModel, LogisticBaseline, RecencyBaseline, out_of_time_split

START = datetime(2024, 1, 1, tzinfo=UTC)


def _table(n: int = 800, snapshots: int = 5, seed: int = 0, drift: float = 0.0) -> pd.DataFrame:
    """Churn driven by recency (up) and a session trend (down); ``drift`` shifts the last two dates."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(snapshots):
        recency = rng.exponential(15, n)
        trend = rng.normal(0, 1, n)
        logit = -2.5 + (drift if k >= snapshots - 2 else 0.0) + 0.12 * recency - 0.8 * trend
        y = rng.random(n) < 1 / (1 + np.exp(-logit))
        never = rng.random(n) < 0.05
        parts.append(
            pd.DataFrame(
                {
                    s.USER_ID: [f"u{i}" for i in range(n)],
                    s.AS_OF: START + timedelta(days=28 * k),
                    "days_since_last_purchase": np.where(never, np.nan, recency),
                    "days_since_last_event": recency * 0.8,
                    "session_rate_ratio_7d_28d": np.exp(trend),
                    "noise": rng.normal(size=n),
                    "top_category": rng.choice(["books", "toys"], n),
                    s.LABEL: y.astype(int),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _fit(
    table: pd.DataFrame, **params: object
) -> tuple[ChurnModel, pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    train, calib, test = out_of_time_split(table)
    cols = [c for c in table.columns if c not in (s.USER_ID, s.AS_OF, s.LABEL)]
    model = ChurnModel(**{"n_estimators": 200, "random_state": 0, "n_jobs": 1, **params}).fit(
        train[cols], train[s.LABEL], X_calib=calib[cols], y_calib=calib[s.LABEL]
    )
    return model, train, calib, test, cols


@pytest.fixture(scope="module")
def fitted() -> tuple[ChurnModel, pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    return _fit(_table())


def test_split_is_out_of_time_and_needs_three_dates() -> None:
    table = _table(50)
    train, calib, test = out_of_time_split(table)
    assert train[s.AS_OF].max() < calib[s.AS_OF].min() == calib[s.AS_OF].max() < test[s.AS_OF].min()
    assert len(train) + len(calib) + len(test) == len(table)
    assert test[s.AS_OF].nunique() == 1 and train[s.AS_OF].nunique() == 3
    train2, calib2, test2 = out_of_time_split(table, validation_snapshots=2)
    assert test2[s.AS_OF].nunique() == 2 and train2[s.AS_OF].nunique() == 2
    assert calib2[s.AS_OF].iloc[0] == START + timedelta(days=56)
    with pytest.raises(ValueError, match="at least 3 snapshot dates"):
        out_of_time_split(table[table[s.AS_OF] <= START + timedelta(days=28)])


def test_early_stopping_stops_and_attributes_are_learned(fitted) -> None:
    model, _, _, test, _ = fitted
    # 200 trees at lr 0.05 on 3,200 noisy rows overfit: early stopping must cut well before the end.
    model_long, *_ = _fit(_table(), n_estimators=2000, learning_rate=0.3)
    assert model_long.best_iteration_ < 300
    assert model_long.booster_.current_iteration() < 2000
    assert model.feature_names_ == [
        "days_since_last_purchase",
        "days_since_last_event",
        "session_rate_ratio_7d_28d",
        "noise",
        "top_category",
    ]
    assert model.categorical_features_ == ["top_category"]
    assert model.categories_ == {"top_category": ["books", "toys"]}
    assert model.predict_proba(test).shape == (len(test), 2)


def test_model_beats_recency_rule_and_metric_keys_are_exact(fitted) -> None:
    model, train, _, test, cols = fitted
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
    recency = RecencyBaseline().fit(train, train[s.LABEL]).predict_proba(test)[:, 1]
    rec = classification_metrics(test[s.LABEL], recency, suffix="_recency")
    assert rec["oot_auc_recency"] < metrics["oot_auc"] - 0.005  # the trend signal is worth ~0.01 AUC
    assert rec["oot_logloss_recency"] > metrics["oot_logloss"]


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_calibration_on_the_later_snapshot_fixes_a_shifted_base_rate(method: str) -> None:
    table = _table(
        n=2000, drift=1.5
    )  # the base rate moved: raw trees are off, calibration on recent data fixes it
    model, _, _, test, cols = _fit(table, calibration=method)
    p = model.predict_proba(test[cols])[:, 1]
    raw = 1 / (1 + np.exp(-model.predict_raw(test[cols])))
    y = test[s.LABEL]
    assert expected_calibration_error(y, p) < expected_calibration_error(y, raw) - 0.05
    assert expected_calibration_error(y, p) < 0.06
    assert np.all((p > 0) & (p < 1))


def test_predictions_ignore_user_id_as_of_and_label(fitted) -> None:
    model, _, _, test, cols = fitted
    other = test.assign(**{s.USER_ID: "someone-else", s.AS_OF: START, s.LABEL: 1 - test[s.LABEL]}).sample(
        frac=1.0, axis=1, random_state=1
    )  # column order shuffled too
    np.testing.assert_array_equal(model.predict_proba(test), model.predict_proba(other))
    np.testing.assert_array_equal(model.predict_proba(test), model.predict_proba(test[cols]))


def test_more_days_since_last_purchase_never_lowers_risk_much(fitted) -> None:
    model, _, _, test, cols = fitted
    base = model.predict_proba(test[cols])[:, 1]
    for extra in (7, 30, 90):
        later = test[cols].assign(
            days_since_last_purchase=test["days_since_last_purchase"] + extra,
            days_since_last_event=test["days_since_last_event"] + extra,
        )
        drop = base - model.predict_proba(later)[:, 1]
        assert (drop > 0.05).mean() < 0.02, extra
        assert (drop < 0).mean() > 0.3  # it does raise risk for many users (the check can fail)


def test_unknown_category_is_missing_and_contributions_sum_to_raw(fitted) -> None:
    model, _, _, test, cols = fitted
    rows = test[cols].head(40)
    unseen = rows.assign(top_category="garden")
    missing = rows.assign(top_category=None)
    np.testing.assert_allclose(model.predict_raw(unseen), model.predict_raw(missing))
    contrib = model.contributions(rows)
    assert list(contrib.columns) == [*model.feature_names_, "bias"]
    assert contrib.index.equals(rows.index)
    np.testing.assert_allclose(contrib.sum(axis=1), model.predict_raw(rows), atol=1e-9)


def test_models_pickle_and_are_deterministic(fitted) -> None:
    model, train, _, test, cols = fitted
    again, *_ = _fit(_table())
    np.testing.assert_array_equal(model.predict_raw(test), again.predict_raw(test))
    logreg = LogisticBaseline().fit(train, train[s.LABEL])
    recency = RecencyBaseline().fit(train, train[s.LABEL])
    for est in (model, logreg, recency):
        loaded = cloudpickle.loads(cloudpickle.dumps(est))
        np.testing.assert_array_equal(loaded.predict_proba(test[cols]), est.predict_proba(test[cols]))


def test_baselines_handle_missing_values_and_are_monotone(fitted) -> None:
    _, train, _, test, cols = fitted
    logreg = LogisticBaseline().fit(train[cols], train[s.LABEL])
    assert "top_category" not in logreg.columns_
    p = logreg.predict_proba(test[cols])[:, 1]
    assert np.isfinite(p).all() and test["days_since_last_purchase"].isna().any()
    assert classification_metrics(test[s.LABEL], p)["oot_auc"] > 0.7
    recency = RecencyBaseline(feature="days_since_last_purchase").fit(train, train[s.LABEL])
    grid = pd.DataFrame({"days_since_last_purchase": [0.0, 5.0, 20.0, 60.0, np.nan]})
    q = recency.predict_proba(grid)[:, 1]
    assert np.all(np.diff(q[:4]) >= 0) and q[3] > q[0]
    assert q[4] == pytest.approx(q[3], abs=0.2)  # never purchased ~ the longest recency seen


def test_fit_rejects_bad_labels() -> None:
    train, calib, _ = out_of_time_split(_table(100))
    with pytest.raises(ValueError, match="both churned and retained"):
        ChurnModel(n_estimators=5).fit(train, np.zeros(len(train)), X_calib=calib, y_calib=calib[s.LABEL])
    with pytest.raises(ValueError, match="expected 10 labels"):
        ChurnModel(n_estimators=5).fit(train, train[s.LABEL], X_calib=calib.head(10), y_calib=calib[s.LABEL])
    with pytest.raises(ValueError, match="calibration must be"):
        ChurnModel(n_estimators=5, calibration="beta").fit(  # type: ignore[arg-type]
            train, train[s.LABEL], X_calib=calib, y_calib=calib[s.LABEL]
        )


def test_monotone_recency_never_lowers_risk_as_recency_grows() -> None:
    table = _table(seed=3)
    model, _, _, test, cols = _fit(table, monotone_recency=True, calibration="platt")
    rows = test[cols].head(50)
    grid = np.linspace(0, 120, 25)
    raws = []
    for value in grid:
        varied = rows.copy()
        varied["days_since_last_event"] = value
        varied["days_since_last_purchase"] = value
        raws.append(model.predict_raw(varied))
    steps = np.diff(np.column_stack(raws), axis=1)
    assert steps.min() >= -1e-9
    assert steps.sum(axis=1).min() > 0  # and recency does raise risk


def test_from_config_passes_every_model_setting_and_the_seed() -> None:
    cc = ChurnModelConfig(
        n_estimators=123,
        learning_rate=0.07,
        num_leaves=9,
        max_depth=5,
        min_child_samples=11,
        monotone_recency=True,
        subsample=0.7,
        colsample_bytree=0.6,
        early_stopping_rounds=13,
        calibration="isotonic",
    )
    params = ChurnModel.from_config(cc, seed=7).get_params()
    passed = {k for k in type(cc).model_fields if k in params}
    assert all(params[k] == getattr(cc, k) for k in passed)
    assert params["random_state"] == 7
    assert set(type(cc).model_fields) - passed == {
        "validation_snapshots",
        "btyd_features",  # a training-table switch (training.churn), not an estimator setting
        "promote_margin",
        "reasons_top_k",
        "risk_bands",
    }, "a new ChurnModelConfig field must be named like the ChurnModel parameter it sets"


def test_training_fits_the_model_from_config() -> None:
    from engage.training.churn import fit_churn

    config = load_config(overrides={"churn.n_estimators": 20, "churn.num_leaves": 5, "seed": 3})
    fit = fit_churn(_table(n=300), config, descriptions={})
    assert fit.bundle.model.get_params() == ChurnModel.from_config(config.churn, seed=3).get_params()
