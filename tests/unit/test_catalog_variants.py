"""Channel variants of a message and per-channel caps: the catalog's checks and the policy's choice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from engage import schemas
from engage.offers.catalog import CatalogError, catalog_from_dict
from engage.offers.policy import allowed_matrix, channel_allowed, variant_gains

AS_OF = datetime(2024, 5, 1, tzinfo=UTC)
EMAIL, PUSH, IN_APP = (schemas.CHANNELS.index(c) for c in ("email", "push", "in_app"))


def _catalog(variants=None, caps=None):
    message = {"id": "offer", "channel": "email", "template": "Hello", "cost": 0.5, "value": 10.0}
    if variants is not None:
        message["variants"] = variants
    raw = {
        "messages": [
            message,
            {"id": "news", "channel": "push", "template": "News", "cost": 0.0, "value": 5.0},
        ]
    }
    if caps is not None:
        raw["caps"] = caps
    return catalog_from_dict(raw, source="c.yaml")


def test_variants_carry_their_own_template_and_cost() -> None:
    cat = _catalog([{"channel": "push", "template": "Hi!", "cost": 0.05}, {"channel": "in_app"}])
    offer = cat.get("offer")
    assert offer is not None
    assert [v.channel for v in offer.all_variants] == ["email", "push", "in_app"]
    push, in_app = offer.variant("push"), offer.variant("in_app")
    assert push is not None and (push.template, push.cost) == ("Hi!", 0.05)
    assert in_app is not None and (in_app.template, in_app.cost, in_app.html) == ("Hello", 0.5, True)


@pytest.mark.parametrize(
    ("variants", "caps", "message"),
    [
        (
            [{"channel": "sms"}],
            None,
            r"message offer: field 'variants\[1\]\.channel' must be one of .*got 'sms'",
        ),
        ([{"channel": "email"}], None, r"variants\[1\]\.channel': email is already a channel"),
        (
            [{"channel": "push", "tone": "x"}],
            None,
            r"variants\[1\]' must be a mapping of channel, cost, template",
        ),
        ([{"channel": "push", "cost": -1}], None, r"variants\[1\]\]: field 'cost' must be a non-negative"),
        (None, {"per_channel_7d": {"sms": 1}}, r"caps: per_channel_7d\.sms: not a channel"),
        (
            None,
            {"per_channel_7d": {"push": -1}},
            r"caps: per_channel_7d\.push must be a non-negative integer",
        ),
        (None, {"per_week": 1}, r"caps: field 'per_week' is not known"),
    ],
)
def test_bad_variants_and_caps_name_the_field(variants, caps, message) -> None:
    with pytest.raises(CatalogError, match=message):
        _catalog(variants, caps)


def _features(consent: dict[str, list[bool]]) -> pd.DataFrame:
    frame = pd.DataFrame({schemas.USER_ID: [f"u{i}" for i in range(len(next(iter(consent.values()))))]})
    for ch, values in consent.items():
        frame[schemas.consent_column(ch)] = values
    return frame


def test_policy_picks_the_channel_by_gain_net_of_cost_within_consent() -> None:
    cat = _catalog([{"channel": "push", "cost": 0.05}, {"channel": "in_app", "cost": 0.2}])
    features = _features(
        {"email": [True, True, False, False], "push": [True, False, True, False], "in_app": [False] * 4}
    )
    allowed = channel_allowed(features, cat, history=None, as_of=AS_OF)
    gains = np.array([[0.0, 1.0, 0.1]] * 4)  # offer: 1.0 net on email (benefit 1.5), news 0.1
    scores = np.ones((4, len(schemas.CHANNELS)))
    scores[1, EMAIL] = 2.0  # user 1 answers email twice as well as an average channel
    best, channel = variant_gains(gains, cat, allowed, scores)
    # user 0: email 1.5-0.5=1.0 vs push 1.5-0.05=1.45 -> push; user 1: only email, at score 2 it is the own
    # channel's gain; user 2: only push; user 3: nothing consented
    assert channel[:, 1].tolist() == [PUSH, EMAIL, PUSH, -1]
    np.testing.assert_allclose(best[:3, 1], [1.45, 1.0, 1.45])
    assert best[3, 1] == -np.inf and channel[0, 0] == -1
    scores[0, PUSH] = 0.2  # push barely works for user 0: email wins despite its cost
    _, channel = variant_gains(gains, cat, allowed, scores)
    assert channel[0, 1] == EMAIL
    # the message itself is allowed when any of its channels is: user 2 has push only
    matrix = allowed_matrix(features, cat, history=None, as_of=AS_OF, max_per_7d=2)
    assert matrix[:, 1].tolist() == [True, True, True, False]


def test_per_channel_caps_close_a_channel_not_the_message() -> None:
    cat = _catalog([{"channel": "push", "cost": 0.05}], caps={"max_per_7d": 3, "per_channel_7d": {"push": 1}})
    features = _features({"email": [True, True], "push": [True, True]})
    history = pd.DataFrame(
        {
            schemas.USER_ID: ["u0", "u1"],
            schemas.TS: [AS_OF - timedelta(days=2), AS_OF - timedelta(days=9)],
            schemas.MESSAGE_ID: ["news", "news"],
        }
    )
    allowed = channel_allowed(features, cat, history=history, as_of=AS_OF)
    assert not allowed[0, 1, PUSH] and allowed[0, 1, EMAIL]  # u0 had a push 2 days ago
    assert allowed[1, 1, PUSH]  # u1's push was 9 days ago
    assert not allowed[0, 2, PUSH]  # news is push-only: closed for u0
    matrix = allowed_matrix(features, cat, history=history, as_of=AS_OF, max_per_7d=3)
    assert matrix[0].tolist() == [True, True, False] and matrix[1].tolist() == [True, True, True]
    logged = history.assign(**{schemas.CHANNEL: ["email", "email"]})  # the log says it went by email
    assert channel_allowed(features, cat, history=logged, as_of=AS_OF)[0, 1, PUSH]
