"""`portal export payments`: its options are PaymentFilter's fields, and it writes the export
whole (or nothing) from the API."""

import csv
import inspect
import io
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from app.clock import FixedClock
from app.db import Database
from app.enums import PaymentState, Role
from app.settings import Settings
from portal import export_cli
from portal.export_cli import ExportFormat, ExportRefused, download, query_params
from resolvers.ids import encode_id
from tests.support.factories import make_key, make_merchant, make_payments
from tests.support.graphql import schema_for


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_the_filter_options_are_the_graphql_filter(settings: Settings) -> None:
    fields = set(schema_for(settings)._schema.get_type("PaymentFilter").fields)
    assert set(export_cli.FILTER_PARAMS.values()) == fields
    options = set(inspect.signature(export_cli.payments).parameters)
    assert set(export_cli.FILTER_PARAMS) <= options


def test_query_params_repeat_lists_and_skip_what_is_unset() -> None:
    params = query_params(
        "TWVyY2hhbnQ6eA",
        {"state": ["PENDING", "SCHEDULED"], "amount_min": 5, "currency": ["EUR"], "search": None},
    )
    assert params == [
        ("merchantId", "TWVyY2hhbnQ6eA"),
        ("states", "PENDING"),
        ("states", "SCHEDULED"),
        ("amountMin", "5"),
        ("currencies", "EUR"),
    ]


async def test_download_writes_the_export_and_counts_rows(
    client: httpx.AsyncClient, db: Database, clock: FixedClock, tmp_path: Path
) -> None:
    merchant = await make_merchant(db, "CLI", now=clock.now())
    await make_payments(db, merchant, 4, now=clock.now())
    await make_payments(db, merchant, 2, now=clock.now(), state=PaymentState.PENDING)
    token = await make_key(db, Role.SUPPORT, [], now=clock.now())
    seen: list[int] = []
    out = tmp_path / "payments.csv"
    exported = await download(
        client,
        token=token,
        export_format=ExportFormat.CSV,
        params=query_params(
            encode_id("Merchant", merchant.id), {"state": [PaymentState.SCHEDULED.value]}
        ),
        output=out,
        progress=lambda received, _rows: seen.append(received),
    )
    assert exported.rows == 4
    assert seen[-1] == exported.bytes == out.stat().st_size
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert {r["state"] for r in rows} == {"SCHEDULED"}
    parquet_out = tmp_path / "payments.parquet"
    await download(
        client,
        token=token,
        export_format=ExportFormat.PARQUET,
        params=query_params(encode_id("Merchant", merchant.id), {}),
        output=parquet_out,
    )
    assert pq.read_table(parquet_out).num_rows == 6
    assert _files(tmp_path) == ["payments.csv", "payments.parquet"]


async def test_a_refused_export_names_the_parameter_and_leaves_no_file(
    client: httpx.AsyncClient, db: Database, clock: FixedClock, tmp_path: Path
) -> None:
    merchant = await make_merchant(db, "CLI refused", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    out = tmp_path / "payments.csv"
    with pytest.raises(ExportRefused) as refused:
        await download(
            client,
            token=token,
            export_format=ExportFormat.CSV,
            params=query_params(None, {"amount_min": 10}),
            output=out,
        )
    assert refused.value.status == 400
    assert refused.value.parameter == "amountMin"
    assert _files(tmp_path) == []
