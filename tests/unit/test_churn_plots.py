"""Churn plots: every figure builds on the Agg backend from known data and shows what it claims."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from engage.plots import churn as plots


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, dict[str, np.ndarray], pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    n = 600
    X = pd.DataFrame(
        {
            "days_since_last_purchase": np.where(rng.random(n) < 0.1, np.nan, rng.exponential(10, n)),
            "session_count_7d": rng.poisson(3, n).astype(float),
            "top_category": rng.choice(["books", "toys"], n),
        }
    )
    good = rng.beta(2, 5, n)
    y = (rng.random(n) < good).astype(int)
    scores = {"lightgbm": good, "recency": rng.random(n)}
    contrib = pd.DataFrame(
        {
            "days_since_last_purchase": 0.05 * X["days_since_last_purchase"].fillna(40) - 0.5,
            "session_count_7d": -0.01 * X["session_count_7d"],
            "top_category": rng.normal(0, 0.2, n),
            "bias": -1.0,
        }
    )
    return y, scores, X, contrib


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


def test_curve_figures_compare_models_in_one_chart(data) -> None:
    y, scores, _, _ = data
    for make in (plots.roc_figure, plots.pr_figure, plots.calibration_figure):
        fig = make(y, scores)
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert any(label.startswith("lightgbm") for label in labels)
        assert any(label.startswith("recency") for label in labels)
        assert _png(fig).startswith(b"\x89PNG")
    roc_labels = [t.get_text() for t in plots.roc_figure(y, scores).axes[0].get_legend().get_texts()]
    auc_good = float(roc_labels[0].split("AUC ")[1].rstrip(")"))
    auc_random = float(roc_labels[1].split("AUC ")[1].rstrip(")"))
    assert auc_good > auc_random + 0.1
    gain = plots.gain_lift_figure(y, scores)
    assert len(gain.axes) == 2 and _png(gain)
    with pytest.raises(ValueError, match="rows"):
        plots.roc_figure(y[:10], scores)


def test_risk_deciles_show_falling_churn(data) -> None:
    y, scores, _, _ = data
    fig = plots.risk_decile_figure(y, scores["lightgbm"])
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    assert len(heights) == 10 and heights[0] > heights[-1]
    assert _png(fig)


def test_shap_summary_orders_features_by_importance(data) -> None:
    _, _, X, contrib = data
    fig = plots.shap_summary_figure(contrib, X, max_display=2)
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks == ["top_category", "days_since_last_purchase"]  # most important on top
    assert _png(fig)


def test_shap_summary_is_shaps_beeswarm_of_the_given_contributions(data) -> None:
    _, _, X, contrib = data
    before = np.random.get_state()[1].copy()
    fig = plots.shap_summary_figure(contrib, X)
    assert np.array_equal(np.random.get_state()[1], before), "numpy's global generator is left as found"
    dots = np.concatenate([c.get_offsets()[:, 0] for c in fig.axes[0].collections])
    expected = contrib.drop(columns="bias").to_numpy().ravel()
    np.testing.assert_allclose(np.sort(dots), np.sort(expected))  # one dot per user and feature
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "feature value"  # shap's colour bar
    again = plots.shap_summary_figure(contrib, X).axes[0].collections
    assert all(
        np.array_equal(a.get_offsets(), b.get_offsets())
        for a, b in zip(fig.axes[0].collections, again, strict=True)
    )
    with pytest.raises(ValueError, match="rows"):
        plots.shap_summary_figure(contrib, X.head(5))


def test_dependence_figures_for_numeric_and_string_features(data) -> None:
    _, _, X, contrib = data
    figs = plots.dependence_figures(contrib, X, ["days_since_last_purchase", "top_category", "absent"])
    assert set(figs) == {"days_since_last_purchase", "top_category"}
    assert [t.get_text() for t in figs["top_category"].axes[0].get_xticklabels()] == ["books", "toys"]
    assert all(_png(f) for f in figs.values())
