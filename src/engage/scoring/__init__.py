"""Scoring: features and models in, one decision per user out, logged with its probability.

``core`` is the one scoring path (batch, service and Spark run it); ``champions`` the one place
models are loaded; ``decision_log`` the log's one layout, writer and reader; ``feedback`` the
feedback log (what happened to each decision, each report once); ``job`` batch scoring on one
machine. Names are imported from their module on first use.
"""

from engage.exports import lazy_exports

_EXPORTS = {
    "ScoringModels": "core",
    "score_features": "core",
    "score_columns": "core",
    "to_storable": "core",
    "ModelRef": "champions",
    "load_champions": "champions",
    "load_scoring_models": "champions",
    "registry_refs": "champions",
    "DecisionWriter": "decision_log",
    "LogTail": "decision_log",
    "read_decisions": "decision_log",
    "FeedbackBook": "feedback",
    "read_feedback": "feedback",
    "ScoreRunSummary": "job",
    "score_events": "job",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
