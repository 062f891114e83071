"""Metrics that judge models: classification (AUC, calibration, lift), uplift (Qini, AUUC), backtests,
drift (PSI per feature and of the scores, calibration by week) for monitoring, and the judgement of
the decision log (lift vs holdout per message and risk band; off-policy values with their overlap).

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
    "lift_vs_holdout": "lift",
    "with_risk_band": "lift",
    "Judgement": "judge",
    "candidate_policy": "judge",
    "judge_decisions": "judge",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
