"""Churn estimators (scikit-learn contract): calibrated LightGBM, two baselines, and the OOT split.

String columns become pandas categoricals with the categories learned at fit (``FrameSpec``), so
predictions are stable and unknown categories map to missing. Identifier and label columns are
dropped if passed, so predictions never depend on who the user is. Everything here is picklable
(plain attributes, no closures) so tracking can wrap it in an MLflow pyfunc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from engage import schemas as s
from engage.models.frame import FrameSpec, predict_threads

if TYPE_CHECKING:
    from engage.config import ChurnModelConfig

DROP: tuple[str, ...] = (s.USER_ID, s.AS_OF, s.LABEL)
_EPS = 1e-4
RECENCY_MONOTONE: frozenset[str] = frozenset(
    {"days_since_last_event", "days_since_last_session", "days_since_last_purchase"}
)
"""Recency columns whose effect on churn risk is constrained to be non-decreasing."""


def out_of_time_split(
    table: pd.DataFrame, *, validation_snapshots: int = 1, as_of_col: str = s.AS_OF
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split stacked snapshots by date into (train, calib, test), never by row.

    The last ``validation_snapshots`` dates are the out-of-time test; the latest remaining date is
    the early-stopping + calibration set (data the trees do not fit); earlier dates train.
    """
    if validation_snapshots < 1:
        raise ValueError(f"validation_snapshots must be >= 1, got {validation_snapshots}")
    if as_of_col not in table.columns:
        raise KeyError(f"training table has no {as_of_col!r} column")
    dates = sorted(pd.unique(table[as_of_col].dropna()))
    need = validation_snapshots + 2
    if len(dates) < need:
        raise ValueError(
            f"out-of-time split needs at least {need} snapshot dates in column {as_of_col!r} "
            f"({validation_snapshots} test + 1 calibration + 1 train), got {len(dates)}"
        )
    calib_date = dates[-validation_snapshots - 1]
    when = table[as_of_col]
    test = table[when > calib_date]
    calib = table[when == calib_date]
    train = table[when < calib_date]
    return train.reset_index(drop=True), calib.reset_index(drop=True), test.reset_index(drop=True)


def _features(X: pd.DataFrame) -> pd.DataFrame:
    """Drop identifier, date and label columns if present (predictions must not depend on them)."""
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame of features, got {type(X).__name__}")
    return X.drop(columns=[c for c in DROP if c in X.columns])


def _labels(y: object, n: int, what: str) -> np.ndarray:
    """0/1 labels as int, checked for length, values and both classes present."""
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise ValueError(f"{what}: expected {n} labels, got shape {arr.shape}")
    if pd.isna(arr).any():
        raise ValueError(f"{what}: labels contain missing values")
    values = set(np.unique(arr).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"{what}: labels must be 0/1, got {sorted(values)[:5]}")
    if len(values) < 2:
        raise ValueError(f"{what}: labels need both churned and retained rows, got only {values}")
    return arr.astype(int)


