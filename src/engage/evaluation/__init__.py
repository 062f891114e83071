"""Metrics that judge models: classification (AUC, calibration, lift), uplift (Qini, AUUC), backtests,
and drift (PSI per feature and of the scores, calibration by week) for monitoring.

Off-policy evaluation of message policies lives with the policies, in ``engage.offers.evaluation``.
"""

from engage.exports import lazy_exports

_EXPORTS = {
    "METRIC_NAMES": "classification",
    "classification_metrics": "classification",
    "expected_calibration_error": "classification",
    "lift_table": "classification",
    "auuc": "uplift",
    "qini_coefficient": "uplift",
    "qini_curve": "uplift",
    "uplift_at_k": "uplift",
    "uplift_by_arm": "uplift",
    "Backtest": "backtest",
    "realized": "backtest",
    "Drift": "drift",
    "Monitor": "drift",
    "calibration_by_week": "drift",
    "feature_drift": "drift",
    "monitor": "drift",
    "psi": "drift",
    "psi_bins": "drift",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
