"""Message text: a catalog template filled from the message's params and the user's features.

Templates are Jinja2 (``{{ top_category }}``, ``{{ discount | fmt(".0%") }}``) rendered by a
``SandboxedEnvironment`` with no globals, and restricted at load (``compile_template``) to a small
subset a marketer needs: text, ``{{ name }}`` placeholders with a chain of the filters in
``FILTERS`` taking literal arguments, and ``{# comments #}``. No ``{% %}`` blocks, no attribute or
index access (``{{ x.__class__ }}``), no calls, no arithmetic, bounded length and format widths: so
that neither the template nor user data can reach into objects or build huge strings. Old-style
``{name}`` placeholders are refused with a hint instead of showing up as literal braces.

Values: params win over features of the same name; a missing value (NaN, None, absent, blank text,
the feature engine's ``"none"``, not a scalar) takes the placeholder's own ``default`` filter when it
has one, else the catalog's default for that name (``Placeholder``); values take the catalog's format
spec. Channels that render HTML (``HTML_CHANNELS``) escape every value (defaults included); the
template's own text is never escaped.
``render_many`` renders a batch placeholder by placeholder, once per distinct value of each column,
and joins the pieces, so its text equals the per-row ``render`` exactly and its cost grows with the
number of distinct values, not rows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
import pandas as pd
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

if TYPE_CHECKING:
    from engage.offers.catalog import Catalog, Message

__all__ = [
    "FILTERS",
    "HTML_CHANNELS",
    "MAX_FORMAT_PRECISION",
    "MAX_FORMAT_WIDTH",
    "MAX_PLACEHOLDERS",
    "MAX_TEMPLATE_CHARS",
    "NO_VALUE_TEXT",
    "RENDER_ROW_BY_ROW",
    "Placeholder",
    "Slot",
    "Template",
    "check_format_spec",
    "check_template",
    "compile_template",
    "fill",
    "render",
    "render_many",
    "template_keys",
    "template_value",
]

HTML_CHANNELS: tuple[str, ...] = ("in_app", "web_popup")
"""Channels whose text is shown as HTML: values are escaped there (a catalog may set its own list)."""
MAX_TEMPLATE_CHARS = 2_000
"""The longest template, in characters."""
MAX_PLACEHOLDERS = 40
"""The most ``{{ }}`` placeholders one template may hold."""
MAX_FORMAT_WIDTH = 80
"""The widest field a format spec may ask for (``fmt(">20")``)."""
MAX_FORMAT_PRECISION = 20
"""The largest precision a format spec may ask for (``fmt(".1%")``)."""
FILTERS: dict[str, int] = {
    "default": 1,
    "d": 1,
    "fmt": 1,
    "upper": 0,
    "lower": 0,
    "title": 0,
    "capitalize": 0,
    "trim": 0,
}
"""The filters a template may use and how many literal arguments each takes."""
NO_VALUE_TEXT = "none"
"""How the feature engine writes "no value" in a text feature (``top_category`` of a user who saw no
category): a template reads it as missing, like NaN or blank text."""
RENDER_ROW_BY_ROW = 16
"""Up to this many rows a message renders row by row: grouping them costs more than it saves."""

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_RESERVED = frozenset({"self", "loop", "super", "caller", "varargs", "kwargs", "true", "false", "none"})
# {name}, {name:spec}, {x.attr}, {x[0]}, {0}, {}: str.format placeholders, written without spaces
_OLD_STYLE = re.compile(r"\{(?:[A-Za-z_]\w*(?:\.\w+|\[[^\]{}]*\]|![rsa]|:[^{}\s]*)*|\d*)\}")
# [[fill]align][sign][z][#][0][width][grouping][.precision][type] of the format mini-language
_SPEC = re.compile(
    r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>\d*)[,_]?(?:\.(?P<precision>\d+))?[bcdeEfFgGnosxX%]?", re.DOTALL
)


def check_format_spec(spec: str) -> None:
    """A ValueError unless ``spec`` is a literal, bounded spec of the format mini-language."""
    match = _SPEC.fullmatch(spec)
    if match is None or "{" in spec or "}" in spec:
        raise ValueError(f"{spec!r} is not a format spec for text or numbers (e.g. '.0f', '.1%', ',.2f')")
    width, precision = int(match["width"] or 0), int(match["precision"] or 0)
    if width > MAX_FORMAT_WIDTH or precision > MAX_FORMAT_PRECISION:
        raise ValueError(
            f"{spec!r} asks for width {width} / precision {precision}; "
            f"at most {MAX_FORMAT_WIDTH} / {MAX_FORMAT_PRECISION}"
        )


def _format_value(value: Any, spec: str) -> Any:
    """``format(value, spec)`` for text or a number; anything else, or a spec that doesn't fit, unchanged."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            return format(value, spec)
        except (ValueError, TypeError, OverflowError):  # e.g. 'd' on a float: shown as it is
            return value
    return value


