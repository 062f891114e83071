"""Audience files: one CSV and one Parquet per audience, and ``manifest.json`` saying what is there.

Every file is written next to its target and renamed over it, so an importer never reads half a
file; the manifest is written last (its presence means the export is complete) and lists each
file with its rows and SHA-256, the rows left out (holdout, ``none``) and whether ``send_at`` was
there. Files an earlier manifest listed that this export no longer writes are removed, so a folder
never offers an importer a stale audience. One export or delivery at a time per folder
(``export_lock``): two would race on the files and could post a batch twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import polars as pl

from engage.atomic import TMP_TAG, write_atomic, write_parquet_atomic, write_text_atomic
from engage.audiences.split import SEND_AT, Audiences, audience_stem

__all__ = ["LOCK_NAME", "MANIFEST_NAME", "ExportLockedError", "export_lock", "sha256_file", "write_audiences"]

MANIFEST_NAME: Final = "manifest.json"
LOCK_NAME: Final = ".engage-export.lock"
Progress = Callable[[int, int], None]


class ExportLockedError(RuntimeError):
    """Another process is exporting to, or delivering from, the same folder."""


@contextmanager
def export_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s export lock (an ``flock`` on ``folder/.engage-export.lock``); released when
    the process ends, killed or not. Leftover temporary files of a killed export are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK_NAME).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ExportLockedError(
                f"{folder}: another engage export is using this folder (process {holder}); "
                "wait for it to finish"
            ) from exc
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        for stale in folder.glob(f".*{TMP_TAG}*"):  # nobody else writes here while we hold the lock
            stale.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _csv_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """Send times as ISO 8601 UTC text (``2024-06-01T09:00:00Z``), what importers parse."""
    if SEND_AT in frame.columns and isinstance(frame.schema[SEND_AT], pl.Datetime):
        stamp = pl.col(SEND_AT)
        if frame.schema[SEND_AT].time_zone is None:
            stamp = stamp.dt.replace_time_zone("UTC")
        return frame.with_columns(stamp.dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return frame


def write_audiences(
    audiences: Audiences,
    out_dir: Path,
    *,
    source: dict[str, Any],
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write every audience as CSV and Parquet under ``out_dir``, then the manifest; returns it.

    ``source`` describes the scores the audiences came from (file name, SHA-256) for the manifest.
    Call inside ``export_lock(out_dir)``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[dict[str, Any]] = []
    done = 0
    for name, frame in audiences.frames.items():
        stem = audience_stem(audiences.by, name)
        csv = write_atomic(out_dir / f"{stem}.csv", _csv_frame(frame).write_csv)
        parquet = write_parquet_atomic(frame, out_dir / f"{stem}.parquet")
        files.append(
            {
                "audience": name,
                "rows": frame.height,
                "csv": csv.name,
                "csv_sha256": sha256_file(csv),
                "parquet": parquet.name,
                "parquet_sha256": sha256_file(parquet),
            }
        )
        done += frame.height
        if progress:
            progress(done, audiences.exported)
    manifest = {
        "by": audiences.by,
        "scores": source,
        "rows_in": audiences.rows_in,
        "exported": audiences.exported,
        "not_exported": {"holdout": audiences.holdout, "none": audiences.none},
        "columns": list(audiences.columns),
        "send_at": (
            "included"
            if audiences.send_at
            else "absent: the scores carry no send_at column, so the platform picks the send time"
        ),
        "files": files,
    }
    _remove_dropped(out_dir, {f for entry in files for f in (entry["csv"], entry["parquet"])})
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    write_text_atomic(out_dir / MANIFEST_NAME, text)
    return manifest


def _remove_dropped(out_dir: Path, kept: set[str]) -> None:
    """Remove the files the previous manifest listed that this export does not write (and only those)."""
    previous = out_dir / MANIFEST_NAME
    try:
        listed = json.loads(previous.read_text(encoding="utf-8")).get("files", [])
    except (FileNotFoundError, ValueError, AttributeError):
        return
    for entry in listed if isinstance(listed, list) else []:
        for key in ("csv", "parquet"):
            name = entry.get(key) if isinstance(entry, dict) else None
            if isinstance(name, str) and name not in kept and Path(name).name == name:
                (out_dir / name).unlink(missing_ok=True)
