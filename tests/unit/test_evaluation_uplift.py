"""Uplift metrics against row-by-row reference computations and ranking properties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engage.evaluation.uplift import auuc, qini_coefficient, qini_curve, uplift_at_k, uplift_by_arm


def _trial(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Randomized trial where treatment helps only when x > 0; returns y, treated, x."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = rng.random(n) < 0.5
    y = (rng.random(n) < 0.1 + 0.2 * (t & (x > 0))).astype(float)
    return y, t, x


def test_qini_curve_matches_a_row_by_row_reference() -> None:
    y, t, x = _trial(n=300)
    curve = qini_curve(y, t, x)
    order = np.argsort(-x, kind="stable")
    for k in (1, 17, 150, 299, 300):
        top = order[:k]
        yt, yc = y[top][t[top]].sum(), y[top][~t[top]].sum()
        nt, nc = t[top].sum(), (~t[top]).sum()
        expected = yt - (yc * nt / nc if nc else 0.0)
        assert curve["qini"].iloc[k] == pytest.approx(expected)
        assert curve["fraction"].iloc[k] == pytest.approx(k / 300)
    assert curve["qini"].iloc[0] == 0


def test_uplift_at_k_matches_the_definition() -> None:
    y, t, x = _trial(seed=1)
    top = np.argsort(-x, kind="stable")[: round(0.3 * len(x))]
    expected = y[top][t[top]].mean() - y[top][~t[top]].mean()
    assert uplift_at_k(y, t, x, k=0.3) == pytest.approx(expected)
    assert uplift_at_k(y, t, x, k=1.0) == pytest.approx(y[t].mean() - y[~t].mean())
    assert np.isnan(uplift_at_k(y, np.ones(len(y), bool), x))
    with pytest.raises(ValueError):
        uplift_at_k(y, t, x, k=0)


def test_informed_ranking_beats_random_and_random_is_near_zero() -> None:
    y, t, x = _trial(seed=2)
    rng = np.random.default_rng(0)
    noise = [qini_coefficient(y, t, rng.normal(size=len(y))) for _ in range(20)]
    informed = qini_coefficient(y, t, x)
    assert informed > max(noise)
    assert abs(np.mean(noise)) < informed / 5
    assert auuc(y, t, x) > auuc(y, t, -x)
    assert uplift_at_k(y, t, x) > uplift_at_k(y, t, -x)


def test_uplift_by_arm_compares_each_arm_with_control_only() -> None:
    y, t, x = _trial(seed=3)
    rng = np.random.default_rng(1)
    arm = np.where(t, "a", "none")
    arm[rng.random(len(arm)) < 0.2] = "b"
    scores = pd.DataFrame({"a": x, "b": rng.normal(size=len(x))})
    table = uplift_by_arm(y, arm, scores, control="none").set_index("arm")
    keep = np.isin(arm, ["a", "none"])
    assert table.loc["a", "qini"] == pytest.approx(qini_coefficient(y[keep], arm[keep] == "a", x[keep]))
    assert table.loc["a", "n_treated"] == (arm == "a").sum()
    assert table.loc["a", "uplift_at_0.3"] > table.loc["b", "uplift_at_0.3"]


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="length"):
        qini_curve([1, 0], [True], [0.1, 0.2])


def test_plots_return_figures_with_one_line_per_arm_and_one_bar_per_policy() -> None:
    from matplotlib.figure import Figure

    from engage.plots.uplift import policy_values_figure, qini_figure

    y, t, x = _trial(n=500, seed=4)
    fig = qini_figure({"a": qini_curve(y, t, x), "b": qini_curve(y, t, -x)})
    assert isinstance(fig, Figure)
    assert len(fig.axes[0].get_legend().get_texts()) == 2
    values = pd.DataFrame(
        {
            "policy": ["p", "q", "p"],
            "estimator": ["dr", "dr", "ips"],
            "value": [1.0, 2.0, 3.0],
            "ci_low": [0.5, 1.5, 2.0],
            "ci_high": [1.5, 2.5, 4.0],
        }
    )
    bars = policy_values_figure(values)
    assert [tick.get_text() for tick in bars.axes[0].get_yticklabels()] == ["p", "q"]


def test_an_interval_that_misses_its_estimate_is_drawn_not_refused() -> None:
    """A bootstrap percentile interval need not hold its point estimate (few replicates): the plot
    draws that side at the value (matplotlib refused negative whiskers: 'xerr' must not contain
    negative values), and a missing bound draws none."""
    from engage.plots.intervals import ci_whiskers
    from engage.plots.uplift import policy_values_figure

    values = pd.DataFrame(
        {
            "policy": ["p", "q"],
            "estimator": ["dr", "dr"],
            "value": [1.0, 2.0],
            "ci_low": [1.2, np.nan],  # above its estimate
            "ci_high": [1.5, 2.5],
        }
    )
    policy_values_figure(values)
    whiskers = ci_whiskers(values["value"].to_numpy(), values["ci_low"], values["ci_high"])
    np.testing.assert_allclose(whiskers, [[0.0, 0.0], [0.5, 0.5]])
