"""`GET /exports/payments.csv` and `GET /exports/payments.parquet`: a merchant's payments,
streamed.

Authenticated like GraphQL (`Authorization: Bearer <token>`) and scoped like it: a merchant
key exports its own payments, a partner key those of a merchant it was granted, support any
merchant's. `merchantId` (a global id) names the merchant; a key that sees one merchant only
may leave it out. The other query parameters are the fields of GraphQL's `PaymentFilter`,
read by the schema's own types (`schema/query_params.py`) and checked by the same code as the
`payments` connection's filter: `states=PENDING,SCHEDULED&failedAfter=2026-11-01T00:00:00Z`.

The rows are read in keyset batches (`app.services.export`) and written as they come: CSV a
batch at a time, Parquet one row group per batch into a spool drained after each. Memory is
bounded by a batch whatever the size of the export (`bench/export.py` measures it). Money is
integer minor units beside its currency; of the card, brand and last four only.

Refusals are JSON `{"code", "message", "parameter"}` before anything is streamed: 401 without
a valid key, 400 for a bad parameter (named), 404 for a merchant the key may not see (as for
one that does not exist). A failure after the stream started (an outage mid-export) aborts
the response, so the client sees a truncated transfer rather than a file that looks whole.
"""

import asyncio
import csv
import io
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import strawberry
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from app.clock import Clock
from app.db import Database
from app.errors import ErrorCode, InvalidArgument, InvalidId
from app.services.export import ExportRow, export_batches, merchant_visible
from app.services.payment import PaymentFilter as PaymentFilterValues
from app.tenancy import Principal
from app.workflows.authentication import authenticate
from portal.http import bearer_token
from resolvers.ids import decode_id, encode_id
from schema.payment import PaymentFilter
from schema.query_params import input_from_query

MERCHANT_PARAM = "merchantId"

# The columns of both formats, in order, with their Parquet types.
PARQUET_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("processor", pa.string(), nullable=False),
        pa.field("processor_payment_id", pa.string(), nullable=False),
        pa.field("state", pa.string(), nullable=False),
        pa.field("amount_minor", pa.int64(), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
        pa.field("decline_category", pa.string(), nullable=False),
        pa.field("decline_raw_code", pa.string()),
        pa.field("failed_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("next_retry_at", pa.timestamp("us", tz="UTC")),
        pa.field("recovered_at", pa.timestamp("us", tz="UTC")),
        pa.field("recovered_by", pa.string()),
        pa.field("attempt_count", pa.int32(), nullable=False),
        pa.field("invoice_ref", pa.string()),
        pa.field("subscription_ref", pa.string()),
        pa.field("customer_ref", pa.string()),
        pa.field("card_brand", pa.string()),
        pa.field("card_last4", pa.string()),
    ]
)
COLUMNS: tuple[str, ...] = tuple(PARQUET_SCHEMA.names)

# A text cell starting with one of these is a formula to a spreadsheet: it is written with a
# leading apostrophe (OWASP's advice for CSV exports); Parquet keeps the text as it is.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ZERO = timedelta(0)


def _refusal(status: int, code: ErrorCode, message: str, parameter: str | None = None) -> Response:
    body: dict[str, Any] = {"code": code.value, "message": message}
    if parameter is not None:
        body["parameter"] = parameter
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if status == 401 else None
    return JSONResponse(body, status, headers)


def _values(row: ExportRow) -> list[Any]:
    """A row's cells in COLUMNS order: the global id, enums by name, times as datetimes."""
    return [
        encode_id("Payment", row.id),
        row.processor.value,
        row.processor_payment_id,
        row.state.value,
        row.amount_minor,
        row.currency,
        row.decline_category.value,
        row.decline_raw_code,
        row.failed_at,
        row.next_retry_at,
        row.recovered_at,
        None if row.recovered_by is None else row.recovered_by.value,
        row.attempt_count,
        row.invoice_ref,
        row.subscription_ref,
        row.customer_ref,
        row.card_brand,
        row.card_last4,
    ]


def _text(value: str | None) -> str:
    if value is None:
        return ""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _time(value: datetime | None) -> str:
    """ISO 8601 in UTC, `Z` for the offset."""
    if value is None:
        return ""
    if value.utcoffset() != ZERO:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat() + "Z"


def _csv_row(row: ExportRow) -> list[Any]:
    """A row's CSV cells in COLUMNS order: the same values as `_values`, written as text
    (times in UTC with `Z`, empty for null, text that a spreadsheet would run neutralized)."""
    return [
        encode_id("Payment", row.id),
        row.processor.value,
        _text(row.processor_payment_id),
        row.state.value,
        row.amount_minor,
        row.currency,
        row.decline_category.value,
        _text(row.decline_raw_code),
        _time(row.failed_at),
        _time(row.next_retry_at),
        _time(row.recovered_at),
        "" if row.recovered_by is None else row.recovered_by.value,
        row.attempt_count,
        _text(row.invoice_ref),
        _text(row.subscription_ref),
        _text(row.customer_ref),
        _text(row.card_brand),
        _text(row.card_last4),
    ]


