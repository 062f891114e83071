"""Message templates: the sandboxed subset checked at load, defaults, formats, escaping, batch = row."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from engage import schemas as s
from engage.config import DEFAULT_CATALOG_PATH
from engage.offers.catalog import USER_ATTRIBUTES, CatalogError, catalog_from_dict, load_catalog
from engage.offers.templates import (
    HTML_CHANNELS,
    MAX_FORMAT_PRECISION,
    MAX_FORMAT_WIDTH,
    MAX_TEMPLATE_CHARS,
    NO_VALUE_TEXT,
    RENDER_ROW_BY_ROW,
    fill,
    render,
    render_many,
)


def _message(template: str, **fields: Any) -> dict[str, Any]:
    return {"id": "promo", "channel": "email", "template": template, "cost": 0, "value": 1, **fields}


def _catalog(*messages: dict[str, Any], **top: Any) -> Any:
    return catalog_from_dict({"messages": list(messages), **top})


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ x.__class__ }}", "plain name"),
        ("{{ x.__class__.__init__.__globals__ }}", "plain name"),
        ("{{ x['__class__'] }}", "plain name"),
        ("{{ x[0] }}", "plain name"),
        ("{{ range(10) }}", "plain name"),
        ("{{ lipsum() }}", "plain name"),
        ("{{ self }}", "plain name"),
        ("{{ x * 100000000 }}", "plain name"),
        ("{{ 'a' }}", "plain name"),
        ("{% for i in range(9) %}x{% endfor %}", "blocks are not allowed"),
        ("{% set y = 1 %}", "blocks are not allowed"),
        ("{{ x | format('%s') }}", "'format' is not allowed"),
        ("{{ x | attr('__class__') }}", "'attr' is not allowed"),
        ("{{ x | default(y) }}", "literal"),
        ("{{ x | fmt(w) }}", "literal"),
        ("{{ x | fmt('>300000000') }}", "width 300000000"),
        (f"{{{{ x | fmt('>{MAX_FORMAT_WIDTH + 1}') }}}}", f"width {MAX_FORMAT_WIDTH + 1}"),
        (f"{{{{ x | fmt('.{MAX_FORMAT_PRECISION + 1}f') }}}}", f"precision {MAX_FORMAT_PRECISION + 1}"),
        ("{{ x | fmt('%Y-%m-%d') }}", "not a format spec"),
        ("{x.__class__}", "old-style placeholder"),
        ("Take {coupon_pct}% off", "old-style placeholder"),
        ("{0} {}", "old-style placeholder"),
        ("{{ x ", "line 1"),
        ("a" * (MAX_TEMPLATE_CHARS + 1), "characters long"),
    ],
)
def test_templates_outside_the_subset_are_refused_at_load_and_never_rendered(
    template: str, message: str
) -> None:
    """Before: `{x.__class__}` rendered "<class 'int'>"; `{x:>{w}}` with w=3e8 built a 286 MB string."""
    with pytest.raises(CatalogError, match=r"message promo: field 'template': .*" + re.escape(message)):
        _catalog(_message(template), placeholders={"x": {"default": 1}})
    assert fill(template, {}, {"x": 1, "w": 300_000_000, "y": 2}) == ""


W, P = MAX_FORMAT_WIDTH, MAX_FORMAT_PRECISION
SUBSET_CASES: list[tuple[str, dict[str, Any], Any]] = [
    (
        "{{ coupon_pct }}% off {{ top_category | default('x') }}",
        {"coupon_pct": 10, "top_category": "books"},
        lambda v: f"{v['coupon_pct']}% off {v['top_category']}",
    ),
    (
        "{{ share | default(0) | fmt('.0%') }} of {{ plan | d('') | upper }}",
        {"share": 0.25, "plan": "gold"},
        lambda v: f"{v['share']:.0%} of {v['plan'].upper()}",
    ),
    (
        f"{{{{ region | d('') | fmt('>{W}') }}}}|{{{{ y | d(0) | fmt('*^10,.{P}f') }}}}",
        {"region": "north", "y": 1234.5},
        lambda v: format(v["region"], f">{W}") + "|" + format(v["y"], f"*^10,.{P}f"),
    ),
    (
        "{# note #}{{ z | d(0) | fmt('+08.2e') }}|{{ n | d(0) | fmt('_d') }}|{% raw %}{{ n }}{% endraw %}",
        {"z": -3.0, "n": 10**6},
        lambda v: f"{v['z']:+08.2e}|{v['n']:_d}|{{{{ n }}}}",
    ),
]


@pytest.mark.parametrize(("template", "values", "expected"), SUBSET_CASES)
def test_subset_templates_load_and_render_as_python_formats(
    template: str, values: dict[str, Any], expected: Any
) -> None:
    params = {"coupon_pct": values["coupon_pct"]} if "coupon_pct" in values else {}
    placeholders = {k: {"default": 0} for k in values}
    message = _catalog(_message(template, params=params), placeholders=placeholders).get("promo")
    assert message is not None
    assert message.render(values) == expected(values)


def test_missing_values_take_the_default_the_marketer_chose_never_a_shared_phrase() -> None:
    """Before: a missing value read "our picks" everywhere ("Take our picks% off your our picks order")."""
    catalog = _catalog(
        _message("Take {{ pct }}% off your {{ top_category | default('next') }} order", params={"pct": 10}),
        {**_message("Fresh in {{ top_category }} for {{ region }}"), "id": "news"},
        placeholders={"top_category": {"default": "our latest picks"}, "region": {"default": "you"}},
    )
    for value in [None, np.nan, "", "  ", NO_VALUE_TEXT, [1], pd.Timestamp(0)]:
        assert render(catalog, "news", {"top_category": value}) == "Fresh in our latest picks for you"
        assert render(catalog, "promo", {"top_category": value}) == "Take 10% off your next order"
    assert render(catalog, "news", {"top_category": "books", "region": "north"}) == "Fresh in books for north"
    with pytest.raises(
        CatalogError, match=r"message promo: .*placeholder \{\{ churn_risk \}\} has no default"
    ):
        _catalog(_message("Hi {{ churn_risk }}"), placeholders={"churn_risk": {"format": ".0%"}})
    with pytest.raises(CatalogError, match=r"placeholder \{\{ top_category \}\} has no default"):
        _catalog(_message("{{ top_category | upper | default('x') }}"))  # default must come first


def test_a_template_default_wins_over_the_catalog_default_and_formats_apply_to_params_and_features() -> None:
    catalog = _catalog(
        _message(
            "{{ top_category | default('next') }} {{ coupon_pct }}% {{ tenure_days | d(0) }}",
            params={"coupon_pct": 12.5},
        ),
        placeholders={
            "top_category": {"default": "our picks"},
            "coupon_pct": {"format": ".0f"},
            "tenure_days": {"format": ",.1f"},
        },
    )
    assert render(catalog, "promo", {}) == "next 12% 0"
    assert render(catalog, "promo", {"top_category": "toys", "tenure_days": 1234}) == "toys 12% 1,234.0"


def test_every_placeholder_must_be_a_known_feature_attribute_declared_name_or_param() -> None:
    with pytest.raises(
        CatalogError, match=r"message promo: field 'template': placeholder \{\{ top_categroy \}\} is not"
    ):
        _catalog(_message("{{ top_categroy | default('x') }}"))
    _catalog(_message("{{ purchase_count_14d | d(0) }} {{ amount_sum_365d | d(0) }}"))  # any window
    for attribute in USER_ATTRIBUTES:
        _catalog(_message(f"{{{{ {attribute} | d('') }}}}"))
    _catalog(_message("{{ loyalty_tier }}"), placeholders={"loyalty_tier": {"default": "member"}})
    _catalog(_message("{{ whatever }}", params={"whatever": "x"}))
    with pytest.raises(CatalogError, match=r"placeholder \{\{ session_count_7d \}\} is not"):
        catalog_from_dict({"messages": [_message("{{ session_count_7d | d(0) }}")]}, feature_names=["x"])


@pytest.mark.parametrize(
    ("top", "match"),
    [
        ({"placeholders": {"x": {"default": None, "fromat": ".0f"}}}, "placeholders: x: expected a mapping"),
        ({"placeholders": {"x": {"format": ".{p}f"}}}, "placeholders: x: field 'format'"),
        ({"placeholders": {"x": {"default": [1]}}}, "placeholders: x: field 'default'"),
        ({"placeholders": {"x.y": {"default": 1}}}, r"placeholders: x\.y: a placeholder name"),
        ({"placeholders": [1]}, "placeholders: expected a mapping"),
        ({"html_channels": ["fax"]}, "html_channels"),
        ({"placeholder": {}}, "'placeholder' is not known"),
    ],
)
def test_a_bad_placeholders_section_is_a_catalog_error(top: dict[str, Any], match: str) -> None:
    with pytest.raises(CatalogError, match=match):
        _catalog(_message("hi"), **top)


def test_params_must_be_text_or_numbers() -> None:
    with pytest.raises(CatalogError, match="message promo: field 'params': c must be text or a number"):
        _catalog(_message("{{ c }}", params={"c": {"a": 1}}))


@pytest.mark.parametrize("channel", s.CHANNELS)
def test_values_are_escaped_on_the_channels_that_render_html_and_only_there(channel: str) -> None:
    """Before: `<script>` in a category passed into in-app and web pop-up text unescaped."""
    value = "<script>alert(1)</script> & co"
    template = "<b>New</b> in {{ top_category }}"
    catalog = _catalog(_message(template, channel=channel), placeholders={"top_category": {"default": "x"}})
    text = render(catalog, "promo", {"top_category": value})
    if channel in HTML_CHANNELS:
        assert text == "<b>New</b> in &lt;script&gt;alert(1)&lt;/script&gt; &amp; co"
    else:
        assert text == f"<b>New</b> in {value}"
    plain = _catalog(
        _message(template, channel=channel), placeholders={"top_category": {"default": "x"}}, html_channels=[]
    )
    assert render(plain, "promo", {"top_category": value}) == f"<b>New</b> in {value}"


def test_the_packaged_catalog_loads_and_fills_every_message_without_a_value() -> None:
    catalog = load_catalog(DEFAULT_CATALOG_PATH)
    for message in catalog.messages:
        text = message.render({})
        assert text and "{" not in text and "our picks" not in text
    cart = catalog.get("cart_coupon")
    assert cart is not None
    text = render(catalog, "cart_coupon", pd.Series({"top_category": "books"}))
    assert "books" in text and f"{cart.params['coupon_pct']}%" in text
    assert render(catalog, s.CONTROL_ARM, {}) == ""


def test_vectorised_render_equals_the_per_row_render_on_random_features() -> None:
    catalog = _catalog(
        {**_message("{{ top_category }} at {{ x }} ({{ n | d(-1) }}) {{ stamp | d('t') }}"), "id": "a"},
        {
            **_message("{{ x | fmt('.1f') }} {{ coupon }}%", params={"coupon": 5}),
            "id": "b",
            "channel": "push",
        },
        {**_message("plain text"), "id": "c", "channel": "in_app"},
        {
            **_message("{{ mixed | d('m') }} {{ x | d(0) | fmt('+.2f') }} <{{ top_category }}>"),
            "id": "d",
            "channel": "web_popup",
        },
        placeholders={k: {"default": "?"} for k in ("top_category", "x", "stamp", "n", "mixed")},
    )
    rng = np.random.default_rng(3)
    n = 600
    features = pd.DataFrame(
        {
            "top_category": rng.choice(["books", "<toys>", "home", "none", ""], n),
            "x": np.round(rng.normal(size=n), 1),
            "n": rng.integers(0, 4, n),
            "mixed": pd.Series(
                rng.choice(np.array([1, 1.0, True, "1", None], dtype=object), n), dtype=object
            ),
        }
    )
    features.loc[::9, "x"] = np.nan
    features.loc[::11, "top_category"] = None
    features.loc[::13, "x"] = -0.0
    features["stamp"] = pd.Timestamp("2024-01-01", tz="UTC")
    arms = rng.choice([*catalog.arms, "unknown"], n)
    got = render_many(catalog, arms, features)
    expected = [render(catalog, arm, features.iloc[i]) for i, arm in enumerate(arms)]
    assert got.tolist() == expected
    assert any("&lt;toys&gt;" in t for t in got) and any("<toys>" in t for t in got)
    for size in (1, 7, RENDER_ROW_BY_ROW, RENDER_ROW_BY_ROW + 1):  # row-by-row and grouped paths alike
        for start in range(0, 60, size):
            part = render_many(catalog, arms[start : start + size], features.iloc[start : start + size])
            assert part.tolist() == expected[start : start + size]


def test_the_yaml_catalog_documents_its_html_channels(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULT_CATALOG_PATH.read_text())
    assert tuple(raw["html_channels"]) == HTML_CHANNELS
    assert load_catalog(DEFAULT_CATALOG_PATH).html_channels == HTML_CHANNELS


def test_a_catalog_pickles_and_renders_alike_after() -> None:
    """Spark ships the catalog to its executors pickled; the compiled templates are rebuilt there."""
    import pickle

    catalog = load_catalog(DEFAULT_CATALOG_PATH)
    copy = pickle.loads(pickle.dumps(catalog))
    features = pd.DataFrame({"top_category": ["<i>x</i>", None, "books"] * 7})
    arms = np.array([m.id for m in catalog.messages] * 5, dtype=object)[: len(features)]
    assert render_many(copy, arms, features).tolist() == render_many(catalog, arms, features).tolist()
