"""Plot helpers returning matplotlib figures (never shown or saved here): churn, uplift, analytics,
monitor, loop (and ``intervals``: CI whiskers they share).

Each module is imported on its own (``from engage.plots import churn``); matplotlib loads with it.
"""

__all__ = ["analytics", "churn", "intervals", "loop", "monitor", "uplift"]
