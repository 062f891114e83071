"""The bare churn model behind BentoML: the yardstick of ``benchmarks/serve.py``.

Same request body as ``/score`` (``{"users": [{"user_id": ...}]}``), same snapshot and model, same
one-worker server; it only runs LightGBM ``predict`` and ``pred_contrib`` on rows already in the
model's input form and returns the probability and the contributions. No reasons texts, message
choice, decision log or response schema: what is left is the cost of BentoML plus the model.
Started by ``benchmarks/serve.py`` with ``ENGAGE_CONFIG`` set.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import numpy as np
import pandas as pd
from pydantic import BaseModel

from engage import schemas as s
from engage.config import load_config


class UserRef(BaseModel):
    user_id: str


class BareRequest(BaseModel):
    users: list[UserRef]
    explain: bool = True


def find_lightgbm(obj: Any, depth: int = 0, seen: set[int] | None = None) -> Any | None:
    """The LightGBM booster inside an engage estimator (walks attributes; calibrators wrap it)."""
    import lightgbm as lgb

    seen = seen if seen is not None else set()
    if id(obj) in seen or depth > 4:
        return None
    seen.add(id(obj))
    if isinstance(obj, lgb.Booster):
        return obj
    if isinstance(obj, lgb.LGBMModel):
        return obj.booster_
    children: list[Any] = []
    if isinstance(obj, list | tuple):
        children = list(obj)
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    for child in children:
        found = find_lightgbm(child, depth + 1, seen)
        if found is not None:
            return found
    return None


def model_rows(config_path: str | None) -> tuple[Any, int, pd.DataFrame, dict[str, int]]:
    """(booster, trees, rows in the model's input form, user_id -> row) for the latest snapshot rows."""
    from engage.scoring.champions import load_champions

    config = load_config(config_path)
    snapshot = pd.read_parquet(config.serve.feature_snapshot_path)
    snapshot = snapshot.sort_values(s.AS_OF).drop_duplicates(s.USER_ID, keep="last").reset_index(drop=True)
    models = load_champions(config)
    booster = find_lightgbm(models.churn)
    if booster is None:
        raise RuntimeError("no LightGBM model found inside the churn bundle")
    estimator = models.churn.model
    prepare = getattr(estimator, "_prepare", None)
    frame = models.churn.inputs(snapshot)  # the BTYD columns come from the bundle, not the snapshot
    rows = prepare(frame) if prepare is not None else frame.astype(float)
    trees = getattr(estimator, "best_iteration_", None) or booster.current_iteration()
    index = {str(u): i for i, u in enumerate(snapshot[s.USER_ID])}
    return booster, int(trees), rows, index


@bentoml.service(name="engage-bare-model", workers=1, traffic={"timeout": 60})
class BareModel:
    def __init__(self) -> None:
        self.booster, self.trees, self.rows, self.index = model_rows(os.environ.get("ENGAGE_CONFIG"))

    @bentoml.api(input_spec=BareRequest)
    def score(self, users: list[UserRef], explain: bool = True) -> dict[str, Any]:
        positions = [self.index.get(u.user_id, 0) for u in users]
        block = self.rows.iloc[positions]
        probability = self.booster.predict(block, num_iteration=self.trees)
        out: dict[str, Any] = {"churn_probability": np.asarray(probability).tolist()}
        if explain:
            contributions = self.booster.predict(block, num_iteration=self.trees, pred_contrib=True)
            out["contributions"] = np.asarray(contributions).tolist()
        return out
