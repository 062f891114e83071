"""engage: churn risk, reason codes and uplift-driven next-best-offer from raw event logs."""

__version__ = "0.1.0"
