"""How strongly to shrink and smooth, chosen on the data itself (point in time).

The activity of the last ``validation_days`` before ``as_of`` is held out; profiles built from the
activity before it, under each (prior strength, kernel concentration) on a small grid, are scored
by the log-likelihood of the held-out activity hours (a proper score of "expected engagement by
hour"). A log with many visits per user (the simulator) earns a strong prior and wide kernel less
than one with a few orders per customer (Online Retail II); the grid decides, not a constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from engage import schemas
from engage.timing.features import TimingFeatures, shrink_profile, timing_features
from engage.timing.zones import TIMEZONE, ZONE

STRENGTHS = (5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
KAPPAS = (3.0, 8.0)


@dataclass(frozen=True)
class Tuned:
    prior_strength: float
    smoothing_kappa: float
    scores: dict[str, float]
    """Held-out mean log-likelihood per ``<strength>_<kappa>`` (higher is better)."""


def tune_profile(
    events: pl.DataFrame,
    as_of: datetime,
    full: TimingFeatures,
    *,
    validation_days: int,
    daytype_weight: float,
    same_day_weight: float,
    rhythms: int,
    seed: int,
) -> Tuned | None:
    """The grid's best (prior strength, kernel concentration); None when nothing is held out.

    `full` holds the features at `as_of`; the held-out counts are its counts minus those at
    ``as_of - validation_days`` (same users, same zones up to a zone re-inferred in between).
    """
    early = timing_features(
        events,
        as_of - timedelta(days=validation_days),
        users=full.table.select(schemas.USER_ID, pl.col(ZONE).alias(TIMEZONE)),
        daytype_weight=daytype_weight,
        same_day_weight=same_day_weight,
        rhythms=rhythms,
        seed=seed,
    )
    held = np.clip(full.counts - early.counts, 0.0, None)
    total = held.sum()
    if total == 0:
        return None
    scores: dict[str, float] = {}
    for strength in STRENGTHS:
        for kappa in KAPPAS:
            profile = shrink_profile(
                early.counts,
                early.prior,
                strength,
                kappa=kappa,
                daytype_weight=daytype_weight,
                same_day_weight=same_day_weight,
            )
            scores[f"{strength:g}_{kappa:g}"] = float((held * np.log(profile)).sum() / total)
    best = max(scores, key=scores.__getitem__)
    strength, kappa = (float(v) for v in best.split("_"))
    return Tuned(prior_strength=strength, smoothing_kappa=kappa, scores=scores)
