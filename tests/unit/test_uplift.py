"""Multi-arm uplift: recovers heterogeneous effects, its greedy policy nears the oracle, stable predict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engage import schemas as s
from engage.config import PolicyConfig
from engage.evaluation.uplift import auuc, qini_coefficient, qini_curve, uplift_at_k
from engage.models.uplift import MultiArmUplift, expected_gain
from engage.offers.catalog import catalog_from_dict
from engage.offers.evaluation import oracle_value, single_arm_policy, true_value
from engage.offers.policy import action_probabilities


def _campaign(n: int = 6000, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"x": rng.normal(size=n), "z": rng.normal(size=n), "segment": rng.choice(["a", "b"], n)})
    arm = rng.choice(["none", "coupon", "news"], n, p=[0.5, 0.3, 0.2])  # not uniform: propensities matter
    prop = pd.Series(arm).map({"none": 0.5, "coupon": 0.3, "news": 0.2}).to_numpy()
    p = 0.1 + 0.15 * ((arm == "coupon") & (X["x"] > 0)) + 0.08 * ((arm == "news") & (X["segment"] == "b"))
    y = (rng.random(n) < p).astype(int)
    return X, arm, y, prop


def test_t_learner_recovers_who_responds_to_what() -> None:
    X, arm, y, prop = _campaign()
    model = MultiArmUplift(n_estimators=80, min_child_samples=50).fit(X, arm, y, propensity=prop)
    outcomes = model.predict_outcomes(X)
    assert list(outcomes.columns) == [s.CONTROL_ARM, "coupon", "news"]
    uplift = model.predict_uplift(X)
    assert uplift.loc[X["x"] > 0.5, "coupon"].mean() > uplift.loc[X["x"] < -0.5, "coupon"].mean() + 0.08
    assert (
        uplift.loc[X["segment"] == "b", "news"].mean() > uplift.loc[X["segment"] == "a", "news"].mean() + 0.03
    )


def test_qini_and_uplift_at_k_prefer_the_informed_ranking() -> None:
    X, arm, y, _ = _campaign(seed=1)
    rows = np.isin(arm, ["none", "coupon"])
    treated = arm[rows] == "coupon"
    good, bad = X["x"].to_numpy()[rows], np.random.default_rng(0).normal(size=rows.sum())
    assert qini_coefficient(y[rows], treated, good) > qini_coefficient(y[rows], treated, bad)
    assert uplift_at_k(y[rows], treated, good, 0.3) > uplift_at_k(y[rows], treated, bad, 0.3)
    assert auuc(y[rows], treated, good) > auuc(y[rows], treated, bad)
    curve = qini_curve(y[rows], treated, good)
    assert curve["fraction"].iloc[0] == 0 and curve["fraction"].iloc[-1] == 1


def _world(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Covariates and the true P(convert | x, arm) for four arms; the best arm differs by segment."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {"x1": rng.uniform(-1, 1, n), "x2": rng.uniform(-1, 1, n), "seg": rng.choice(["p", "q"], n)}
    )
    base = 0.10 + 0.05 * X["x2"].to_numpy()
    q = (X["seg"] == "q").to_numpy()
    p = pd.DataFrame(
        {
            s.CONTROL_ARM: base,
            "coupon": base + 0.15 * (X["x1"].to_numpy() > 0),
            "news": base + 0.08 * q,
            "letter": base + 0.03,
        }
    )
    return X, p


CATALOG = catalog_from_dict(
    {
        "messages": [
            {"id": "coupon", "channel": "email", "template": "c", "cost": 0.5, "value": 10.0},
            {"id": "news", "channel": "push", "template": "n", "cost": 0.1, "value": 10.0},
            {"id": "letter", "channel": "email", "template": "l", "cost": 0.1, "value": 10.0},
        ]
    }
)


def _true_reward(p: pd.DataFrame) -> pd.DataFrame:
    """Net value per arm in the same units as ``expected_gain`` (conversion value minus cost)."""
    return expected_gain(p, CATALOG)


@pytest.mark.parametrize("learner", ["t", "x", "s"])
def test_learned_policy_gets_most_of_the_oracle_value_and_beats_every_single_arm(learner: str) -> None:
    X, p = _world(24_000, seed=0)
    rng = np.random.default_rng(1)
    arm = rng.choice(CATALOG.arms, len(X))  # uniform randomized logging
    y = (rng.random(len(X)) < p.to_numpy()[np.arange(len(X)), [CATALOG.arms.index(a) for a in arm]]).astype(
        int
    )
    model = MultiArmUplift(learner=learner, n_estimators=60, num_leaves=7, min_child_samples=200)
    model.fit(X, arm, y)
    X_new, p_new = _world(5_000, seed=2)
    truth = _true_reward(p_new)
    greedy = PolicyConfig(exploration="none", holdout_pct=0.0)
    gains = expected_gain(model.predict_outcomes(X_new), CATALOG)
    learned = true_value(action_probabilities(X_new, gains, CATALOG, config=greedy)[0], truth)
    oracle = oracle_value(truth)
    everyone = pd.DataFrame(True, index=truth.index, columns=truth.columns)
    singles = {a: true_value(single_arm_policy(everyone, a), truth) for a in CATALOG.arms[1:]}
    print(
        f"{learner}-learner: incremental value learned {learned:.3f}, oracle {oracle:.3f}, "
        f"ratio {learned / oracle:.3f}, best single arm {max(singles.values()):.3f}"
    )
    assert learned >= 0.9 * oracle  # `none` is worth 0 here, so values are incremental
    assert learned > max(singles.values())


def test_unseen_and_missing_categories_do_not_break_predict() -> None:
    X, arm, y, prop = _campaign(n=3000)
    model = MultiArmUplift(learner="x", n_estimators=20, min_child_samples=50).fit(X, arm, y, propensity=prop)
    odd = X.head(5).assign(segment=["a", "zzz", None, "b", "a"])
    out = model.predict_outcomes(odd)
    assert out.shape == (5, 3) and out.notna().all().all() and ((out >= 0) & (out <= 1)).all().all()
    assert out.iloc[0].tolist() == model.predict_outcomes(X.head(1)).iloc[0].tolist()
    with pytest.raises(ValueError, match="control"):
        MultiArmUplift(control="missing").fit(X, arm, y)
    with pytest.raises(ValueError, match="learner"):
        MultiArmUplift(learner="q").fit(X, arm, y)


def test_a_large_batch_on_every_core_predicts_what_small_batches_do() -> None:
    from engage.models.frame import SMALL_BATCH_ROWS

    X, arm, y, prop = _campaign(n=3000)
    model = MultiArmUplift(learner="x", n_estimators=20, min_child_samples=50)  # trains on one thread
    model.fit(X, arm, y, propensity=prop)
    rows = X.head(4 * SMALL_BATCH_ROWS)
    small = pd.concat([model.predict_outcomes(rows.iloc[i : i + 8]) for i in range(0, len(rows), 8)])
    pd.testing.assert_frame_equal(model.predict_outcomes(rows), small, check_exact=True)


@pytest.mark.slow
def test_on_the_simulator_the_learned_policy_beats_every_single_arm_in_true_value() -> None:
    """Small simulation, the training path: offer table -> fit_offers -> true values under the rules."""
    from engage.config import DEFAULT_CATALOG_PATH, load_config
    from engage.datasets.simulate import simulate
    from engage.offers.catalog import load_catalog
    from engage.offers.training import fit_offers, offer_table

    data = simulate(2000, 120, seed=3)
    config = load_config()
    table = offer_table(data.events, data.exposures, config, users=data.users)
    fit = fit_offers(
        table, config, load_catalog(DEFAULT_CATALOG_PATH), truth=data.truth.to_pandas(), n_boot=20
    )
    m = fit.metrics
    print(
        f"simulator: true value per decision learned {m['true_policy_value']:.4f}, "
        f"greedy {m['true_greedy_policy_value']:.4f}, oracle {m['oracle_policy_value']:.4f}, "
        f"best single arm {m['true_best_single_arm_value']:.4f}, none {m['true_none_value']:.4f}"
    )
    assert m["true_greedy_policy_value"] > m["true_best_single_arm_value"]
    assert m["true_policy_value"] > m["true_best_single_arm_value"]
    assert m["oracle_policy_value"] >= m["true_greedy_policy_value"]


@pytest.mark.parametrize("learner", ["t", "x", "s"])
def test_fast_predictions_equal_the_fitted_estimators_on_the_prepared_frame(learner: str) -> None:
    """predict_outcomes reads a float matrix; it must agree with each estimator's own predict."""
    rng = np.random.default_rng(3)
    n = 3_000
    X = pd.DataFrame(rng.normal(size=(n, 5)), columns=[f"f{i}" for i in range(5)])
    X["top_category"] = rng.choice(["a", "b", "c"], n)
    arm = rng.choice(["none", "a", "b"], n)
    y = ((X["f0"] + (arm == "a") * X["f1"] + (X["top_category"] == "b") + rng.normal(size=n)) > 0.5).astype(
        int
    )
    model = MultiArmUplift(learner=learner, n_estimators=30, min_child_samples=50).fit(X, arm, y)
    test = X.iloc[:40].copy()
    test.loc[test.index[:5], "top_category"] = None
    test.loc[test.index[5:10], "top_category"] = "unseen"
    prepared = model._prepare(test)
    if learner == "s":
        expected = {
            a: model.models_["s"].predict_proba(model._with_arm(prepared, a))[:, 1] for a in model.arms_
        }
    else:
        base = model.models_[model.control].predict_proba(prepared)[:, 1]
        expected = {a: m.predict_proba(prepared)[:, 1] for a, m in model.models_.items()}
        for a, (tau_c, tau_t, g) in model.effect_models_.items():
            expected[a] = np.clip(
                base + g * tau_c.predict(prepared) + (1 - g) * tau_t.predict(prepared), 0, 1
            )
    got = model.predict_outcomes(test)
    np.testing.assert_allclose(got.to_numpy(), pd.DataFrame(expected)[model.arms_].to_numpy(), atol=1e-12)


