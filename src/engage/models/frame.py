"""Turning a feature DataFrame into what LightGBM reads, the same way at fit and at predict.

String columns become pandas categoricals with the categories learned at fit, so codes are stable
across calls and an unseen category is simply missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

SMALL_BATCH_ROWS = 256


def predict_threads(n_rows: int) -> int:
    """LightGBM's predict ``num_threads``: one thread for the few rows of an API call (waking an
    OpenMP team costs more than the work), every core otherwise (0: OpenMP's default), whatever
    thread count the model was trained with (the offer models train on one)."""
    return 1 if n_rows < SMALL_BATCH_ROWS else 0


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
        self._require(X)
        out = X.loc[:, list(self.columns)].copy()
        for col, cats in self.categories.items():
            codes = np.nan_to_num(_codes(out[col], cats), nan=-1).astype(np.int64)  # unseen -> missing
            out[col] = pd.Categorical.from_codes(codes, categories=cats)
        return out

    def _require(self, X: pd.DataFrame) -> None:
        present = set(X.columns.tolist())  # a set: 80 Index lookups cost a request 0.1 ms
        missing = [c for c in self.columns if c not in present]
        if missing:
            raise KeyError(f"feature columns missing: {', '.join(missing[:10])}")

    def matrix(self, X: pd.DataFrame) -> np.ndarray:
        """The same features as ``apply`` as a float64 array (categoricals as their codes, NaN if unseen).

        LightGBM reads codes of its categorical columns exactly as it reads the categoricals of
        ``apply``, but skips its pandas conversion, which costs milliseconds per call: this is the
        prediction path of the service and of batch scoring.
        """
        self._require(X)
        if len(X) >= SMALL_BATCH_ROWS:
            return self._column_major(X)
        out = np.empty((len(X), len(self.columns)), dtype=np.float64)
        numeric = [i for i, c in enumerate(self.columns) if c not in self.categories]
        if numeric:
            # by position: a label list through .loc costs a few times more on a request's few rows
            where = column_positions(X, [self.columns[i] for i in numeric])
            out[:, numeric] = X.take(where, axis=1).to_numpy(dtype=np.float64, na_value=np.nan)
        for col, cats in self.categories.items():
            out[:, self.columns.index(col)] = _codes(X[col], cats)
        return out

    def _column_major(self, X: pd.DataFrame) -> np.ndarray:
        """``matrix`` for large batches: a Fortran-order array filled one contiguous column at a
        time (LightGBM reads column-major as is), half the cost of scattering a block into rows."""
        out = np.empty((len(X), len(self.columns)), dtype=np.float64, order="F")
        for j, col in enumerate(self.columns):
            cats = self.categories.get(col)
            if cats is None:
                out[:, j] = X[col].to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                out[:, j] = _codes(X[col], cats)
        return out


def column_positions(X: pd.DataFrame, names: Sequence[str]) -> list[int]:
    """Positions of the columns ``names`` in X, for ``X.take(..., axis=1)``: what ``X[names]`` selects
    at a fraction of its cost on a request's few rows. A missing column is a KeyError, a wanted column
    X repeats a ValueError (``X[names]`` would silently return it twice), both naming them."""
    columns = X.columns.tolist()
    position = {name: i for i, name in enumerate(columns)}
    missing = [c for c in names if c not in position]
    if missing:
        raise KeyError(f"feature columns missing: {', '.join(map(str, missing[:10]))}")
    if len(position) < len(columns):
        repeated = [c for c in names if columns.count(c) > 1]
        if repeated:
            raise ValueError(f"feature columns repeated: {', '.join(map(str, repeated[:10]))}")
    return [position[c] for c in names]


def _codes(values: pd.Series, categories: list[str]) -> np.ndarray:
    """Position of each value's text in ``categories`` (NaN for missing or unseen values)."""
    if len(values) <= 1024:  # API calls and small batches: a dict lookup beats any pandas machinery
        index = {c: float(i) for i, c in enumerate(categories)}
        return np.array(
            [
                np.nan if v is None or (not isinstance(v, str) and pd.isna(v)) else index.get(str(v), np.nan)
                for v in values.to_numpy(dtype=object)
            ],
            dtype=np.float64,
        )
    missing = values.isna().to_numpy()
    codes = pd.Index(categories, dtype=object).get_indexer(values.astype(str)).astype(np.float64)
    codes[(codes < 0) | missing] = np.nan
    return codes
