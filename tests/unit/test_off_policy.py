"""Off-policy estimators against the exact value on synthetic logs with known conversion rates, and the
policy baselines and exact values ``fit_offers`` judges a learned policy with."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engage import schemas as s
from engage.offers.evaluation import (
    compare_policies,
    doubly_robust,
    ips,
    oracle_value,
    single_arm_policy,
    snips,
    true_value,
    uniform_policy,
)
from engage.offers.training import ARM, evaluate_logged_policy

ARMS = ["none", "a", "b"]


def _world(n: int, seed: int) -> dict:
    """Logs from a non-uniform logging policy (depends on x) over arms with known p(y=1 | x, arm)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    seg = rng.random(n) < 0.4
    p_true = pd.DataFrame(
        {"none": 0.10 + 0.02 * seg, "a": 0.10 + 0.12 * (x > 0), "b": 0.14 + 0.06 * seg - 0.04 * (x > 0)}
    )
    logging = pd.DataFrame({"none": np.where(x > 0, 0.5, 0.2), "a": 0.3, "b": np.where(x > 0, 0.2, 0.5)})
    cum = logging.to_numpy().cumsum(axis=1)
    j = (cum < rng.random(n)[:, None]).sum(axis=1)
    logged = np.asarray(ARMS)[j]
    reward = (rng.random(n) < p_true.to_numpy()[np.arange(n), j]).astype(float)
    propensity = logging.to_numpy()[np.arange(n), j]
    return {"x": x, "seg": seg, "p": p_true, "arm": logged, "reward": reward, "prop": propensity}


def _cell_means(world: dict) -> pd.DataFrame:
    """A deliberately coarse outcome model: mean reward per arm and segment (ignores x)."""
    key = pd.Series(world["seg"])
    frame = pd.DataFrame({"arm": world["arm"], "seg": key, "r": world["reward"]})
    means = frame.groupby(["arm", "seg"])["r"].mean()
    return pd.DataFrame({a: key.map(lambda s, a=a: means.get((a, s), 0.0)).to_numpy() for a in ARMS})


def _argmax(scores: pd.DataFrame) -> pd.DataFrame:
    """A deterministic target policy: the best-scoring arm of each row with probability 1."""
    probs = np.zeros(scores.shape)
    probs[np.arange(len(scores)), scores.to_numpy().argmax(axis=1)] = 1.0
    return pd.DataFrame(probs, index=scores.index, columns=scores.columns)


def _target(world: dict) -> pd.DataFrame:
    return _argmax(pd.DataFrame({"none": 0.0, "a": world["x"], "b": -world["x"]}))


def test_dr_ci_covers_the_true_value_in_most_of_20_seeds() -> None:
    covered, widths_dr, widths_ips = 0, [], []
    for seed in range(20):
        fit_world, world = _world(2000, seed), _world(2000, 1000 + seed)  # outcome model on other rows
        model = _cell_means(fit_world)
        q = pd.DataFrame(
            {a: pd.Series(world["seg"]).map(dict(zip(fit_world["seg"], model[a], strict=True))) for a in ARMS}
        )
        target = _target(world)
        truth = true_value(target, world["p"])
        dr = doubly_robust(world["arm"], world["reward"], world["prop"], target, q, n_boot=200, seed=seed)
        est_ips = ips(world["arm"], world["reward"], world["prop"], target, n_boot=200, seed=seed)
        covered += dr.ci_low <= truth <= dr.ci_high
        widths_dr.append(dr.ci_high - dr.ci_low)
        widths_ips.append(est_ips.ci_high - est_ips.ci_low)
    print(f"DR 95% CI covered the true value in {covered} of 20 seeds")
    assert covered >= 16
    assert np.mean(widths_dr) < np.mean(widths_ips)  # the outcome model reduces variance


def test_ips_and_snips_are_unbiased_on_average() -> None:
    errors = {"ips": [], "snips": []}
    for seed in range(30):
        world = _world(1500, seed)
        target = _target(world)
        truth = true_value(target, world["p"])
        for name, fn in (("ips", ips), ("snips", snips)):
            est = fn(world["arm"], world["reward"], world["prop"], target, n_boot=20, seed=seed)
            errors[name].append(est.value - truth)
    for name, err in errors.items():
        se = np.std(err) / np.sqrt(len(err))
        assert abs(np.mean(err)) < 3 * se + 1e-3, name