@dataclass(frozen=True)
class Placeholder:
    """How the catalog shows one value: the text for a user without one, and a number format."""

    default: str | int | float | None = None
    format: str | None = None

    def value(self, raw: Any, *, use_default: bool = True) -> str | int | float | None:
        """The value a placeholder sees for ``raw`` (None: still missing).

        ``use_default=False`` for a placeholder with its own ``default`` filter, which then wins.
        """
        value = template_value(raw)
        if value is None and use_default:
            value = self.default
        if value is not None and self.format:
            value = _format_value(value, self.format)
        return value


_PLAIN = Placeholder()


def template_value(value: Any) -> str | int | float | None:
    """A value a template may show: text or a number, as a plain Python scalar; else None.

    Numpy scalars count as their Python value, so a row from a frame and the same row as a dict
    (the HTTP service's JSON) render alike; missing values (NaN, None, blank text, ``NO_VALUE_TEXT``)
    and non-scalars read as absent.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return value if value.strip() and value != NO_VALUE_TEXT else None
    if isinstance(value, int | float) and not (isinstance(value, float) and value != value):
        return value
    return None


@lru_cache(maxsize=2)
def _environment(html: bool) -> SandboxedEnvironment:
    """The sandbox: no globals, values escaped when ``html``, ``fmt`` for number formats."""
    env = SandboxedEnvironment(autoescape=html, undefined=jinja2.Undefined)
    env.globals.clear()
    env.filters["fmt"] = _format_value
    return env


@dataclass(frozen=True)
class Slot:
    """One ``{{ }}`` placeholder: the name it reads, whether it brings its own default, its renderer."""

    name: str
    has_default: bool
    template: jinja2.Template = field(compare=False, repr=False)

    def render(self, value: str | int | float | None) -> str:
        """This placeholder's text for one value (None: missing)."""
        return self.template.render({} if value is None else {self.name: value})


@dataclass(frozen=True)
class Template:
    """A checked template: literal text and ``Slot`` pieces, in order (joined, they are the text)."""

    text: str
    html: bool
    pieces: tuple[str | Slot, ...]

    def names(self) -> set[str]:
        """The value names the template reads."""
        return {p.name for p in self.pieces if isinstance(p, Slot)}


