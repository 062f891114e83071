"""Tests for engage.report: files written, and the HTML page parses with every image and table inline."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from engage import schemas as s
from engage.report import build_report, compute_analytics, render_html

AS_OF = datetime(2024, 5, 1, tzinfo=UTC)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = (
    "cohort_heatmap",
    "retention_curves",
    "funnel",
    "rfm_segments",
    "loyalty_pyramid",
    "engagement_histogram",
)
CSVS = (
    "cohort_counts.csv",
    "cohort_rates.csv",
    "retention_curves.csv",
    "funnel.csv",
    "rfm.csv",
    "rfm_segments.csv",
    "loyalty_tiers.csv",
    "loyalty_pyramid.csv",
    "engagement_scores.csv",
    "engagement_bands.csv",
)


def _log(seed: int = 0, users: int = 80, types: tuple[str, ...] | None = None) -> pl.DataFrame:
    """A seeded synthetic event log over January to May 2024."""
    rng = np.random.default_rng(seed)
    types = types or ("session_start", "product_view", "add_to_cart", "purchase", "email_open")
    rows = []
    for u in range(users):
        start = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=int(rng.integers(0, 100)))
        life = float(rng.uniform(1, 120))
        for _ in range(int(rng.integers(1, 30))):
            t = start + timedelta(days=float(rng.uniform(0, life)))
            rows.append(
                (f"u{u}", t, types[int(rng.integers(0, len(types)))], float(rng.uniform(1, 80)), "xyz"[u % 3])
            )
    return pl.DataFrame(
        rows,
        schema={
            s.USER_ID: pl.String,
            s.TS: s.TS_DTYPE,
            s.EVENT_TYPE: pl.String,
            "amount": pl.Float64,
            "category": pl.String,
        },
        orient="row",
    )


class _Page(HTMLParser):
    """Collects image sources, table names and the text of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, str]] = []
        self.tables: list[str] = []
        self.text: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "img":
            self.images.append((found.get("src") or "", found.get("alt") or ""))
        if tag == "table":
            self.tables.append(found.get("data-name") or "")
        if tag not in {"img", "meta", "br"}:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> after {self.stack[-3:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.stack == [], f"unclosed tags {page.stack}"
    return page


def _check_images(page: _Page) -> None:
    """Every <img> is an inline data: URI whose payload decodes to a PNG."""
    value = any(alt == "Value segments" for _, alt in page.images)  # shown when >= 50 users bought
    assert len(page.images) == len(PLOTS) + value
    for src, alt in page.images:
        assert src.startswith("data:image/png;base64,"), src[:40]
        payload = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert payload[:8] == PNG_SIGNATURE
        assert len(payload) > 5_000, f"plot {alt!r} looks empty"


def test_build_report_writes_files_and_self_contained_html(tmp_path: Path) -> None:
    messages: list[str] = []
    path = build_report(
        _log(),
        as_of=AS_OF,
        out_dir=tmp_path / "out",
        title="Test <report> & co",
        funnel_segment="category",
        progress=messages.append,
    )
    assert path == tmp_path / "out" / "report.html"
    for name in CSVS:
        assert not pd.read_csv(tmp_path / "out" / name).empty, name
    for key in PLOTS:
        assert (tmp_path / "out" / f"{key}.png").read_bytes()[:8] == PNG_SIGNATURE
    assert messages and messages[-1] == "writing report.html"

    page = _parse(path)
    _check_images(page)
    for name in (
        "Overview",
        "Events per type",
        "Retention rate by cohort",
        "Funnel by segment",
        "Customers per segment",
        "Customers per tier",
        "Users per band",
    ):
        assert name in page.tables
    text = " ".join(page.text)
    assert "Test <report> & co" in text  # escaped in the source, shown as written
    assert "Champions" in text and "session_start" in text
    assert "http://" not in path.read_text() and "https://" not in path.read_text()


def test_report_on_purchase_only_log(tmp_path: Path) -> None:
    path = build_report(_log(seed=1, types=("purchase", "refund")), as_of=AS_OF, out_dir=tmp_path)
    page = _parse(path)
    _check_images(page)
    funnel = pd.read_csv(tmp_path / "funnel.csv")
    assert funnel["users"].tolist() == [0, 0, 0, 0]  # no sessions: nobody starts the funnel


def test_report_ignores_events_at_or_after_as_of() -> None:
    log = _log(seed=2)
    before = compute_analytics(log.filter(pl.col(s.TS) < AS_OF), as_of=AS_OF)
    full = compute_analytics(log, as_of=AS_OF)
    assert log.filter(pl.col(s.TS) >= AS_OF).height > 0
    pd.testing.assert_frame_equal(before.rfm, full.rfm)
    pd.testing.assert_frame_equal(before.engagement, full.engagement)
    pd.testing.assert_frame_equal(before.overview, full.overview)


def test_render_html_escapes_table_cells() -> None:
    tables = compute_analytics(_log(seed=3, users=20), as_of=AS_OF)
    hostile = pd.DataFrame({"measure": ["<script>alert(1)</script>"], "value": ["1"]})
    page_text = render_html("t", AS_OF, hostile, [])
    assert "<script>" not in page_text and "&lt;script&gt;" in page_text
    assert tables.cohort.counts.shape[0] > 0


@pytest.mark.slow
@pytest.mark.realdata
def test_report_on_online_retail_ii(shared_data: Path, tmp_path: Path) -> None:
    from engage.datasets.online_retail_ii import load_online_retail_ii

    source = shared_data / "online_retail_ii" / "online_retail_II_2009-2010.parquet"
    if not source.exists():
        pytest.skip(f"{source} not found")
    events = load_online_retail_ii(source).accepted
    as_of = datetime(2010, 12, 1, tzinfo=UTC)
    path = build_report(events, as_of=as_of, out_dir=tmp_path, cohort_period="M", activity_types=["purchase"])
    _check_images(_parse(path))
    rfm = pd.read_csv(tmp_path / "rfm.csv")
    assert 3_500 < len(rfm) < 4_500  # about 4,383 customers, fewer before December 2010
    assert rfm[["R", "F", "M"]].isin([1, 2, 3, 4, 5]).all().all()
    champions = rfm[rfm["segment"] == "Champions"]
    assert champions["monetary"].median() > rfm["monetary"].median()
    counts = pd.read_csv(tmp_path / "cohort_counts.csv").set_index("cohort")
    assert counts.index[0] == "2009-12"
    assert counts.iloc[0, 0] > 500


def test_report_shows_value_segments_that_add_up(tmp_path: Path) -> None:
    events = _log(seed=5, users=300, types=("purchase", "session_start"))
    tables = compute_analytics(events, as_of=AS_OF, value_horizon_days=180)
    segments = tables.value_segments.set_index("segment")
    buyers = events.filter((pl.col(s.EVENT_TYPE) == "purchase") & (pl.col(s.TS) < AS_OF))[
        s.USER_ID
    ].n_unique()
    assert segments["users"].drop("no purchase yet").sum() == buyers
    assert segments["revenue_share"].sum() == pytest.approx(1.0)
    assert (
        segments.loc["top 10%", "mean_predicted_revenue"]
        >= segments.loc["bottom 30%", "mean_predicted_revenue"]
    )
    path = build_report(events, as_of=AS_OF, out_dir=tmp_path)
    assert 'id="value_segments"' in path.read_text() and (tmp_path / "value_segments.png").exists()