class CsvChunks:
    """CSV (RFC 4180, UTF-8, header first) a batch at a time."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")

    def _take(self) -> bytes:
        data = self._buffer.getvalue().encode()
        self._buffer.seek(0)
        self._buffer.truncate()
        return data

    def header(self) -> bytes:
        self._writer.writerow(COLUMNS)
        return self._take()

    def chunk(self, batch: list[ExportRow]) -> bytes:
        self._writer.writerows(map(_csv_row, batch))
        return self._take()


class Spool:
    """A write-only file for the Parquet writer that gives up what was written at each drain:
    it remembers its position (the footer's offsets need it), not the bytes."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._position = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        written = self._buffer.write(data)
        self._position += written
        return written

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def drain(self) -> bytes:
        data = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return data


def _table(batch: list[ExportRow]) -> pa.Table:
    columns: list[list[Any]] = [[] for _ in COLUMNS]
    for row in batch:
        for column, value in zip(columns, _values(row), strict=True):
            column.append(value)
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(columns, PARQUET_SCHEMA, strict=True)],
        schema=PARQUET_SCHEMA,
    )


class ParquetChunks:
    """Parquet a row group per batch: `chunk(batch)` gives the bytes the group added, `end()`
    the footer."""

    def __init__(self) -> None:
        self._spool = Spool()
        self._writer = pq.ParquetWriter(
            pa.PythonFile(self._spool, mode="w"), PARQUET_SCHEMA, compression="zstd"
        )

    def chunk(self, batch: list[ExportRow]) -> bytes:
        self._writer.write_table(_table(batch), row_group_size=len(batch))
        return self._spool.drain()

    def end(self) -> bytes:
        self._writer.close()
        return self._spool.drain()


FORMATS: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}


async def _principal(request: Request) -> Principal | None:
    token = bearer_token(request)
    if token is None:
        return None
    clock: Clock = request.app.state.clock
    return await authenticate(request.app.state.db, token, now=clock.now())


def _merchant_id(principal: Principal, given: str | None) -> uuid.UUID:
    if given is None:
        visible = principal.scope.merchant_ids
        if visible is not None and len(visible) == 1:
            return next(iter(visible))
        raise InvalidArgument(
            "merchantId is required: this key may see more than one merchant",
            field=MERCHANT_PARAM,
        )
    try:
        _, merchant_id = decode_id(given, expected="Merchant")
    except InvalidId as error:
        raise InvalidArgument(error.message, field=MERCHANT_PARAM) from error
    return merchant_id


def export_endpoint(schema: strawberry.Schema, format: str) -> Callable[[Request], Any]:
    """The endpoint serving `format` ("csv" or "parquet")."""
    media_type = FORMATS[format]

    async def endpoint(request: Request) -> Response:
        principal = await _principal(request)
        if principal is None:
            return _refusal(
                401,
                ErrorCode.UNAUTHENTICATED,
                "send a valid API key as 'Authorization: Bearer <token>'",
            )
        params = request.query_params
        try:
            merchant_values = params.getlist(MERCHANT_PARAM)
            if len(merchant_values) > 1:
                raise InvalidArgument("merchantId takes one value", field=MERCHANT_PARAM)
            merchant_id = _merchant_id(principal, merchant_values[0] if merchant_values else None)
            filters = filter_from_query(schema, params.multi_items())
        except InvalidArgument as error:
            return _refusal(400, ErrorCode.INVALID_ARGUMENT, error.message, error.field)
        db: Database = request.app.state.db
        if not await merchant_visible(db, principal.scope, merchant_id):
            return _refusal(404, ErrorCode.NOT_FOUND, "merchant not found", MERCHANT_PARAM)
        batches = export_batches(db, principal.scope, merchant_id=merchant_id, filters=filters)
        # The first batch is read before the response starts: an outage there is still a 503.
        first = await anext(batches, None)
        stamp = request.app.state.clock.now().strftime("%Y%m%dT%H%M%SZ")
        filename = f"payments-{encode_id('Merchant', merchant_id)}-{stamp}.{format}"
        return StreamingResponse(
            _stream(format, first, batches),
            media_type=media_type,
            headers={
                "Content-Disposition": f'attachment; filename="{filename}"',
                "Cache-Control": "no-store",
            },
        )

    return endpoint


def filter_from_query(
    schema: strawberry.Schema, params: Iterable[tuple[str, str]]
) -> PaymentFilterValues:
    """The filter the query parameters give, checked as the GraphQL filter is; InvalidArgument
    names the parameter at fault."""
    given = input_from_query(schema, PaymentFilter, params, ignore=frozenset({MERCHANT_PARAM}))
    try:
        return given.to_values().checked()
    except InvalidArgument as error:
        field = (error.field or "").removeprefix("filter.") or None
        raise InvalidArgument(error.message.replace("filter.", ""), field=field) from error


async def _stream(
    format: str, first: list[ExportRow] | None, rest: AsyncIterator[list[ExportRow]]
) -> AsyncIterator[bytes]:
    async def batches() -> AsyncIterator[list[ExportRow]]:
        if first is None:
            return
        yield first
        async for batch in rest:
            yield batch

    # Encoding a batch takes tens of milliseconds: in a thread, so the event loop keeps
    # serving other requests meanwhile (each export's encoder is used by one task at a time).
    if format == "csv":
        csv_out = CsvChunks()
        yield csv_out.header()
        async for batch in batches():
            yield await asyncio.to_thread(csv_out.chunk, batch)
        return
    parquet = ParquetChunks()
    async for batch in batches():
        yield await asyncio.to_thread(parquet.chunk, batch)
    yield await asyncio.to_thread(parquet.end)
