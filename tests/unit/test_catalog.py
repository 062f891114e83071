"""Catalog: the rule language (parsed, never executed), strict loading, default plays, rendering."""

from __future__ import annotations

import operator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from engage import schemas as s
from engage.config import DEFAULT_CATALOG_PATH
from engage.offers.catalog import CatalogError, catalog_from_dict, load_catalog
from engage.offers.rules import MAX_RULE_CHARS, MAX_RULE_COMPARISONS, MAX_RULE_DEPTH, parse_rule

FEATURE_NAMES = [
    "cart_abandon_count_7d",
    "product_view_count_28d",
    "days_since_last_session",
    "session_count_28d",
    "top_category",
    "purchase_count_28d",
    "days_since_last_purchase",
    "messages_received_7d",
    "consent_email",
    "consent_push",
    "consent_in_app",
    "consent_web_popup",
    "region",
    "plan",
]
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}


def _frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, n).astype(float)
    a[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame({"a": a, "b": rng.choice(["x", "y", "z"], n), "c": rng.normal(size=n)})


@pytest.mark.parametrize("op", sorted(OPS))
def test_comparisons_match_python_row_by_row_and_nan_compares_false(op: str) -> None:
    frame = _frame()
    got = parse_rule(f"a {op} 2").evaluate(frame)
    expected = [(not np.isnan(v)) and OPS[op](v, 2.0) for v in frame["a"]]
    assert got.tolist() == expected


def test_boolean_structure_follows_precedence_and_parentheses() -> None:
    frame = _frame(seed=1)
    a, b, c = frame["a"].to_numpy(), frame["b"].to_numpy(), frame["c"].to_numpy()
    gt = ~np.isnan(a) & (np.nan_to_num(a, nan=-1) > 2)
    rule = parse_rule("a > 2 or b == 'x' and not c < 0")  # and binds tighter than or
    assert rule.evaluate(frame).tolist() == (gt | ((b == "x") & ~(c < 0))).tolist()
    grouped = parse_rule('(a > 2 or b == "x") and not (c < 0)')
    assert grouped.evaluate(frame).tolist() == ((gt | (b == "x")) & ~(c < 0)).tolist()
    assert parse_rule("true").evaluate(frame).all() and not parse_rule("false").evaluate(frame).any()
    assert parse_rule("").evaluate(frame).all()
    assert grouped.features() == {"a", "b", "c"}


def test_text_compared_with_a_number_is_false_not_a_crash() -> None:
    frame = _frame()
    assert not parse_rule("b > 3").evaluate(frame).any()
    assert not parse_rule("a == 'x'").evaluate(frame).any()


@pytest.mark.parametrize(
    "bad",
    ["__import__('os')", "a >", "a > 2 and", "a + 1 > 2", "(a > 2", "a > 2)", "a", "a > 2 b < 1", "and > 1"],
)
def test_anything_outside_the_language_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_rule(bad)


def _chain(n: int, joiner: str = " or ") -> str:
    return joiner.join(f"a > {i}" for i in range(n))


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (_chain(3000, " and "), "characters long"),  # the 3,000-term chain
        (_chain(MAX_RULE_COMPARISONS + 1), f"more than {MAX_RULE_COMPARISONS} comparisons"),
        ("(" * (MAX_RULE_DEPTH + 1) + "a > 1" + ")" * (MAX_RULE_DEPTH + 1), "nests"),
        ("(" * 5000 + "a > 1" + ")" * 5000, "characters long"),
        ("not " * (MAX_RULE_DEPTH + 1) + "a > 1", "nests"),
        ("a > 1 or " * 2000 + "a > 1", "characters long"),
    ],
)
def test_oversized_or_deeply_nested_rules_are_refused_at_load(rule: str, message: str) -> None:
    """Before: a 3,000-term chain loaded and raised RecursionError at scoring; 400 '(' at load."""
    msg = {"id": "big", "channel": "email", "template": "t", "cost": 0, "value": 1, "eligible_if": rule}
    with pytest.raises(CatalogError, match=rf"message big: field 'eligible_if': .*{message}"):
        catalog_from_dict({"messages": [msg]})


