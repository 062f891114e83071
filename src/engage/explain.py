"""Reason codes: top risk-raising contributions per user in plain words, and a global driver table.

Contributions come from LightGBM ``pred_contrib`` (identical to SHAP TreeExplainer, far cheaper to
call directly). A reason compares the user's own value with the typical (median) value learned at
fit, e.g. "No purchase for 45 days (typical: 12)" or "Sessions down 60% vs the previous 4 weeks".
Texts are built from the feature descriptions (and optional units), never from the features
package's internals; the feature *name* only decides the sentence shape (recency, ratio, count...).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

BIAS = "bias"
_RATIO = re.compile(r"_rate_ratio_(\d+)d_(\d+)d$")
_COUNT = re.compile(r"(_count_\d+d|_distinct_\d+d|^active_days_\d+d|^messages_received_\d+d)$")
_RATE = re.compile(r"(_rate|_share)_\d+d$")
_RECENCY_PREFIX = "days_since_last_"
_DESC_RECENCY = re.compile(r"^days since the (last|latest) ", re.IGNORECASE)


def _fmt(v: float) -> str:
    """A number as people write it: thousands separators, decimals only for small fractions."""
    if abs(v) >= 10 or float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:,.2f}".rstrip("0").rstrip(".")


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def _span(days: int) -> str:
    """28 -> "4 weeks", 30 -> "30 days"."""
    return f"{days // 7} weeks" if days % 7 == 0 and days >= 14 else f"{days} days"


Formatter = Callable[[Any], str]


class ReasonExplainer(BaseEstimator):
    """Turns per-row contributions into the top-k risk-raising reasons in plain words.

    ``descriptions`` maps feature -> one-line description ("Days since the last purchase"; a
    feature without one is described by its name);
    ``units`` optionally maps feature -> unit ("days", "events", "$"). ``fit`` learns the typical
    value of each feature (median; among retained users when ``y`` is given, so "typical" means
    "what a customer who stays looks like").
    """

    def __init__(
        self,
        *,
        descriptions: Mapping[str, str] | None = None,
        units: Mapping[str, str] | None = None,
        top_k: int = 3,
    ) -> None:
        self.descriptions = descriptions
        self.units = units
        self.top_k = top_k

    def fit(
        self, X: pd.DataFrame, y: Sequence[int] | np.ndarray | pd.Series | None = None
    ) -> ReasonExplainer:
        """Learn typical values: numeric median (NaN ignored), most common value of string columns."""
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        ref = X
        if y is not None:
            mask = np.asarray(y) == 0
            if len(mask) != len(X):
                raise ValueError(f"y has {len(mask)} rows, X has {len(X)}")
            if mask.any():
                ref = X.loc[mask]
        self.typical_: dict[str, Any] = {}
        for col in ref.columns:
            values = ref[col]
            if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
                med = values.astype(float).median()
                self.typical_[col] = float(med) if pd.notna(med) else float("nan")
            else:
                mode = values.dropna().astype(str).mode()
                self.typical_[col] = str(mode.iloc[0]) if len(mode) else None
        self.formatters_: dict[str, Formatter] = {}
        return self

    # --- texts -------------------------------------------------------------------------------
    def _formatter(self, feature: str) -> Formatter:
        """A function value -> text for one feature, built once and cached (the hot path)."""
        cache: dict[str, Formatter] = self.__dict__.setdefault("formatters_", {})
        cached = cache.get(feature)
        if cached is not None:
            return cached
        desc = (self.descriptions or {}).get(feature) or feature.replace("_", " ").capitalize()
        unit = (self.units or {}).get(feature, "")
        typical = self.typical_.get(feature)
        number = typical if isinstance(typical, float) else float("nan")  # the typical value, if numeric
        known_typical = bool(np.isfinite(number))
        tail = f" (typical: {_fmt(number)})" if known_typical else ""

        def generic(v: Any) -> str:
            if isinstance(v, str):
                common = f" (most common: {typical})" if isinstance(typical, str) and typical != v else ""
                return f"{desc}: {v}{common}"
            if v is None or not np.isfinite(v):
                return f"{desc}: unknown"
            if unit == "$":
                shown = f"${_fmt(v)}" if v >= 0 else f"-${_fmt(-v)}"
                typ = f" (typical: ${_fmt(number)})" if known_typical else ""
                return f"{desc}: {shown}{typ}"
            if _RATE.search(feature) and not unit and 0 <= v <= 1:
                typ = f" (typical: {number:.0%})" if known_typical else ""
                return f"{desc}: {v:.0%}{typ}"
            redundant = not unit or unit == "$" or desc.lower().startswith(unit.lower())
            suffix = "" if redundant else f" {unit}"
            return f"{desc}: {_fmt(v)}{suffix}{tail}"

        fn: Formatter = generic
        if feature.startswith(_RECENCY_PREFIX):
            if _DESC_RECENCY.match(desc):
                what = _DESC_RECENCY.sub("", desc)
            else:
                what = feature.removeprefix(_RECENCY_PREFIX).replace("_", " ")

            def fn(v: Any) -> str:
                if isinstance(v, str):
                    return generic(v)
                if v is None or not np.isfinite(v):
                    return f"No {what} ever" + (
                        f" (typical: {_fmt(number)} days ago)" if known_typical else ""
                    )
                return f"No {what} for {_fmt(v)} days{tail}"

        elif (m := _RATIO.search(feature)) is not None:
            stem = feature[: m.start()]
            noun = "Activity" if stem == "event" else stem.replace("_", " ").capitalize() + "s"
            span = _span(int(m.group(2)))

            def fn(v: Any) -> str:
                if isinstance(v, str) or v is None or not np.isfinite(v):
                    return generic(v)
                change = (float(v) - 1.0) * 100
                if abs(change) < 0.5:
                    return f"{noun} flat vs the previous {span}"
                word = "down" if change < 0 else "up"
                return f"{noun} {word} {abs(change):.0f}% vs the previous {span}"

        elif _COUNT.search(feature):
            phrase = _lower_first(desc)

            def fn(v: Any) -> str:
                if isinstance(v, str) or v is None or not np.isfinite(v):
                    return generic(v)
                return f"{_fmt(v)} {phrase}{tail}"

        cache[feature] = fn
        return fn

    def text(self, feature: str, value: Any) -> str:
        """Plain-words reason for one feature value (NaN means "never" for recency features)."""
        check_is_fitted(self, "typical_")
        return self._formatter(feature)(_clean(value))

    # --- per-row reasons ---------------------------------------------------------------------
    def explain(self, contrib: pd.DataFrame, X: pd.DataFrame) -> list[list[dict[str, Any]]]:
        """Top-k positive (risk-raising) contributions per row: feature, value, contribution, text.

        ``contrib`` is ``ChurnModel.contributions`` (one column per feature plus ``bias``), ``X`` the
        same rows' raw feature values (positional alignment). Rows with no positive contribution get [].
        """
        check_is_fitted(self, "typical_")
        if len(contrib) != len(X):
            raise ValueError(f"contributions have {len(contrib)} rows, features have {len(X)}")
        columns = contrib.columns.tolist()
        kept = [j for j, c in enumerate(columns) if c != BIAS]
        cols = [columns[j] for j in kept]
        present = set(X.columns)
        missing = [c for c in cols if c not in present]
        if missing:
            raise KeyError(f"feature values missing for: {', '.join(missing[:10])}")
        n, k = len(contrib), min(self.top_k, len(cols))
        if n == 0 or k == 0:
            return [[] for _ in range(n)]
        values = contrib.to_numpy(dtype=float)[:, kept]  # by position: no column-selected frame
        if k < len(cols):
            part = np.argpartition(-values, k - 1, axis=1)[:, :k]
        else:
            part = np.tile(np.arange(len(cols)), (n, 1))
        part_vals = np.take_along_axis(values, part, axis=1)
        order = np.argsort(-part_vals, axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)
        top_vals = np.take_along_axis(part_vals, order, axis=1)
        positive = top_vals > 0
        # Gather each selected cell's raw value column by column (one numpy array per feature used).
        cells = np.empty(top.shape, dtype=object)
        texts = np.empty(top.shape, dtype=object)
        for j in np.unique(top[positive]):
            hit = (top == j) & positive
            raw = X[cols[j]].to_numpy()
            rows = np.nonzero(hit)[0]
            picked = [_clean(v) for v in raw[rows]]
            fmt = self._formatter(cols[j])
            cells[hit] = _objects(picked)
            texts[hit] = _objects([fmt(v) for v in picked])
        names = np.asarray(cols, dtype=object)[top].tolist()
        grid = zip(names, cells.tolist(), top_vals.tolist(), texts.tolist(), positive.tolist(), strict=True)
        out: list[list[dict[str, Any]]] = []
        for row_names, row_cells, row_vals, row_texts, row_positive in grid:
            row = []
            for r in range(k):
                if not row_positive[r]:
                    break
                row.append(
                    {
                        "feature": row_names[r],
                        "value": row_cells[r],
                        "contribution": row_vals[r],
                        "text": row_texts[r],
                    }
                )
            out.append(row)
        return out


def _objects(items: list[Any]) -> np.ndarray:
    """A 1-d object array (np.array would try to nest sequences)."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _clean(v: Any) -> Any:
    """A JSON-friendly scalar: strings stay, numbers become float (NaN for missing)."""
    if isinstance(v, str):
        return v
    if v is None or v is pd.NA or v is pd.NaT:
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def _rank(a: np.ndarray) -> np.ndarray:
    return pd.Series(a).rank(method="average").to_numpy()


