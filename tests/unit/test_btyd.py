"""BG/NBD and Gamma-Gamma: published CDNOW fit, parameter recovery, summaries and contracts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from engage.models.btyd import (
    BGNBD,
    GammaGamma,
    bgnbd_log_likelihood,
    btyd_features,
    rfm_summary,
    simulate_bgnbd,
)

# Fader, Hardie & Lee (2005), CDNOW 1/10 sample, 39-week calibration, time in weeks.
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
# Fader, Hardie & Lee (2005), "RFM and CLV", same sample: Gamma-Gamma spend model.
PUBLISHED_GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "v": 15.44}


def _cdnow_sample(shared_data: Path) -> pd.DataFrame:
    path = shared_data / "cdnow" / "CDNOW_sample.txt.gz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    frame = pd.read_csv(
        path,
        sep=r"\s+",
        header=None,
        names=["customer_id", "customer_index", "date", "cds", "dollars"],
        dtype={"customer_id": str, "customer_index": str, "date": str},
    )
    frame["ts"] = pd.to_datetime(frame["date"], format="%Y%m%d")
    return frame


@pytest.fixture(scope="module")
def cdnow_summary(shared_data: Path) -> pd.DataFrame:
    frame = _cdnow_sample(shared_data)
    return rfm_summary(frame, "customer_id", "ts", "1997-09-30", unit="W", amount_col="dollars")


@pytest.mark.realdata
def test_cdnow_summary_matches_the_literature_layout(cdnow_summary: pd.DataFrame) -> None:
    # 2,357 customers, all first buying in the first 12 weeks of 1997, so T spans ~27 to 38.86 weeks.
    assert len(cdnow_summary) == 2357
    assert cdnow_summary["T"].max() == pytest.approx(272 / 7)
    assert cdnow_summary["T"].min() > 26
    assert (cdnow_summary["recency"] <= cdnow_summary["T"]).all()
    assert ((cdnow_summary["frequency"] == 0) == (cdnow_summary["recency"] == 0)).all()


@pytest.mark.realdata
def test_bgnbd_reproduces_published_cdnow_fit(cdnow_summary: pd.DataFrame) -> None:
    s = cdnow_summary
    model = BGNBD().fit(s["frequency"], s["recency"], s["T"])
    got = model.params_
    assert got["r"] == pytest.approx(PUBLISHED_BGNBD["r"], abs=0.01)
    assert got["a"] == pytest.approx(PUBLISHED_BGNBD["a"], abs=0.01)
    assert got["alpha"] == pytest.approx(PUBLISHED_BGNBD["alpha"], rel=0.02)
    assert got["b"] == pytest.approx(PUBLISHED_BGNBD["b"], rel=0.02)
    # The optimum is a maximum: the published point is no better than ours.
    published_ll = bgnbd_log_likelihood(
        list(PUBLISHED_BGNBD.values()), s["frequency"], s["recency"], s["T"]
    ).sum()
    assert model.log_likelihood_ >= published_ll - 1e-6


@pytest.mark.realdata
def test_gamma_gamma_reproduces_published_cdnow_fit(cdnow_summary: pd.DataFrame) -> None:
    s = cdnow_summary
    model = GammaGamma().fit(s["frequency"], s["monetary_value"])
    for name, value in PUBLISHED_GAMMA_GAMMA.items():
        assert model.params_[name] == pytest.approx(value, rel=0.02), name
    spend = model.conditional_expected_spend(s["frequency"], s["monetary_value"])
    repeaters = s["frequency"].to_numpy() > 0
    # Shrinkage: predictions lie between each customer's own mean and the population mean.
    population = model.params_["p"] * model.params_["v"] / (model.params_["q"] - 1)
    own = s["monetary_value"].to_numpy()[repeaters]
    lo, hi = np.minimum(own, population), np.maximum(own, population)
    assert np.all((spend[repeaters] >= lo - 1e-9) & (spend[repeaters] <= hi + 1e-9))


def test_bgnbd_recovers_simulated_parameters() -> None:
    truth = {"r": 0.5, "alpha": 6.0, "a": 0.7, "b": 2.5}
    rng = np.random.default_rng(7)
    horizon = rng.uniform(26, 39, size=8000)
    data = simulate_bgnbd(8000, horizon, **truth, seed=11)
    model = BGNBD().fit(data["frequency"], data["recency"], data["T"])
    for name, value in truth.items():
        assert model.params_[name] == pytest.approx(value, rel=0.12), (name, model.params_)


def test_expected_purchases_match_simulated_holdout() -> None:
    truth = {"r": 0.5, "alpha": 6.0, "a": 0.7, "b": 2.5}
    data = simulate_bgnbd(6000, 30.0, **truth, seed=3, horizon=20.0)
    model = BGNBD()
    model.params_ = dict(truth)  # known parameters: checks the prediction formula alone
    predicted = model.expected_purchases(20.0, data["frequency"], data["recency"], data["T"])
    assert predicted.sum() == pytest.approx(data["holdout"].sum(), rel=0.06)
    # Customers with a zero predicted count do not exist; more history means more predicted.
    assert np.all(predicted > 0)
    # New-customer expectation matches the simulated calibration counts.
    assert float(model.expected_purchases_new(30.0)) == pytest.approx(data["frequency"].mean(), rel=0.06)


def test_p_alive_behaves() -> None:
    model = BGNBD()
    model.params_ = dict(PUBLISHED_BGNBD)
    # No repeat purchase: the BG/NBD customer cannot have dropped out yet.
    assert model.p_alive([0], [0], [30])[0] == pytest.approx(1.0)
    # Same history, longer silence since the last purchase: less likely alive.
    p = model.p_alive([3, 3, 3], [10, 10, 10], [12, 20, 38])
    assert np.all(np.diff(p) < 0) and np.all((p > 0) & (p < 1))
    # Stable for a huge frequency (no overflow, no NaN).
    big = model.p_alive([5000], [38], [39])
    assert np.isfinite(big).all()


def test_log_likelihood_is_finite_for_extreme_frequencies() -> None:
    ll = bgnbd_log_likelihood([0.243, 4.414, 0.793, 2.426], [0, 1, 10_000], [0, 0.5, 38], [39, 39, 39])
    assert np.isfinite(ll).all()


def test_rfm_summary_counts_purchase_days_and_monetary_value() -> None:
    tx = pd.DataFrame(
        {
            "user": ["a", "a", "a", "a", "b", "c"],
            "ts": pd.to_datetime(
                [
                    "2024-01-01 09:00",
                    "2024-01-01 18:00",  # same day: one purchase day
                    "2024-01-08 10:00",
                    "2024-02-01 10:00",  # after the calibration end: ignored
                    "2024-01-10 00:00",
                    "2024-02-03 00:00",  # first purchase after the end: user left out
                ],
                utc=True,
            ),
            "amount": [10.0, 5.0, 30.0, 99.0, 7.0, 1.0],
        }
    )
    out = rfm_summary(tx, "user", "ts", "2024-01-15", unit="D", amount_col="amount").set_index("user")
    assert list(out.index) == ["a", "b"]
    expected_a = {
        "frequency": 1,
        "recency": (tx.ts[2].floor("D") - tx.ts[0].floor("D")).days,
        "T": (pd.Timestamp("2024-01-15", tz="UTC") - tx.ts[0].floor("D")).days,
        "monetary_value": tx.amount[2],
    }
    assert out.loc["a"].to_dict() == pytest.approx(expected_a)
    assert out.loc["b", "frequency"] == 0 and out.loc["b", "monetary_value"] == 0
    weeks = rfm_summary(tx, "user", "ts", "2024-01-15", unit="W").set_index("user")
    assert weeks.loc["a", "T"] == pytest.approx(expected_a["T"] / 7)
    assert "monetary_value" not in weeks.columns


def test_rfm_summary_rejects_bad_input() -> None:
    tx = pd.DataFrame({"user": ["a"], "ts": pd.to_datetime(["2024-01-01"])})
    with pytest.raises(ValueError, match="unit"):
        rfm_summary(tx, "user", "ts", "2024-02-01", unit="fortnight")
    with pytest.raises(KeyError, match="when"):
        rfm_summary(tx, "user", "when", "2024-02-01")


def test_estimator_contract() -> None:
    model = BGNBD(penalizer=0.0)
    assert not hasattr(model, "params_")
    with pytest.raises(NotFittedError, match="not fitted"):
        model.p_alive([1], [1], [2])
    with pytest.raises(ValueError, match="recency"):
        model.fit([1, 2], [3, 1], [2, 2])
    with pytest.raises(ValueError, match="whole"):
        model.fit([1.5], [1], [2])
    data = simulate_bgnbd(300, 20.0, r=0.5, alpha=5.0, a=0.8, b=2.0, seed=1)
    assert model.fit(data["frequency"], data["recency"], data["T"]) is model
    assert set(model.params_) == {"r", "alpha", "a", "b"}
    with pytest.raises(ValueError, match="frequency > 0"):
        GammaGamma().fit([0, 0], [0.0, 0.0])


def test_btyd_features_follow_the_point_in_time_rule() -> None:
    model = BGNBD()
    model.params_ = dict(PUBLISHED_BGNBD)
    as_of = pd.Timestamp("2024-03-01", tz="UTC")
    tx = pd.DataFrame(
        {
            "user": ["a", "a", "a", "b", "b"],
            "ts": pd.to_datetime(
                ["2024-01-01", "2024-01-15", "2024-02-20", "2024-01-03", "2024-02-10"], utc=True
            ),
        }
    )
    base = btyd_features(tx, "user", "ts", as_of, model, horizons=(4, 8)).set_index("user")
    # Events at or after as_of (and new users appearing then) change nothing.
    later = pd.DataFrame(
        {"user": ["a", "b", "c"], "ts": pd.to_datetime(["2024-03-01", "2024-03-05", "2024-03-02"], utc=True)}
    )
    after = btyd_features(pd.concat([tx, later]), "user", "ts", as_of, model, horizons=(4, 8)).set_index(
        "user"
    )
    pd.testing.assert_frame_equal(base, after)
    summary = rfm_summary(tx, "user", "ts", as_of).set_index("user")
    expected_alive = model.p_alive(summary["frequency"], summary["recency"], summary["T"])
    np.testing.assert_allclose(base["btyd_p_alive"], expected_alive)
    np.testing.assert_allclose(base["btyd_churn_probability"], 1 - expected_alive)
    four, eight = base["btyd_expected_purchases_4w"], base["btyd_expected_purchases_8w"]
    assert (eight > four).all() and (four > 0).all()


def test_rfm_summary_names_missing_timestamps() -> None:
    tx = pd.DataFrame({"user": ["a", "b"], "ts": pd.to_datetime(["2024-01-01", None])})
    with pytest.raises(ValueError, match=r"'ts'.*row 2"):
        rfm_summary(tx, "user", "ts", "2024-02-01")
