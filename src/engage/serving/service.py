"""The HTTP service (BentoML): ``POST /score``, ``/explain`` and ``/feedback``; the only bentoml module.

Thin on purpose: the Bento class loads the config (:mod:`engage.serving.settings`), the models and
a :class:`~engage.serving.engine.ScoringEngine` once, maps the engine's client errors to HTTP
statuses (413, 422) and counts decisions for ``/metrics``. :class:`~engage.serving.auth.ApiGuard`
wraps the whole ASGI app (outside BentoML's metrics middleware, see :class:`GuardedService`), and a
log filter turns BentoML's traceback for each client error into one line.

The models are declared on the service (``bentoml.models.BentoModel``, tags from the Bento arguments
:class:`BentoArgs`), so a plain ``bentoml build`` packs them, pinned to the versions it resolved, and
a served Bento loads them from its own model store. ``engage build`` runs :func:`build_bento`
(champions copied from the MLflow registry into the Bento store, then ``bentoml build --arg`` with
their exact tags); ``engage serve`` checks :func:`check_servable`, then starts this service through
:mod:`engage.serving.process`. Build options and packages: ``bentofile.yaml``, whose packages are
``pyproject.toml``'s ``[project] dependencies`` (a test keeps them equal), locked by BentoML (uv) at build.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast

import bentoml
from bentoml.exceptions import BentoMLException, NotFound
from pydantic import BaseModel

from engage.config import EngageConfig, TimingConfig, TrackingConfig
from engage.scoring.champions import (
    CHURN,
    OFFERS,
    TIMING,
    ModelRef,
    load_champions,
    load_scoring_models,
    registry_refs,
    roles,
)
from engage.scoring.core import ScoringModels
from engage.serving.auth import PROTECTED_PATHS, ApiGuard
from engage.serving.edge import ReadyGate, declared_paths, short_reason
from engage.serving.engine import PayloadTooLarge, ScoringEngine, Unprocessable
from engage.serving.process import installed_versions, is_import_path
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
from engage.serving.settings import (
    ENV_MODEL_SOURCE,
    exposures_path,
    model_source,
    service_config,
)
from engage.tracking import CHAMPION

__all__ = [
    "BentoArgs",
    "EngageService",
    "GuardedService",
    "NotServable",
    "OneLineClientErrors",
    "ReadyGate",
    "as_built",
    "bento_refs",
    "build_bento",
    "check_servable",
    "declared_models",
    "declared_paths",
    "import_champions",
    "service_models",
]

logger = logging.getLogger(__name__)

SERVICE_NAME = "engage-scoring"


# --- models (the edge) ----------------------------------------------------------------------
_NAMES = TrackingConfig()
BUILD_HINT = "run `engage build` first"


class BentoArgs(BaseModel):
    """Bento arguments (``bentoml build|serve --arg key=value``): the stored models the service declares.

    A tag without a version (or ``:latest``) is resolved and pinned by ``bentoml build``; ``engage
    build`` passes the champions' exact tags. ``offer_model`` and ``timing_model`` are optional: a
    default is declared only when the store holds one; an empty value declares none. A built Bento
    keeps its arguments.
    """

    churn_model: str = f"{_NAMES.churn_model_name}:latest"
    offer_model: str = f"{_NAMES.offer_model_name}:latest"
    timing_model: str = f"{TimingConfig().model_name}:latest"


def _pinned(tag: str) -> bool:
    return ":" in tag and not tag.endswith(":latest")


def _in_store(tag: str) -> bool:
    try:
        bentoml.models.get(tag)
    except NotFound:
        return False
    return True


def declared_models(args: BentoArgs, source: str) -> dict[str, bentoml.models.BentoModel]:
    """Role -> the model the service declares: BentoML packs these at build and resolves them at start
    (from the Bento's own store when serving a Bento). None when the models come from MLflow."""
    if source == "mlflow":
        return {}
    declared = {CHURN: bentoml.models.BentoModel(args.churn_model)}
    for role, tag in ((OFFERS, args.offer_model), (TIMING, args.timing_model)):
        if tag and (_pinned(tag) or _in_store(tag)):
            declared[role] = bentoml.models.BentoModel(tag)
    return declared


def as_built(
    declared: Mapping[str, bentoml.models.BentoModel], bento: Any
) -> dict[str, bentoml.models.BentoModel]:
    """In a served Bento, each declared model at the version its build pinned (a ``:latest`` the store
    moved on since is not followed); a role the Bento does not pack is left out. Else as declared."""
    if bento is None:
        return dict(declared)
    packed = {info.tag.name: info.tag for info in bento.info.all_models}
    return {
        role: bentoml.models.BentoModel(packed[model.tag.name])
        for role, model in declared.items()
        if model.tag.name in packed
    }


def bento_refs(declared: Mapping[str, bentoml.models.BentoModel]) -> list[ModelRef]:
    """The declared models as references :func:`engage.scoring.champions.load_scoring_models` loads.

    Each is an MLflow model folder in the Bento store; the version is the registered one it was
    imported from.
    """
    refs: list[ModelRef] = []
    for role, model in declared.items():
        stored = model.resolve()
        version = str(stored.info.metadata.get("registered_version", stored.tag.version))
        folder = stored.path_of(bentoml.mlflow.MLFLOW_MODEL_FOLDER)
        refs.append(ModelRef(role=role, name=stored.tag.name, version=version, uri=folder))
    return refs


def service_models(
    config: EngageConfig, source: str, declared: Mapping[str, bentoml.models.BentoModel]
) -> ScoringModels:
    """The models to serve: the declared Bento models (``bento``) or the registry's champions (``mlflow``)."""
    if source == "bento":
        if CHURN not in declared:
            raise LookupError(f"the service declares no {roles(config)[CHURN]} model: {BUILD_HINT}")
        return load_scoring_models(config, bento_refs(declared))
    if source == "mlflow":
        return load_champions(config)
    raise ValueError(f"{ENV_MODEL_SOURCE}: unknown model source '{source}' (bento or mlflow)")


class NotServable(LookupError):
    """``engage serve`` would start a server that cannot load its models (it would restart forever)."""


def check_servable(config: EngageConfig, target: str, source: str) -> str:
    """Say what ``bentoml serve target`` would serve, or raise :class:`NotServable` naming what to run.

    ``target`` is a built Bento's tag or the service's import path; with the import path the models
    come from the Bento store (``bento``: the declared churn model must be there) or the registry.
    """
    home = os.environ.get("BENTOML_HOME", "~/bentoml")
    if not is_import_path(target):
        try:
            bento = bentoml.bentos.get(target)
        except (NotFound, BentoMLException, ValueError) as exc:
            raise NotServable(f"no Bento '{target}' in the BentoML store ({home}): {BUILD_HINT}") from exc
        if not bento.info.all_models:
            raise NotServable(f"Bento {bento.tag} packs no model: {BUILD_HINT}")
        return f"Bento {bento.tag} ({', '.join(str(m.tag) for m in bento.info.all_models)})"
    if source == "mlflow":
        try:
            refs = registry_refs(config)
        except LookupError as exc:
            raise NotServable(str(exc)) from exc
        return f"{target} with {', '.join(ref.label for ref in refs)} from {config.tracking.uri}"
    churn = BentoArgs().churn_model
    if not _in_store(churn):
        raise NotServable(f"no model {churn} in the BentoML store ({home}): {BUILD_HINT}")
    return f"{target} with {bentoml.models.get(churn).tag}"


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
        record.args = (status, *args, short_reason(exc))
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
            ReadyGate(app, _worker_problem),
            paths=paths,
            max_body_bytes=config.serve.max_request_bytes,
            on_reject=_count_rejection,
        )

    def inject_config(self) -> None:
        """``serve.workers`` and ``serve.resources`` of the engage config as this service's defaults.

        Read when BentoML applies the service's config (build, serve, each worker), never at import;
        BentoML's own configuration (``BENTOML_CONFIG``, ``BENTOML_CONFIG_OVERRIDES``) still wins.
        """
        config = service_config()
        self.config["workers"] = config.serve.workers
        if config.serve.resources:
            self.config["resources"] = dict(config.serve.resources)
        else:  # the decorator declares none: nothing left from an earlier config
            self.config.pop("resources", None)
        super().inject_config()


