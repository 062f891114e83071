"""The message catalog marketers edit: the checked YAML, its messages and the contact cap.

Each message's ``eligible_if`` is a rule of the safe language in ``offers.rules`` (bounded in size and
nesting); its template is a sandboxed Jinja2 subset checked by ``offers.templates``. At load every
placeholder must resolve to a known feature, a user attribute, a name declared under ``placeholders``
or a param of its message, and every value a user may lack must have a default (the catalog's, or
the template's ``default`` filter). A malformed catalog fails at load naming the file, the message id
and the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from engage import schemas as s
from engage.config import FeatureConfig
from engage.features.spec import feature_defs
from engage.offers.rules import Rule, parse_rule
from engage.offers.templates import (
    HTML_CHANNELS,
    Placeholder,
    check_format_spec,
    compile_template,
    fill,
    template_keys,
)

__all__ = [
    "CAP_DAYS",
    "USER_ATTRIBUTES",
    "Catalog",
    "CatalogError",
    "Message",
    "Variant",
    "catalog_from_dict",
    "is_standard_feature",
    "load_catalog",
]

CAP_DAYS = 7
"""The contact cap counts the messages a user got over this many days (``max_per_7d``)."""
USER_ATTRIBUTES: tuple[str, ...] = ("region", "plan", *(s.consent_column(c) for c in s.CHANNELS))
"""User attributes a template may read without declaring them under ``placeholders``."""


class CatalogError(ValueError):
    """A catalog that cannot be used; names the file, message id and field."""


@dataclass(frozen=True)
class Variant:
    """One channel a message can go on, with its own text and cost."""

    channel: str
    template: str
    cost: float
    html: bool = False


@dataclass(frozen=True)
class Message:
    """One catalog entry: where it goes, what it says, what it costs and who may get it.

    ``channel``, ``template`` and ``cost`` are its first variant; ``variants`` the others (a message
    that may also go as a push, with its own text and cost): the policy picks among those the user
    consented to, by expected gain net of each variant's cost.
    """

    id: str
    channel: str
    template: str
    cost: float
    value: float
    eligible_if: Rule
    cooldown_days: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    html: bool = False
    """Values are HTML-escaped (the channel renders HTML)."""
    placeholders: Mapping[str, Placeholder] = field(default_factory=dict)
    """The catalog's defaults and number formats, by placeholder name."""
    variants: tuple[Variant, ...] = ()
    """Further channels, beyond ``channel`` (no channel twice)."""

    @property
    def all_variants(self) -> tuple[Variant, ...]:
        """Every channel the message can go on, its own first."""
        return (Variant(self.channel, self.template, self.cost, self.html), *self.variants)

    def variant(self, channel: str) -> Variant | None:
        """The variant on ``channel``, or None."""
        return next((v for v in self.all_variants if v.channel == channel), None)

    def template_keys(self) -> set[str]:
        """The value names the template reads."""
        return template_keys(self.template)

    def render(self, features: Mapping[str, Any] | pd.Series) -> str:
        """The text for one user (``templates.fill`` with this message's params); never raises."""
        return fill(self.template, self.params, features, self.placeholders, html=self.html)


