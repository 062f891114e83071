"""Metrics that judge models: classification (AUC, calibration, lift), uplift (Qini, AUUC), backtests.

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
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
