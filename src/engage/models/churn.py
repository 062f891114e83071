"""Churn estimators (scikit-learn contract): calibrated LightGBM and two baselines, plus the OOT split.

String columns become pandas categoricals with the categories learned at fit, so predictions are
stable and unknown categories map to missing. Identifier and label columns are dropped if passed,
so predictions never depend on who the user is.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from engage import schemas as s
from engage.models.frame import FrameSpec

DROP = (s.USER_ID, s.AS_OF, s.LABEL)


def out_of_time_split(table: pd.DataFrame, *, validation_snapshots: int = 1, as_of_col: str = s.AS_OF):
    dates = sorted(table[as_of_col].unique())
    if len(dates) < validation_snapshots + 2:
        raise ValueError(
            f"out-of-time split needs at least {validation_snapshots + 2} snapshot dates, got {len(dates)}"
        )
    test_dates = dates[-validation_snapshots:]
    calib_date = dates[-validation_snapshots - 1]
    test = table[table[as_of_col].isin(test_dates)]
    calib = table[table[as_of_col] == calib_date]
    train = table[table[as_of_col] < calib_date]
    return train.reset_index(drop=True), calib.reset_index(drop=True), test.reset_index(drop=True)


def _features(X: pd.DataFrame) -> pd.DataFrame:
    return X.drop(columns=[c for c in DROP if c in X.columns])


class ChurnModel(BaseEstimator, ClassifierMixin):
    def __init__(
        self,
        n_estimators=600,
        learning_rate=0.05,
        num_leaves=31,
        min_child_samples=50,
        subsample=0.8,
        colsample_bytree=0.8,
        early_stopping_rounds=50,
        calibration="isotonic",
        random_state=0,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.early_stopping_rounds = early_stopping_rounds
        self.calibration = calibration
        self.random_state = random_state

    def _prepare(self, X: pd.DataFrame) -> pd.DataFrame:
        return self.frame_.apply(_features(X))

    def fit(self, X, y, *, X_calib, y_calib):
        X = _features(X)
        self.frame_ = FrameSpec.learn(X)
        self.feature_names_ = list(self.frame_.columns)
        self.categorical_features_ = list(self.frame_.categories)
        self.categories_ = self.frame_.categories
        Xt, Xc = self._prepare(X), self._prepare(X_calib)
        self.model_ = lgb.LGBMClassifier(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            subsample=self.subsample,
            subsample_freq=1,
            colsample_bytree=self.colsample_bytree,
            random_state=self.random_state,
            n_jobs=2,
            deterministic=True,
            force_col_wise=True,
            verbose=-1,
        )
        self.model_.fit(
            Xt,
            np.asarray(y),
            eval_X=(Xc,),
            eval_y=(np.asarray(y_calib),),
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )
        self.booster_ = self.model_.booster_
        self.best_iteration_ = int(self.model_.best_iteration_ or self.n_estimators)
        raw = self.predict_raw(X_calib)
        if self.calibration == "isotonic":
            self.calibrator_ = IsotonicRegression(out_of_bounds="clip", y_min=1e-4, y_max=1 - 1e-4).fit(
                raw, np.asarray(y_calib)
            )
        else:
            self.calibrator_ = LogisticRegression().fit(raw.reshape(-1, 1), np.asarray(y_calib))
        self.classes_ = np.array([0, 1])
        return self

    def predict_raw(self, X) -> np.ndarray:
        return self.booster_.predict(self._prepare(X), raw_score=True, num_iteration=self.best_iteration_)

    def predict_proba(self, X) -> np.ndarray:
        raw = self.predict_raw(X)
        if self.calibration == "isotonic":
            p = self.calibrator_.predict(raw)
        else:
            p = self.calibrator_.predict_proba(raw.reshape(-1, 1))[:, 1]
        return np.column_stack([1 - p, p])

    def predict(self, X) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def contributions(self, X) -> pd.DataFrame:
        values = self.booster_.predict(
            self._prepare(X), pred_contrib=True, num_iteration=self.best_iteration_
        )
        return pd.DataFrame(values, columns=[*self.feature_names_, "bias"], index=getattr(X, "index", None))


class LogisticBaseline(BaseEstimator, ClassifierMixin):
    def __init__(self, C: float = 1.0, max_iter: int = 1000):
        self.C = C
        self.max_iter = max_iter

    def fit(self, X, y):
        X = _features(X)
        self.columns_ = [c for c in X.columns if pd.api.types.is_numeric_dtype(X[c])]
        self.pipeline_ = make_pipeline(
            SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(C=self.C, max_iter=self.max_iter),
        )
        self.pipeline_.fit(X[self.columns_].astype(float), np.asarray(y))
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        return self.pipeline_.predict_proba(_features(X)[self.columns_].astype(float))


class RecencyBaseline(BaseEstimator, ClassifierMixin):
    def __init__(self, feature: str = "days_since_last_event"):
        self.feature = feature

    def fit(self, X, y):
        x = X[self.feature].astype(float).to_numpy()
        self.fill_ = float(np.nanmax(x)) if np.isfinite(x).any() else 0.0
        self.iso_ = IsotonicRegression(out_of_bounds="clip", increasing=True).fit(
            np.nan_to_num(x, nan=self.fill_), np.asarray(y)
        )
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        x = np.nan_to_num(X[self.feature].astype(float).to_numpy(), nan=self.fill_)
        p = np.clip(self.iso_.predict(x), 1e-4, 1 - 1e-4)
        return np.column_stack([1 - p, p])