@dataclass(frozen=True)
class Catalog:
    """The checked catalog: messages in file order and the per-user contact cap."""

    messages: tuple[Message, ...]
    max_per_7d: int = 2
    source: str = ""
    placeholders: Mapping[str, Placeholder] = field(default_factory=dict)
    html_channels: tuple[str, ...] = HTML_CHANNELS
    per_channel_7d: Mapping[str, int] = field(default_factory=dict)
    """Contact caps per channel over ``CAP_DAYS`` days (``caps: per_channel_7d: {push: 1}``)."""

    @property
    def history_days(self) -> int:
        """The longest look-back the policy reads: the contact cap's window or the longest cooldown."""
        return max([CAP_DAYS, *(m.cooldown_days for m in self.messages)])

    @property
    def arms(self) -> list[str]:
        """Every arm, the control `none` first."""
        return [s.CONTROL_ARM, *(m.id for m in self.messages)]

    @cached_property
    def _by_id(self) -> dict[str, Message]:
        """Messages by id (the first of a repeated id, like a scan in file order)."""
        by_id: dict[str, Message] = {}
        for m in self.messages:
            by_id.setdefault(m.id, m)
        return by_id

    def get(self, message_id: str) -> Message | None:
        """The message with that id, or None (also for `none`)."""
        return self._by_id.get(message_id)

    def channel(self, message_id: str) -> str:
        """Channel of a message; `none` for the control or an unknown id."""
        m = self.get(message_id)
        return m.channel if m else s.CONTROL_ARM

    @cached_property
    def arm_channels(self) -> np.ndarray:
        """Channel of every arm in ``arms`` order (`none` for the control), as an object array."""
        return np.asarray([self.channel(arm) for arm in self.arms], dtype=object)

    def features(self) -> set[str]:
        """Every feature name the eligibility rules read."""
        return set().union(*(m.eligible_if.features() for m in self.messages))

    def eligibility(self, features: pd.DataFrame) -> pd.DataFrame:
        """Boolean frame, one column per arm (`none` always True), from the eligibility rules only."""
        return pd.DataFrame(self.eligibility_matrix(features), columns=self.arms, index=features.index)

    def eligibility_matrix(self, features: pd.DataFrame) -> np.ndarray:
        """``eligibility`` as a boolean array (rows x ``arms``), without building a frame."""
        out = np.ones((len(features), len(self.messages) + 1), dtype=bool)
        for j, m in enumerate(self.messages, start=1):
            try:
                out[:, j] = m.eligible_if.evaluate(features)
            except KeyError as exc:
                where = f"{self.source}: message {m.id}: field 'eligible_if'"
                raise KeyError(f"{where}: {exc.args[0]}") from exc
        return out


_MESSAGE_FIELDS = frozenset(
    {"id", "channel", "template", "params", "cost", "value", "eligible_if", "cooldown_days", "variants"}
)
_VARIANT_FIELDS = frozenset({"channel", "template", "cost"})
_CATALOG_FIELDS = frozenset({"messages", "caps", "placeholders", "html_channels"})
_PLACEHOLDER_FIELDS = frozenset({"default", "format"})
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@cache
def _standard_features() -> re.Pattern[str]:
    """The names of the standard features for any windows (``purchase_count_<n>d``)."""
    sentinel = 987_654_321
    defs = feature_defs(FeatureConfig(windows=(sentinel,)))
    return re.compile("|".join(re.escape(f.name).replace(str(sentinel), r"\d+") for f in defs))


def is_standard_feature(name: str) -> bool:
    """Whether ``name`` is a standard feature for some choice of windows (``amount_sum_14d``)."""
    return _standard_features().fullmatch(name) is not None


def load_catalog(path: str | Path, *, feature_names: Iterable[str] | None = None) -> Catalog:
    """Read and check a catalog file; any problem is a CatalogError naming file, message and field.

    With ``feature_names``, rules and templates reading a feature outside that list fail here instead
    of at scoring; without, templates may read any standard feature (for any windows).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise CatalogError(f"{path}: catalog file not found") from exc
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from exc
    return catalog_from_dict(raw, source=str(path), feature_names=feature_names)


def _number(item: dict[str, Any], key: str, where: str) -> float:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
        raise CatalogError(f"{where}: field '{key}' must be a non-negative number, got {value!r}")
    return float(value)


def _shown(value: Any) -> bool:
    """Whether ``value`` may be shown in a message: text or a finite number."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False
    return isinstance(value, str) or bool(np.isfinite(value))


