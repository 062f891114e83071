"""``engage serve``: run ``bentoml serve`` as a child process with the config and settings it needs.

No bentoml import here: the child imports the service, so this module stays cheap and the settings
travel the way the service reads them (environment variables, the config as a YAML file).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from engage.config import EngageConfig
from engage.serving.settings import ENV_CONFIG, ENV_MODEL_SOURCE, ENV_TOKEN

__all__ = ["SERVICE_PATH", "serve"]

SERVICE_PATH = "engage.serving.service:EngageService"


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

    ``target`` is the service import path or a built Bento tag. The config travels as a YAML file.
    """
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
        return subprocess.run(command, env=env, check=False).returncode
