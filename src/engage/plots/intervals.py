"""Confidence-interval whiskers for matplotlib's ``xerr``/``yerr`` from point estimates and bounds."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["ci_whiskers"]


def ci_whiskers(value: np.ndarray, low: pd.Series | np.ndarray, high: pd.Series | np.ndarray) -> np.ndarray:
    """(2, n) distances below and above each value, never negative and 0 where a bound is missing.

    A bootstrap percentile interval need not contain its point estimate (few replicates, a skewed
    statistic); matplotlib refuses negative whiskers, so such a side is drawn at the value itself.
    """
    below = value - np.asarray(low, dtype=float)
    above = np.asarray(high, dtype=float) - value
    return np.clip(np.nan_to_num(np.vstack([below, above])), 0.0, None)
