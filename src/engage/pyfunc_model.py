"""The MLflow "model from code" of every engage model: MLflow runs this file to load one.

``engage.tracking.log_model`` logs it with the bundle's files as artifacts (``state.json`` and the
LightGBM ``booster_<n>.txt``), engage's source as ``code_paths`` and engage's dependencies as
requirements; ``load_context`` rebuilds the bundle with the same function engage's own scoring
uses (``tracking.read_bundle``), so ``mlflow.pyfunc.load_model``, ``mlflow models serve`` and
``spark_udf`` answer what engage answers. It imports mlflow and calls ``set_model`` when run: that
is MLflow's contract for a model file, the one exception to "mlflow only in engage.tracking" and to
"no import-time side effects" (nothing else imports this module).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class EngageModel(PythonModel):
    """An engage bundle behind MLflow's pyfunc: ``predict`` calls the method named in the model config."""

    def load_context(self, context: Any) -> None:
        from engage.tracking import read_bundle

        self.bundle = read_bundle(context.artifacts)
        self.method = str((context.model_config or {}).get("method", "predict_proba"))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        from engage.tracking import predict_with

        return predict_with(self.bundle, self.method, model_input)


set_model(EngageModel())
