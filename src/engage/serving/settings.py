"""The service's settings: environment variables read once, when the service starts (never at import).

``ENGAGE_CONFIG`` (YAML, else the packaged defaults), ``ENGAGE_FEATURE_SNAPSHOT``,
``ENGAGE_DECISION_LOG``, ``ENGAGE_FEEDBACK_LOG`` and ``ENGAGE_ONLINE_STORE`` (override the config's
``serve`` paths and its online store: ``local`` or ``redis://...``),
``ENGAGE_MODEL_SOURCE`` (``bento`` or ``mlflow``), ``ENGAGE_API_TOKEN`` (bearer token; unset = no
auth) and ``ENGAGE_EXPOSURES`` (an optional campaign exposures table: past messages for cooldowns
and caps). ``engage serve`` sets them
for the ``bentoml serve`` process it starts, after :func:`check_exposure` (no open API beyond
loopback unless asked for).
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from engage.config import EngageConfig, load_config

__all__ = [
    "ENV_CONFIG",
    "ENV_DECISION_LOG",
    "ENV_EXPOSURES",
    "ENV_FEEDBACK_LOG",
    "ENV_MODEL_SOURCE",
    "ENV_ONLINE_STORE",
    "ENV_SNAPSHOT",
    "ENV_TOKEN",
    "InsecureBind",
    "api_token",
    "check_exposure",
    "exposures_path",
    "is_loopback",
    "model_source",
    "readiness_problem",
    "service_config",
]

ENV_CONFIG = "ENGAGE_CONFIG"
ENV_SNAPSHOT = "ENGAGE_FEATURE_SNAPSHOT"
ENV_DECISION_LOG = "ENGAGE_DECISION_LOG"
ENV_FEEDBACK_LOG = "ENGAGE_FEEDBACK_LOG"
ENV_MODEL_SOURCE = "ENGAGE_MODEL_SOURCE"
ENV_TOKEN = "ENGAGE_API_TOKEN"
ENV_EXPOSURES = "ENGAGE_EXPOSURES"
ENV_ONLINE_STORE = "ENGAGE_ONLINE_STORE"


def service_config() -> EngageConfig:
    """The config from ``ENGAGE_CONFIG`` (YAML) or the packaged defaults, with env path overrides."""
    config = load_config(os.environ.get(ENV_CONFIG) or None)
    overrides: dict[str, Any] = {}
    if os.environ.get(ENV_SNAPSHOT):
        overrides["feature_snapshot_path"] = os.environ[ENV_SNAPSHOT]
    if os.environ.get(ENV_DECISION_LOG):
        overrides["decision_log_dir"] = os.environ[ENV_DECISION_LOG]
    if os.environ.get(ENV_FEEDBACK_LOG):
        overrides["feedback_log_dir"] = os.environ[ENV_FEEDBACK_LOG]
    if os.environ.get(ENV_ONLINE_STORE):
        overrides["online_store"] = os.environ[ENV_ONLINE_STORE]
    if overrides:
        config = config.model_copy(update={"serve": config.serve.model_copy(update=overrides)})
    return config


def model_source() -> str:
    """Where the served models come from: ``bento`` (the Bento store, default) or ``mlflow``."""
    return os.environ.get(ENV_MODEL_SOURCE, "bento")


def readiness_problem(config: EngageConfig, snapshot_users: int) -> str | None:
    """Why the service is not ready to answer yet, or None when it is (what ``/readyz`` says).

    The models are loaded before the service answers at all; the snapshot may come later (the
    engine's watcher loads it when the file appears). Without one every id-only request would be a
    cold start, so readiness waits for it unless ``serve.require_snapshot`` is false.
    """
    if snapshot_users > 0 or not config.serve.require_snapshot:
        return None
    return (
        f"no feature snapshot loaded from {config.serve.feature_snapshot_path} (missing or empty; "
        f"write it with `engage features`, or set serve.require_snapshot: false to serve without one)"
    )


def exposures_path() -> str | None:
    """The optional exposures table (past campaign messages), or None."""
    return os.environ.get(ENV_EXPOSURES) or None


def api_token() -> str:
    """The bearer token ``/score`` and ``/explain`` require; empty when auth is off."""
    return os.environ.get(ENV_TOKEN, "")


class InsecureBind(ValueError):
    """A bind address beyond loopback with no API token, and no explicit ``--insecure``."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (``localhost``, 127.0.0.0/8, ::1).

    A name other than ``localhost`` counts as not loopback: what it resolves to can change.
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str, *, insecure: bool = False) -> None:
    """Refuse to open ``/score`` and ``/explain`` without a token on a non-loopback address.

    Raises :class:`InsecureBind` unless ``host`` is loopback, ``token`` is set or ``insecure``.
    """
    if is_loopback(host) or token or insecure:
        return
    raise InsecureBind(
        f"refusing to bind {host or 'all addresses'} without {ENV_TOKEN}: anyone who can reach it could "
        f"score and read reasons. Set {ENV_TOKEN} (clients then send 'Authorization: Bearer <token>'), "
        "bind 127.0.0.1, or pass --insecure to serve without auth anyway."
    )