_WORKER: dict[str, Any] = {}
"""The service instance of this worker process (BentoML creates one per worker, at start-up)."""


def _worker_problem() -> str | None:
    service = _WORKER.get("service")
    return "starting: the models are loading" if service is None else service.not_ready()


# --- the Bento service ----------------------------------------------------------------------
_DECLARED = declared_models(bentoml.use_arguments(BentoArgs), model_source())
"""Decided at import, as BentoML needs (its arguments and ``ENGAGE_MODEL_SOURCE`` shape the class)."""


@bentoml.service(name=SERVICE_NAME, workers=1, traffic={"timeout": 60}, service_class=GuardedService)
class EngageService:
    """Churn risk, reasons and next-best message per user; models and snapshot loaded once."""

    churn_model = _DECLARED.get(CHURN)
    offer_model = _DECLARED.get(OFFERS)
    timing_model = _DECLARED.get(TIMING)

    def __init__(self) -> None:
        config = service_config()
        models = service_models(config, model_source(), as_built(_DECLARED, cast(Any, EngageService).bento))
        self.engine = ScoringEngine(config, models, exposures=exposures_path())
        # created here, not at import: the worker sets PROMETHEUS_MULTIPROC_DIR after importing us
        from prometheus_client import Counter

        self.decisions = Counter(
            "engage_decisions", "Decisions returned by /score", ["cold_start", "message_id"]
        )
        self.quarantined = Counter("engage_inline_events_quarantined", "Inline events set aside")
        self.feedback_reports = Counter("engage_feedback", "Reports to /feedback", ["event", "status"])
        _WORKER["service"] = self

    def not_ready(self) -> str | None:
        """Why this worker is not ready (no feature snapshot loaded yet, online store down), or None."""
        return self.engine.not_ready()

    def __is_ready__(self) -> bool:
        """BentoML's readiness hook (``/readyz``): models loaded, snapshot unless optional, store up."""
        return self.not_ready() is None

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
    try:
        return list(bentoml.models.list(name))
    except NotFound:
        return []