def test_rules_at_the_limits_load_and_evaluate() -> None:
    frame = _frame()
    wide = parse_rule(_chain(MAX_RULE_COMPARISONS, " and "))
    assert len(wide.text) <= MAX_RULE_CHARS
    assert wide.evaluate(frame).tolist() == (frame["a"] > MAX_RULE_COMPARISONS - 1).tolist()
    deep = parse_rule("(" * MAX_RULE_DEPTH + "a > 2" + ")" * MAX_RULE_DEPTH)
    assert deep.evaluate(frame).tolist() == (frame["a"] > 2).tolist()
    negated = parse_rule("not " * MAX_RULE_DEPTH + "a > 2")  # an even number of nots
    assert negated.evaluate(frame).tolist() == (frame["a"] > 2).tolist()


def test_a_missing_feature_is_named_at_evaluation() -> None:
    with pytest.raises(KeyError, match="nope"):
        parse_rule("nope > 1").evaluate(_frame())


def _write(tmp_path: Path, message: dict, **top: object) -> Path:
    base = {"id": "promo", "channel": "email", "template": "hi", "cost": 1, "value": 2}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"messages": [{**base, **message}], **top}))
    return path


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"channel": "fax"}, "channel"),
        ({"cost": -1}, "cost"),
        ({"value": "lots"}, "value"),
        ({"template": ""}, "template"),
        ({"template": "hi {{ name"}, "template"),
        ({"template": "hi {name}"}, "template"),
        ({"eligible_if": "x >"}, "eligible_if"),
        ({"cooldown_days": 1.5}, "cooldown_days"),
        ({"params": [1, 2]}, "params"),
        ({"eligble_if": "x > 1"}, "eligble_if"),
        ({"id": "none"}, "id"),
    ],
)
def test_malformed_catalog_names_file_message_and_field(tmp_path: Path, change: dict, field: str) -> None:
    path = _write(tmp_path, change)
    mid = change.get("id", "promo")
    with pytest.raises(CatalogError, match=rf"m\.yaml: message {mid}: field '{field}'"):
        load_catalog(path)


def test_duplicate_ids_bad_caps_and_unreadable_files_are_errors(tmp_path: Path) -> None:
    msg = {"id": "a", "channel": "email", "template": "t", "cost": 0, "value": 1}
    with pytest.raises(CatalogError, match="message a: field 'id'"):
        catalog_from_dict({"messages": [msg, msg]})
    with pytest.raises(CatalogError, match="max_per_7d"):
        load_catalog(_write(tmp_path, {}, caps={"max_per_7d": -1}))
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("messages: [unclosed")
    with pytest.raises(CatalogError, match=r"bad\.yaml"):
        load_catalog(tmp_path / "bad.yaml")


def test_unknown_features_fail_at_load_when_the_feature_list_is_given(tmp_path: Path) -> None:
    path = _write(tmp_path, {"eligible_if": "cart_abandon_count_7d > 0 and typo_feature < 3"})
    assert load_catalog(path).get("promo") is not None  # no list: checked at evaluation instead
    with pytest.raises(CatalogError, match=r"message promo: field 'eligible_if'.*typo_feature"):
        load_catalog(path, feature_names=FEATURE_NAMES)


def test_default_catalog_covers_the_classic_plays_with_known_features() -> None:
    catalog = load_catalog(DEFAULT_CATALOG_PATH, feature_names=FEATURE_NAMES)
    assert catalog.arms[0] == s.CONTROL_ARM
    assert {m.channel for m in catalog.messages} <= set(s.CHANNELS)
    plays = {"cart_coupon", "category_news", "winback_offer", "retained_content", "newsletter"}
    assert plays <= set(catalog.arms)
    assert catalog.features() <= set(FEATURE_NAMES)
    cart = catalog.get("cart_coupon")
    assert cart is not None and cart.eligible_if.features() == {"cart_abandon_count_7d"}
    frame = pd.DataFrame({name: [0.0, 30.0] for name in FEATURE_NAMES if name != "top_category"})
    eligible = catalog.eligibility(frame)
    assert eligible[s.CONTROL_ARM].all() and eligible["newsletter"].all()
    assert eligible["winback_offer"].tolist() == [False, True]


def test_the_catalog_and_the_package_entry_points_import_no_model_or_tracking_library() -> None:
    """Serving reads the catalog on every start: it must not pull LightGBM or MLflow in with it."""
    import subprocess
    import sys

    code = (
        "import sys, engage.offers, engage.training, engage.offers.catalog; "
        "from engage.offers import render_many, parse_rule; "
        "print(sorted(m for m in ('lightgbm', 'mlflow', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
