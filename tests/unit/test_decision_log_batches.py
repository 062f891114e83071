"""A batch run's decisions reach the log all or nothing, once: a real kill mid-write and a re-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from engage import schemas as s
from engage.scoring.decision_log import DecisionWriter, LogTail, batch_key, log_files, read_decisions
from engage.serving.history import ContactHistory

WHEN = datetime(2024, 6, 1, 12, tzinfo=UTC)


def _scores(n: int, prefix: str = "d") -> pd.DataFrame:
    rng = np.random.default_rng(n)
    return pd.DataFrame(
        {
            "decision_id": [f"{prefix}{i}" for i in range(n)],
            s.USER_ID: [f"u{i}" for i in range(n)],
            s.AS_OF: pd.Timestamp(WHEN),
            s.MESSAGE_ID: rng.choice(["none", "cart_coupon", "winback"], n),
            s.CHANNEL: "email",
            s.PROPENSITY: rng.random(n),
            s.EXPECTED_GAIN: rng.normal(size=n),
            "holdout": False,
            s.INTENDED_MESSAGE_ID: "cart_coupon",
            "churn_probability": rng.random(n),
            "model_versions": [{"churn": "engage-churn/1"}] * n,
        }
    )


def test_the_batch_key_is_the_set_of_ids() -> None:
    ids = [f"d{i}" for i in range(100)]
    assert batch_key(ids) == batch_key(ids[::-1])
    assert batch_key(ids) != batch_key(ids[:-1]) and batch_key(ids) != batch_key([*ids[:-1], "other"])


def test_a_re_run_of_the_same_batch_appends_nothing(tmp_path: Path) -> None:
    scores = _scores(500)
    with DecisionWriter(tmp_path) as writer:
        first = writer.write_frame(scores, WHEN)
    later = DecisionWriter(tmp_path, clock=lambda: datetime(2031, 1, 1, tzinfo=UTC))  # another day
    again = later.write_frame(scores.sample(frac=1, random_state=1), WHEN)
    assert not first.already_logged and first.rows == 500
    assert again.already_logged and again.rows == 0 and again.path == first.path
    log, skipped = read_decisions(tmp_path)
    assert len(log) == 500 and log["decision_id"].is_unique and skipped == 0
    other = later.write_frame(_scores(20, prefix="e"), WHEN)  # another job: its own file
    assert not other.already_logged and len(read_decisions(tmp_path)[0]) == 520
    assert [p.name for p in log_files(tmp_path)] == [first.path.name, other.path.name]


def test_readers_never_see_a_temporary_file(tmp_path: Path) -> None:
    scores = _scores(30)
    with DecisionWriter(tmp_path) as writer:
        published = writer.write_frame(scores, WHEN)
    folder = published.path.parent
    (folder / f".{published.path.name}.engage-tmp-1@host.ab").write_text('{"decision_id":"t1"')
    (folder / ".batch-x.jsonl.engage-tmp-2@host.cd").write_bytes(published.path.read_bytes())
    log, skipped = read_decisions(tmp_path)
    assert len(log) == 30 and skipped == 0
    assert len(LogTail(tmp_path).read(final=True)) == 30
    history = ContactHistory(tmp_path, retention=pd.Timedelta(days=30), clock=lambda: WHEN)
    sent = scores[scores[s.MESSAGE_ID] != "none"]
    assert sum(len(history.entries(u)) for u in scores[s.USER_ID]) == len(sent)


WRITER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_decision_log_batches import _scores, WHEN
    from engage.scoring.decision_log import DecisionWriter
    scores = _scores({n})
    print("ready", flush=True)
    with DecisionWriter(Path({log!r})) as writer:
        writer.write_frame(scores, WHEN)
    print("done", flush=True)
    """
)


def _kill_mid_write(log: Path, n: int) -> int:
    """Start a writer of ``n`` decisions, SIGKILL it mid-write; return the bytes it wrote."""
    code = WRITER.format(tests=str(Path(__file__).parent), n=n, log=str(log))
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
    deadline = time.monotonic() + 120
    written = 0
    while time.monotonic() < deadline and process.poll() is None:
        sizes = [p.stat().st_size for p in log.rglob("*") if p.is_file()] if log.exists() else []
        written = sum(sizes)
        if written > 1_000_000:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.001)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the writer finished before it could be killed"
    return written


def test_a_killed_batch_leaves_nothing_and_the_re_run_logs_it_once(tmp_path: Path) -> None:
    log = tmp_path / "decisions"
    n = 300_000
    written = _kill_mid_write(log, n)
    assert written > 0, "killed while its bytes were on disk"
    frame, skipped = read_decisions(log)
    assert len(frame) == 0 and skipped == 0, "no partial batch is visible"
    with DecisionWriter(log) as writer:  # the re-run; it also removes the dead writer's temporary
        rerun = writer.write_frame(_scores(n), WHEN)
        again = writer.write_frame(_scores(n), WHEN)
    frame, skipped = read_decisions(log)
    assert not rerun.already_logged and again.already_logged
    assert len(frame) == n and frame["decision_id"].is_unique and skipped == 0
    assert [p.name for p in log.rglob("*") if p.is_file()] == [rerun.path.name]


def test_log_files_follow_the_users_umask(tmp_path: Path) -> None:
    """Before: batch files and per-process files were 0644 whatever the umask (a group could not write)."""
    import stat

    old = os.umask(0o002)
    try:
        with DecisionWriter(tmp_path / "log") as writer:
            batch = writer.write_frame(_scores(5), WHEN).path
            stream = writer.write(_scores(2, prefix="r").to_dict("records"), WHEN)
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in (batch, stream)} == {0o664}
