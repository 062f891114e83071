"""Reason codes: top risk-raising contributions per user in plain words, and global drivers.

Contributions come from LightGBM ``pred_contrib`` (identical to SHAP TreeExplainer, far cheaper).
A reason compares the user's own value with the typical (median) value of the training population.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.stats import spearmanr


def _fmt(v: float) -> str:
    if v is None or not np.isfinite(v):
        return "never"
    return f"{v:,.0f}" if abs(v) >= 10 or float(v).is_integer() else f"{v:,.2f}"


class ReasonExplainer:
    def __init__(
        self, descriptions: Mapping[str, str], units: Mapping[str, str] | None = None, top_k: int = 3
    ):
        self.descriptions = descriptions
        self.units = units
        self.top_k = top_k

    def fit(self, X: pd.DataFrame) -> ReasonExplainer:
        num = X.select_dtypes("number")
        self.typical_ = num.median().to_dict()
        return self

    def text(self, feature: str, value) -> str:
        desc = self.descriptions.get(feature, feature.replace("_", " "))
        typical = self.typical_.get(feature)
        if isinstance(value, str) or typical is None:
            return f"{desc}: {value}"
        if feature.startswith("days_since_last_"):
            what = feature.removeprefix("days_since_last_").replace("_", " ")
            if value is None or not np.isfinite(value):
                return f"No {what} ever (typical: {_fmt(typical)} days ago)"
            return f"No {what} for {_fmt(value)} days (typical: {_fmt(typical)})"
        if "_rate_ratio_7d_28d" in feature and np.isfinite(value):
            change = (value - 1) * 100
            what = feature.split("_rate_ratio")[0].replace("_", " ")
            direction = "down" if change < 0 else "up"
            return f"{what.capitalize()} rate {direction} {abs(change):.0f}% vs the previous 4 weeks"
        return f"{desc}: {_fmt(value)} (typical: {_fmt(typical)})"

    def explain(self, contrib: pd.DataFrame, X: pd.DataFrame) -> list[list[dict]]:
        cols = [c for c in contrib.columns if c != "bias"]
        values = contrib[cols].to_numpy()
        order = np.argsort(-values, axis=1)[:, : self.top_k]
        out = []
        Xv = X[cols]
        for i in range(len(values)):
            items = []
            for j in order[i]:
                c = values[i, j]
                if c <= 0:
                    break
                f = cols[j]
                v = Xv.iat[i, j]
                v = v if isinstance(v, str) else (float(v) if v is not None and pd.notna(v) else float("nan"))
                items.append({"feature": f, "value": v, "contribution": float(c), "text": self.text(f, v)})
            out.append(items)
        return out


def global_drivers(contrib: pd.DataFrame, X: pd.DataFrame, y=None) -> pd.DataFrame:
    rows = []
    for f in [c for c in contrib.columns if c != "bias"]:
        c = contrib[f].to_numpy()
        direction = ""
        if f in X and pd.api.types.is_numeric_dtype(X[f]):
            x = X[f].to_numpy(dtype=float)
            ok = np.isfinite(x)
            if ok.sum() > 2 and np.std(x[ok]) > 0 and np.std(c[ok]) > 0:
                rho = spearmanr(x[ok], c[ok]).statistic
                direction = "higher -> more risk" if rho > 0 else "higher -> less risk"
        row = {"feature": f, "importance": float(np.abs(c).mean()), "direction": direction}
        if y is not None:
            yy = np.asarray(y)
            row["mean_contribution_churners"] = float(c[yy == 1].mean()) if (yy == 1).any() else np.nan
            row["mean_contribution_retained"] = float(c[yy == 0].mean()) if (yy == 0).any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows).sort_values("importance", ascending=False, ignore_index=True)