class ChurnModel(BaseEstimator, ClassifierMixin):
    """LightGBM with early stopping on a later snapshot, then isotonic or Platt calibration there.

    Parameters mirror ``ChurnModelConfig`` (defaults: 7 leaves, depth 4, Platt; see there why) and
    ``from_config`` builds the model from it; ``n_jobs``, ``reg_lambda``, ``extra_trees`` and
    ``path_smooth`` are extra LightGBM knobs.
    ``monotone_recency`` constrains the recency columns in ``RECENCY_MONOTONE`` to raise risk only.
    ``fit(X, y, X_calib=..., y_calib=...)``: the trees fit ``X``; ``X_calib`` (a later snapshot)
    both stops boosting and fits the calibrator on raw scores, so calibration is learned on data
    the trees did not fit.
    """

    def __init__(
        self,
        *,
        n_estimators: int = 600,
        learning_rate: float = 0.05,
        num_leaves: int = 7,
        min_child_samples: int = 50,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        early_stopping_rounds: int = 50,
        calibration: Literal["isotonic", "platt"] = "platt",
        random_state: int = 0,
        n_jobs: int = 2,
        max_depth: int = 4,
        reg_lambda: float = 0.0,
        extra_trees: bool = False,
        path_smooth: float = 0.0,
        monotone_recency: bool = False,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.early_stopping_rounds = early_stopping_rounds
        self.calibration = calibration
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.max_depth = max_depth
        self.reg_lambda = reg_lambda
        self.extra_trees = extra_trees
        self.path_smooth = path_smooth
        self.monotone_recency = monotone_recency

    @classmethod
    def from_config(cls, config: ChurnModelConfig, *, seed: int) -> ChurnModel:
        """The model training runs: every ``ChurnModelConfig`` field named like a parameter, seeded.

        The match is by name, so there is no second list of settings to keep in step; the config's
        other fields (validation_snapshots, promote_margin, reasons_top_k, risk_bands) steer the
        training around the model, not the model itself.
        """
        names = set(cls().get_params())
        params = {name: getattr(config, name) for name in type(config).model_fields if name in names}
        return cls(**params, random_state=seed)

    def _prepare(self, X: pd.DataFrame) -> pd.DataFrame:
        """Features in fit order with categoricals re-coded as at fit."""
        return self.frame_.apply(_features(X))

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        """The prepared features as a float array (the fast input form for prediction)."""
        return self.frame_.matrix(X)

    def fit(self, X: pd.DataFrame, y: object, *, X_calib: pd.DataFrame, y_calib: object) -> ChurnModel:
        """Fit trees on X with early stopping on X_calib, then the calibrator on X_calib's raw scores."""
        if self.calibration not in ("isotonic", "platt"):
            raise ValueError(f"calibration must be 'isotonic' or 'platt', got {self.calibration!r}")
        X = _features(X)
        if X.shape[1] == 0:
            raise ValueError("no feature columns left after dropping user_id, as_of and churned")
        y_arr = _labels(y, len(X), "training labels")
        y_cal = _labels(y_calib, len(X_calib), "calibration labels")
        self.frame_ = FrameSpec.learn(X)
        self.feature_names_ = list(self.frame_.columns)
        self.categorical_features_ = list(self.frame_.categories)
        self.categories_ = dict(self.frame_.categories)
        self.n_features_in_ = len(self.feature_names_)
        Xt, Xc = self._prepare(X), self._prepare(X_calib)
        self.model_ = lgb.LGBMClassifier(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            max_depth=self.max_depth,
            min_child_samples=self.min_child_samples,
            subsample=self.subsample,
            subsample_freq=1 if self.subsample < 1 else 0,
            colsample_bytree=self.colsample_bytree,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
            reg_lambda=self.reg_lambda,
            extra_trees=self.extra_trees,
            path_smooth=self.path_smooth,
            **self._monotone(),
            deterministic=True,
            force_col_wise=True,
            verbose=-1,
        )
        self.model_.fit(
            Xt,
            y_arr,
            eval_X=(Xc,),
            eval_y=(y_cal,),
            eval_metric="binary_logloss",
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, first_metric_only=True, verbose=False)],
        )
        self.booster_ = self.model_.booster_
        self.best_iteration_ = int(self.model_.best_iteration_ or self.booster_.current_iteration())
        raw = self.predict_raw(X_calib)
        if self.calibration == "isotonic":
            self.calibrator_: IsotonicRegression | LogisticRegression = IsotonicRegression(
                out_of_bounds="clip", y_min=_EPS, y_max=1 - _EPS
            ).fit(raw, y_cal)
        else:
            self.calibrator_ = LogisticRegression(C=1e6).fit(raw.reshape(-1, 1), y_cal)
        self.classes_ = np.array([0, 1])
        return self

    def _monotone(self) -> dict[str, Any]:
        """+1 (risk never falls as it grows) on the activity recency columns, when asked for."""
        if not self.monotone_recency:
            return {}
        signs = [1 if c in RECENCY_MONOTONE else 0 for c in self.feature_names_]
        return {"monotone_constraints": signs} if any(signs) else {}

    def predict_raw(self, X: pd.DataFrame) -> np.ndarray:
        """Uncalibrated log-odds of the trees up to the best iteration."""
        check_is_fitted(self, "booster_")
        return np.asarray(
            self.booster_.predict(
                self._matrix(X),
                raw_score=True,
                num_iteration=self.best_iteration_,
                num_threads=predict_threads(len(X)),
            )
        )

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated probabilities, shape (n, 2): [retained, churned]."""
        check_is_fitted(self, "calibrator_")
        raw = self.predict_raw(X)
        if isinstance(self.calibrator_, IsotonicRegression):
            p = self.calibrator_.predict(raw)
        else:
            p = self.calibrator_.predict_proba(raw.reshape(-1, 1))[:, 1]
        p = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
        return np.column_stack([1 - p, p])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """0/1 at probability 0.5 (scikit-learn contract; policies use the probability)."""
        check_is_fitted(self, "calibrator_")
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """Per-feature contributions to the raw log-odds (SHAP values) plus a ``bias`` column.

        Rows sum to ``predict_raw``; uncalibrated by design (calibration is monotone, so the
        ranking of reasons is unchanged).
        """
        check_is_fitted(self, "booster_")
        values = self.booster_.predict(
            self._matrix(X),
            pred_contrib=True,
            num_iteration=self.best_iteration_,
            num_threads=predict_threads(len(X)),
        )
        return pd.DataFrame(values, columns=[*self.feature_names_, "bias"], index=X.index)


class LogisticBaseline(BaseEstimator, ClassifierMixin):
    """Standardized logistic regression on the numeric columns (median imputation + missing flags)."""

    def __init__(self, *, C: float = 1.0, max_iter: int = 1000) -> None:
        self.C = C
        self.max_iter = max_iter

    def fit(self, X: pd.DataFrame, y: object) -> LogisticBaseline:
        """Fit the pipeline on numeric (and boolean) feature columns; strings are ignored."""
        X = _features(X)
        y_arr = _labels(y, len(X), "training labels")
        self.columns_ = [c for c in X.columns if pd.api.types.is_numeric_dtype(X[c])]
        if not self.columns_:
            raise ValueError("LogisticBaseline needs at least one numeric feature column")
        self.pipeline_: Pipeline = make_pipeline(
            SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(C=self.C, max_iter=self.max_iter),
        )
        self.pipeline_.fit(self._matrix(X), y_arr)
        self.classes_ = np.array([0, 1])
        return self

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        """Numeric columns as float with infinities treated as missing."""
        m = np.array(_features(X)[self.columns_].to_numpy(dtype=float, na_value=np.nan), copy=True)
        m[~np.isfinite(m)] = np.nan
        return m

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Probabilities, shape (n, 2)."""
        check_is_fitted(self, "pipeline_")
        return self.pipeline_.predict_proba(self._matrix(X))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """0/1 at probability 0.5."""
        check_is_fitted(self, "pipeline_")
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