def _slot(expr: nodes.Node | None, where: str) -> tuple[str, bool]:
    """The name a ``{{ }}`` expression reads, whether its first filter is ``default``; or a ValueError."""
    chain: list[nodes.Filter] = []
    while isinstance(expr, nodes.Filter):
        chain.append(expr)
        expr = expr.node
    if not isinstance(expr, nodes.Name) or not _NAME.fullmatch(expr.name) or expr.name in _RESERVED:
        raise ValueError(
            f"{where} must be a plain name with filters, like {{{{ top_category | default('new picks') }}}} "
            "(no attribute or index access, calls, operators or literals)"
        )
    name = expr.name
    for f in reversed(chain):
        if f.name not in FILTERS:
            raise ValueError(f"{{{{ {name} }}}}: filter {f.name!r} is not allowed ({', '.join(FILTERS)})")
        if f.kwargs or f.dyn_args or f.dyn_kwargs or len(f.args) != FILTERS[f.name]:
            raise ValueError(
                f"{{{{ {name} }}}}: filter {f.name!r} takes {FILTERS[f.name]} literal argument(s)"
            )
        for arg in f.args:
            if isinstance(arg, nodes.Neg | nodes.Pos):  # default(-1)
                arg = arg.node
            if not isinstance(arg, nodes.Const) or not isinstance(arg.value, str | int | float):
                raise ValueError(f"{{{{ {name} }}}}: filter {f.name!r} takes a literal text or number")
        if f.name == "fmt":
            spec = getattr(f.args[0], "value", None)
            if not isinstance(spec, str):
                raise ValueError(f"{{{{ {name} }}}}: fmt takes a format spec as text, e.g. fmt('.0f')")
            check_format_spec(spec)
    return name, bool(chain) and chain[-1].name in ("default", "d")


def check_template(template: str) -> None:
    """A ValueError saying what is wrong unless the template is in the allowed subset (see module doc)."""
    compile_template(template)


