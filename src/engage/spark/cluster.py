"""A Spark standalone cluster and a Spark Connect server on loopback, for tests and benchmarks.

Started with pyspark's own launchers (``bin/spark-class`` for the master and workers,
``bin/spark-submit`` for the Connect server), each in its own process group so that stopping kills
the JVM it exec'd and nothing else. Every port is a free one on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CONNECT_SERVER = "org.apache.spark.sql.connect.service.SparkConnectServer"


@dataclass(frozen=True)
class LocalCluster:
    """Where the started services answer: the master URL and the Connect URL (None if not started)."""

    master: str
    connect: str | None
    logs: Path


def spark_home() -> Path:
    """The pyspark package folder: its ``bin/`` holds spark-class and spark-submit."""
    import pyspark

    return Path(pyspark.__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{log.stem} exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{log.stem}: port {port} not open after {seconds:.0f} s: {log.read_text()[-2000:]}")


def _bind(port: int) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(free_port())]


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop one started process and its group (the JVM the launcher script exec'd)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@contextmanager
def local_cluster(
    root: Path, *, workers: int = 2, cores: int = 1, memory: str = "1g", connect: bool = True
) -> Iterator[LocalCluster]:
    """A standalone master with ``workers`` workers (``cores`` and ``memory`` each) and, with
    ``connect``, a local[2] Spark Connect server, all bound to 127.0.0.1; stopped on exit."""
    root.mkdir(parents=True, exist_ok=True)
    home = spark_home()
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOG_DIR": str(root),
    }
    spark_class = str(home / "bin" / "spark-class")
    started: list[subprocess.Popen[bytes]] = []
    try:
        port = free_port()
        master = _start(
            [spark_class, "org.apache.spark.deploy.master.Master", *_bind(port)],
            root / "master.log",
            env,
        )
        started.append(master)
        _wait_port(port, master, root / "master.log", 90)
        url = f"spark://127.0.0.1:{port}"
        for i in range(workers):
            worker_port = free_port()
            worker = _start(
                [
                    *(spark_class, "org.apache.spark.deploy.worker.Worker", url, *_bind(worker_port)),
                    *("--cores", str(cores), "--memory", memory, "--work-dir", str(root / f"work{i}")),
                ],
                root / f"worker{i}.log",
                env,
            )
            started.append(worker)
            _wait_port(worker_port, worker, root / f"worker{i}.log", 90)
        connect_url = None
        if connect:
            connect_port = free_port()
            server = _start(
                [
                    *(str(home / "bin" / "spark-submit"), "--class", CONNECT_SERVER, "--master", "local[2]"),
                    *("--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.ui.enabled=false"),
                    *("--conf", f"spark.connect.grpc.binding.port={connect_port}"),
                    *("--conf", "spark.connect.grpc.binding.address=127.0.0.1"),
                ],
                root / "connect.log",
                env,
            )
            started.append(server)
            _wait_port(connect_port, server, root / "connect.log", 120)
            connect_url = f"sc://127.0.0.1:{connect_port}"
        time.sleep(3)  # workers register with the master after their port opens
        yield LocalCluster(master=url, connect=connect_url, logs=root)
    finally:
        for process in reversed(started):
            _stop(process)


__all__ = ["LocalCluster", "free_port", "local_cluster", "spark_home"]
