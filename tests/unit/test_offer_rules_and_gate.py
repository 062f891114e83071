"""Offers: leaf size sized to the smallest arm, the policy rules every policy is judged under, and
the champion gate that re-scores the champion by DR on the challenger's held-out rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from engage import schemas as s
from engage import tracking
from engage.config import DEFAULT_CATALOG_PATH, EngageConfig, load_config
from engage.models.bundle import OfferBundle
from engage.models.uplift import MultiArmUplift, auto_min_child_samples
from engage.offers.catalog import Catalog, load_catalog
from engage.offers.training import (
    ARM,
    OfferFit,
    _logging_support,
    _split,
    fit_offers,
    offer_table,
    policy_dr_value,
    policy_rules,
)
from engage.training.offers import train_offers

FAST = {"offers.n_estimators": 20}


# --- leaf size ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [0, 1, 200, 399, 400, 401, 808, 12_345, 40_000, 40_007, 40_008, 10**7])
def test_auto_leaf_size_is_an_eighth_of_the_rows_within_its_bounds(rows: int) -> None:
    size = auto_min_child_samples(rows)
    assert isinstance(size, int)
    assert 50 <= size <= 5_000
    if 400 <= rows < 40_008:
        assert size == rows // 8
    elif rows < 400:
        assert size == 50
    else:
        assert size == 5_000
    assert auto_min_child_samples(rows + 8) >= size  # never shrinks as the data grows


def _arms_of_sizes(sizes: dict[str, int], seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    arm = rng.permutation(np.concatenate([np.full(n, a) for a, n in sizes.items()]))
    X = pd.DataFrame({"x": rng.normal(size=len(arm)), "z": rng.normal(size=len(arm))})
    p = 0.2 + 0.2 * (X["x"].to_numpy() > 0)
    y = (rng.random(len(arm)) < p).astype(float)
    return X, arm, y


def _leaf_counts(estimator: Any) -> np.ndarray:
    trees = estimator.booster_.trees_to_dataframe()
    return trees.loc[trees["left_child"].isna(), "count"].to_numpy()


def test_auto_leaf_size_follows_the_smallest_arm_and_reaches_every_booster() -> None:
    sizes = {s.CONTROL_ARM: 3_000, "big": 2_000, "small": 800}
    X, arm, y = _arms_of_sizes(sizes)
    model = MultiArmUplift(learner="x", n_estimators=3, min_child_samples=None).fit(X, arm, y)
    assert model.min_child_samples_ == auto_min_child_samples(min(sizes.values()))
    assert model.min_child_samples_ != auto_min_child_samples(max(sizes.values()))
    boosters = [
        *model.models_.values(),
        *(m for tc, tt, _ in model.effect_models_.values() for m in (tc, tt)),
    ]
    assert len(boosters) == 3 + 2 * 2
    for booster in boosters:
        assert booster.get_params()["min_child_samples"] == model.min_child_samples_
    assert _leaf_counts(model.models_["small"]).min() >= model.min_child_samples_
    # the leaf check above can fail: with a tiny leaf size the same arm grows smaller leaves
    loose = MultiArmUplift(learner="x", n_estimators=3, min_child_samples=5).fit(X, arm, y)
    assert _leaf_counts(loose.models_["small"]).min() < model.min_child_samples_


def test_an_explicit_leaf_size_is_kept() -> None:
    X, arm, y = _arms_of_sizes({s.CONTROL_ARM: 1_000, "a": 900})
    model = MultiArmUplift(learner="t", n_estimators=2, min_child_samples=37).fit(X, arm, y)
    assert model.min_child_samples_ == 37
    assert all(m.get_params()["min_child_samples"] == 37 for m in model.models_.values())


# --- policy rules ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(DEFAULT_CATALOG_PATH)


def _users(**changes: Any) -> pd.DataFrame:
    """One row eligible for every packaged message and consented on every channel, then ``changes``."""
    row = {
        "cart_abandon_count_7d": 2,
        "product_view_count_28d": 5,
        "days_since_last_session": 30,
        "session_count_28d": 1,
        **{s.consent_column(ch): 1 for ch in s.CHANNELS},
    }
    return pd.DataFrame([{**row, **changes}])


def test_policy_rules_allow_every_arm_to_a_fully_eligible_consented_row(catalog: Catalog) -> None:
    rules = policy_rules(_users(), catalog, load_config())
    assert list(rules.columns) == catalog.arms
    assert rules.dtypes.eq(bool).all()
    assert rules.iloc[0].all()


def test_policy_rules_forbid_an_ineligible_arm_only(catalog: Catalog) -> None:
    rules = policy_rules(_users(cart_abandon_count_7d=0), catalog, load_config()).iloc[0]
    assert not rules["cart_coupon"]
    assert rules.drop("cart_coupon").all()


@pytest.mark.parametrize("channel", ["email", "push", "in_app"])
def test_policy_rules_forbid_every_arm_of_an_unconsented_channel(catalog: Catalog, channel: str) -> None:
    rules = policy_rules(_users(**{s.consent_column(channel): 0}), catalog, load_config()).iloc[0]
    on_channel = [m.id for m in catalog.messages if m.channel == channel]
    assert on_channel, f"the packaged catalog has no {channel} message"
    assert not rules[on_channel].any()
    assert rules.drop(on_channel).all()  # `none` and the other channels stay allowed


def test_policy_rules_forbid_every_message_when_capped_by_config_or_catalog(catalog: Catalog) -> None:
    users = pd.concat([_users(), _users(cart_abandon_count_7d=0, consent_email=0)], ignore_index=True)
    by_config = policy_rules(users, catalog, load_config(overrides={"policy.max_per_7d": 0}))
    by_catalog = policy_rules(users, dataclasses.replace(catalog, max_per_7d=0), load_config())
    for rules in (by_config, by_catalog):
        assert rules[s.CONTROL_ARM].all()
        assert not rules.drop(columns=s.CONTROL_ARM).to_numpy().any()


# --- true values under the rules, on a small simulation ----------------------------------------


@dataclasses.dataclass
class World:
    config: EngageConfig
    catalog: Catalog
    table: pd.DataFrame
    truth: pd.DataFrame
    fit: OfferFit


@pytest.fixture(scope="module")
def world(catalog: Catalog) -> World:
    from engage.datasets.simulate import simulate

    data = simulate(400, 90, seed=3)
    config = load_config(overrides=FAST)
    table = offer_table(data.events, data.exposures, config, users=data.users)
    truth = data.truth.to_pandas()
    fit = fit_offers(table, config, catalog, truth=truth, n_boot=20)
    return World(config, catalog, table, truth, fit)


def _poison(truth: pd.DataFrame, test: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """``truth`` with P(convert) = 1 on the (test row, arm) cells that are True in ``cells``."""
    keys = test[[s.USER_ID, s.AS_OF]].rename(columns={s.AS_OF: s.TS})
    keys[s.TS] = pd.to_datetime(keys[s.TS], utc=True)
    out = truth.copy()
    out[s.TS] = pd.to_datetime(out[s.TS], utc=True)
    where = out.reset_index().merge(keys.reset_index(names="test_row"), on=[s.USER_ID, s.TS])
    assert len(where) == len(test), "every held-out row has its truth"
    for arm in cells.columns:
        hit = cells[arm].to_numpy()[where["test_row"].to_numpy()]
        out.loc[where["index"].to_numpy()[hit], f"p_{arm}"] = 1.0
    return out


TRUE_KEYS = (
    "oracle_policy_value",
    "true_best_single_arm_value",
    "true_policy_value",
    "true_greedy_policy_value",
    "true_none_value",
)


def _train_rows(world: World) -> pd.DataFrame:
    """The rows fit_offers trained on (its split is deterministic by the config's seed)."""
    return _split(world.table.reset_index(drop=True), test_share=0.3, seed=world.config.seed)[0]


def test_fit_offers_sizes_leaves_to_its_smallest_training_arm(world: World) -> None:
    train = _train_rows(world)
    assert world.config.offers.min_child_samples is None
    expected = auto_min_child_samples(int(train[ARM].astype(str).value_counts().min()))
    assert world.fit.bundle.model.min_child_samples_ == expected


def test_true_values_never_credit_an_arm_the_rules_forbid(world: World) -> None:
    """Make every forbidden (row, arm) a sure conversion: no true value may move. Without the rules
    the oracle would pick those cells (checked: poisoning one allowed cell does move it)."""
    test, catalog = world.fit.test, world.catalog
    rules = policy_rules(test, catalog, world.config)
    forbidden = ~rules
    consented_but_ineligible = forbidden & (_logging_support(test, catalog) > 0)
    assert consented_but_ineligible.to_numpy().sum() > 50, "the simulation must exercise eligibility"
    poisoned = fit_offers(
        world.table,
        world.config,
        catalog,
        truth=_poison(world.truth, test, forbidden),
        n_boot=20,
    )
    for key in TRUE_KEYS:
        assert poisoned.metrics[key] == pytest.approx(world.fit.metrics[key], rel=1e-12, abs=1e-12), key
    # the oracle under the rules bounds every policy held to the same rules
    m = world.fit.metrics
    for key in TRUE_KEYS[1:]:
        assert m["oracle_policy_value"] >= m[key] - 1e-12, key
    # potency: one allowed message cell made a sure conversion does raise the oracle
    allowed_cells = rules.drop(columns=s.CONTROL_ARM)
    row = int(np.flatnonzero(allowed_cells.to_numpy().any(axis=1))[0])
    one = pd.DataFrame(False, index=rules.index, columns=rules.columns)
    one.loc[row, allowed_cells.columns[allowed_cells.iloc[row].to_numpy()][0]] = True
    moved = fit_offers(world.table, world.config, catalog, truth=_poison(world.truth, test, one), n_boot=20)
    assert moved.metrics["oracle_policy_value"] > m["oracle_policy_value"]


# --- champion gate --------------------------------------------------------------------------------


@dataclasses.dataclass
class Contenders:
    better: OfferFit
    worse: OfferFit
    better_value: float
    worse_value: float


def _prefers(world: World, target: str, frame: pd.DataFrame | None = None) -> OfferBundle:
    """A real uplift model trained to believe ``target`` converts and nothing else does."""
    frame = _train_rows(world) if frame is None else frame
    known = set(world.fit.bundle.feature_names)
    feats = [c for c in frame.columns if c in known or c.endswith("_renamed")]
    rng = np.random.default_rng(0)
    y = (frame[ARM].astype(str) == target).to_numpy() ^ (rng.random(len(frame)) < 0.05)
    model = MultiArmUplift(learner="t", n_estimators=5, min_child_samples=20)
    model.fit(frame[feats], frame[ARM].astype(str), y.astype(float))
    return OfferBundle(model=model, feature_names=feats)


def _as_fit(fit: OfferFit, bundle: OfferBundle, config: EngageConfig) -> OfferFit:
    """``fit`` with another model: its DR value measured exactly as fit_offers measures the learned one."""
    value = policy_dr_value(bundle, fit, config)
    return dataclasses.replace(fit, bundle=bundle, metrics={**fit.metrics, "policy_value_dr": value})


@pytest.fixture(scope="module")
def contenders(world: World) -> Contenders:
    value = {}
    for m in world.catalog.messages:
        value[m.id] = policy_dr_value(_prefers(world, m.id), world.fit, world.config)
    best, worst = max(value, key=value.get), min(value, key=value.get)
    assert value[best] > value[worst] + 0.2, f"setup: the policies must differ clearly, got {value}"
    better = _as_fit(world.fit, _prefers(world, best), world.config)
    worse = _as_fit(world.fit, _prefers(world, worst), world.config)
    return Contenders(better, worse, value[best], value[worst])


def test_the_gate_rescores_a_model_exactly_as_its_fit_scored_it(world: World) -> None:
    """Same rows, outcome model, policy settings and estimator: re-scoring reproduces the fit's value."""
    again = policy_dr_value(world.fit.bundle, world.fit, world.config)
    assert again == pytest.approx(world.fit.metrics["policy_value_dr"], rel=1e-12)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EngageConfig]:
    """A config whose tracking store is a fresh SQLite file; the global MLflow URIs are restored."""
    import mlflow

    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    yield load_config(overrides={**FAST, "tracking.uri": uri, "tracking.experiment": "gate"})
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def _gate(config: EngageConfig, alias: str) -> dict[str, float]:
    return tracking.run_metrics(config.tracking.offer_model_name, alias)


