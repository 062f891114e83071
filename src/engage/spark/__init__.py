"""Spark execution (the only package that imports pyspark): ``session`` (the local session engage
makes when none is given), ``features`` (the standard features on Spark) and ``scoring`` (batch
scoring on executors). Names are imported from their module on first use.
"""

from engage.exports import lazy_exports

_EXPORTS = {
    "local_spark": "session",
    "build_features_spark": "features",
    "score_spark": "scoring",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
