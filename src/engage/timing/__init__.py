"""Right time and right channel: point-in-time timing features and the send-time model (pure)."""

from engage.exports import lazy_exports

_EXPORTS = {
    "TimingFeatures": "features",
    "TimingPrior": "features",
    "timing_features": "features",
    "TimingModel": "sendtime",
    "choose_channels": "sendtime",
    "send_times": "sendtime",
    "top_hours": "sendtime",
    "resolve_zones": "zones",
    "TIMING_COLUMNS": "snapshot",
    "from_columns": "snapshot",
    "to_columns": "snapshot",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
