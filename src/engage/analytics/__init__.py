"""Engagement analytics over the canonical events table: cohorts, funnels, RFM, loyalty, engagement.

Every function is pure: it takes events (polars or pandas, columns of ``schemas.EVENT_SCHEMA``) and
the time ``as_of`` as parameters, uses only events with ``ts < as_of`` (point-in-time rule), and
returns pandas DataFrames that the report writes and the plots draw. Event types that are absent
(a purchase-only log such as Online Retail II or CDNOW) give zero counts, never an error.

Modules: ``frames`` (event input, the cut), ``cohorts``, ``funnels``, ``segments`` (RFM and loyalty
tiers), ``engagement``. Module names differ from their functions' names (``funnels.funnel``), so
that importing a module never hides the function of the same name here.
"""

from engage.exports import lazy_exports

_EXPORTS = {
    "ALL_SEGMENT": "frames",
    "EventsLike": "frames",
    "as_polars_events": "frames",
    "as_utc": "frames",
    "events_before": "frames",
    "CohortTable": "cohorts",
    "cohort_retention": "cohorts",
    "DEFAULT_FUNNEL_STEPS": "funnels",
    "UNKNOWN_SEGMENT": "funnels",
    "SegmentLike": "funnels",
    "funnel": "funnels",
    "SEGMENT_ORDER": "segments",
    "TIER_ORDER": "segments",
    "LoyaltyTiers": "segments",
    "loyalty_tier": "segments",
    "loyalty_tiers": "segments",
    "quintile_scores": "segments",
    "rfm": "segments",
    "rfm_segment": "segments",
    "rfm_segment_summary": "segments",
    "ENGAGEMENT_WEIGHTS": "engagement",
    "engagement_score": "engagement",
    "engagement_summary": "engagement",
    "percentile_rank": "engagement",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
