"""The judgement page of ``engage evaluate decisions``: lift vs holdout and policy values, as HTML.

Pure: figures and sections from a ``evaluation.judge.Judgement``, rendered by ``report.render_html``
(the same self-contained page as the engagement report). Writing files and MLflow logging happen at
the command's edge.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from matplotlib.figure import Figure

from engage import schemas as s
from engage.evaluation.judge import Judgement
from engage.plots.loop import lift_figure, policy_values_by_estimator_figure
from engage.report import Section, figure_png, render_html

__all__ = ["DEFAULT_TITLE", "judgement_figures", "judgement_html", "judgement_sections", "overview"]

DEFAULT_TITLE = "engage: did the messages work?"


def judgement_figures(j: Judgement) -> dict[str, Figure]:
    """Name -> figure: lift per message (or overall) and per risk band, and the value of each policy."""
    per_message = j.lift_by_message if j.lift_by_message is not None else j.lift_overall
    return {
        "lift_per_message": lift_figure(
            per_message, metric=s.CONVERTED, title="Conversion lift vs holdout per message (95% CI)"
        ),
        "lift_per_risk_band": lift_figure(
            j.lift_by_band, metric=s.CONVERTED, title="Conversion lift vs holdout per risk band (95% CI)"
        ),
        "policy_values": policy_values_by_estimator_figure(j.values),
    }


def overview(j: Judgement) -> pd.DataFrame:
    """The page's headline table: rows read and skipped, and the overall lift of each metric."""
    rows: list[tuple[str, str]] = [
        ("decisions judged", f"{j.rows:,}"),
        ("log lines skipped (cut short or not a decision)", f"{j.skipped_lines:,}"),
    ]
    for r in j.lift_overall.itertuples(index=False):
        rows.append(
            (
                f"{r.metric} lift vs holdout (treated {r.treated_n:,}, holdout {r.holdout_n:,})",
                f"{r.lift:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}]",
            )
        )
    return pd.DataFrame(rows, columns=["measure", "value"])


def judgement_sections(j: Judgement, figures: dict[str, Figure]) -> list[Section]:
    """One section per question: per message, per risk band, policy values; warnings and notes first."""
    sections = []
    if j.warnings or j.notes:
        sections.append(
            Section(
                key="warnings",
                title="Warnings and notes",
                caption="Read these before the numbers.",
                tables=(("warnings and notes", pd.DataFrame({"message": [*j.warnings, *j.notes]})),),
            )
        )
    per_message = j.lift_by_message if j.lift_by_message is not None else j.lift_overall
    sections += [
        Section(
            key="lift_per_message",
            title="Lift per message",
            caption=(
                "Each message against the holdout users it would have been sent to: treated minus holdout "
                "mean, with a bootstrap 95% interval. Green: the interval is above zero."
            ),
            png=figure_png(figures["lift_per_message"]),
            tables=(("lift per message", per_message),),
        ),
        Section(
            key="lift_per_risk_band",
            title="Lift per risk band",
            caption=(
                "Treated against holdout users of the same churn risk band "
                "(from the logged churn probability)."
            ),
            png=figure_png(figures["lift_per_risk_band"]),
            tables=(("lift per risk band", j.lift_by_band),),
        ),
        Section(
            key="policy_values",
            title="Policy values",
            caption=(
                "Value per decision (conversion value minus message cost). serving and holdout are measured "
                "on their own decisions; every other policy off-policy (IPS, SNIPS, DR) on the logged rows, "
                "with the effective sample size and the largest importance weight of its weights."
            ),
            png=figure_png(figures["policy_values"]),
            tables=(("policy values", j.values), ("overlap", j.overlap)),
        ),
    ]
    return sections


def judgement_html(
    j: Judgement, *, as_of: datetime, title: str = DEFAULT_TITLE
) -> tuple[str, dict[str, Figure]]:
    """The page (``as_of``: the end of the latest outcome window) and the figures it shows."""
    figures = judgement_figures(j)
    return render_html(title, as_of, overview(j), judgement_sections(j, figures)), figures