@pytest.mark.slow
def test_gate_promotes_a_better_challenger_and_keeps_the_champion_against_a_worse_one(
    store: EngageConfig, contenders: Contenders
) -> None:
    name = store.tracking.offer_model_name
    # 1. first model: no champion yet. It logs an absurd value of its own, as if measured on
    #    other rows; the gate must never compare through it.
    logged = contenders.better_value + 1_000.0
    first_fit = dataclasses.replace(
        contenders.worse, metrics={**contenders.worse.metrics, "policy_value_dr": logged}
    )
    first = train_offers(first_fit, store)
    assert first.promoted and tracking.alias_version(name, tracking.CHAMPION) == first.version
    assert _gate(store, tracking.CHAMPION)["gate_no_champion"] == 1.0

    # 2. better challenger: the champion is re-scored on these rows, not taken at its logged value
    second = train_offers(contenders.better, store)
    assert second.promoted
    assert tracking.alias_version(name, tracking.CHAMPION) == second.version != first.version
    gate = _gate(store, tracking.CHAMPION)
    assert gate["gate_promoted"] == 1.0
    assert gate["gate_champion_policy_value_dr"] == pytest.approx(contenders.worse_value, rel=1e-9)
    assert gate["gate_challenger_policy_value_dr"] == pytest.approx(contenders.better_value, rel=1e-9)

    # 3. worse challenger on the same rows: registered as challenger, champion kept
    third = train_offers(contenders.worse, store)
    assert not third.promoted and third.version not in (None, second.version)
    assert tracking.alias_version(name, tracking.CHAMPION) == second.version
    assert tracking.alias_version(name, tracking.CHALLENGER) == third.version
    gate = _gate(store, tracking.CHALLENGER)
    assert gate["gate_promoted"] == 0.0
    assert gate["gate_champion_policy_value_dr"] == pytest.approx(contenders.better_value, rel=1e-9)

    # 4. a tie is not a win
    fourth = train_offers(contenders.better, store)
    assert not fourth.promoted and tracking.alias_version(name, tracking.CHAMPION) == second.version


