"""Every estimator keeps the scikit-learn contract: keyword-only __init__ that only stores, clone
round-trips, get/set_params, fit returns self with learned attributes ending in ``_``, and a clear
``NotFittedError`` (never an AttributeError) from every predict-like method before fit."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError

from engage.explain import ReasonExplainer
from engage.models.btyd import BGNBD, GammaGamma, simulate_bgnbd
from engage.models.btyd_mbg import MBGNBD
from engage.models.churn import ChurnModel, LogisticBaseline, RecencyBaseline
from engage.models.uplift import MultiArmUplift
from engage.models.value import CustomerValue

NOT_PREDICT = {"fit", "fit_oof", "drop_heterogeneity", "from_config"}
"""Own public methods that are not predict-like (fitting, or changing a fitted model)."""


def _frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    recency = rng.exponential(10, n)
    X = pd.DataFrame(
        {
            "days_since_last_event": np.where(rng.random(n) < 0.1, np.nan, recency),
            "session_count_7d": rng.poisson(3, n).astype(float),
            "top_category": rng.choice(["books", "toys"], n),
        }
    )
    y = (rng.random(n) < 1 / (1 + np.exp(2 - 0.15 * recency))).astype(int)
    return X, y


X_TRAIN, Y_TRAIN = _frame(400, 0)
X_CALIB, Y_CALIB = _frame(200, 1)
ARM = np.where(np.arange(400) % 2 == 0, "none", "coupon")
RFM = simulate_bgnbd(200, 20.0, r=0.5, alpha=5.0, a=0.8, b=2.0, seed=1)
SPEND = np.random.default_rng(2).gamma(2.0, 10.0, 200)
VALUE_FEATURES = pd.DataFrame(
    {
        "purchase_days_total": RFM["frequency"] + 1,
        "days_since_first_purchase": RFM["T"] * 7,
        "days_since_last_purchase": (RFM["T"] - RFM["recency"]) * 7,
        "purchase_day_amount_mean": SPEND,
    }
)
CONTRIB = pd.DataFrame(np.random.default_rng(3).normal(size=(10, 3)), columns=X_TRAIN.columns).assign(
    bias=0.0
)


@dataclass
class Case:
    """How to build, fit and call one estimator on small synthetic data."""

    make: Callable[[], Any]
    fit: Callable[[Any], Any]
    predicts: dict[str, Callable[[Any], Any]]
    change: dict[str, Any]


CASES: dict[str, Case] = {
    "ChurnModel": Case(
        make=lambda: ChurnModel(n_estimators=5, n_jobs=1, random_state=3),
        fit=lambda m: m.fit(X_TRAIN, Y_TRAIN, X_calib=X_CALIB, y_calib=Y_CALIB),
        predicts={
            "predict_raw": lambda m: m.predict_raw(X_CALIB),
            "predict_proba": lambda m: m.predict_proba(X_CALIB),
            "predict": lambda m: m.predict(X_CALIB),
            "contributions": lambda m: m.contributions(X_CALIB),
        },
        change={"num_leaves": 3},
    ),
    "LogisticBaseline": Case(
        make=lambda: LogisticBaseline(C=0.5),
        fit=lambda m: m.fit(X_TRAIN, Y_TRAIN),
        predicts={
            "predict_proba": lambda m: m.predict_proba(X_CALIB),
            "predict": lambda m: m.predict(X_CALIB),
        },
        change={"max_iter": 50},
    ),
    "RecencyBaseline": Case(
        make=lambda: RecencyBaseline(feature="days_since_last_event"),
        fit=lambda m: m.fit(X_TRAIN, Y_TRAIN),
        predicts={
            "predict_proba": lambda m: m.predict_proba(X_CALIB),
            "predict": lambda m: m.predict(X_CALIB),
        },
        change={"feature": "session_count_7d"},
    ),
    "MultiArmUplift": Case(
        make=lambda: MultiArmUplift(learner="t", n_estimators=3, min_child_samples=20),
        fit=lambda m: m.fit(X_TRAIN, ARM, Y_TRAIN),
        predicts={
            "predict_outcomes": lambda m: m.predict_outcomes(X_CALIB),
            "outcome_matrix": lambda m: m.outcome_matrix(X_CALIB),
            "predict_uplift": lambda m: m.predict_uplift(X_CALIB),
        },
        change={"learner": "s"},
    ),
    "BGNBD": Case(
        make=lambda: BGNBD(maxiter=200),
        fit=lambda m: m.fit(RFM["frequency"], RFM["recency"], RFM["T"]),
        predicts={
            "p_alive": lambda m: m.p_alive(RFM["frequency"], RFM["recency"], RFM["T"]),
            "expected_purchases": lambda m: m.expected_purchases(
                4.0, RFM["frequency"], RFM["recency"], RFM["T"]
            ),
            "expected_purchases_new": lambda m: m.expected_purchases_new(4.0),
        },
        change={"penalizer": 0.01},
    ),
    "MBGNBD": Case(
        make=lambda: MBGNBD(maxiter=200),
        fit=lambda m: m.fit(RFM["frequency"], RFM["recency"], RFM["T"]),
        predicts={
            "p_alive": lambda m: m.p_alive(RFM["frequency"], RFM["recency"], RFM["T"]),
            "expected_purchases": lambda m: m.expected_purchases(
                4.0, RFM["frequency"], RFM["recency"], RFM["T"]
            ),
            "expected_purchases_new": lambda m: m.expected_purchases_new(4.0),
        },
        change={"penalizer": 0.01},
    ),
    "CustomerValue": Case(
        make=lambda: CustomerValue(horizon_days=90),
        fit=lambda m: m.fit(VALUE_FEATURES),
        predicts={
            "predict": lambda m: m.predict(VALUE_FEATURES),
            "btyd_features": lambda m: m.btyd_features(VALUE_FEATURES),
        },
        change={"horizon_days": 30},
    ),
    "GammaGamma": Case(
        make=lambda: GammaGamma(maxiter=200),
        fit=lambda m: m.fit(RFM["frequency"] + 1, SPEND),
        predicts={"conditional_expected_spend": lambda m: m.conditional_expected_spend([1, 2], [10.0, 30.0])},
        change={"penalizer": 0.01},
    ),
    "ReasonExplainer": Case(
        make=lambda: ReasonExplainer(
            descriptions={"session_count_7d": "Sessions in the last 7 days"}, top_k=2
        ),
        fit=lambda m: m.fit(X_TRAIN, Y_TRAIN),
        predicts={
            "explain": lambda m: m.explain(CONTRIB, X_TRAIN.head(10)),
            "text": lambda m: m.text("session_count_7d", 4.0),
        },
        change={"top_k": 1},
    ),
}
PARAMS = pytest.mark.parametrize("name", list(CASES))


def _same(a: Any, b: Any) -> bool:
    """Parameter equality that also holds for dicts and arrays (clone deep-copies them)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    return bool(a == b)


