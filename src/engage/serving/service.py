"""The HTTP service (BentoML): ``POST /score``, ``/explain`` and ``/feedback``; the only bentoml module.

Thin on purpose: the Bento class loads the config (:mod:`engage.serving.settings`), the models and
a :class:`~engage.serving.engine.ScoringEngine` once, maps the engine's client errors to HTTP
statuses (413, 422) and counts decisions for ``/metrics``. :class:`~engage.serving.auth.ApiGuard`
wraps the whole ASGI app (outside BentoML's metrics middleware, see :class:`GuardedService`), and a
log filter turns BentoML's traceback for each client error into one line. ``engage build`` runs
:func:`build_bento` (champions copied from the MLflow registry into the Bento store, then packed);
``engage serve`` starts this service through :mod:`engage.serving.process`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml
import yaml
from bentoml.exceptions import BentoMLException

from engage.config import EngageConfig
from engage.scoring.champions import (
    CHURN,
    OFFERS,
    ModelRef,
    load_champions,
    load_scoring_models,
    registry_refs,
    roles,
)
from engage.scoring.core import ScoringModels
from engage.serving.auth import PROTECTED_PATHS, ApiGuard
from engage.serving.engine import PayloadTooLarge, ScoringEngine, Unprocessable
from engage.serving.schemas import (
    AttributeValue,
    EventIn,
    ExplainRequest,
    ExplainResponse,
    FeedbackEvent,
    FeedbackRequest,
    FeedbackResponse,
    ScoreRequest,
    ScoreResponse,
    UserIn,
    UserScore,
)
from engage.serving.settings import ENV_MODEL_SOURCE, exposures_path, model_source, service_config
from engage.tracking import CHAMPION

__all__ = [
    "EngageService",
    "GuardedService",
    "OneLineClientErrors",
    "bento_refs",
    "build_bento",
    "declared_paths",
    "import_champions",
    "service_models",
]

logger = logging.getLogger(__name__)

SERVICE_NAME = "engage-scoring"


# --- models (the edge) ----------------------------------------------------------------------
def bento_refs(config: EngageConfig) -> list[ModelRef]:
    """The latest copy of each role's model in the Bento store (inside a served Bento: its own).

    Each is an MLflow model folder that :func:`engage.scoring.champions.load_scoring_models` loads
    like a registry URI; the version is the registered one it was imported from.
    """
    from bentoml.exceptions import NotFound

    refs: list[ModelRef] = []
    for role, name in roles(config).items():
        try:
            stored = bentoml.models.get(f"{name}:latest")
        except NotFound:
            if role == CHURN:
                raise
            continue
        version = str(stored.info.metadata.get("registered_version", stored.tag.version))
        folder = stored.path_of(bentoml.mlflow.MLFLOW_MODEL_FOLDER)
        refs.append(ModelRef(role=role, name=name, version=version, uri=folder))
    return refs


def service_models(config: EngageConfig, source: str = "bento") -> ScoringModels:
    """The models to serve: from the Bento store (``bento``) or the registry's champions (``mlflow``)."""
    if source == "bento":
        return load_scoring_models(config, bento_refs(config))
    if source == "mlflow":
        return load_champions(config)
    raise ValueError(f"{ENV_MODEL_SOURCE}: unknown model source '{source}' (bento or mlflow)")