@pytest.mark.slow
def test_a_champion_that_cannot_score_the_rows_does_not_block_training_and_is_not_replaced(
    store: EngageConfig, world: World, contenders: Contenders, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = store.tracking.offer_model_name
    # the champion reads a feature these rows no longer carry (a feature was renamed since)
    old, renamed = "tenure_days", "tenure_days_renamed"
    assert old in world.fit.bundle.feature_names
    stale = _prefers(world, "newsletter", _train_rows(world).rename(columns={old: renamed}))
    stale_fit = dataclasses.replace(world.fit, test=world.fit.test.rename(columns={old: renamed}))
    champion = train_offers(_as_fit(stale_fit, stale, store), store)
    assert champion.promoted and renamed in stale.feature_names and old not in stale.feature_names

    # a clearly better challenger is registered, training finishes, the champion stays
    challenger = train_offers(contenders.better, store)
    assert not challenger.promoted and challenger.version not in (None, champion.version)
    assert tracking.alias_version(name, tracking.CHAMPION) == champion.version
    assert tracking.alias_version(name, tracking.CHALLENGER) == challenger.version
    gate = _gate(store, tracking.CHALLENGER)
    assert gate["gate_champion_failed"] == 1.0 and gate["gate_promoted"] == 0.0
    assert "gate_champion_policy_value_dr" not in gate

    # a champion that cannot even be loaded (artifacts gone) is handled the same way
    def unloadable(uri: str) -> Any:
        raise OSError(f"{uri}: artifacts not found")

    monkeypatch.setattr(tracking, "load_estimator", unloadable)
    again = train_offers(contenders.better, store)
    assert not again.promoted and again.version not in (None, challenger.version)
    assert tracking.alias_version(name, tracking.CHAMPION) == champion.version
    assert _gate(store, tracking.CHALLENGER)["gate_champion_failed"] == 1.0


def test_learned_minus_the_best_single_arm_is_one_paired_dr_estimate(world: World) -> None:
    """The reported difference is the difference of the two DR values (DR is linear in the target
    policy) on the same held-out rows, and its bootstrap interval holds it: for the served policy
    and for its greedy part."""
    m, values = world.fit.metrics, world.fit.values
    dr = values[values["estimator"] == "dr"].set_index("policy")["value"]
    best = dr[[p for p in dr.index if str(p).startswith("only_")]].max()
    for name, policy in (("learned", "learned"), ("greedy", "learned_greedy")):
        key = f"{name}_minus_best_single_arm_dr"
        assert m[key] == pytest.approx(dr[policy] - best, abs=1e-9)
        assert m[f"{key}_ci_low"] < m[key] < m[f"{key}_ci_high"]