@lru_cache(maxsize=1024)
def compile_template(template: str, html: bool = False) -> Template:
    """The checked, compiled template (``html``: values escaped); a ValueError saying what is wrong."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise ValueError(f"is {len(template):,} characters long; at most {MAX_TEMPLATE_CHARS:,}")
    env = _environment(html)
    try:
        tree = env.parse(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"line {exc.lineno}: {exc.message}") from exc
    pieces: list[str | Slot] = []
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            raise ValueError(
                f"{{% {type(node).__name__.lower()} %}} blocks are not allowed: only text and "
                "{{ placeholder | filters }}"
            )
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                old = _OLD_STYLE.search(child.data)
                if old:
                    raise ValueError(
                        f"{old.group(0)} is an old-style placeholder: write {{{{ name }}}} "
                        "(and fmt('.0f') for a format)"
                    )
                pieces.append(child.data)
                continue
            name, has_default = _slot(child, f"placeholder #{sum(isinstance(p, Slot) for p in pieces) + 1}")
            out = nodes.Template([nodes.Output([child], lineno=1)], lineno=1)
            pieces.append(Slot(name, has_default, env.from_string(out)))
    if sum(isinstance(p, Slot) for p in pieces) > MAX_PLACEHOLDERS:
        raise ValueError(f"has more than {MAX_PLACEHOLDERS} placeholders")
    return Template(template, html, tuple(pieces))


def template_keys(template: str) -> set[str]:
    """The value names a template reads (empty for a template outside the allowed subset)."""
    try:
        return compile_template(template).names()
    except ValueError:
        return set()


def _value(
    slot: Slot,
    params: Mapping[str, Any],
    features: Mapping[str, Any] | pd.Series,
    placeholders: Mapping[str, Placeholder],
) -> str | int | float | None:
    raw = params[slot.name] if slot.name in params else features.get(slot.name)
    return placeholders.get(slot.name, _PLAIN).value(raw, use_default=not slot.has_default)


def fill(
    template: str,
    params: Mapping[str, Any],
    features: Mapping[str, Any] | pd.Series,
    placeholders: Mapping[str, Placeholder] | None = None,
    *,
    html: bool = False,
) -> str:
    """The text for one user: params, then the user's features, then defaults fill the placeholders.

    Never raises: a template outside the allowed subset (the catalog refuses it at load) renders empty.
    """
    try:
        compiled = compile_template(template, html)
        settings = placeholders or {}
        return "".join(
            p if isinstance(p, str) else p.render(_value(p, params, features, settings))
            for p in compiled.pieces
        )
    except (ValueError, TypeError, jinja2.TemplateError):
        return ""


def render(catalog: Catalog, message_id: str, features: Mapping[str, Any] | pd.Series) -> str:
    """The message text for one user (empty for `none` or an unknown id); never raises."""
    m = catalog.get(message_id)
    return m.render(features) if m is not None else ""


def render_many(catalog: Catalog, message_ids: Any, features: pd.DataFrame) -> np.ndarray:
    """``render`` for every row (message ids aligned with the rows of ``features``), vectorised.

    Each placeholder is rendered once per distinct value of its column (through the same sandboxed
    template as ``render``) and the pieces are joined, so the text equals the per-row ``render``
    exactly. Returns an object array of str.
    """
    ids = np.asarray(message_ids, dtype=object)
    out = np.full(len(ids), "", dtype=object)
    if not len(ids):
        return out
    codes, uniques = pd.factorize(ids)
    for code, message_id in enumerate(uniques):
        m = catalog.get(message_id)
        if m is None:
            continue
        rows = np.flatnonzero(codes == code)
        try:
            compiled = compile_template(m.template, m.html)
        except ValueError:
            continue  # refused at load; renders empty, as ``fill`` does
        few = len(rows) <= RENDER_ROW_BY_ROW
        out[rows] = (_render_rows if few else _render_pieces)(m, compiled, features, rows)
    return out


def _render_rows(m: Message, compiled: Template, features: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """Texts for ``rows``: one ``m.render`` per row, with the row's values of the template's columns."""
    keys = sorted(k for k in compiled.names() if k in features.columns)
    columns = [features[key].iloc[rows].tolist() for key in keys]
    texts = [m.render(dict(zip(keys, values, strict=True))) for values in zip(*columns, strict=True)]
    return np.array(texts, dtype=object) if texts else np.full(len(rows), m.render({}), dtype=object)


def _render_pieces(m: Message, compiled: Template, features: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """Texts for ``rows``: each placeholder rendered per distinct value of its column, then joined."""
    settings = m.placeholders
    joined: Any = ""
    for piece in compiled.pieces:
        if isinstance(piece, str):
            joined = joined + piece
            continue
        setting = settings.get(piece.name, _PLAIN)
        if piece.name in m.params or piece.name not in features.columns:
            joined = joined + piece.render(_value(piece, m.params, {}, settings))
            continue
        distinct = _distinct(features[piece.name].iloc[rows])
        if distinct is None:  # unhashable values (lists, dicts): row by row, still through render
            return _render_rows(m, compiled, features, rows)
        col_codes, values = distinct
        own = piece.has_default  # code -1 below is a missing value: the last text
        texts = [piece.render(setting.value(v, use_default=not own)) for v in [*values, None]]
        joined = joined + np.asarray(texts, dtype=object)[col_codes]
    return joined if isinstance(joined, np.ndarray) else np.full(len(rows), joined, dtype=object)


def _distinct(column: pd.Series) -> tuple[np.ndarray, list[Any]] | None:
    """Codes (-1 for missing) and the distinct values of a column, as values that render alike."""
    try:
        if column.dtype == object:  # 1, 1.0 and True are equal keys but render differently
            typed = [f"{type(v).__name__}\x00{v!r}" for v in column]
            codes, _ = pd.factorize(np.array(typed, dtype=object), use_na_sentinel=True)
            first = np.unique(codes, return_index=True)[1]
            values = column.to_numpy()[first[codes[first] >= 0]]
        elif column.dtype.kind == "f":  # by bit pattern: -0.0 and 0.0 render differently
            raw = column.to_numpy()
            codes, bits = pd.factorize(raw.view(f"i{raw.itemsize}"))
            values = np.asarray(bits).view(raw.dtype)
        else:
            codes, values = pd.factorize(column, use_na_sentinel=True)
    except TypeError:
        return None
    return np.asarray(codes), np.asarray(values, dtype=object).tolist()
