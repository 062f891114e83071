"""Turning a feature DataFrame into what LightGBM reads, the same way at fit and at predict.

String columns become pandas categoricals with the categories learned at fit, so codes are stable
across calls and an unseen category is simply missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class FrameSpec:
    """Feature columns in order, and the learned categories of the string ones."""

    columns: tuple[str, ...]
    categories: dict[str, list[str]]

    @classmethod
    def learn(cls, X: pd.DataFrame) -> FrameSpec:
        strings = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
        return cls(
            columns=tuple(X.columns),
            categories={c: sorted(X[c].dropna().astype(str).unique().tolist()) for c in strings},
        )

    def apply(self, X: pd.DataFrame) -> pd.DataFrame:
        """The columns in fit order with categoricals re-coded (missing columns are an error)."""
        missing = [c for c in self.columns if c not in X.columns]
        if missing:
            raise KeyError(f"feature columns missing: {', '.join(missing[:10])}")
        out = X.loc[:, list(self.columns)].copy()
        for col, cats in self.categories.items():
            values = out[col]
            text = values.where(values.isna(), values.astype(str))
            out[col] = pd.Categorical(text, categories=cats)
        return out