def _placeholders(raw: Any, path: str) -> dict[str, Placeholder]:
    """The catalog's ``placeholders`` section: name -> default and number format."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CatalogError(
            f"{path}: placeholders: expected a mapping such as {{top_category: {{default: ...}}}}"
        )
    out: dict[str, Placeholder] = {}
    for name, spec in raw.items():
        where = f"{path}: placeholders: {name}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise CatalogError(
                f"{where}: a placeholder name is letters, digits and _ (a feature or attribute)"
            )
        if not isinstance(spec, dict) or set(spec) - _PLACEHOLDER_FIELDS:
            raise CatalogError(f"{where}: expected a mapping with 'default' and/or 'format'")
        default, fmt = spec.get("default"), spec.get("format")
        if default is not None and (not _shown(default) or default == ""):
            raise CatalogError(
                f"{where}: field 'default' must be non-empty text or a number, got {default!r}"
            )
        if fmt is not None:
            try:
                if not isinstance(fmt, str):
                    raise ValueError(f"{fmt!r} is not text")
                check_format_spec(fmt)
            except ValueError as exc:
                raise CatalogError(f"{where}: field 'format': {exc}") from exc
        out[name] = Placeholder(default, fmt)
    return out


def _html_channels(raw: Any, path: str) -> tuple[str, ...]:
    if raw is None:
        return HTML_CHANNELS
    if not isinstance(raw, list) or not set(raw) <= set(s.CHANNELS):
        raise CatalogError(f"{path}: html_channels: expected a list of channels ({', '.join(s.CHANNELS)})")
    return tuple(raw)


@dataclass(frozen=True)
class _Known:
    """What a placeholder may read, beyond its message's params."""

    features: frozenset[str] | None  # None: any standard feature
    placeholders: Mapping[str, Placeholder]
    html_channels: tuple[str, ...]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name in USER_ATTRIBUTES or name in self.placeholders:
            return True
        return is_standard_feature(name) if self.features is None else name in self.features


def _template(template: Any, channel: str, params: dict[str, Any], known: _Known, where: str) -> None:
    """The template checks: the allowed subset, names that resolve, a default for every missing value."""
    if not isinstance(template, str) or not template.strip():
        raise CatalogError(f"{where}: field 'template' must be non-empty text")
    try:
        compiled = compile_template(template, channel in known.html_channels)
    except ValueError as exc:
        raise CatalogError(f"{where}: field 'template': {exc}") from exc
    for piece in compiled.pieces:
        if isinstance(piece, str) or piece.name in params:
            continue
        name = piece.name
        if name not in known:
            raise CatalogError(
                f"{where}: field 'template': placeholder {{{{ {name} }}}} is not a known feature, user "
                "attribute or param of this message (declare other user attributes under 'placeholders')"
            )
        setting = known.placeholders.get(name)
        if not piece.has_default and (setting is None or setting.default is None):
            raise CatalogError(
                f"{where}: field 'template': placeholder {{{{ {name} }}}} has no default for users "
                f"without a value: add placeholders: {{{name}: {{default: ...}}}} to the catalog "
                f"or write {{{{ {name} | default('...') }}}}"
            )


def _message(item: Any, i: int, seen: set[str], path: str, known: _Known) -> Message:
    mid = item.get("id") if isinstance(item, dict) else None
    where = f"{path}: message {mid if mid else f'#{i}'}"
    if not isinstance(item, dict):
        raise CatalogError(f"{where}: expected a mapping of fields, got {type(item).__name__}")
    if not isinstance(mid, str) or not mid.strip():
        raise CatalogError(f"{where}: field 'id' is missing or not text")
    if mid == s.CONTROL_ARM or mid in seen:
        raise CatalogError(f"{where}: field 'id' must be unique and not '{s.CONTROL_ARM}'")
    unknown = sorted(set(item) - _MESSAGE_FIELDS)
    if unknown:
        raise CatalogError(
            f"{where}: field '{unknown[0]}' is not known (fields: {', '.join(sorted(_MESSAGE_FIELDS))})"
        )
    channel = item.get("channel")
    if channel not in s.CHANNELS:
        raise CatalogError(
            f"{where}: field 'channel' must be one of {', '.join(s.CHANNELS)}, got {channel!r}"
        )
    cost, value = _number(item, "cost", where), _number(item, "value", where)
    params = item.get("params") or {}
    if not isinstance(params, dict):
        raise CatalogError(f"{where}: field 'params' must be a mapping of placeholder values")
    for key, param in params.items():
        if not isinstance(key, str) or not _shown(param):
            raise CatalogError(f"{where}: field 'params': {key} must be text or a number, got {param!r}")
    _template(item.get("template"), channel, params, known, where)
    rule_text = item.get("eligible_if")
    if rule_text is not None and not isinstance(rule_text, str):
        raise CatalogError(f"{where}: field 'eligible_if' must be text (a rule), got {rule_text!r}")
    try:
        rule = parse_rule(rule_text)
    except ValueError as exc:
        raise CatalogError(f"{where}: field 'eligible_if': {exc}") from exc
    if known.features is not None and rule.features() - known.features:
        bad = sorted(rule.features() - known.features)
        raise CatalogError(f"{where}: field 'eligible_if': unknown feature(s) {', '.join(bad)}")
    cooldown = item.get("cooldown_days", 0)
    if isinstance(cooldown, bool) or not isinstance(cooldown, int) or cooldown < 0:
        raise CatalogError(f"{where}: field 'cooldown_days' must be a non-negative integer, got {cooldown!r}")
    html = channel in known.html_channels
    variants = _variants(item.get("variants"), channel, item["template"], cost, params, known, where)
    return Message(
        mid,
        channel,
        item["template"],
        cost,
        value,
        rule,
        cooldown,
        dict(params),
        html,
        known.placeholders,
        variants,
    )