@PARAMS
def test_init_is_keyword_only_and_only_stores(name: str) -> None:
    est = CASES[name].make()
    assert isinstance(est, BaseEstimator)
    signature = inspect.signature(type(est).__init__)
    params = [p for p in signature.parameters.values() if p.name != "self"]
    assert params and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    first = params[0]
    with pytest.raises(TypeError):
        type(est)(getattr(est, first.name))
    assert set(vars(est)) == {p.name for p in params}, "__init__ stores its arguments and nothing else"


@PARAMS
def test_clone_round_trips_and_is_unfitted(name: str) -> None:
    case = CASES[name]
    est = case.make()
    fitted = case.fit(case.make())
    for source in (est, fitted):
        copy = clone(source)
        assert type(copy) is type(source) and copy is not source
        original, cloned = source.get_params(), copy.get_params()
        assert original.keys() == cloned.keys()
        assert all(_same(original[k], cloned[k]) for k in original)
        assert not [k for k in vars(copy) if k.endswith("_")], "a clone carries no learned state"
        with pytest.raises(NotFittedError):
            next(iter(case.predicts.values()))(copy)


@PARAMS
def test_get_params_and_set_params(name: str) -> None:
    case = CASES[name]
    est = case.make()
    params = est.get_params()
    assert set(params) == set(inspect.signature(type(est).__init__).parameters) - {"self"}
    assert est.set_params(**case.change) is est
    assert all(_same(est.get_params()[k], v) for k, v in case.change.items())
    with pytest.raises(ValueError, match="Invalid parameter"):
        est.set_params(no_such_parameter=1)


@PARAMS
def test_every_predict_like_method_raises_not_fitted_before_fit(name: str) -> None:
    case = CASES[name]
    cls = type(case.make())
    own = {n for n, v in vars(cls).items() if inspect.isfunction(v) and not n.startswith("_")}
    assert own - NOT_PREDICT == set(case.predicts), "list every predict-like method in CASES"
    for call in case.predicts.values():
        with pytest.raises(NotFittedError, match="not fitted"):
            call(case.make())


@PARAMS
def test_fit_returns_self_learns_underscored_attributes_and_predicts(name: str) -> None:
    case = CASES[name]
    est = case.make()
    params = set(est.get_params())
    assert case.fit(est) is est
    learned = set(vars(est)) - params
    assert learned and all(k.endswith("_") for k in learned), sorted(learned)
    for call in case.predicts.values():
        assert call(est) is not None
