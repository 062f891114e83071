"""Metrics and estimators that judge models and policies: classification, uplift, off-policy."""