def global_drivers(
    contrib: pd.DataFrame,
    X: pd.DataFrame,
    y: Sequence[int] | np.ndarray | pd.Series | None = None,
) -> pd.DataFrame:
    """Which behaviours mark churners and which mark retained users, sorted by importance.

    Columns: ``feature``, ``importance`` (mean |contribution|, log-odds), ``direction`` ("higher ->
    more risk" / "higher -> less risk" from the Spearman sign of value vs contribution over rows
    with a value; "" for string or constant features), ``spearman``; with ``y`` also the mean
    contribution among churners and among retained users and ``marks`` (which group the feature
    pushes towards on average).
    """
    cols = [c for c in contrib.columns if c != BIAS]
    if len(contrib) != len(X):
        raise ValueError(f"contributions have {len(contrib)} rows, features have {len(X)}")
    yy = None if y is None else np.asarray(y)
    if yy is not None and len(yy) != len(contrib):
        raise ValueError(f"y has {len(yy)} rows, contributions have {len(contrib)}")
    rows = []
    for f in cols:
        c = contrib[f].to_numpy(dtype=float)
        direction, rho = "", float("nan")
        if f in X.columns and pd.api.types.is_numeric_dtype(X[f]) and not pd.api.types.is_bool_dtype(X[f]):
            x = X[f].to_numpy(dtype=float)
            ok = np.isfinite(x)
            if ok.sum() > 2 and np.ptp(x[ok]) > 0 and np.ptp(c[ok]) > 0:
                rho = float(np.corrcoef(_rank(x[ok]), _rank(c[ok]))[0, 1])
                direction = "higher -> more risk" if rho > 0 else "higher -> less risk"
        row: dict[str, Any] = {
            "feature": f,
            "importance": float(np.abs(c).mean()) if len(c) else 0.0,
            "direction": direction,
            "spearman": rho,
        }
        if yy is not None:
            churn = float(c[yy == 1].mean()) if (yy == 1).any() else float("nan")
            kept = float(c[yy == 0].mean()) if (yy == 0).any() else float("nan")
            row["mean_contribution_churners"] = churn
            row["mean_contribution_retained"] = kept
            row["marks"] = "churners" if churn - kept > 0 else "retained"
        rows.append(row)
    return pd.DataFrame(rows).sort_values("importance", ascending=False, ignore_index=True)
