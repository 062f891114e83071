"""Estimators in scikit-learn's contract: churn (LightGBM + baselines), multi-arm uplift, BTYD.

``bundle`` holds what a trained model ships with (estimator, reason explainer, risk bands) so that
MLflow, the service and batch jobs load one object. Names are imported from their module on first
use, so importing one estimator does not import LightGBM for another.
"""

from engage.exports import lazy_exports

_EXPORTS = {
    "ChurnModel": "churn",
    "LogisticBaseline": "churn",
    "RecencyBaseline": "churn",
    "out_of_time_split": "churn",
    "MultiArmUplift": "uplift",
    "expected_gain": "uplift",
    "BGNBD": "btyd",
    "GammaGamma": "btyd",
    "btyd_features": "btyd",
    "rfm_summary": "btyd",
    "ChurnBundle": "bundle",
    "OfferBundle": "bundle",
    "risk_bands": "bundle",
    "FrameSpec": "frame",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
