"""The declarative feature spec: every standard feature with its name, description, kind, unit and
its one formula (``engage.features.formula``), which the polars and Spark engines both compile.

Names are deterministic (``purchase_count_28d``, ``days_since_last_purchase``); descriptions are
the one-liners reason codes are built from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engage import schemas as s
from engage.config import FeatureConfig
from engage.features.formula import (
    DAY_US,
    Agg,
    Clip,
    Col,
    Expr,
    Greatest,
    IfGiven,
    Lit,
    Lookahead,
    Ratio,
    Rollup,
    SinceUser,
    TopKey,
)

INPUT_COLUMNS: tuple[str, ...] = (s.USER_ID, s.TS, s.EVENT_TYPE, "session_id", "category", "amount")
"""The event columns the standard features read; a reader may skip the rest (e.g. ``properties``)."""


@dataclass(frozen=True)
class FeatureDef:
    """One feature: its column name, a one-line description, kind, unit, formula and fill value.

    ``formula`` is the feature's only definition (``engage.features.formula``); every engine compiles
    it. ``fill`` replaces a null left at the end (None keeps it: recency of something never seen).
    """

    name: str
    description: str
    kind: str
    unit: str = ""
    formula: Expr = field(default=Lit(None), compare=False, repr=False)
    fill: float | str | None = 0.0


EVENTS, SESSIONS, CATEGORIES, CARTS, EXPOSURES = "events", "sessions", "categories", "carts", "exposures"
_TYPE, _DAY, _AGE, _AMOUNT = Col(s.EVENT_TYPE), Col("day"), Col("age_us"), Col("amount")
_SENT = Col(s.MESSAGE_ID).ne(s.CONTROL_ARM)


def _count(*types: str, lo: int = 0, hi: int | None = None) -> Agg:
    """Events of these types (any type when none) with ``lo <= day < hi``."""
    return Agg(EVENTS, "count", where=_TYPE.isin(*types) if types else None, lo=lo, hi=hi)


def _days_since(agg: Agg) -> Expr:
    return agg / DAY_US


def _abandoned(config: FeatureConfig) -> Expr:
    """A cart at least N hours old without a purchase within N hours of it (judged before as_of)."""
    horizon = config.cart_abandon_hours * 3_600 * 1_000_000
    age, gap = Col("age_us"), Col("gap_us")
    return (age >= horizon) & (gap.is_null() | (gap >= horizon))


def feature_tables(config: FeatureConfig) -> tuple[Rollup | Lookahead, ...]:
    """The tables the formulas read besides the events and exposures (sessions, categories, carts).

    An engaged session lasts more than ``engaged_session_seconds`` whole seconds, has a purchase, or
    has 2+ page/product views, judged on its events before as_of.
    """
    long_us = (config.engaged_session_seconds + 1) * 1_000_000
    engaged = (
        (Agg(EVENTS, "max", _AGE) - Agg(EVENTS, "min", _AGE) >= long_us)
        | (_count("purchase") > 0)
        | (_count("page_view", "product_view") >= 2)
    )
    return (
        Rollup(SESSIONS, "session_id", (("day", Agg(EVENTS, "min", _DAY)), ("engaged", engaged))),
        Rollup(CATEGORIES, "category", (("day", Agg(EVENTS, "min", _DAY)), ("n90", _count(hi=90)))),
        Lookahead(CARTS, rows=_TYPE.isin("add_to_cart"), until=_TYPE.isin("purchase")),
    )


def feature_defs(config: FeatureConfig) -> list[FeatureDef]:
    """The standard feature set for the configured windows, each with its one formula."""
    out: list[FeatureDef] = []
    abandoned = _abandoned(config)
    for w in config.windows:
        opens, clicks = _count("email_open", hi=w), _count("email_click", hi=w)
        emails = Agg(EXPOSURES, "count", where=_SENT & Col(s.CHANNEL).isin("email"), hi=w)
        sessions = Agg(SESSIONS, "count", hi=w)
        for t in s.KNOWN_EVENT_TYPES:
            desc = f"{t.replace('_', ' ')} events in the last {w} days"
            out.append(FeatureDef(f"{t}_count_{w}d", desc, "count", "events", _count(t, hi=w)))
        out += [
            FeatureDef(
                f"session_count_{w}d", f"Sessions in the last {w} days", "count", "sessions", sessions
            ),
            FeatureDef(
                f"active_days_{w}d",
                f"Days with any activity in the last {w} days",
                "count",
                "days",
                Agg(EVENTS, "distinct", _DAY, hi=w),
            ),
            FeatureDef(
                f"amount_sum_{w}d",
                f"Net spend in the last {w} days",
                "amount",
                "$",
                Agg(EVENTS, "sum", _AMOUNT, where=_TYPE.isin("purchase", "refund"), hi=w),
            ),
            FeatureDef(
                f"amount_mean_{w}d",
                f"Average purchase value in the last {w} days",
                "amount",
                "$",
                Agg(EVENTS, "mean", _AMOUNT, where=_TYPE.isin("purchase"), hi=w),
            ),
            FeatureDef(
                f"cart_abandon_count_{w}d",
                f"Abandoned carts in the last {w} days",
                "count",
                "carts",
                Agg(CARTS, "count", where=abandoned, hi=w),
            ),
            FeatureDef(
                f"engaged_session_rate_{w}d",
                f"Share of engaged sessions in the last {w} days",
                "rate",
                "",
                Ratio(Agg(SESSIONS, "count", where=Col("engaged"), hi=w), sessions),
            ),
            FeatureDef(
                f"email_open_rate_{w}d",
                f"Email opens per email received in the last {w} days",
                "rate",
                "",
                # without an exposures table the opens stand in for the emails received
                Clip(Ratio(opens, IfGiven(EXPOSURES, emails, opens)), 0.0, 1.0),
            ),
            FeatureDef(
                f"email_click_rate_{w}d",
                f"Email clicks per email open in the last {w} days",
                "rate",
                "",
                Clip(Ratio(clicks, opens), 0.0, 1.0),
            ),
            FeatureDef(
                f"category_distinct_{w}d",
                f"Distinct product categories in the last {w} days",
                "count",
                "categories",
                Agg(CATEGORIES, "count", hi=w),
            ),
        ]

    def recency(event_type: str) -> Expr:
        return _days_since(Agg(EVENTS, "min", _AGE, where=_TYPE.isin(event_type)))

    def rate_ratio(*types: str) -> Expr:
        """Per-day rate in the last 7 days vs the 28 before, smoothed: (a/7 + 1/28) / (b/28 + 1/28)."""
        return (_count(*types, hi=7) / 7 + 1 / 28) / (_count(*types, lo=7, hi=35) / 28 + 1 / 28)

    purchase_days = Agg(EVENTS, "distinct", _DAY, where=_TYPE.isin("purchase"))
    n90 = Col("n90")
    out += [
        FeatureDef(
            "days_since_last_event",
            "Days since the last activity",
            "recency",
            "days",
            _days_since(Agg(EVENTS, "min", _AGE)),
            None,
        ),
        FeatureDef(
            "days_since_last_purchase",
            "Days since the last purchase",
            "recency",
            "days",
            recency("purchase"),
            None,
        ),
        FeatureDef(
            "days_since_last_session",
            "Days since the last session",
            "recency",
            "days",
            recency("session_start"),
            None,
        ),
        FeatureDef(
            "days_since_last_email_open",
            "Days since the last email open",
            "recency",
            "days",
            recency("email_open"),
            None,
        ),
        FeatureDef(
            "days_since_last_cart_abandon",
            "Days since the last abandoned cart",
            "recency",
            "days",
            _days_since(Agg(CARTS, "min", _AGE, where=abandoned)),
            None,
        ),
        FeatureDef(
            "tenure_days",
            "Days since the first activity (or signup)",
            "count",
            "days",
            Greatest(_days_since(Agg(EVENTS, "max", _AGE)), SinceUser(s.SIGNUP_TS)),
            None,
        ),
        # the inputs of the customer-value model (BTYD frequency, recency, T and mean spend)
        FeatureDef(
            "purchase_days_total", "Days with a purchase, all history", "count", "days", purchase_days
        ),
        FeatureDef(
            "days_since_first_purchase",
            "Days since the first purchase",
            "count",
            "days",
            _days_since(Agg(EVENTS, "max", _AGE, where=_TYPE.isin("purchase"))),
            None,
        ),
        FeatureDef(
            "purchase_day_amount_mean",
            "Average spend per purchase day, all history",
            "amount",
            "$",
            Ratio(Agg(EVENTS, "sum", _AMOUNT, where=_TYPE.isin("purchase")), purchase_days),
        ),
        FeatureDef(
            "purchase_rate_ratio_7d_28d",
            "Purchase rate last 7 days vs the 28 days before",
            "ratio",
            "",
            rate_ratio("purchase"),
        ),
        FeatureDef(
            "session_rate_ratio_7d_28d",
            "Session rate last 7 days vs the 28 days before",
            "ratio",
            "",
            rate_ratio("session_start"),
        ),
        FeatureDef(
            "event_rate_ratio_7d_28d",
            "Activity rate last 7 days vs the 28 days before",
            "ratio",
            "",
            rate_ratio(),
        ),
        FeatureDef(
            "active_days_change_28d",
            "Active days in the last 28 days minus the 28 before",
            "count",
            "days",
            Agg(EVENTS, "distinct", _DAY, hi=28) - Agg(EVENTS, "distinct", _DAY, lo=28, hi=56),
        ),
        FeatureDef(
            "top_category_share_90d",
            "Share of product activity in the favourite category",
            "rate",
            "",
            Ratio(Agg(CATEGORIES, "max", n90), Agg(CATEGORIES, "sum", n90), empty=None),
        ),
        FeatureDef(
            "top_category", "Favourite product category", "category", "", TopKey(CATEGORIES, "n90"), "none"
        ),
        FeatureDef(
            "messages_received_7d",
            "Messages received in the last 7 days",
            "count",
            "messages",
            Agg(EXPOSURES, "count", where=_SENT, hi=7),
        ),
        FeatureDef(
            "messages_received_28d",
            "Messages received in the last 28 days",
            "count",
            "messages",
            Agg(EXPOSURES, "count", where=_SENT, hi=28),
        ),
    ]
    return out


def feature_descriptions(config: FeatureConfig) -> dict[str, str]:
    """Feature name -> one-line description (reason texts start from these)."""
    return {f.name: f.description for f in feature_defs(config)}


CATEGORICAL = ("top_category",)
EXPOSURE_FEATURES = ("messages_received_7d", "messages_received_28d")


def feature_names(
    config: FeatureConfig, *, with_users: bool = False, with_exposures: bool = True
) -> list[str]:
    """The standard features in their deterministic order (user attribute columns follow them).

    Without exposures the message-fatigue features are still present (as 0), so the column set only
    depends on the config; ``with_users`` is accepted for symmetry (attribute columns come from the data).
    """
    del with_users, with_exposures
    return [f.name for f in feature_defs(config)]


def categorical_features(config: FeatureConfig, users_columns: tuple[str, ...] = ()) -> list[str]:
    """String-valued features: ``top_category`` plus the string user attributes named by the caller."""
    del config
    return [*CATEGORICAL, *[c for c in users_columns if c in ("region", "plan")]]


def feature_units(config: FeatureConfig) -> dict[str, str]:
    """Feature name -> unit ("days", "events", "$") for the features that have one."""
    return {f.name: f.unit for f in feature_defs(config) if f.unit}
