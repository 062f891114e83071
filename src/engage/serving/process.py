"""``engage serve``: run ``bentoml serve`` as a child process with the config and settings it needs.

No bentoml import at module level: the child imports the service, so this module stays cheap and
the settings travel the way the service reads them (environment variables, the config as a YAML
file). Before starting it, :func:`serve` asks :func:`engage.serving.service.check_servable` whether
the models are there: without them the workers would fail and be restarted forever. The child
runs in its own process group under :func:`supervise`, so stopping ``engage serve`` stops the whole
server (its supervisor and workers), never leaving it bound to the port unsupervised.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from engage.config import EngageConfig
from engage.serving.settings import ENV_CONFIG, ENV_MODEL_SOURCE, ENV_TOKEN

__all__ = ["SERVICE_PATH", "installed_versions", "is_import_path", "serve", "supervise"]

logger = logging.getLogger(__name__)

SERVICE_PATH = "engage.serving.service:EngageService"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def serve(
    config: EngageConfig,
    host: str | None = None,
    port: int | None = None,
    *,
    target: str = SERVICE_PATH,
    model_source: str = "bento",
    api_token: str | None = None,
) -> int:
    """Run ``bentoml serve`` in the foreground (loopback by default); return its exit code.

    ``target`` is the service import path or a built Bento tag. The config travels as a YAML file
    (``serve.workers`` with it). SIGTERM or SIGINT stops the server (see :func:`supervise`,
    ``serve.stop_seconds``). Raises :class:`~engage.serving.service.NotServable` (saying to run
    ``engage build`` first) when the models are missing, before anything starts.
    """
    from engage.serving.service import check_servable

    serving = check_servable(config, target, model_source)
    logger.info("serving %s with %d worker(s)", serving, config.serve.workers)
    if config.serve.workers > 1 and config.serve.online_store == "local":
        logger.warning(
            "%d workers on the local online store: each sees the others' decisions about a second "
            "later (the log tail), so concurrent requests for one user may pass the contact cap; "
            "set serve.online_store: redis://... for a cap shared by every worker and replica",
            config.serve.workers,
        )
    with tempfile.TemporaryDirectory(prefix="engage-serve-") as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        env = {**os.environ, ENV_CONFIG: str(config_path), ENV_MODEL_SOURCE: model_source}
        env.setdefault("BENTOML_DO_NOT_TRACK", "true")
        # requests score few rows: one OpenMP thread per worker avoids spin contention on small hosts
        env.setdefault("OMP_NUM_THREADS", "1")
        if api_token:
            env[ENV_TOKEN] = api_token
        command = [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            target,
            "--host",
            host or config.serve.host,
            "--port",
            str(port or config.serve.port),
        ]
        return supervise(command, env, stop_seconds=config.serve.stop_seconds)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


class _Forwarder:
    """While active, SIGTERM/SIGINT to this process go to the child's group and mark a stop.

    Installed before the child starts, so a signal in between is not lost (it is sent on once the
    group exists). Signal handlers can only be set from the main thread; elsewhere none are set.
    """

    def __init__(self) -> None:
        self.pgid: int | None = None
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _: FrameType | None) -> None:
        self.received = signum
        if self.pgid is not None:
            _signal_group(self.pgid, signum)

    def __enter__(self) -> _Forwarder:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def attach(self, pgid: int) -> None:
        self.pgid = pgid
        if self.received is not None:
            _signal_group(pgid, self.received)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def supervise(command: Sequence[str], env: Mapping[str, str], *, stop_seconds: float) -> int:
    """Run ``command`` in a new process group until it exits; return its exit code (128 + signal).

    SIGTERM/SIGINT sent to this process are forwarded to the whole group (the server's supervisor
    and its workers); whatever has not exited ``stop_seconds`` later is killed (SIGKILL), and so is
    anything left in the group once its leader is gone. Without this, SIGTERM stopped only this
    wrapper and left the server running, holding the port.
    """
    with _Forwarder() as forwarder:
        child = subprocess.Popen(list(command), env=dict(env), start_new_session=True)
        forwarder.attach(child.pid)
        try:
            deadline: float | None = None
            while child.poll() is None:
                if forwarder.received is not None and deadline is None:
                    deadline = time.monotonic() + stop_seconds
                if deadline is not None and time.monotonic() >= deadline:
                    logger.warning("server did not stop within %.0f s: killing it", stop_seconds)
                    _signal_group(child.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=0.2)
        finally:
            if child.poll() is None:  # leaving for another reason (an exception): stop it too
                _signal_group(child.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=stop_seconds)
            _signal_group(child.pid, signal.SIGKILL)  # what is left of the group, if anything
            child.wait()
    code = child.returncode
    return code if code >= 0 else 128 - code


def is_import_path(target: str) -> bool:
    """``package.module:Class`` of an importable module (else ``target`` names a Bento)."""
    module, sep, _ = target.partition(":")
    try:
        return bool(sep) and "." in module and importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def installed_versions() -> str:
    """``name==version`` of every distribution installed here, as uv constraints: the Bento's lock then
    holds the versions this environment trained and tested with (where pyproject's ranges allow)."""
    pins = {
        f"{dist.metadata['Name']}=={dist.version}"
        for dist in importlib.metadata.distributions()
        if dist.metadata["Name"] and dist.metadata["Name"].lower() != "engage"
    }
    return "\n".join(sorted(pins)) + "\n"
