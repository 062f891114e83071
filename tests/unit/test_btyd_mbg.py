"""MBG/NBD: closed forms against direct numerical integration over (lambda, p), fit recovery,
and P(alive) < 1 for customers without repeat purchases (the BG/NBD artefact it removes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats
from sklearn.exceptions import NotFittedError

from engage import schemas as s
from engage.models.btyd import BGNBD
from engage.models.btyd_mbg import MBGNBD, mbgnbd_log_likelihood
from engage.models.btyd_snapshots import make_btyd, snapshot_btyd

PARAMS = {"r": 0.7, "alpha": 3.0, "a": 1.6, "b": 3.5}
CUSTOMERS = [(0.0, 0.0, 10.0), (3.0, 8.0, 20.0)]


def _integrate(x: float, t_x: float, big_t: float, term: str, horizon: float = 0.0) -> float:
    """E over lambda ~ Gamma(r, alpha), p ~ Beta(a, b) of one part of the individual likelihood."""
    r, alpha, a, b = PARAMS["r"], PARAMS["alpha"], PARAMS["a"], PARAMS["b"]

    def integrand(lam: float, p: float) -> float:
        prior = stats.gamma.pdf(lam, r, scale=1 / alpha) * stats.beta.pdf(p, a, b)
        alive = (1 - p) ** (x + 1) * lam**x * np.exp(-lam * big_t)
        dead = p * (1 - p) ** x * lam**x * np.exp(-lam * t_x)
        if term == "all":
            value = alive + dead
        elif term == "alive":
            value = alive
        else:  # expected purchases in (T, T + horizon] of a customer alive at T
            value = alive * (1 - np.exp(-lam * p * horizon)) / p
        return float(prior * value)

    value, _ = integrate.dblquad(integrand, 0, 1, 0, np.inf, epsabs=1e-12, epsrel=1e-7)
    return float(value)


def _fitted() -> MBGNBD:
    model = MBGNBD()
    model.params_ = dict(PARAMS)
    return model


@pytest.mark.parametrize(("x", "t_x", "big_t"), CUSTOMERS)
def test_likelihood_matches_numerical_integration(x: float, t_x: float, big_t: float) -> None:
    closed = mbgnbd_log_likelihood(list(PARAMS.values()), [x], [t_x], [big_t])[0]
    assert closed == pytest.approx(np.log(_integrate(x, t_x, big_t, "all")), rel=1e-5)


@pytest.mark.parametrize(("x", "t_x", "big_t"), CUSTOMERS)
def test_p_alive_and_expected_purchases_match_integration(x: float, t_x: float, big_t: float) -> None:
    model = _fitted()
    total = _integrate(x, t_x, big_t, "all")
    alive = model.p_alive([x], [t_x], [big_t])[0]
    assert alive == pytest.approx(_integrate(x, t_x, big_t, "alive") / total, rel=1e-5)
    expected = model.expected_purchases(12.0, [x], [t_x], [big_t])[0]
    assert expected == pytest.approx(_integrate(x, t_x, big_t, "future", 12.0) / total, rel=1e-4)


def test_one_time_buyers_are_not_certainly_alive_and_fade_with_time() -> None:
    model = _fitted()
    alive = model.p_alive([0, 0, 0], [0, 0, 0], [1.0, 10.0, 50.0])
    assert np.all(alive < 1) and np.all(np.diff(alive) < 0)
    bg = BGNBD()
    bg.params_ = dict(PARAMS)
    assert np.all(bg.p_alive([0, 0], [0, 0], [1.0, 50.0]) == 1.0)  # the artefact MBG/NBD removes


def _simulate(n: int, seed: int, big_t: float) -> pd.DataFrame:
    """Customers from the MBG/NBD process: a dropout chance after the first and every repeat purchase."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(PARAMS["r"], 1 / PARAMS["alpha"], n)
    p = rng.beta(PARAMS["a"], PARAMS["b"], n)
    x, t_x = np.zeros(n), np.zeros(n)
    for i in range(n):
        now = 0.0
        while rng.random() >= p[i]:  # survives the purchase just made
            now += rng.exponential(1 / lam[i])
            if now > big_t:
                break
            x[i] += 1
            t_x[i] = now
    return pd.DataFrame({"frequency": x, "recency": t_x, "T": np.full(n, big_t)})


def test_fit_recovers_simulated_parameters() -> None:
    data = _simulate(3000, seed=3, big_t=40.0)
    model = MBGNBD().fit(data["frequency"], data["recency"], data["T"])
    truth = np.array(list(PARAMS.values()))
    fitted = np.array([model.params_[k] for k in PARAMS])
    assert np.all(np.abs(np.log(fitted / truth)) < 0.35), model.params_
    bg = BGNBD().fit(data["frequency"], data["recency"], data["T"])
    assert model.log_likelihood_ > bg.log_likelihood_  # the true model fits its own data better


def test_errors_and_contract() -> None:
    with pytest.raises(NotFittedError):
        MBGNBD().p_alive([0], [0], [1])
    with pytest.raises(ValueError, match="penalizer"):
        MBGNBD(penalizer=-1).fit([0], [0], [1])
    with pytest.raises(ValueError, match="unknown BTYD model"):
        make_btyd("pareto")


def test_snapshot_btyd_reads_only_purchases_before_each_as_of() -> None:
    rng = np.random.default_rng(0)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    buys = pd.DataFrame(
        {
            s.USER_ID: rng.integers(0, 200, 3000).astype(str),
            s.TS: start + pd.to_timedelta(rng.uniform(0, 200, 3000), unit="D"),
        }
    )
    as_of = start + pd.Timedelta(days=120)
    keys = pd.DataFrame({s.USER_ID: [str(u) for u in range(200)], s.AS_OF: as_of})
    before = snapshot_btyd(buys, keys, kind="mbgnbd", horizon_days=30)
    later = pd.concat([buys[buys[s.TS] < as_of], buys.assign(**{s.TS: buys[s.TS] + pd.Timedelta(days=400)})])
    again = snapshot_btyd(later, keys, kind="mbgnbd", horizon_days=30)
    pd.testing.assert_frame_equal(before, again)
    assert before["btyd_p_alive"].notna().all() and (before["btyd_p_alive"] < 1).all()
