"""Spark execution (the only package that imports pyspark): ``session`` (the session engage builds
from the ``spark`` config when none is given), ``io`` (inputs read and outputs committed by
Spark), ``validate`` (the events contract on executors), ``feature_engine`` (the standard features on
Spark: ``features``), ``scoring`` (batch scoring on executors: ``score`` for an existing session) and
``decisions`` (the run's decision-log batch). Names are imported from their module on first use.
"""

from engage.exports import lazy_exports

_EXPORTS = {
    "local_spark": "session",
    "spark_session": "session",
    "features": "feature_engine",
    "build_features_spark": "feature_engine",
    "score": "scoring",
    "run_scoring": "scoring",
    "score_spark": "scoring",
    "validate_events": "validate",
    "write_features": "scoring",
    "local_cluster": "cluster",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
