"""Audiences out: the decisions a platform sends, as files per message or channel, and by webhook.

``split`` is pure (scores in, one frame per audience out, holdout and ``none`` counted and left
out); ``files`` writes them (CSV and Parquet, atomically, with ``manifest.json``); ``webhook`` is the
HTTP edge (signed batches, retries, a resumable ledger). Names are imported from their module on
first use.
"""

from typing import Literal

from engage.exports import lazy_exports

By = Literal["message", "channel"]
"""What one audience file holds: every decision of one message, or of one channel (here, not in
``split``, so the command line types its flag with it without importing polars)."""

_EXPORTS = {
    "AudienceError": "split",
    "Audiences": "split",
    "split_audiences": "split",
    "export_lock": "files",
    "write_audiences": "files",
    "DeliveryError": "webhook",
    "deliver": "webhook",
    "sign": "webhook",
    "verify_signature": "webhook",
}
__all__ = sorted([*_EXPORTS, "By"])
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