class RecencyBaseline(BaseEstimator, ClassifierMixin):
    """The rule a marketer would use: the longer since last activity, the higher the risk.

    The score is the recency feature itself (missing = never active = the largest value seen),
    mapped to a probability by an increasing isotonic fit on the training data.
    """

    def __init__(self, *, feature: str = "days_since_last_event") -> None:
        self.feature = feature

    def _score(self, X: pd.DataFrame) -> np.ndarray:
        if self.feature not in X.columns:
            raise KeyError(f"RecencyBaseline needs column {self.feature!r}")
        x = X[self.feature].to_numpy(dtype=float, na_value=np.nan)
        return np.where(np.isfinite(x), x, self.fill_)

    def fit(self, X: pd.DataFrame, y: object) -> RecencyBaseline:
        """Fit the isotonic map recency -> churn rate on the training rows."""
        y_arr = _labels(y, len(X), "training labels")
        if self.feature not in X.columns:
            raise KeyError(f"RecencyBaseline needs column {self.feature!r}")
        x = X[self.feature].to_numpy(dtype=float, na_value=np.nan)
        finite = np.isfinite(x)
        self.fill_ = float(x[finite].max()) if finite.any() else 0.0
        self.iso_ = IsotonicRegression(out_of_bounds="clip", increasing=True).fit(self._score(X), y_arr)
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Probabilities, shape (n, 2)."""
        check_is_fitted(self, "iso_")
        p = np.clip(self.iso_.predict(self._score(X)), _EPS, 1 - _EPS)
        return np.column_stack([1 - p, p])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """0/1 at probability 0.5."""
        check_is_fitted(self, "iso_")
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)
