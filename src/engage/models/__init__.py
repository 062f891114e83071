"""Estimators: churn (LightGBM + baselines), uplift (multi-arm meta-learners), BTYD."""