def test_expected_gain_is_lift_times_value_minus_cost_and_skips_arms_the_model_lacks() -> None:
    outcomes = pd.DataFrame({"none": [0.1, 0.3], "coupon": [0.2, 0.25], "news": [0.1, 0.5]}, index=[7, 9])
    gains = expected_gain(outcomes, CATALOG)
    assert list(gains.columns) == ["none", "coupon", "news"] and list(gains.index) == [7, 9]
    np.testing.assert_allclose(gains["none"], [0.0, 0.0])
    np.testing.assert_allclose(gains["coupon"], [0.1 * 10 - 0.5, -0.05 * 10 - 0.5])
    np.testing.assert_allclose(gains["news"], [0.0 * 10 - 0.1, 0.2 * 10 - 0.1])


def _noisy_arm_campaign(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """`coupon` helps x > 0 only; `letter` has the same small effect everywhere (no heterogeneity)."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"x": rng.normal(size=n), "z": rng.normal(size=n), "w": rng.normal(size=n)})
    arm = rng.choice(["none", "coupon", "letter"], n, p=[0.4, 0.3, 0.3])
    prop = pd.Series(arm).map({"none": 0.4, "coupon": 0.3, "letter": 0.3}).to_numpy()
    p = 0.08 + 0.12 * ((arm == "coupon") & (X["x"].to_numpy() > 0)) + 0.01 * (arm == "letter")
    return X, arm, (rng.random(n) < p).astype(int), prop


def test_shrinkage_flattens_a_noisy_arm_and_keeps_an_informative_one() -> None:
    X, arm, y, prop = _noisy_arm_campaign(12_000, seed=4)
    params = {"learner": "x", "n_estimators": 80, "num_leaves": 2, "min_child_samples": 200}
    plain = MultiArmUplift(**params).fit(X, arm, y, propensity=prop)
    shrunk = MultiArmUplift(**params, shrink_folds=2).fit(X, arm, y, propensity=prop)
    beta = shrunk.shrinkage_["letter"][1]
    assert 0.0 <= beta <= 1.0 and shrunk.shrinkage_["coupon"][1] > beta
    X_new, *_ = _noisy_arm_campaign(4_000, seed=5)
    u_plain, u_shrunk = plain.predict_uplift(X_new), shrunk.predict_uplift(X_new)
    spread = (u_plain["letter"].std(), u_shrunk["letter"].std())
    print(f"shrinkage {shrunk.shrinkage_}; letter uplift sd {spread[0]:.4f} -> {spread[1]:.4f}")
    assert spread[1] < 0.8 * spread[0]  # its spread was noise: pulled toward the arm's average
    assert abs(u_shrunk["letter"].mean() - 0.01) < abs(u_plain["letter"].mean() - 0.01) + 0.005
    hi, lo = X_new["x"] > 0.5, X_new["x"] < -0.5
    assert u_shrunk.loc[hi, "coupon"].mean() > u_shrunk.loc[lo, "coupon"].mean() + 0.06  # kept
    again = MultiArmUplift(**params, shrink_folds=2).fit(X, arm, y, propensity=prop)
    assert again.shrinkage_ == shrunk.shrinkage_  # seeded folds
    with pytest.raises(ValueError, match="shrink_folds"):
        MultiArmUplift(shrink_folds=1).fit(X, arm, y)


def test_the_x_learner_effect_stage_takes_its_own_size() -> None:
    X, arm, y, prop = _campaign(n=3000)
    model = MultiArmUplift(
        learner="x", n_estimators=20, num_leaves=7, effect_num_leaves=2, effect_n_estimators=5
    ).fit(X, arm, y, propensity=prop)
    outcome = model.models_[s.CONTROL_ARM].booster_
    tau_c, tau_t, _ = model.effect_models_["coupon"]
    assert outcome.num_trees() == 20 and tau_c.booster_.num_trees() == tau_t.booster_.num_trees() == 5
    dumped = tau_t.booster_.dump_model()["tree_info"]
    assert max(tree["num_leaves"] for tree in dumped) <= 2
    assert max(t["num_leaves"] for t in outcome.dump_model()["tree_info"]) > 2


def test_domain_learns_each_arm_where_it_may_be_sent() -> None:
    """coupon works (+0.15) only where x > 0, the rows it is eligible on: with that domain its
    shrunk effect there is the domain's (0.15), not the population's half of it."""
    X, arm, y, prop = _campaign(n=20_000, seed=3)
    domain = pd.DataFrame({"coupon": X["x"].to_numpy() > 0})
    params = {"learner": "x", "n_estimators": 60, "min_child_samples": 100, "shrink_folds": 2}
    scoped = MultiArmUplift(**params).fit(X, arm, y, propensity=prop, domain=domain)
    everywhere = MultiArmUplift(**params).fit(X, arm, y, propensity=prop)
    rows = domain["coupon"].to_numpy()
    ate = scoped.shrinkage_["coupon"][0]
    assert abs(ate - 0.15) < 0.03  # the DR average effect on the domain
    assert abs(everywhere.shrinkage_["coupon"][0] - 0.075) < 0.03  # ... and on every row
    assert abs(scoped.predict_uplift(X)["coupon"][rows].mean() - ate) < 0.005  # centred on the domain
    with pytest.raises(ValueError, match="domain has"):
        MultiArmUplift(**params).fit(X, arm, y, propensity=prop, domain=domain.iloc[:10])


def test_the_gain_matrix_is_the_expected_gains_by_catalog_arm() -> None:
    """Scoring's array path: ``expected_gain`` reindexed to the catalog's arms (NaN where the model
    has no arm), with the mask of the arms it has; an outcome column the catalog lacks is ignored."""
    from engage.config import DEFAULT_CATALOG_PATH
    from engage.models.uplift import expected_gain, expected_gain_matrix
    from engage.offers.catalog import load_catalog
    from engage.offers.policy import gain_matrix

    catalog = load_catalog(DEFAULT_CATALOG_PATH)
    arms = [s.CONTROL_ARM, *catalog.arms[2:], "retired_offer"]  # one catalog message missing
    rng = np.random.default_rng(2)
    outcomes = pd.DataFrame(rng.random((5, len(arms))), columns=arms, index=range(10, 15))
    matrix, modelled = expected_gain_matrix(outcomes.to_numpy(), arms, catalog)
    gains = expected_gain(outcomes, catalog)
    np.testing.assert_array_equal(matrix, gain_matrix(gains, catalog.arms))
    assert modelled.tolist() == [a in gains.columns for a in catalog.arms]
    assert not modelled[1] and np.isnan(matrix[:, 1]).all() and (matrix[:, 0] == 0).all()
