"""Multi-arm uplift (scikit-learn contract): a T-learner on LightGBM predicting the outcome per arm.

When assignment was not uniform, rows are weighted by 1/propensity so each arm's model sees the
whole population. ``expected_gain`` turns outcome probabilities into money per arm.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from engage import schemas as s
from engage.models.frame import FrameSpec


class MultiArmUplift(BaseEstimator):
    def __init__(
        self,
        learner: str = "t",
        control: str = s.CONTROL_ARM,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 100,
        random_state: int = 0,
    ):
        self.learner = learner
        self.control = control
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.random_state = random_state

    def _prepare(self, X: pd.DataFrame) -> pd.DataFrame:
        return self.frame_.apply(X)

    def fit(self, X: pd.DataFrame, arm, y, propensity=None):
        arm = np.asarray(arm).astype(str)
        y = np.asarray(y, dtype=float)
        if self.control not in set(arm):
            raise ValueError(f"no rows of the control arm {self.control!r}")
        self.frame_ = FrameSpec.learn(X)
        self.feature_names_ = list(self.frame_.columns)
        self.categorical_features_ = list(self.frame_.categories)
        self.categories_ = self.frame_.categories
        Xp = self._prepare(X)
        w = np.ones(len(arm)) if propensity is None else 1.0 / np.clip(np.asarray(propensity, float), 1e-3, 1)
        self.arms_ = [self.control, *sorted(a for a in set(arm) if a != self.control)]
        self.models_ = {}
        for a in self.arms_:
            rows = arm == a
            model = lgb.LGBMClassifier(
                n_estimators=self.n_estimators,
                learning_rate=self.learning_rate,
                num_leaves=self.num_leaves,
                min_child_samples=self.min_child_samples,
                subsample=0.8,
                subsample_freq=1,
                colsample_bytree=0.8,
                random_state=self.random_state,
                n_jobs=2,
                deterministic=True,
                force_col_wise=True,
                verbose=-1,
            )
            model.fit(Xp[rows], y[rows], sample_weight=w[rows] / w[rows].mean())
            self.models_[a] = model
        return self

    def predict_outcomes(self, X: pd.DataFrame) -> pd.DataFrame:
        Xp = self._prepare(X)
        return pd.DataFrame({a: m.predict_proba(Xp)[:, 1] for a, m in self.models_.items()}, index=X.index)

    def predict_uplift(self, X: pd.DataFrame) -> pd.DataFrame:
        out = self.predict_outcomes(X)
        return out.drop(columns=[self.control]).sub(out[self.control], axis=0)


def expected_gain(outcomes: pd.DataFrame, catalog) -> pd.DataFrame:
    base = outcomes[s.CONTROL_ARM]
    gains = {s.CONTROL_ARM: np.zeros(len(outcomes))}
    for m in catalog.messages:
        if m.id in outcomes.columns:
            gains[m.id] = ((outcomes[m.id] - base) * m.value - m.cost).to_numpy()
    return pd.DataFrame(gains, index=outcomes.index)