def _variants(
    raw: Any, channel: str, template: str, cost: float, params: dict[str, Any], known: _Known, where: str
) -> tuple[Variant, ...]:
    """A message's ``variants``: each a channel (not the message's own, not twice) with an optional
    template and cost of its own (else the message's)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise CatalogError(
            f"{where}: field 'variants' must be a list such as [{{channel: push, cost: 0.02}}]"
        )
    seen = {channel}
    out = []
    for k, item in enumerate(raw, start=1):
        at = f"{where}: field 'variants[{k}]"
        if not isinstance(item, dict) or set(item) - _VARIANT_FIELDS:
            raise CatalogError(f"{at}' must be a mapping of {', '.join(sorted(_VARIANT_FIELDS))}")
        ch = item.get("channel")
        if ch not in s.CHANNELS:
            raise CatalogError(f"{at}.channel' must be one of {', '.join(s.CHANNELS)}, got {ch!r}")
        if ch in seen:
            raise CatalogError(f"{at}.channel': {ch} is already a channel of this message")
        seen.add(ch)
        text = item.get("template", template)
        _template(text, ch, params, known, f"{where} (variant {ch})")
        price = _number(item, "cost", f"{at}]") if "cost" in item else cost
        out.append(Variant(ch, text, price, ch in known.html_channels))
    return tuple(out)


def catalog_from_dict(
    raw: Any, source: str = "catalog", *, feature_names: Iterable[str] | None = None
) -> Catalog:
    """Build a checked catalog from its parsed YAML (or an equivalent dict)."""
    path = source
    if not isinstance(raw, dict) or not isinstance(raw.get("messages"), list):
        raise CatalogError(f"{path}: expected a mapping with a 'messages' list")
    unknown = sorted(str(k) for k in set(raw) - _CATALOG_FIELDS)
    if unknown:
        raise CatalogError(
            f"{path}: '{unknown[0]}' is not known (top level: {', '.join(sorted(_CATALOG_FIELDS))})"
        )
    known = _Known(
        frozenset(feature_names) if feature_names is not None else None,
        _placeholders(raw.get("placeholders"), path),  # a dict: the catalog travels pickled to Spark
        _html_channels(raw.get("html_channels"), path),
    )
    messages: list[Message] = []
    seen: set[str] = set()
    for i, item in enumerate(raw["messages"], start=1):
        message = _message(item, i, seen, path, known)
        seen.add(message.id)
        messages.append(message)
    caps = raw.get("caps") or {}
    if not isinstance(caps, dict):
        raise CatalogError(f"{path}: caps: expected a mapping such as {{max_per_7d: 2}}")
    cap = caps.get("max_per_7d", 2)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
        raise CatalogError(f"{path}: caps: field 'max_per_7d' must be a non-negative integer, got {cap!r}")
    unknown_caps = sorted(str(k) for k in set(caps) - {"max_per_7d", "per_channel_7d"})
    if unknown_caps:
        raise CatalogError(
            f"{path}: caps: field '{unknown_caps[0]}' is not known (max_per_7d, per_channel_7d)"
        )
    per_channel = caps.get("per_channel_7d") or {}
    if not isinstance(per_channel, dict):
        raise CatalogError(f"{path}: caps: field 'per_channel_7d' must be a mapping such as {{push: 1}}")
    for ch, n in per_channel.items():
        if ch not in s.CHANNELS:
            raise CatalogError(f"{path}: caps: per_channel_7d.{ch}: not a channel ({', '.join(s.CHANNELS)})")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise CatalogError(f"{path}: caps: per_channel_7d.{ch} must be a non-negative integer, got {n!r}")
    return Catalog(tuple(messages), cap, source, known.placeholders, known.html_channels, dict(per_channel))
