"""Measured lift vs the holdout: what the messages did, against users the policy left alone at random.

The holdout is a stable random share of users who get `none` whatever the policy would have sent;
every other decision is treated. Lift is treated minus holdout mean of an outcome (conversion,
revenue), with a bootstrap interval (both groups resampled; ``offers.evaluation.bootstrap_difference``).
Overall it compares all treated with all holdout decisions; per message it compares, for each message,
the users it was sent to with the holdout users it *would* have been sent to (``intended_message_id``,
which the decision log carries; a log without it gets the overall lift only); per risk band it
compares treated and holdout users of the same band. Pure: frames in, frames out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from engage import schemas as s
from engage.models.bundle import risk_bands
from engage.offers.evaluation import bootstrap_difference

__all__ = [
    "HOLDOUT",
    "LIFT_COLUMNS",
    "OVERALL",
    "RISK_BAND",
    "UNKNOWN_BAND",
    "lift_vs_holdout",
    "with_risk_band",
]

HOLDOUT = "holdout"
RISK_BAND = "risk_band"
OVERALL = "all"
UNKNOWN_BAND = "unknown"
LIFT_COLUMNS: tuple[str, ...] = (
    "group",
    "metric",
    "treated_n",
    "holdout_n",
    "treated_mean",
    "holdout_mean",
    "lift",
    "ci_low",
    "ci_high",
)


def with_risk_band(decisions: pd.DataFrame, thresholds: Sequence[float]) -> pd.DataFrame:
    """A ``risk_band`` column from the logged ``churn_probability`` (``unknown`` where none was logged)."""
    if "churn_probability" in decisions:
        values = pd.to_numeric(decisions["churn_probability"], errors="coerce").to_numpy(dtype=float)
    else:
        values = np.full(len(decisions), np.nan)
    bands = np.where(np.isnan(values), UNKNOWN_BAND, risk_bands(np.nan_to_num(values), thresholds))
    return decisions.assign(**{RISK_BAND: bands})


def _holdout_flags(decisions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(treated, held out) masks; a decision with no holdout flag is in neither group."""
    if HOLDOUT not in decisions:
        raise KeyError(f"decisions: missing column {HOLDOUT!r} (the holdout flag)")
    try:
        flag = decisions[HOLDOUT].astype("boolean")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"decisions: column {HOLDOUT!r} must hold true/false ({exc})") from exc
    known = flag.notna().to_numpy(dtype=bool)
    held = flag.fillna(False).to_numpy(dtype=bool)
    return known & ~held, held


def lift_vs_holdout(
    decisions: pd.DataFrame,
    *,
    by: str | None = None,
    metrics: Sequence[str] = (s.CONVERTED, s.REVENUE),
    n_boot: int = 500,
    seed: int = 0,
) -> pd.DataFrame:
    """Treated minus holdout mean of each metric, overall (``by=None``) or per value of column ``by``.

    One row per (group, metric) with ``LIFT_COLUMNS``; a group lacking treated or holdout decisions
    keeps its counts and gets NaN lift. The same bootstrap seed for every group and metric.
    """
    missing = [c for c in (*metrics, *((by,) if by else ())) if c not in decisions]
    if missing:
        raise KeyError(f"decisions: missing column(s) {', '.join(missing)}")
    treated, held = _holdout_flags(decisions)
    if by is None:
        codes, names, order = np.zeros(len(decisions), dtype=np.int64), [OVERALL], [0]
    else:  # integer codes: one hashing pass, then cheap masks per group
        codes, uniques = pd.factorize(decisions[by], use_na_sentinel=True)
        names = [str(u) for u in uniques]
        if (codes < 0).any():
            codes = np.where(codes < 0, len(names), codes)
            names.append(UNKNOWN_BAND)
        order = sorted(np.unique(codes[treated | held]).tolist(), key=lambda k: names[k])
    columns = {m: pd.to_numeric(decisions[m], errors="coerce").to_numpy(dtype=float) for m in metrics}
    rows = []
    for code in order:
        group, mine = names[code], codes == code
        for metric in metrics:
            values = columns[metric]
            ok = ~np.isnan(values)
            t, c = values[mine & treated & ok], values[mine & held & ok]
            est = bootstrap_difference(t, c, n_boot=n_boot, seed=seed)
            rows.append(
                (
                    str(group),
                    metric,
                    len(t),
                    len(c),
                    float(t.mean()) if len(t) else np.nan,
                    float(c.mean()) if len(c) else np.nan,
                    est.value,
                    est.ci_low,
                    est.ci_high,
                )
            )
    return pd.DataFrame(rows, columns=list(LIFT_COLUMNS))
