"""Reason codes: pred_contrib equals SHAP, plain-word texts, top-k selection, global drivers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from engage.explain import ReasonExplainer, global_drivers
from engage.models.churn import ChurnModel

DESCRIPTIONS = {
    "days_since_last_purchase": "Days since the last purchase",
    "days_since_last_event": "Days since the last activity",
    "session_rate_ratio_7d_28d": "Session rate last 7 days vs the 28 days before",
    "cart_abandon_count_7d": "Abandoned carts in the last 7 days",
    "amount_sum_28d": "Net spend in the last 28 days",
    "email_open_rate_28d": "Email opens per email received in the last 28 days",
    "top_category": "Favourite product category",
}
UNITS = {"days_since_last_purchase": "days", "cart_abandon_count_7d": "carts", "amount_sum_28d": "$"}


def _frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "days_since_last_purchase": np.round(rng.exponential(12, n)),
            "days_since_last_event": np.round(rng.exponential(5, n)),
            "session_rate_ratio_7d_28d": np.exp(rng.normal(0, 0.5, n)),
            "cart_abandon_count_7d": rng.poisson(0.3, n).astype(float),
            "amount_sum_28d": rng.gamma(2, 20, n),
            "email_open_rate_28d": rng.uniform(0, 1, n),
            "top_category": rng.choice(["books", "toys", "garden"], n),
        }
    )


@pytest.fixture(scope="module")
def explainer() -> ReasonExplainer:
    X = _frame()
    X.loc[0, "days_since_last_purchase"] = np.nan
    return ReasonExplainer(descriptions=DESCRIPTIONS, units=UNITS, top_k=3).fit(X)


def test_texts_read_like_a_marketer_wrote_them(explainer: ReasonExplainer) -> None:
    typical = explainer.typical_["days_since_last_purchase"]
    assert np.isfinite(typical) and typical > 0  # NaN ("never") ignored by the median
    assert (
        explainer.text("days_since_last_purchase", 45) == f"No purchase for 45 days (typical: {typical:.0f})"
    )
    assert explainer.text("days_since_last_purchase", np.nan).startswith("No purchase ever")
    assert explainer.text("days_since_last_event", 9).startswith("No activity for 9 days")
    assert explainer.text("session_rate_ratio_7d_28d", 0.4) == "Sessions down 60% vs the previous 4 weeks"
    assert explainer.text("session_rate_ratio_7d_28d", 1.5) == "Sessions up 50% vs the previous 4 weeks"
    assert explainer.text("cart_abandon_count_7d", 3) == "3 abandoned carts in the last 7 days (typical: 0)"
    assert explainer.text("amount_sum_28d", 0).startswith("Net spend in the last 28 days: $0 (typical: $")
    assert explainer.text("email_open_rate_28d", 0.1).startswith(
        "Email opens per email received in the last 28 days: 10% (typical: "
    )
    assert explainer.text("top_category", "garden").startswith("Favourite product category: garden")
    assert explainer.text("unknown_feature_x", 2.5) == "Unknown feature x: 2.5"


def test_typical_values_among_retained_users_when_labels_are_given() -> None:
    X = pd.DataFrame({"days_since_last_purchase": [1.0, 2.0, 3.0, 50.0, 60.0, 70.0]})
    y = np.array([0, 0, 0, 1, 1, 1])
    assert ReasonExplainer(descriptions=DESCRIPTIONS).fit(X).typical_["days_since_last_purchase"] == 26.5
    assert ReasonExplainer(descriptions=DESCRIPTIONS).fit(X, y).typical_["days_since_last_purchase"] == 2.0


def test_explain_picks_top_k_positive_contributions_in_order(explainer: ReasonExplainer) -> None:
    X = _frame(200, seed=1)
    rng = np.random.default_rng(2)
    contrib = pd.DataFrame(rng.normal(0, 1, (200, X.shape[1])), columns=X.columns).assign(bias=-2.0)
    contrib.iloc[5, :-1] = -1.0  # nothing raises this user's risk
    reasons = explainer.explain(contrib, X)
    assert len(reasons) == 200 and reasons[5] == []
    values = contrib.drop(columns="bias").to_numpy()
    for i, row in enumerate(reasons):
        expected = [X.columns[j] for j in np.argsort(-values[i], kind="stable")[:3] if values[i, j] > 0]
        assert [r["feature"] for r in row] == expected
        for r in row:
            assert r["contribution"] == values[i, X.columns.get_loc(r["feature"])] > 0
            raw = X.iloc[i][r["feature"]]
            assert r["value"] == (raw if isinstance(raw, str) else float(raw))
            assert r["text"] == explainer.text(r["feature"], raw)


def test_explain_checks_its_inputs(explainer: ReasonExplainer) -> None:
    X = _frame(10)
    contrib = pd.DataFrame(np.ones((10, X.shape[1])), columns=X.columns).assign(bias=0.0)
    with pytest.raises(NotFittedError, match="not fitted"):
        ReasonExplainer(descriptions=DESCRIPTIONS).explain(contrib, X)
    with pytest.raises(ValueError, match="rows"):
        explainer.explain(contrib, X.head(5))
    with pytest.raises(KeyError, match="top_category"):
        explainer.explain(contrib, X.drop(columns="top_category"))


def test_pred_contrib_equals_shap_tree_explainer_and_feeds_reasons() -> None:
    import shap

    rng = np.random.default_rng(3)
    X = _frame(1500, seed=3)
    logit = -2 + 0.1 * X["days_since_last_purchase"] - 1.0 * np.log(X["session_rate_ratio_7d_28d"])
    y = (rng.random(len(X)) < 1 / (1 + np.exp(-logit))).astype(int)
    model = ChurnModel(n_estimators=40, num_leaves=15, random_state=0, n_jobs=1).fit(
        X.iloc[:1000], y[:1000], X_calib=X.iloc[1000:1300], y_calib=y[1000:1300]
    )
    rows = X.iloc[1300:1400]
    contrib = model.contributions(rows)
    values = shap.TreeExplainer(model.booster_).shap_values(model._prepare(rows))
    values = values[1] if isinstance(values, list) else values
    np.testing.assert_allclose(contrib[model.feature_names_].to_numpy(), values, atol=1e-6)
    explainer = ReasonExplainer(descriptions=DESCRIPTIONS, units=UNITS).fit(X.iloc[:1000], y[:1000])
    reasons = explainer.explain(contrib, rows)
    texts = [r["text"] for row in reasons for r in row]
    assert any(t.startswith("No purchase for") for t in texts)
    assert any(t.startswith("Sessions down") for t in texts)


def test_global_drivers_direction_size_and_groups() -> None:
    rng = np.random.default_rng(4)
    n = 500
    X = pd.DataFrame(
        {
            "up": rng.normal(size=n),
            "down": rng.normal(size=n),
            "flat": np.ones(n),
            "cat": rng.choice(["a", "b"], n),
        }
    )
    contrib = pd.DataFrame(
        {
            "up": 2.0 * X["up"],
            "down": -0.5 * X["down"],
            "flat": 0.0,
            "cat": rng.normal(0, 0.1, n),
            "bias": -1.0,
        }
    )
    y = (X["up"] > 0.5).astype(int)
    table = global_drivers(contrib, X, y)
    assert list(table["feature"]) == ["up", "down", "cat", "flat"]
    by = table.set_index("feature")
    assert by.loc["up", "direction"] == "higher -> more risk"
    assert by.loc["down", "direction"] == "higher -> less risk"
    assert by.loc["flat", "direction"] == "" and by.loc["cat", "direction"] == ""
    assert by.loc["up", "importance"] == pytest.approx(2.0 * X["up"].abs().mean())
    assert by.loc["up", "mean_contribution_churners"] > 0 > by.loc["up", "mean_contribution_retained"]
    assert by.loc["up", "marks"] == "churners"
    assert "marks" not in global_drivers(contrib, X).columns


def test_units_and_shares_in_generic_texts() -> None:
    X = pd.DataFrame(
        {"tenure_days": [100.0, 300.0], "top_category_share_90d": [0.2, 0.6], "x_thing": [1.0, 3.0]}
    )
    descriptions = {
        "tenure_days": "Days since the first activity (or signup)",
        "top_category_share_90d": "Share of product activity in the favourite category",
        "x_thing": "Wishlist size",
    }
    ex = ReasonExplainer(descriptions=descriptions, units={"tenure_days": "days", "x_thing": "items"}).fit(X)
    assert ex.text("tenure_days", 30) == "Days since the first activity (or signup): 30 (typical: 200)"
    assert ex.text("top_category_share_90d", 0.9) == (
        "Share of product activity in the favourite category: 90% (typical: 40%)"
    )
    assert ex.text("x_thing", 7) == "Wishlist size: 7 items (typical: 2)"