def import_champions(config: EngageConfig) -> dict[str, str]:
    """Copy the ``champion`` models of the MLflow registry into the Bento store; return role -> tag.

    The churn champion and, when registered, the offers and timing champions (the Bento declares
    and packs each one imported). A registered version already imported is reused, so re-building
    does not duplicate models.
    """
    tags: dict[str, str] = {}
    refs = registry_refs(config)  # churn, and offers and timing when registered
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
            tags[ref.role] = str(existing[0].tag)
            continue
        model = bentoml.mlflow.import_model(
            ref.name,
            ref.uri,
            labels={"alias": CHAMPION},
            metadata={"registered_version": ref.version, "tracking_uri": config.tracking.uri},
        )
        tags[ref.role] = str(model.tag)
    return tags


def build_bento(config: EngageConfig, build_ctx: str | Path = ".", *, offline: bool = False) -> str:
    """Import the champion models, then ``bentoml build --arg`` with their exact tags; return the Bento tag.

    The build is ``bentoml build`` itself, in its own process: it imports the service afresh with
    those arguments. Options and packages come from ``bentofile.yaml`` (the packages are
    ``pyproject.toml``'s ``[project] dependencies``), locked by uv with this environment's versions as
    constraints (``offline``: from uv's cache alone, no index). The Bento must pack exactly the
    champions, else RuntimeError.
    """
    ctx = Path(build_ctx).resolve()
    tags = import_champions(config)
    arguments = [
        f"churn_model={tags[CHURN]}",
        f"offer_model={tags.get(OFFERS, '')}",
        f"timing_model={tags.get(TIMING, '')}",
    ]
    with tempfile.TemporaryDirectory(prefix="engage-build-") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(installed_versions())
        env = {**os.environ, "UV_CONSTRAINT": str(constraints), "BENTOML_DO_NOT_TRACK": "true"}
        if offline:
            env["UV_OFFLINE"] = "1"
        command = [sys.executable, "-m", "bentoml", "build", str(ctx), "--output", "tag"]
        for argument in arguments:
            command += ["--arg", argument]
        run = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"`bentoml build` failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    lines = [line for line in run.stdout.splitlines() if line.startswith("__tag__:")]
    if not lines:
        raise RuntimeError(f"`bentoml build` printed no tag:\n{run.stdout[-2000:]}")
    tag = lines[-1].removeprefix("__tag__:").strip()
    packed = {str(m.tag) for m in bentoml.bentos.get(tag).info.all_models}
    if packed != set(tags.values()):
        raise RuntimeError(f"Bento {tag} packs {sorted(packed)}, not the champions {sorted(tags.values())}")
    return tag
