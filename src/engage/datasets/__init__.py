"""Data set adapters (real logs into engage's tables) and the simulator with ground truth."""

from engage.exports import lazy_exports

_EXPORTS = {
    "ADAPTERS": "registry",
    "get_adapter": "registry",
    "load_cdnow": "cdnow",
    "load_hillstrom": "hillstrom",
    "load_online_retail_ii": "online_retail_ii",
    "SimulatedData": "simulate",
    "write_simulation": "simulate",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
