"""Plot helpers returning matplotlib figures (never shown or saved here): churn, uplift, analytics,
monitor.

Each module is imported on its own (``from engage.plots import churn``); matplotlib loads with it.
"""

__all__ = ["analytics", "churn", "monitor", "uplift"]
