"""Files written whole: a killed run never leaves a partial file, and its leftovers are cleaned up.

Every file engage writes for others to read (Parquet tables, JSON summaries, HTML pages,
audience files, decision-log batches) is written to a temporary file next to its target and then
renamed over it (or, for decision-log batches, hard-linked). Temporary files are named
``.<name>.engage-tmp-<pid>@<host>.<random>`` by :func:`temporary_path`, which first removes the
leftovers of earlier writers of the same target that are gone. Modes follow the user's umask.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import polars as pl

__all__ = ["TMP_TAG", "temporary_path", "write_atomic", "write_parquet_atomic", "write_text_atomic"]

TMP_TAG = ".engage-tmp-"
"""What every temporary file engage writes has in its name (after ``.<target name>``)."""
_IN_FLIGHT: set[Path] = set()
_STALE_AFTER_S = 24 * 3600.0


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` for a temporary file next to ``path``, then rename it over ``path``.

    On any error (or a KeyboardInterrupt) the temporary file is removed and the target is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    _IN_FLIGHT.add(tmp)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _IN_FLIGHT.discard(tmp)
    return path


def write_parquet_atomic(
    frame: pl.DataFrame, path: Path, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """A Parquet file written whole (:func:`write_atomic`), with optional key-value metadata."""
    extra = dict(metadata) if metadata else None
    return write_atomic(path, lambda tmp: frame.write_parquet(tmp, metadata=extra))


def write_text_atomic(path: Path, text: str) -> Path:
    """A UTF-8 text file (JSON, HTML) written whole (:func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def temporary_path(path: Path) -> Path:
    """A fresh temporary name next to ``path`` (``.<name>.engage-tmp-<pid>@<host>.<random>``), after
    removing the leftovers of earlier writers of ``path`` that are gone."""
    for stale in _stale_temporaries(path):
        stale.unlink(missing_ok=True)
    writer = f"{os.getpid()}@{socket.gethostname()}"
    return path.with_name(f".{path.name}{TMP_TAG}{writer}.{secrets.token_hex(4)}")


def _stale_temporaries(path: Path) -> list[Path]:
    """Temporary files of earlier writes to ``path`` whose writer is gone.

    Gone: a process of this host that no longer runs (or this process, but not writing it now), or
    a file untouched for a day (a writer on another host).
    """
    prefix = f".{path.name}{TMP_TAG}"
    host = socket.gethostname()
    stale: list[Path] = []
    if not path.parent.is_dir():
        return stale
    for candidate in (p for p in path.parent.iterdir() if p.name.startswith(prefix)):
        writer = candidate.name[len(prefix) :].rsplit(".", 1)[0]
        pid_text, _, writer_host = writer.partition("@")
        try:
            old = time.time() - candidate.stat().st_mtime > _STALE_AFTER_S
        except OSError:
            continue
        if old or (writer_host == host and pid_text.isdigit() and not _running(int(pid_text), candidate)):
            stale.append(candidate)
    return stale


def _running(pid: int, tmp: Path) -> bool:
    """Whether process ``pid`` (of this host) may still be writing ``tmp``."""
    if pid == os.getpid():
        return tmp in _IN_FLIGHT
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