# --- errors a client can meet -------------------------------------------------------------
@contextmanager
def _http_errors() -> Iterator[None]:
    """The engine's client errors as the HTTP statuses BentoML answers with (its message as the body)."""
    try:
        yield
    except PayloadTooLarge as exc:
        raise BentoMLException(str(exc), error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from exc
    except Unprocessable as exc:
        raise BentoMLException(str(exc), error_code=HTTPStatus.UNPROCESSABLE_ENTITY) from exc


# --- the HTTP edge ----------------------------------------------------------------------------
BENTOML_ERROR_LOGGER = "bentoml._internal.server.http_app"
"""Where BentoML logs a failed request (``log_exception``: "Exception on <path> [<method>]")."""


class OneLineClientErrors(logging.Filter):
    """BentoML logs every failed request with its traceback; a client error (4xx) becomes one line.

    The line says status, route, method and a short reason: error count, field locations and error
    types for a validation error (never the input), the message for an engine error. 5xx keep their
    traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        status = _client_status(exc)
        if status is None:
            return True
        args = record.args if isinstance(record.args, tuple) and len(record.args) == 2 else ("?", "?")
        record.msg = "client error %d on %s [%s]: %s"
        record.args = (status, *args, _short_reason(exc))
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _client_status(exc: BaseException) -> int | None:
    """The 4xx BentoML answers for this exception, or None for a server error."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return int(HTTPStatus.BAD_REQUEST)
    if isinstance(exc, BentoMLException) and int(exc.error_code) < 500:
        return int(exc.error_code)
    return None


def _short_reason(exc: BaseException, shown: int = 3) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        fields = ", ".join(f"{_location(e['loc'])} ({e['type']})" for e in errors[:shown])
        more = f" and {len(errors) - shown} more" if len(errors) > shown else ""
        return f"{len(errors)} validation error(s): {fields}{more}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def _location(loc: Sequence[int | str]) -> str:
    """A field location with only schema field names and positions: other parts (a client's
    attribute names, unknown keys) are request content and become ``*``."""
    names = _field_names()
    return ".".join(str(p) if isinstance(p, int) or p in names else "*" for p in loc) or "body"


@functools.cache
def _field_names() -> frozenset[str]:
    from pydantic import BaseModel

    from engage.serving import schemas

    models = [m for m in vars(schemas).values() if isinstance(m, type) and issubclass(m, BaseModel)]
    return frozenset(name for model in models for name in model.model_fields)


def declared_paths(app: Any) -> frozenset[str]:
    """Every path the BentoML app answers: its routes without parameters and its static files.

    A parametrized route or a mount other than static files would make the set unbounded, so they
    are refused: the guard's 404 list would no longer keep ``/metrics`` bounded.
    """
    paths: set[str] = set()
    for route in app.routes:  # Starlette routes: a Route has an endpoint, a Mount an app
        directory = None if hasattr(route, "endpoint") else getattr(route.app, "directory", None)
        if directory is not None:
            files = [f for f in Path(directory).rglob("*") if f.is_file()]
            paths |= {f"{route.path}/{f.relative_to(directory).as_posix()}" for f in files}
        elif hasattr(route, "endpoint") and not route.param_convertors:
            paths.add(route.path)
        else:
            path = getattr(route, "path", route)
            raise ValueError(f"route {path!r}: its paths cannot be listed for the HTTP guard")
    return frozenset(paths)


@functools.cache
def _rejections() -> Any:
    """The counter of requests the guard answered itself (created in the worker, on first use)."""
    from prometheus_client import Counter

    return Counter(
        "engage_http_rejected",
        "Requests the HTTP edge answered itself, by status and route",
        ["status", "route"],
    )


def _count_rejection(status: int, route: str) -> None:
    _rejections().labels(status=str(status), route=route).inc()


class GuardedService(bentoml.Service[Any]):
    """A BentoML service whose ASGI app is wrapped by :class:`ApiGuard`, outermost.

    BentoML puts its HTTP metrics middleware in front of the middleware a service adds and labels
    requests by their raw path, so a guard added with ``add_asgi_middleware`` comes too late: each
    unknown path would still become a permanent ``/metrics`` label. Wrapping the app the worker
    serves puts the guard first; it also installs :class:`OneLineClientErrors`.
    """

    def to_asgi(self, is_main: bool = True) -> Any:
        app = super().to_asgi(is_main)
        errors = logging.getLogger(BENTOML_ERROR_LOGGER)
        if not any(isinstance(f, OneLineClientErrors) for f in errors.filters):
            errors.addFilter(OneLineClientErrors())
        ours = logging.getLogger("engage.serving")
        if ours.level == logging.NOTSET:  # the server's root logger passes warnings only
            ours.setLevel(logging.getLogger("bentoml").getEffectiveLevel())
        paths = declared_paths(app)
        missing = PROTECTED_PATHS - paths
        if missing:
            raise RuntimeError(f"the service declares no route for {sorted(missing)}")
        config = service_config()
        return ApiGuard(
            app, paths=paths, max_body_bytes=config.serve.max_request_bytes, on_reject=_count_rejection
        )


# --- the Bento service ----------------------------------------------------------------------
@bentoml.service(name=SERVICE_NAME, workers=1, traffic={"timeout": 60}, service_class=GuardedService)
class EngageService:
    """Churn risk, reasons and next-best message per user; models and snapshot loaded once."""

    def __init__(self) -> None:
        config = service_config()
        models = service_models(config, model_source())
        self.engine = ScoringEngine(config, models, exposures=exposures_path())
        # created here, not at import: the worker sets PROMETHEUS_MULTIPROC_DIR after importing us
        from prometheus_client import Counter

        self.decisions = Counter(
            "engage_decisions", "Decisions returned by /score", ["cold_start", "message_id"]
        )
        self.quarantined = Counter("engage_inline_events_quarantined", "Inline events set aside")
        self.feedback_reports = Counter("engage_feedback", "Reports to /feedback", ["event", "status"])

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Stop the watcher and fsync the decision log."""
        self.engine.close()

    @bentoml.api(input_spec=ScoreRequest)
    def score(
        self, users: list[UserIn], as_of: datetime | None = None, explain: bool = True
    ) -> ScoreResponse:
        """Score up to ``serve.max_users_per_request`` users (413 beyond)."""
        request = ScoreRequest.model_construct(users=users, as_of=as_of, explain=explain)
        with _http_errors():
            response = self.engine.score(request)
        self._count(response.users)
        return response

    def _count(self, answers: Sequence[UserScore]) -> None:
        """Metrics: decisions by (cold start, message) and inline events set aside, one inc per label."""
        decided: dict[tuple[bool, str], int] = {}
        for answer in answers:
            key = (answer.cold_start, answer.message.message_id)
            decided[key] = decided.get(key, 0) + 1
        for (cold, message_id), n in decided.items():
            self.decisions.labels(cold_start="true" if cold else "false", message_id=message_id).inc(n)
        quarantined = sum(sum(a.quarantined_events.values()) for a in answers)
        if quarantined:
            self.quarantined.inc(quarantined)

    @bentoml.api(input_spec=ExplainRequest)
    def explain(
        self,
        user_id: str,
        events: list[EventIn] | None = None,
        attributes: dict[str, AttributeValue] | None = None,
        as_of: datetime | None = None,
    ) -> ExplainResponse:
        """All feature contributions, with values and plain-word texts, for one user (422 when the
        inline events give no features)."""
        request = ExplainRequest.model_construct(
            user_id=user_id, events=events, attributes=attributes, as_of=as_of
        )
        with _http_errors():
            return self.engine.explain(request)

    @bentoml.api(input_spec=FeedbackRequest)
    def feedback(
        self,
        decision_id: str,
        event: FeedbackEvent,
        ts: datetime,
        revenue: float | None = None,
        idempotency_key: str | None = None,
    ) -> FeedbackResponse:
        """What happened to a decision (sent, delivered, opened, clicked, converted with revenue,
        unsubscribed): ``accepted``, ``duplicate`` (reported before) or ``aside`` (an unknown decision,
        kept with the reason); 422 for a ``ts`` too far from the server's clock."""
        request = FeedbackRequest.model_construct(
            decision_id=decision_id, event=event, ts=ts, revenue=revenue, idempotency_key=idempotency_key
        )
        with _http_errors():
            response = self.engine.feedback(request)
        self.feedback_reports.labels(event=event, status=response.status).inc()
        return response


# --- build (called by the CLI) -------------------------------------------------------------
def _stored_models(name: str) -> list[Any]:
    from bentoml.exceptions import NotFound

    try:
        return list(bentoml.models.list(name))
    except NotFound:
        return []


def import_champions(config: EngageConfig) -> list[str]:
    """Copy the ``champion`` models of the MLflow registry into the Bento store; return their tags.

    A registered version already imported is reused, so re-building does not duplicate models.
    """
    tags: list[str] = []
    refs = registry_refs(config)
    if OFFERS not in {ref.role for ref in refs}:
        logger.warning("no champion for %s: the Bento scores without an offer model", roles(config)[OFFERS])
    for ref in refs:
        existing = [
            m
            for m in _stored_models(ref.name)
            if m.info.metadata.get("registered_version") == ref.version
            and m.info.metadata.get("tracking_uri") == config.tracking.uri
        ]
        if existing:
            tags.append(str(existing[0].tag))
            continue
        model = bentoml.mlflow.import_model(
            ref.name,
            ref.uri,
            labels={"alias": CHAMPION},
            metadata={"registered_version": ref.version, "tracking_uri": config.tracking.uri},
        )
        tags.append(str(model.tag))
    return tags


def build_bento(config: EngageConfig, build_ctx: str | Path = ".", bentofile: str = "bentofile.yaml") -> str:
    """Import the champion models, then build a Bento that packs them (no MLflow needed to serve).

    Build options come from ``bentofile.yaml``; the imported model tags are added to its models.
    """
    ctx = Path(build_ctx).resolve()
    options = yaml.safe_load((ctx / bentofile).read_text()) or {}
    tags = import_champions(config)
    service = options.pop("service")
    options.pop("models", None)
    bento = bentoml.bentos.build(service, models=[*tags], build_ctx=str(ctx), **options)
    return str(bento.tag)
