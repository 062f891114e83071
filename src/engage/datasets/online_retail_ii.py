"""Adapter: UCI "Online Retail II" invoice lines -> canonical events.

Mapping (one event per invoice line, nothing dropped silently):

- ``user_id`` = ``Customer ID`` as a whole-number string (``13085.0`` -> ``"13085"``). Lines
  without a customer are guest checkouts: ``validate_events`` quarantines them with reason
  ``guest`` (``schemas.REASON_GUEST``).
- ``ts`` = ``InvoiceDate``. The file holds naive UK wall-clock times; they are read as
  Europe/London and converted to UTC (GMT in winter, BST = UTC+1 from 2010-03-28 to 2010-10-31).
  A wall time that does not exist (spring-forward gap) becomes null and is quarantined as an
  unparseable timestamp; an ambiguous one (autumn fall-back) takes the earlier instant.
- ``event_type``: invoice prefixed ``C`` (cancellation) -> ``refund`` with a negative amount
  (``-|Quantity x Price|``); invoice prefixed ``A`` ("Adjust bad debt") and any other line whose
  Quantity or Price is not positive (stock write-offs, damages, free lines) -> ``adjustment``,
  kept as an unknown event type so that purchase features never see them; all other lines ->
  ``purchase`` with ``amount = Quantity x Price``.
- ``session_id`` = ``Invoice``, ``item_id`` = ``StockCode``, ``category`` from
  :func:`category_expr` (keyword buckets of the Description, see ``CATEGORY_RULES``),
  ``properties`` = JSON with invoice, description, quantity, unit_price and country.
- Exact duplicate lines (same invoice, product, quantity, price and time) are quarantined by
  ``validate_events`` as ``duplicate_row`` (the first copy is kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import polars as pl

from engage import schemas
from engage.events import EventsFileError, ValidationResult, validate_events

SOURCE_TZ: Final = "Europe/London"
REFUND: Final = "refund"
PURCHASE: Final = "purchase"
ADJUSTMENT: Final = "adjustment"
OTHER_CATEGORY: Final = "other"

RAW_COLUMNS: Final[tuple[str, ...]] = (
    "Invoice",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "Price",
    "Customer ID",
    "Country",
)

# Stock codes that are not products: postage, carriage, manual lines, discounts, bank and
# marketplace fees, samples, test items, bad-debt adjustments.
SERVICE_CODE_PATTERN: Final = r"^(?i:POST|DOT|C2|M|D|S|B|CRUK|BANK CHARGES|AMAZONFEE|ADJUST\d*|TEST\d*)$"
GIFT_VOUCHER_PATTERN: Final = r"^(?i:gift_)"

# Ordered (category, keyword regex on the upper-cased Description); the first match wins, so the more
# specific or seasonal buckets come first ("CHRISTMAS T-LIGHT HOLDER" is christmas, "HEART
# T-LIGHT HOLDER" candles, "HEART DECORATION" decor).
CATEGORY_RULES: Final[tuple[tuple[str, str], ...]] = (
    ("christmas", r"CHRISTMAS|XMAS|ADVENT|SANTA|REINDEER|SNOWFLAKE|SNOWMAN|BAUBLE|NATIVITY"),
    ("party_seasonal", r"PARTY|BIRTHDAY|EASTER|CONFETTI|HALLOWEEN|VALENTINE|BUNNY|EGG"),
    ("candles", r"CANDLE|T-LIGHT|T LIGHT|TLIGHT|TEA LIGHT|INCENSE|OIL BURNER"),
    ("lights", r"\bLIGHTS?\b|LAMP|LANTERN|\bLED\b|FAIRY"),
    ("bags", r"\bBAGS?\b|TOTE|SHOPPER|PURSE|WASHBAG|BACKPACK|RUCKSACK"),
    (
        "tableware",
        r"\bMUGS?\b|\bCUPS?\b|SAUCER|PLATE|BOWL|\bJUG\b|TEAPOT|GLASS|NAPKIN|CUTLERY|STRAW|"
        r"COASTER|TEA SET|BUTTER DISH|EGG CUP",
    ),
    (
        "kitchen",
        r"CAKE|BAKING|KITCHEN|APRON|TEA TOWEL|LUNCH|\bJARS?\b|\bTINS?\b|SPOON|\bTRAY|"
        r"BOTTLE|BISCUIT|COOKIE|CUTTER|CADDY|CONTAINER|PEGS",
    ),
    ("bath_beauty", r"SOAP|\bBATH|TOWEL|MAKE UP|COSMETIC|LIP GLOSS|NAIL|SPONGE|TOILET"),
    (
        "stationery",
        r"CARD|WRAP|PAPER|NOTEBOOK|\bPENS?\b|PENCIL|STICKER|TAPE|ENVELOPE|BOOK|CALENDAR|"
        r"TAG|RIBBON|CHALK|BOARD|CRAYON|COLOURING|TISSUES|ERASER|RULER",
    ),
    (
        "toys_kids",
        r"\bTOYS?\b|GAME|\bDOLL|JIGSAW|PUZZLE|CHILDREN|\bKIDS?\b|SPACEBOY|TEDDY|BALLOON|"
        r"SKIPPING|PLAY|DOMINO|BINGO|SPINNING|MODELLING|FELTCRAFT|GLIDER|TATTOO|GLOBE",
    ),
    (
        "accessories",
        r"NECKLACE|BRACELET|EARRING|\bRINGS?\b|\bHAIR|CLIP|BEAD|JEWEL|CHARM|UMBRELLA|"
        r"GLOVE|SCARF|\bHAT\b|KEY|HAND WARMER|PARASOL|SEWING|KNITTING|FAN\b",
    ),
    ("home_textiles", r"CUSHION|BLANKET|THROW|QUILT|HOT WATER|DOORMAT|\bMAT\b|CURTAIN"),
    ("garden", r"GARDEN|PLANT|\bPOTS?\b|FLOWER|WATERING|\bBIRD|FEEDER|HERB|SEED"),
    ("frames_clocks", r"FRAME|CLOCK|MIRROR|PHOTO"),
    ("storage", r"\bBOX|BASKET|CRATE|DRAWER|CABINET|TRUNK|\bHOOKS?\b|RACK|HOLDER|STORAGE|CASE"),
    (
        "decor",
        r"DECORATION|HANGING|HEART|BUNTING|GARLAND|WREATH|ORNAMENT|\bSIGN\b|PLAQUE|DOOR|"
        r"\bSTARS?\b|BLOCK|MAGNET|LETTERS|DUCKS",
    ),
)
CATEGORIES: Final[tuple[str, ...]] = (
    "service",
    "gift_voucher",
    *(name for name, _ in CATEGORY_RULES),
    OTHER_CATEGORY,
)


def category_expr(stock_code: pl.Expr, description: pl.Expr) -> pl.Expr:
    """Product category: service codes and gift vouchers by StockCode, else keyword buckets.

    Descriptions missing in the file (null, empty or the text "nan") fall to ``other``.
    """
    text = description.cast(pl.String).str.to_uppercase().fill_null("")
    chain = (
        pl.when(stock_code.str.contains(SERVICE_CODE_PATTERN))
        .then(pl.lit("service"))
        .when(stock_code.str.contains(GIFT_VOUCHER_PATTERN))
        .then(pl.lit("gift_voucher"))
    )
    for name, pattern in CATEGORY_RULES:
        chain = chain.when(text.str.contains(pattern)).then(pl.lit(name))
    return chain.otherwise(pl.lit(OTHER_CATEGORY))


def read_online_retail_ii(path: str | Path) -> pl.DataFrame:
    """Read the raw file (Parquet, or CSV with the UCI header), checking the expected columns."""
    path = Path(path)
    if not path.exists():
        raise EventsFileError(f"{path}: file not found")
    suffixes = [s.lower() for s in path.suffixes]
    try:
        if ".parquet" in suffixes or ".pq" in suffixes:
            frame = pl.read_parquet(path)
        elif ".csv" in suffixes:
            frame = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy")
        else:
            raise EventsFileError(f"{path}: expected a .parquet or .csv file")
    except EventsFileError:
        raise
    except Exception as exc:  # polars raises many types; name the file and the cause
        raise EventsFileError(f"{path}: cannot be read: {exc}") from exc
    missing = [c for c in RAW_COLUMNS if c not in frame.columns]
    if missing:
        raise EventsFileError(
            f"{path}: missing column '{missing[0]}' (Online Retail II needs {', '.join(RAW_COLUMNS)}); "
            f"columns found: {', '.join(frame.columns)}"
        )
    return frame


def _customer_id(dtype: pl.DataType) -> pl.Expr:
    """Customer ID as a whole-number string whatever the file stored (int, float or text)."""
    col = pl.col("Customer ID")
    if dtype.is_integer():
        return col.cast(pl.String)
    if dtype.is_float():
        return col.round(0).cast(pl.Int64).cast(pl.String)
    text = col.cast(pl.String).str.strip_chars()
    return text.str.replace(r"\.0+$", "")


def _invoice_ts(dtype: pl.DataType) -> pl.Expr:
    """InvoiceDate (UK wall-clock) -> UTC instant."""
    col = pl.col("InvoiceDate")
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        return col.dt.convert_time_zone(schemas.UTC)
    if not isinstance(dtype, pl.Datetime):
        text = col.cast(pl.String).str.strip_chars()
        col = pl.coalesce(
            text.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_unit="us"),
            text.str.to_datetime("%Y-%m-%d %H:%M", strict=False, time_unit="us"),
            text.str.to_datetime("%m/%d/%Y %H:%M", strict=False, time_unit="us"),
        )
    return col.dt.replace_time_zone(
        SOURCE_TZ, ambiguous="earliest", non_existent="null"
    ).dt.convert_time_zone(schemas.UTC)


def to_events(raw: pl.DataFrame) -> pl.DataFrame:
    """Map raw Online Retail II lines to canonical event columns (not yet validated)."""
    invoice = pl.col("Invoice").cast(pl.String).str.strip_chars()
    stock = pl.col("StockCode").cast(pl.String).str.strip_chars()
    description = pl.col("Description").cast(pl.String).str.strip_chars()
    description = pl.when(description.is_in(["", "nan", "NaN"])).then(None).otherwise(description)
    quantity = pl.col("Quantity").cast(pl.Float64, strict=False)
    price = pl.col("Price").cast(pl.Float64, strict=False)
    line_value = quantity * price
    is_refund = invoice.str.starts_with("C")
    is_adjustment = invoice.str.starts_with("A") | (quantity <= 0) | (price <= 0)
    event_type = (
        pl.when(is_refund)
        .then(pl.lit(REFUND))
        .when(is_adjustment)
        .then(pl.lit(ADJUSTMENT))
        .otherwise(pl.lit(PURCHASE))
    )
    # "+ 0.0" turns the -0.0 of negative-quantity, zero-price lines into 0.0.
    amount = pl.when(is_refund).then(-line_value.abs()).otherwise(line_value) + 0.0
    properties = pl.struct(
        invoice.alias("invoice"),
        description.alias("description"),
        pl.col("Quantity").alias("quantity"),
        price.alias("unit_price"),
        pl.col("Country").cast(pl.String).alias("country"),
    ).struct.json_encode()
    schema = raw.schema
    return raw.select(
        _customer_id(schema["Customer ID"]).alias(schemas.USER_ID),
        _invoice_ts(schema["InvoiceDate"]).alias(schemas.TS),
        event_type.alias(schemas.EVENT_TYPE),
        invoice.alias("session_id"),
        stock.alias("item_id"),
        category_expr(stock, description).alias("category"),
        amount.alias("amount"),
        properties.alias("properties"),
    )


def load_online_retail_ii(path: str | Path) -> ValidationResult:
    """Read and validate the Online Retail II file: every line accepted or quarantined."""
    raw = read_online_retail_ii(path)
    return validate_events(to_events(raw), source=str(path), missing_user_reason=schemas.REASON_GUEST)