def test_compare_policies_is_tidy_and_ranks_like_the_truth() -> None:
    world = _world(6000, 7)
    allowed = pd.DataFrame(True, index=range(6000), columns=ARMS)
    targets = {
        "oracle": _argmax(world["p"]),
        "uniform": uniform_policy(allowed),
        **{f"only_{a}": single_arm_policy(allowed, a) for a in ARMS},
    }
    values = compare_policies(
        world["arm"], world["reward"], world["prop"], targets, _cell_means(world), n_boot=100, seed=0
    )
    assert list(values.columns) == ["policy", "estimator", "value", "ci_low", "ci_high"]
    assert len(values) == 3 * len(targets)
    assert (values["ci_low"] <= values["value"]).all() and (values["value"] <= values["ci_high"]).all()
    dr = values[values["estimator"] == "dr"].set_index("policy")["value"]
    truth = {name: true_value(t, world["p"]) for name, t in targets.items()}
    assert dr.idxmax() == max(truth, key=truth.get)
    assert oracle_value(world["p"]) == pytest.approx(truth["oracle"])
    assert oracle_value(world["p"]) >= max(truth.values()) - 1e-12


def test_bad_logs_are_rejected_with_the_row() -> None:
    world = _world(50, 0)
    prop = world["prop"].copy()
    prop[4] = 0.0
    with pytest.raises(ValueError, match="row 5"):
        ips(world["arm"], world["reward"], prop, _target(world))
    with pytest.raises(ValueError, match="length"):
        snips(world["arm"][:-1], world["reward"], world["prop"], _target(world))
    with pytest.raises(KeyError, match="b"):
        doubly_robust(
            world["arm"], world["reward"], world["prop"], _target(world), _cell_means(world).drop(columns="b")
        )


def test_bootstrap_is_seeded() -> None:
    world = _world(500, 3)
    args = (world["arm"], world["reward"], world["prop"], _target(world))
    assert ips(*args, n_boot=50, seed=1) == ips(*args, n_boot=50, seed=1)
    assert ips(*args, n_boot=50, seed=1).ci_low != ips(*args, n_boot=50, seed=2).ci_low


def test_baselines_keep_to_the_allowed_arms() -> None:
    allowed = pd.DataFrame({"none": [True, True, False], "a": [True, False, True], "b": [False, False, True]})
    only_a = single_arm_policy(allowed, "a")
    np.testing.assert_array_equal(only_a.to_numpy(), [[0, 1, 0], [1, 0, 0], [0, 1, 0]])
    # `none` is sent to every row, even one whose rules would not list it
    np.testing.assert_array_equal(single_arm_policy(allowed, s.CONTROL_ARM)["none"], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(single_arm_policy(allowed, "unknown")["none"], [1.0, 1.0, 1.0])
    uniform = uniform_policy(allowed)
    np.testing.assert_allclose(uniform.to_numpy(), [[0.5, 0.5, 0], [1, 0, 0], [0, 0.5, 0.5]])


def test_the_oracle_plays_the_best_allowed_arm() -> None:
    reward = pd.DataFrame({"none": [0.0, 0.0], "a": [1.0, 3.0], "b": [2.0, -1.0]})
    allowed = pd.DataFrame({"none": [True, True], "a": [True, False], "b": [False, True]})
    assert oracle_value(reward) == pytest.approx((2.0 + 3.0) / 2)
    assert oracle_value(reward, allowed) == pytest.approx((1.0 + 0.0) / 2)
    assert true_value(single_arm_policy(allowed, "a"), reward) == pytest.approx((1.0 + 0.0) / 2)


def test_evaluate_logged_policy_is_compare_policies_on_a_per_arm_mean_outcome_model() -> None:
    world = _world(3000, 5)
    logs = pd.DataFrame({ARM: world["arm"], "outcome": world["reward"], s.PROPENSITY: world["prop"]})
    target = _target(world)
    got = evaluate_logged_policy(logs, target, n_boot=50, seed=2)
    assert list(got["estimator"]) == ["ips", "snips", "dr"]
    means = logs.groupby(ARM)["outcome"].mean()
    q_hat = pd.DataFrame({a: np.full(len(logs), means[a]) for a in ARMS})
    expected = compare_policies(
        world["arm"], world["reward"], world["prop"], {"t": target}, q_hat, n_boot=50, seed=2
    )
    np.testing.assert_allclose(got["value"], expected["value"])
    np.testing.assert_allclose(got["ci_high"], expected["ci_high"])
    truth = true_value(target, world["p"])
    assert (got["ci_low"] <= truth + 0.02).all() and (truth - 0.02 <= got["ci_high"]).all()
    with pytest.raises(KeyError, match="outcome"):
        evaluate_logged_policy(logs.drop(columns="outcome"), target)
    with pytest.raises(ValueError, match="row 1"):
        evaluate_logged_policy(logs, target * 2)
