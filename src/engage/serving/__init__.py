"""Serving: the HTTP ``/score``, ``/explain`` and ``/feedback`` API over the one scoring path.

``schemas`` (request and response models), ``settings`` (environment variables), ``snapshot`` (the
feature snapshot), ``history`` (recent contacts), ``inline`` (features from raw events in a
request), ``feedback`` (``/feedback``: reports matched to decisions), ``engine``
(:class:`ScoringEngine`: answers requests in plain Python) and ``answers`` (each answer in the API's
shape); ``auth`` (ASGI bearer-token guard); ``service`` (the Bento class, ``engage build``: the only
bentoml module) and ``process`` (``engage serve``: ``bentoml serve`` as a child process). Names are
imported from their module on first use, so importing the engine never imports bentoml.
"""

from engage.exports import lazy_exports

_EXPORTS = {
    "ChosenMessage": "schemas",
    "ExplainRequest": "schemas",
    "ExplainResponse": "schemas",
    "FeedbackRequest": "schemas",
    "FeedbackResponse": "schemas",
    "FeedbackDesk": "feedback",
    "ScoreRequest": "schemas",
    "ScoreResponse": "schemas",
    "UserIn": "schemas",
    "UserScore": "schemas",
    "service_config": "settings",
    "FeatureSnapshot": "snapshot",
    "SnapshotSource": "snapshot",
    "ContactHistory": "history",
    "inline_features": "inline",
    "PayloadTooLarge": "engine",
    "ScoringEngine": "engine",
    "Unprocessable": "engine",
    "ApiGuard": "auth",
    "EngageService": "service",
    "build_bento": "service",
    "import_champions": "service",
    "serve": "process",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
