"""Real-data adapters: row accounting on the real files, mapping rules on small synthetic files."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from engage import schemas
from engage.datasets import cdnow, hillstrom, online_retail_ii
from engage.datasets.registry import ADAPTERS, EVENT_ADAPTERS, TABLE_ADAPTERS, get_adapter
from engage.events import EventsFileError

ORII = Path("online_retail_ii") / "online_retail_II_2009-2010.parquet"
CDNOW_MASTER = Path("cdnow") / "CDNOW_master.txt.gz"
CDNOW_SAMPLE = Path("cdnow") / "CDNOW_sample.txt.gz"
HILLSTROM = Path("hillstrom") / "hillstrom.csv.gz"


def _real(shared_data: Path, relative: Path) -> Path:
    path = shared_data / relative
    if not path.exists():
        pytest.skip(f"{path} not found in the shared data folder")
    return path


# --- Online Retail II -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def orii_real(shared_data: Path) -> tuple[pl.DataFrame, object]:
    path = _real(shared_data, ORII)
    return pl.read_parquet(path), online_retail_ii.load_online_retail_ii(path)


@pytest.mark.realdata
def test_online_retail_ii_accounts_for_every_line(orii_real: tuple[pl.DataFrame, object]) -> None:
    raw, result = orii_real
    summary = result.summary()
    print("\n" + "\n".join(summary.lines()))  # the quarantine summary, visible with -s
    assert result.rows_in == raw.height == 525_461
    assert result.accepted.height + result.quarantine.height == raw.height
    assert set(summary.quarantined) <= set(schemas.QUARANTINE_REASONS)
    # Every line without a customer is a guest line, and nothing else is.
    assert summary.quarantined[schemas.REASON_GUEST] == raw["Customer ID"].null_count()
    assert summary.users == raw["Customer ID"].drop_nulls().n_unique()
    assert result.accepted.schema == pl.Schema(schemas.EVENT_SCHEMA)
    # Quarantined rows keep their 1-based input row: the guest rows are exactly the null ids.
    guest_rows = result.quarantine.filter(pl.col(schemas.REASON) == schemas.REASON_GUEST)["row"]
    null_rows = raw.with_row_index("row", offset=1).filter(pl.col("Customer ID").is_null())["row"]
    assert guest_rows.sort().to_list() == null_rows.sort().to_list()


@pytest.mark.realdata
def test_online_retail_ii_event_rules_on_real_file(orii_real: tuple[pl.DataFrame, object]) -> None:
    raw, result = orii_real
    acc = result.accepted
    refunds = acc.filter(pl.col(schemas.EVENT_TYPE) == "refund")
    purchases = acc.filter(pl.col(schemas.EVENT_TYPE) == "purchase")
    assert refunds.height > 0 and (refunds["amount"] <= 0).all()
    assert refunds["session_id"].str.starts_with("C").all()
    assert (purchases["amount"] > 0).all()
    assert not purchases["session_id"].str.starts_with("C").any()
    categories = set(acc["category"].unique())
    assert categories <= set(online_retail_ii.CATEGORIES)
    other_share = (acc["category"] == online_retail_ii.OTHER_CATEGORY).mean()
    assert other_share < 0.25, f"{other_share:.1%} of lines fall in 'other'"
    # Total accepted amount equals the raw line values of the accepted rows.
    raw_value = (
        raw.with_row_index("row", offset=1)
        .join(result.quarantine.select("row"), on="row", how="anti")
        .select((pl.col("Quantity") * pl.col("Price")).sum())
        .item()
    )
    assert acc["amount"].sum() == pytest.approx(raw_value, rel=1e-9)


def _orii_frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "Invoice": pl.String,
            "StockCode": pl.String,
            "Description": pl.String,
            "Quantity": pl.Int64,
            "InvoiceDate": pl.String,
            "Price": pl.Float64,
            "Customer ID": pl.Float64,
            "Country": pl.String,
        },
    )


def _line(invoice: str, code: str, desc: str, qty: int, when: str, price: float, cust: float | None) -> dict:
    return {
        "Invoice": invoice,
        "StockCode": code,
        "Description": desc,
        "Quantity": qty,
        "InvoiceDate": when,
        "Price": price,
        "Customer ID": cust,
        "Country": "United Kingdom",
    }


def test_online_retail_ii_mapping_rules(tmp_path: Path) -> None:
    lines = [
        _line("489434", "85048", "15CM CHRISTMAS GLASS BALL", 12, "2010-01-10 10:00:00", 6.95, 13085.0),
        _line("C489449", "22087", "PAPER BUNTING WHITE LACE", -12, "2010-07-01 12:30:00", 2.95, 16321.0),
        _line("489435", "22350", "CAT BOWL", 4, "2010-07-01 12:30:00", 2.10, None),
        _line("A506401", "B", "Adjust bad debt", 1, "2010-04-29 13:36:00", -53594.36, 13085.0),
        _line("489436", "21733", "nan", -20, "2010-03-28 01:30:00", 0.0, 13085.0),
        _line("489434", "85048", "15CM CHRISTMAS GLASS BALL", 12, "2010-01-10 10:00:00", 6.95, 13085.0),
        _line("489437", "POST", "POSTAGE", 1, "2010-10-31 01:30:00", 18.0, 12345.0),
    ]
    path = tmp_path / "orii.parquet"
    _orii_frame(lines).write_parquet(path)
    result = online_retail_ii.load_online_retail_ii(path)

    assert result.rows_in == len(lines)
    reasons = dict(zip(result.quarantine["row"], result.quarantine[schemas.REASON], strict=True))
    assert reasons[3] == schemas.REASON_GUEST
    assert reasons[6] == schemas.REASON_DUPLICATE  # exact copy of line 1
    assert reasons[5] == schemas.REASON_BAD_TS  # 01:30 does not exist in London on 2010-03-28
    acc = result.accepted
    by_session = {row["session_id"]: row for row in acc.to_dicts()}

    purchase = by_session["489434"]
    assert purchase["user_id"] == "13085"
    assert purchase["event_type"] == "purchase"
    assert purchase["amount"] == pytest.approx(lines[0]["Quantity"] * lines[0]["Price"])
    assert purchase["category"] == "christmas"
    assert purchase["item_id"] == "85048"
    assert purchase["ts"] == datetime(2010, 1, 10, 10, tzinfo=UTC)  # GMT = UTC in winter
    props = json.loads(purchase["properties"])
    assert props["country"] == "United Kingdom" and props["quantity"] == lines[0]["Quantity"]

    refund = by_session["C489449"]
    assert refund["event_type"] == "refund"
    assert refund["amount"] == pytest.approx(lines[1]["Quantity"] * lines[1]["Price"])
    assert refund["amount"] < 0
    assert refund["ts"] == datetime(2010, 7, 1, 11, 30, tzinfo=UTC)  # BST = UTC+1

    assert by_session["A506401"]["event_type"] == "adjustment"
    postage = by_session["489437"]
    assert postage["category"] == "service"
    assert postage["ts"] == datetime(2010, 10, 31, 0, 30, tzinfo=UTC)  # ambiguous: earlier (BST)


def test_online_retail_ii_reads_csv_with_float_ids_and_names_missing_columns(tmp_path: Path) -> None:
    frame = _orii_frame([_line("1", "22350", "CAT BOWL", 2, "2010-02-01 09:00:00", 1.5, 17850.0)])
    csv_path = tmp_path / "orii.csv"
    frame.write_csv(csv_path)
    result = online_retail_ii.load_online_retail_ii(csv_path)
    assert result.accepted["user_id"].to_list() == ["17850"]
    frame.drop("Price").write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(EventsFileError, match=r"bad\.parquet.*'Price'"):
        online_retail_ii.load_online_retail_ii(tmp_path / "bad.parquet")
    with pytest.raises(EventsFileError, match="not found"):
        online_retail_ii.load_online_retail_ii(tmp_path / "absent.parquet")


def test_category_rules_pick_first_match() -> None:
    frame = pl.DataFrame(
        {
            "code": ["1", "2", "3", "gift_0001_20", "DOT", "4"],
            "desc": [
                "HEART T-LIGHT HOLDER",
                "CHRISTMAS T-LIGHT HOLDER",
                "HANGING HEART DECORATION",
                "Dotcomgiftshop Gift Voucher",
                "DOTCOM POSTAGE",
                None,
            ],
        }
    )
    got = frame.select(online_retail_ii.category_expr(pl.col("code"), pl.col("desc")).alias("c"))[
        "c"
    ].to_list()
    assert got == ["candles", "christmas", "decor", "gift_voucher", "service", "other"]


# --- CDNOW ----------------------------------------------------------------------------------


@pytest.mark.realdata
def test_cdnow_master_real_file(shared_data: Path) -> None:
    path = _real(shared_data, CDNOW_MASTER)
    result = cdnow.load_cdnow(path)
    assert result.rows_in == 69_659
    assert result.accepted.height + result.quarantine.height == result.rows_in
    assert result.quarantine.height == 0
    assert result.accepted[schemas.USER_ID].n_unique() == 23_570
    assert set(result.accepted[schemas.EVENT_TYPE].unique()) == {"purchase"}
    assert result.accepted.schema == pl.Schema(schemas.EVENT_SCHEMA)


@pytest.mark.realdata
def test_cdnow_sample_users_are_master_users(shared_data: Path) -> None:
    sample = cdnow.load_cdnow(_real(shared_data, CDNOW_SAMPLE)).accepted
    master = cdnow.load_cdnow(_real(shared_data, CDNOW_MASTER)).accepted
    assert sample.height == 6_919 and sample[schemas.USER_ID].n_unique() == 2_357
    cols = [schemas.USER_ID, schemas.TS, "amount"]
    # Every sample transaction is a master transaction of the same customer.
    assert sample.select(cols).join(master.select(cols).unique(), on=cols, how="anti").height == 0


def test_cdnow_layouts_and_bad_lines(tmp_path: Path) -> None:
    master = tmp_path / "master.txt.gz"
    with gzip.open(master, "wt") as handle:
        handle.write(
            " customer_id  date number_of_cds  dollar_value\n"
            " 00001 19970101  1   11.77\n"
            " 00001 19970101  1   11.77\n"  # a second identical order that day: kept
            " 00002 19971340  2   20.00\n"  # no 40th of the 13th month
            " 00003 19970105  2\n"  # missing field
            " 00004 19970106  1   abc\n"
        )
    result = cdnow.load_cdnow(master)
    assert result.rows_in == 5
    assert result.accepted[schemas.USER_ID].to_list() == ["00001", "00001"]
    assert result.accepted[schemas.TS].to_list() == [datetime(1997, 1, 1, tzinfo=UTC)] * 2
    assert result.accepted["amount"].to_list() == [11.77, 11.77]
    assert json.loads(result.accepted["properties"][0])["cds"] == 1
    reasons = dict(zip(result.quarantine["row"], result.quarantine[schemas.REASON], strict=True))
    assert reasons == {3: schemas.REASON_BAD_TS, 4: schemas.REASON_MISSING_USER, 5: schemas.REASON_BAD_AMOUNT}

    sample = tmp_path / "sample.txt"
    sample.write_text("00004 0001 19970101  2   29.33\n00004 0001 19970118  2   29.73\n")
    got = cdnow.load_cdnow(sample).accepted
    assert got[schemas.USER_ID].to_list() == ["00004", "00004"]
    assert json.loads(got["properties"][1])["sample_id"] == "0001"

    wide = tmp_path / "wide.txt"
    wide.write_text("1 2 3 4 5 6\n")
    with pytest.raises(EventsFileError, match=r"wide\.txt.*6 fields"):
        cdnow.load_cdnow(wide)


# --- Hillstrom ------------------------------------------------------------------------------


@pytest.mark.realdata
def test_hillstrom_real_file(shared_data: Path) -> None:
    path = _real(shared_data, HILLSTROM)
    table = hillstrom.load_hillstrom(path)
    raw = pl.read_csv(path, infer_schema_length=None)
    assert len(table) == 64_000 == raw.height
    assert list(table.columns) == list(hillstrom.COLUMNS)
    assert set(table["arm"]) == {"mens_email", "womens_email", schemas.CONTROL_ARM}
    assert table[schemas.USER_ID].is_unique
    assert (table[schemas.PROPENSITY] == 1 / 3).all()
    # Arm shares match the randomisation and outcomes follow the raw segments.
    assert table["arm"].value_counts(normalize=True).between(0.3, 0.37).all()
    raw_visits = raw.group_by("segment").agg(pl.col("visit").mean())
    mapped = table.groupby("arm")["visit"].mean()
    for segment, visit in raw_visits.iter_rows():
        assert mapped[hillstrom.ARM_BY_SEGMENT[segment]] == pytest.approx(visit)
    assert mapped["mens_email"] > mapped["womens_email"] > mapped[schemas.CONTROL_ARM]


def test_hillstrom_errors_name_file_row_and_column(tmp_path: Path) -> None:
    header = (
        "recency,history_segment,history,mens,womens,zip_code,newbie,channel,segment,visit,conversion,spend\n"
    )
    good = "10,2) $100 - $200,142.44,1,0,Surburban,0,Phone,Womens E-Mail,0,0,0\n"
    path = tmp_path / "h.csv"
    path.write_text(header + good + good.replace("Womens E-Mail", "SMS"))
    with pytest.raises(EventsFileError, match=r"h\.csv: row 2, column 'segment'.*SMS"):
        hillstrom.load_hillstrom(path)
    path.write_text(header + good.replace("142.44", "lots"))
    with pytest.raises(EventsFileError, match=r"row 1, column 'history'"):
        hillstrom.load_hillstrom(path)
    path.write_text(header.replace(",spend", "") + good.rsplit(",", 1)[0] + "\n")
    with pytest.raises(EventsFileError, match="'spend'"):
        hillstrom.load_hillstrom(path)
    path.write_text(header + good)
    table = hillstrom.load_hillstrom(path)
    assert table.loc[0, "arm"] == "womens_email" and table.loc[0, "history"] == pytest.approx(142.44)


# --- registry -------------------------------------------------------------------------------


def test_registry_names_every_adapter() -> None:
    assert set(ADAPTERS) == EVENT_ADAPTERS | TABLE_ADAPTERS
    assert get_adapter("cdnow") is cdnow.load_cdnow
    with pytest.raises(ValueError, match="online-retail-ii"):
        get_adapter("nope")
