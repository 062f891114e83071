"""Watch a served model: has the population drifted from the one it learned on, and does the risk it
serves still match the churn that followed?

Drift is the population stability index (PSI) per feature and of the served churn probability:
``sum over bins of (current share - reference share) * ln(current share / reference share)``. A
numeric column is cut at the reference's quantiles (with the reference minimum and maximum as cuts,
so a value outside the reference range lands in a bin of its own and a constant column that moves is
seen); a categorical or boolean column has a bin per category, one that only the current table has
included; a missing value (NaN, null) is a bin of its own in both. An empty bin counts as
``monitor.epsilon``, so every term is finite. Calibration compares, per week of scoring dates, the
served risk with the churn label of ``engage.labels`` (the one label definition), and only for dates
whose label window has closed by the last event: no week is judged on partial labels.

Pure: tables in, tables and a JSON-able summary out; ``engage monitor`` reads files and draws the page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import pandas as pd
import polars as pl

from engage import schemas as s
from engage.config import LabelConfig, MonitorConfig
from engage.evaluation.classification import expected_calibration_error
from engage.labels import Events, churn_labels
from engage.timing.snapshot import HOURS_COLUMN

__all__ = [
    "SCORE_COLUMN",
    "Drift",
    "Monitor",
    "calibration_by_week",
    "feature_drift",
    "monitor",
    "psi",
    "psi_bins",
    "score_periods",
    "status_of",
]

SCORE_COLUMN = "churn_probability"
NOT_FEATURES = frozenset({s.USER_ID, s.AS_OF, s.LABEL, HOURS_COLUMN})
"""Columns of a snapshot or training table that are keys or the label, not features (nor the
timing columns' encoded activity hours: one text per user, no category to compare)."""
MISSING_BIN = "missing"
Status = Literal["ok", "warn", "alert", "n/a"]
_RANK = {"alert": 0, "warn": 1, "ok": 2, "n/a": 3}


def status_of(value: float, warn: float, alert: float) -> Status:
    """``alert`` at or above ``alert``, ``warn`` at or above ``warn``, else ``ok``; NaN is ``n/a``."""
    if not math.isfinite(value):
        return "n/a"
    return "alert" if value >= alert else "warn" if value >= warn else "ok"


def _kind(series: pd.Series) -> Literal["numeric", "categorical"]:
    if pd.api.types.is_bool_dtype(series.dtype):
        return "categorical"
    if pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_datetime64_any_dtype(series.dtype):
        return "numeric"
    return "categorical"


def _as_float(series: pd.Series) -> np.ndarray:
    """Numbers as floats (timestamps as days since 1970; text that is no number as NaN)."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        stamps = pd.to_datetime(series, utc=True)
        return ((stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(days=1)).to_numpy(dtype=float)
    if pd.api.types.is_bool_dtype(series.dtype):
        series = series.astype("float")
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _numeric_counts(
    reference: pd.Series, current: pd.Series, bins: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    ref, cur = _as_float(reference), _as_float(current)
    finite = ref[np.isfinite(ref)]
    if finite.size and finite.min() < finite.max():
        # the reference's quantile bins, the outer two open-ended (the usual PSI): a population that
        # ages by a week shifts a little mass into the top bin instead of into a bin of its own
        # whose reference share is epsilon (an age feature would alert every week)
        cuts = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1], method="lower"))
        cuts = cuts[cuts > finite.min()] if cuts.size > 1 else cuts
        labels = [f"< {_fmt(cuts[0])}"]
        labels += [f"[{_fmt(a)}, {_fmt(b)})" for a, b in pairwise(cuts)]
        labels += [f">= {_fmt(cuts[-1])}"]
    elif finite.size:  # a constant: below, equal, above, so a moved constant is seen
        top = float(finite.max())
        cuts = np.array([top, np.nextafter(top, np.inf)])
        labels = [f"< {_fmt(top)}", f"= {_fmt(top)}", f"> {_fmt(top)}"]
    else:
        cuts, labels = np.empty(0), ["any value"]

    def count(values: np.ndarray) -> np.ndarray:
        known = ~np.isnan(values)
        idx = np.searchsorted(cuts, values[known], side="right")
        return np.append(np.bincount(idx, minlength=len(cuts) + 1), int((~known).sum()))

    return [*labels, MISSING_BIN], count(ref), count(cur)


def _categorical_counts(reference: pd.Series, current: pd.Series) -> tuple[list[str], np.ndarray, np.ndarray]:
    ref_counts = reference.dropna().astype(str).value_counts()
    cur_counts = current.dropna().astype(str).value_counts()
    order = [*ref_counts.index, *sorted(set(cur_counts.index) - set(ref_counts.index))]
    ref = np.append(ref_counts.reindex(order, fill_value=0).to_numpy(), int(reference.isna().sum()))
    cur = np.append(cur_counts.reindex(order, fill_value=0).to_numpy(), int(current.isna().sum()))
    return [*order, MISSING_BIN], ref, cur


def psi_bins(
    reference: pd.Series | Sequence[Any] | np.ndarray,
    current: pd.Series | Sequence[Any] | np.ndarray,
    *,
    bins: int = 10,
    epsilon: float = 1e-4,
) -> pd.DataFrame:
    """The bins of one column: ``bin``, ``reference`` and ``current`` shares, and each bin's PSI term.

    The kind (numeric or categorical) follows the reference; bins empty on both sides are left out.
    """
    ref, cur = pd.Series(reference), pd.Series(current)
    if ref.empty or cur.empty:
        raise ValueError(f"PSI needs rows on both sides (reference {len(ref):,}, current {len(cur):,})")
    if _kind(ref) == "numeric":
        labels, ref_n, cur_n = _numeric_counts(ref, cur, bins)
    else:
        labels, ref_n, cur_n = _categorical_counts(ref, cur)
    ref_share, cur_share = ref_n / len(ref), cur_n / len(cur)
    r, c = np.maximum(ref_share, epsilon), np.maximum(cur_share, epsilon)
    table = pd.DataFrame(
        {"bin": labels, "reference": ref_share, "current": cur_share, "psi": (c - r) * np.log(c / r)}
    )
    return table[(ref_n > 0) | (cur_n > 0)].reset_index(drop=True)


def psi(
    reference: pd.Series | Sequence[Any] | np.ndarray,
    current: pd.Series | Sequence[Any] | np.ndarray,
    *,
    bins: int = 10,
    epsilon: float = 1e-4,
) -> float:
    """Population stability index of ``current`` against ``reference`` (0 = the same distribution)."""
    return float(psi_bins(reference, current, bins=bins, epsilon=epsilon)["psi"].sum())


@dataclass(frozen=True)
class Drift:
    """PSI per column: ``table`` (feature, kind, psi, status, missing shares, note; worst first) and the
    bins of every compared column (for histograms)."""

    table: pd.DataFrame
    bins: dict[str, pd.DataFrame]


def feature_drift(reference: pd.DataFrame, current: pd.DataFrame, config: MonitorConfig) -> Drift:
    """PSI of every column of ``reference`` but the keys and the label; a column the current table
    lacks is an alert (the model reads it), one only the current table has is listed (``n/a``)."""
    rows: list[dict[str, Any]] = []
    bins: dict[str, pd.DataFrame] = {}
    for name in (c for c in reference.columns if c not in NOT_FEATURES):
        ref = reference[name]
        kind = _kind(ref)
        if name not in current.columns:
            rows.append(_row(name, kind, float("nan"), "alert", ref, None, "missing from the current table"))
            continue
        cur = current[name]
        bins[name] = psi_bins(ref, cur, bins=config.bins, epsilon=config.epsilon)
        value = float(bins[name]["psi"].sum())
        rows.append(
            _row(name, kind, value, status_of(value, config.psi_warn, config.psi_alert), ref, cur, "")
        )
    for name in (c for c in current.columns if c not in NOT_FEATURES and c not in reference.columns):
        rows.append(
            _row(name, _kind(current[name]), float("nan"), "n/a", None, current[name], "not in the reference")
        )
    table = pd.DataFrame(rows, columns=list(_row("", "numeric", 0.0, "ok", None, None, "")))
    if len(table):
        table = (
            table.assign(_rank=table["status"].map(_RANK), _psi=-table["psi"].fillna(-np.inf))
            .sort_values(["_rank", "_psi", "feature"], kind="stable")
            .drop(columns=["_rank", "_psi"])
            .reset_index(drop=True)
        )
    return Drift(table=table, bins=bins)


def _row(
    name: str, kind: str, value: float, status: str, ref: pd.Series | None, cur: pd.Series | None, note: str
) -> dict[str, Any]:
    def missing(col: pd.Series | None) -> float:
        return float(col.isna().mean()) if col is not None and len(col) else float("nan")

    return {
        "feature": name,
        "kind": kind,
        "psi": value,
        "status": status,
        "reference_missing": missing(ref),
        "current_missing": missing(cur),
        "note": note,
    }


def _utc(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True).dt.as_unit("us")


def score_periods(
    scores: pd.DataFrame, reference_dates: Sequence[Any], current_dates: Sequence[Any]
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The served scores to compare: those of the reference snapshot's dates (else the earliest
    scoring date) against those of the current snapshot's dates (else the latest scoring date);
    None when that leaves one set of dates (nothing to compare)."""
    stamps = _utc(scores[s.AS_OF])
    if stamps.empty:
        return None
    ref_dates = set(_utc(pd.Series(list(reference_dates))))
    cur_dates = set(_utc(pd.Series(list(current_dates))))
    ref_mask = stamps.isin(ref_dates)
    cur_mask = stamps.isin(cur_dates)
    if not ref_mask.any():
        ref_mask = stamps == stamps.min()
    if not cur_mask.any():
        cur_mask = stamps == stamps.max()
    if set(stamps[ref_mask]) == set(stamps[cur_mask]):
        return None
    return scores[ref_mask.to_numpy()], scores[cur_mask.to_numpy()]


def calibration_by_week(
    scores: pd.DataFrame, events: Events, *, labels: LabelConfig, config: MonitorConfig
) -> pd.DataFrame:
    """Served risk against realized churn per week (Monday) of scoring dates.

    One row per week: ``scored`` rows, ``labelled`` rows (users the churn label covers: active in the
    lookback window), ``mean_predicted`` and ``realized_rate`` over the labelled rows, ``ece``
    (equal-frequency, as in training), ``complete`` and ``status``. A week is complete when the label
    window ``[as_of + lead, as_of + lead + horizon)`` of every scoring date in it ends at or before
    the last event; weeks that are not have no label figures (no partial labels). ``status`` judges
    the ECE of complete weeks with at least ``monitor.min_week_rows`` labelled rows.
    """
    frame = pl.from_pandas(events) if isinstance(events, pd.DataFrame) else events
    lazy = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
    last = lazy.select(pl.col(s.TS).max()).collect().item()
    served = pd.DataFrame(
        {
            s.USER_ID: scores[s.USER_ID].astype(str).to_numpy(),
            s.AS_OF: _utc(scores[s.AS_OF]).to_numpy(),
            SCORE_COLUMN: pd.to_numeric(scores[SCORE_COLUMN]).to_numpy(dtype=float),
        }
    )
    served[s.AS_OF] = _utc(served[s.AS_OF])
    served["week"] = (
        served[s.AS_OF].dt.floor("D") - pd.to_timedelta(served[s.AS_OF].dt.weekday, "D")
    ).dt.date
    offset = timedelta(days=labels.lead_days + labels.horizon_days)
    dates = served[[s.AS_OF, "week"]].drop_duplicates()
    dates["closed"] = [last is not None and d.to_pydatetime() + offset <= last for d in dates[s.AS_OF]]
    complete = dates.groupby("week")["closed"].all()
    judged = dates[dates["week"].map(complete)][s.AS_OF]
    if len(judged):
        stamps: list[datetime] = [d.to_pydatetime() for d in judged]
        truth = churn_labels(lazy, stamps, config=labels)
        truth[s.USER_ID] = truth[s.USER_ID].astype(str)
        truth[s.AS_OF] = _utc(truth[s.AS_OF])
        served = served.merge(truth, on=[s.USER_ID, s.AS_OF], how="left")
    else:
        served[s.LABEL] = np.nan
    rows = []
    for week, part in served.groupby("week", sort=True):
        done = bool(complete[week])
        known = part[part[s.LABEL].notna()] if done else part.iloc[:0]
        y, p = known[s.LABEL].to_numpy(dtype=float), known[SCORE_COLUMN].to_numpy(dtype=float)
        ece = expected_calibration_error(y, p) if len(known) else float("nan")
        enough = len(known) >= config.min_week_rows
        rows.append(
            {
                "week": str(week),
                "scored": len(part),
                "labelled": len(known),
                "mean_predicted": float(p.mean()) if len(known) else float("nan"),
                "realized_rate": float(y.mean()) if len(known) else float("nan"),
                "ece": ece,
                "complete": done,
                "status": status_of(ece, config.ece_warn, config.ece_alert) if enough else "n/a",
            }
        )
    return pd.DataFrame(rows, columns=list(_WEEK_COLUMNS))


_WEEK_COLUMNS = ("week", "scored", "labelled", "mean_predicted", "realized_rate", "ece", "complete", "status")


@dataclass(frozen=True)
class Monitor:
    """One monitoring run: feature drift, score drift (with its dates), calibration by week, and the
    alerts and warnings they raise (an alert is what makes ``engage monitor`` exit with code 1)."""

    features: Drift
    scores: Drift | None
    score_dates: tuple[list[str], list[str]] | None
    calibration: pd.DataFrame | None
    alerts: list[str]
    warnings: list[str]

    @property
    def status(self) -> Literal["ok", "warn", "alert"]:
        return "alert" if self.alerts else "warn" if self.warnings else "ok"

    def summary(self, config: MonitorConfig) -> dict[str, Any]:
        """Everything as plain JSON values (NaN as null), for ``monitor.json``."""
        return _clean(
            {
                "status": self.status,
                "alerts": self.alerts,
                "warnings": self.warnings,
                "thresholds": {
                    "psi_warn": config.psi_warn,
                    "psi_alert": config.psi_alert,
                    "ece_warn": config.ece_warn,
                    "ece_alert": config.ece_alert,
                    "min_week_rows": config.min_week_rows,
                    "bins": config.bins,
                    "epsilon": config.epsilon,
                },
                "features": self.features.table.to_dict(orient="records"),
                "score": None
                if self.scores is None or self.score_dates is None
                else {
                    **self.scores.table.iloc[0].to_dict(),
                    "reference_dates": self.score_dates[0],
                    "current_dates": self.score_dates[1],
                },
                "calibration": None
                if self.calibration is None
                else self.calibration.to_dict(orient="records"),
            }
        )


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _dates(frame: pd.DataFrame) -> list[str]:
    return sorted({d.isoformat() for d in _utc(frame[s.AS_OF])})


def monitor(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    config: MonitorConfig,
    labels: LabelConfig,
    scores: pd.DataFrame | None = None,
    events: Events | None = None,
) -> Monitor:
    """Drift of ``current`` against ``reference`` (feature tables with ``user_id`` and ``as_of``), of
    the served scores between their dates, and calibration by week (with ``events``).

    Alerts: a feature or the score at or above ``psi_alert``, a feature gone from the current table,
    and the latest judged week's ECE at or above ``ece_alert`` (older weeks are history: a scheduler
    should not alert on them every run); warnings likewise at the warn thresholds.
    """
    features = feature_drift(reference, current, config)
    alerts, warnings = [], []
    for row in features.table.itertuples(index=False):
        what = f"feature {row.feature}: " + (row.note if row.note else f"PSI {row.psi:.3f}")
        if row.status == "alert":
            alerts.append(what)
        elif row.status == "warn":
            warnings.append(what)
    score_drift, score_dates = None, None
    if scores is not None:
        periods = score_periods(scores, _dates(reference), _dates(current))
        if periods is not None:
            score_drift = feature_drift(periods[0][[SCORE_COLUMN]], periods[1][[SCORE_COLUMN]], config)
            score_dates = (_dates(periods[0]), _dates(periods[1]))
            row = score_drift.table.iloc[0]
            what = f"score {SCORE_COLUMN}: PSI {row['psi']:.3f}"
            if row["status"] in ("alert", "warn"):
                (alerts if row["status"] == "alert" else warnings).append(what)
    calibration = None
    if scores is not None and events is not None:
        calibration = calibration_by_week(scores, events, labels=labels, config=config)
        judged = calibration[calibration["status"] != "n/a"]
        if len(judged):
            week = judged.iloc[-1]
            what = (
                f"calibration, week of {week['week']}: ECE {week['ece']:.3f} over {week['labelled']:,} users"
            )
            if week["status"] == "alert":
                alerts.append(what)
            elif week["status"] == "warn":
                warnings.append(what)
    return Monitor(features, score_drift, score_dates, calibration, alerts, warnings)
