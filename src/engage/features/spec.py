"""The declarative feature spec: every standard feature with its name, description, kind and unit.

Names are deterministic (``purchase_count_28d``, ``days_since_last_purchase``); descriptions are
the one-liners reason codes are built from.
"""

from __future__ import annotations

from dataclasses import dataclass

from engage import schemas as s
from engage.config import FeatureConfig

INPUT_COLUMNS: tuple[str, ...] = (s.USER_ID, s.TS, s.EVENT_TYPE, "session_id", "category", "amount")
"""The event columns the standard features read; a reader may skip the rest (e.g. ``properties``)."""


@dataclass(frozen=True)
class FeatureDef:
    """One feature: its column name, a one-line description, its kind and unit."""

    name: str
    description: str
    kind: str
    unit: str = ""


def feature_defs(config: FeatureConfig) -> list[FeatureDef]:
    """The standard feature set for the configured windows."""
    out: list[FeatureDef] = []
    for w in config.windows:
        for t in s.KNOWN_EVENT_TYPES:
            out.append(
                FeatureDef(
                    f"{t}_count_{w}d", f"{t.replace('_', ' ')} events in the last {w} days", "count", "events"
                )
            )
        out += [
            FeatureDef(f"session_count_{w}d", f"Sessions in the last {w} days", "count", "sessions"),
            FeatureDef(f"active_days_{w}d", f"Days with any activity in the last {w} days", "count", "days"),
            FeatureDef(f"amount_sum_{w}d", f"Net spend in the last {w} days", "amount", "$"),
            FeatureDef(f"amount_mean_{w}d", f"Average purchase value in the last {w} days", "amount", "$"),
            FeatureDef(f"cart_abandon_count_{w}d", f"Abandoned carts in the last {w} days", "count", "carts"),
            FeatureDef(
                f"engaged_session_rate_{w}d", f"Share of engaged sessions in the last {w} days", "rate"
            ),
            FeatureDef(
                f"email_open_rate_{w}d", f"Email opens per email received in the last {w} days", "rate"
            ),
            FeatureDef(f"email_click_rate_{w}d", f"Email clicks per email open in the last {w} days", "rate"),
            FeatureDef(
                f"category_distinct_{w}d",
                f"Distinct product categories in the last {w} days",
                "count",
                "categories",
            ),
        ]
    out += [
        FeatureDef("days_since_last_event", "Days since the last activity", "recency", "days"),
        FeatureDef("days_since_last_purchase", "Days since the last purchase", "recency", "days"),
        FeatureDef("days_since_last_session", "Days since the last session", "recency", "days"),
        FeatureDef("days_since_last_email_open", "Days since the last email open", "recency", "days"),
        FeatureDef("days_since_last_cart_abandon", "Days since the last abandoned cart", "recency", "days"),
        FeatureDef("tenure_days", "Days since the first activity (or signup)", "count", "days"),
        # the inputs of the customer-value model (BTYD frequency, recency, T and mean spend)
        FeatureDef("purchase_days_total", "Days with a purchase, all history", "count", "days"),
        FeatureDef("days_since_first_purchase", "Days since the first purchase", "count", "days"),
        FeatureDef("purchase_day_amount_mean", "Average spend per purchase day, all history", "amount", "$"),
        FeatureDef("purchase_rate_ratio_7d_28d", "Purchase rate last 7 days vs the 28 days before", "ratio"),
        FeatureDef("session_rate_ratio_7d_28d", "Session rate last 7 days vs the 28 days before", "ratio"),
        FeatureDef("event_rate_ratio_7d_28d", "Activity rate last 7 days vs the 28 days before", "ratio"),
        FeatureDef(
            "active_days_change_28d", "Active days in the last 28 days minus the 28 before", "count", "days"
        ),
        FeatureDef("top_category_share_90d", "Share of product activity in the favourite category", "rate"),
        FeatureDef("top_category", "Favourite product category", "category"),
        FeatureDef("messages_received_7d", "Messages received in the last 7 days", "count", "messages"),
        FeatureDef("messages_received_28d", "Messages received in the last 28 days", "count", "messages"),
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
