"""`portal export payments`: a merchant's payments to a CSV or Parquet file, over the API.

It calls `GET /exports/payments.<format>` of a running portal with an API key, so it sees what
that key may see, and streams the answer to `--output` (through a `.part` file renamed once the
export is whole) with a progress bar. The filter options are `PaymentFilter`'s fields, passed
as the endpoint's query parameters and checked there; a refused one is printed with its name.
"""

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

export_cli = typer.Typer(help="Export data over the API.", no_args_is_help=True)


class ExportFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"


# CLI option (its Python name) → the endpoint's query parameter (PaymentFilter's field).
FILTER_PARAMS = {
    "state": "states",
    "decline_category": "declineCategories",
    "processor": "processors",
    "currency": "currencies",
    "recovered_by": "recoveredBy",
    "failed_after": "failedAfter",
    "failed_before": "failedBefore",
    "next_retry_after": "nextRetryAfter",
    "next_retry_before": "nextRetryBefore",
    "amount_min": "amountMin",
    "amount_max": "amountMax",
    "search": "search",
}


class ExportRefused(Exception):
    """The API refused the export: its status, code, message and the parameter at fault."""

    def __init__(self, status: int, code: str, message: str, parameter: str | None) -> None:
        where = f" ({parameter})" if parameter else ""
        super().__init__(f"{status} {code}{where}: {message}")
        self.status = status
        self.parameter = parameter


@dataclass(frozen=True)
class Exported:
    path: Path
    bytes: int
    rows: int | None  # CSV rows (the header excluded); None for Parquet until read


def query_params(merchant: str | None, filters: Mapping[str, object]) -> list[tuple[str, str]]:
    """The endpoint's query parameters for these options (lists repeat the parameter)."""
    params: list[tuple[str, str]] = []
    if merchant is not None:
        params.append(("merchantId", merchant))
    for option, value in filters.items():
        name = FILTER_PARAMS[option]
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        params.extend((name, str(v)) for v in values)
    return params


async def download(
    client: httpx.AsyncClient,
    *,
    token: str,
    export_format: ExportFormat,
    params: list[tuple[str, str]],
    output: Path,
    progress: Callable[[int, int | None], None] = lambda _bytes, _rows: None,
) -> Exported:
    """Stream the export into `output` (whole, or not at all); `progress(bytes, rows)` after
    each chunk. Raises ExportRefused when the API says no."""
    partial = output.with_name(output.name + ".part")
    received = 0
    newlines = 0
    try:
        async with client.stream(
            "GET",
            f"/exports/payments.{export_format.value}",
            params=tuple(params),
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            if response.status_code != 200:
                await response.aread()
                try:
                    body = response.json()
                except ValueError:
                    body = {}
                raise ExportRefused(
                    response.status_code,
                    str(body.get("code", "HTTP_ERROR")),
                    str(body.get("message", response.text[:200])),
                    body.get("parameter"),
                )
            with partial.open("wb") as out:
                async for chunk in response.aiter_bytes():
                    out.write(chunk)
                    received += len(chunk)
                    if export_format is ExportFormat.CSV:
                        newlines += chunk.count(b"\n")
                    progress(received, max(0, newlines - 1) if newlines else None)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    rows = max(0, newlines - 1) if export_format is ExportFormat.CSV else None
    return Exported(output, received, rows)


@export_cli.command("payments")
def payments(
    output: Annotated[Path, typer.Option("--output", "-o", help="The file to write.")],
    export_format: Annotated[
        ExportFormat, typer.Option("--format", help="csv or parquet.")
    ] = ExportFormat.CSV,
    merchant: Annotated[
        str | None,
        typer.Option(help="The merchant's global id (needed unless the key sees one merchant)."),
    ] = None,
    url: Annotated[str, typer.Option(help="The portal's base URL.")] = "http://127.0.0.1:8000",
    token: Annotated[
        str, typer.Option(envvar="PORTAL_API_TOKEN", help="API key (or PORTAL_API_TOKEN).")
    ] = "",
    state: Annotated[list[str] | None, typer.Option(help="PaymentState; repeatable.")] = None,
    decline_category: Annotated[
        list[str] | None, typer.Option(help="DeclineCategory; repeatable.")
    ] = None,
    processor: Annotated[list[str] | None, typer.Option(help="Processor; repeatable.")] = None,
    currency: Annotated[list[str] | None, typer.Option(help="ISO 4217; repeatable.")] = None,
    recovered_by: Annotated[list[str] | None, typer.Option(help="Actor; repeatable.")] = None,
    failed_after: Annotated[str | None, typer.Option(help="ISO time with offset.")] = None,
    failed_before: Annotated[str | None, typer.Option(help="ISO time with offset.")] = None,
    next_retry_after: Annotated[str | None, typer.Option(help="ISO time with offset.")] = None,
    next_retry_before: Annotated[str | None, typer.Option(help="ISO time with offset.")] = None,
    amount_min: Annotated[int | None, typer.Option(help="Minor units; one --currency.")] = None,
    amount_max: Annotated[int | None, typer.Option(help="Minor units; one --currency.")] = None,
    search: Annotated[
        str | None, typer.Option(help="Processor payment id, invoice, customer ref or last4.")
    ] = None,
) -> None:
    """Export a merchant's payments (the same filter as the API's) to CSV or Parquet."""
    if not token:
        typer.echo("error: give an API key with --token or PORTAL_API_TOKEN", err=True)
        raise typer.Exit(2)
    filters: dict[str, object] = {
        "state": state,
        "decline_category": decline_category,
        "processor": processor,
        "currency": currency,
        "recovered_by": recovered_by,
        "failed_after": failed_after,
        "failed_before": failed_before,
        "next_retry_after": next_retry_after,
        "next_retry_before": next_retry_before,
        "amount_min": amount_min,
        "amount_max": amount_max,
        "search": search,
    }
    console = Console(stderr=True)
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]payments[/bold] {task.fields[rows]}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
    )

    async def run() -> Exported:
        timeout = httpx.Timeout(30.0, read=300.0)
        async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
            with Progress(*columns, console=console, transient=False) as bar:
                task = bar.add_task("export", total=None, rows="")

                def show(received: int, rows: int | None) -> None:
                    label = "" if rows is None else f"{rows:,}"
                    bar.update(task, completed=received, rows=label)

                exported = await download(
                    client,
                    token=token,
                    export_format=export_format,
                    params=query_params(merchant, filters),
                    output=output,
                    progress=show,
                )
                bar.update(task, total=exported.bytes, completed=exported.bytes)
                return exported

    try:
        exported = asyncio.run(run())
    except ExportRefused as refused:
        typer.echo(f"error: {refused}", err=True)
        raise typer.Exit(2 if refused.status == 400 else 1) from None
    except httpx.HTTPError as error:
        typer.echo(f"error: the export did not complete: {type(error).__name__}", err=True)
        raise typer.Exit(1) from None
    rows = "" if exported.rows is None else f"{exported.rows:,} payments, "
    typer.echo(f"wrote {exported.path} ({rows}{exported.bytes:,} bytes)")
