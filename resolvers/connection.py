"""Reading and changing processor connections for the API."""

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx

from app.enums import ConnectionStatus, Processor
from app.errors import InvalidArgument, ValidationFailed
from app.models.ingestion import ProcessorConnection
from app.processors.adapters import check_credentials
from app.processors.base import PermanentProcessorError, ProcessorError
from app.services.connection import (
    create_connection,
    disconnect_connection,
    pollable_connection,
    replace_credentials,
    rotatable_connection,
    set_connection_status,
)
from app.services.ingestion_view import (
    DeadLetterView,
    RawRecordView,
    dead_letters_page,
    raw_records_page,
    require_reader,
)
from app.services.retry.pinning import pin, resolve_host
from app.urls import UrlForbidden, UrlMalformed
from jobs.enqueue import enqueue_poll
from resolvers.context import Context
from resolvers.ids import decode_id
from resolvers.pagination import Page, after_key, make_page, page_size


async def for_merchant(ctx: Context, merchant_id: uuid.UUID) -> list[ProcessorConnection]:
    return await ctx.loaders.processor_connections_by_merchant_id.load(merchant_id)


async def payments_ingested(ctx: Context, connection_id: uuid.UUID) -> int:
    return await ctx.loaders.payment_count_by_connection_id.load(connection_id)


async def connect(
    ctx: Context,
    *,
    merchant_global_id: str,
    kind: Processor,
    credentials: Mapping[str, Any],
    base_url: str,
    account_ref: str | None,
    name: str | None,
) -> ProcessorConnection:
    """Create a connection in its own unit of work; raises domain errors on refusal."""
    async with ctx.change() as (uow, by):
        _, merchant_id = decode_id(merchant_global_id, expected="Merchant")
        return await create_connection(
            uow,
            merchant_id=merchant_id,
            kind=kind,
            base_url=base_url,
            credentials=credentials,
            box=ctx.credential_box(),
            policy=ctx.settings.url_policy,
            name=name,
            account_ref=account_ref,
            **by,
        )


async def set_status(
    ctx: Context, *, global_id: str, status: ConnectionStatus, reason: str
) -> ProcessorConnection:
    async with ctx.change() as (uow, by):
        _, connection_id = decode_id(global_id, expected="ProcessorConnection")
        return await set_connection_status(
            uow, connection_id=connection_id, status=status, reason=reason, **by
        )


async def sync(ctx: Context, *, global_id: str) -> tuple[ProcessorConnection, bool]:
    """Queue a poll now; False when one is already queued or running (job ids deduplicate)."""
    # Nothing is written: committing releases the row lock and, unlike a rollback, leaves the
    # loaded row readable.
    async with ctx.change() as (uow, by):
        _, connection_id = decode_id(global_id, expected="ProcessorConnection")
        connection = await pollable_connection(
            uow, principal=by["principal"], connection_id=connection_id
        )
    queued = await enqueue_poll(ctx.job_queue(), connection.id)
    return connection, queued


async def raw_records(
    ctx: Context,
    connection: ProcessorConnection,
    *,
    first: int | None,
    after: str | None,
    since: datetime | None,
    unnormalized_only: bool,
) -> Page[RawRecordView]:
    """A page of the connection's raw records (support, or the merchant's own key)."""
    principal = ctx.require_principal()
    require_reader(principal, connection.merchant_id)
    size = page_size(first, ctx.settings)
    if since is not None and since.utcoffset() is None:
        raise InvalidArgument("give a time zone offset, e.g. 2026-11-01T00:00:00Z", field="since")
    async with ctx.db.session(principal.scope) as session:
        rows = await raw_records_page(
            session,
            connection.id,
            first=size,
            after=after_key(after),
            since=since,
            unnormalized_only=unnormalized_only,
        )
    return make_page(rows, size, lambda v: (v.row.received_at, v.row.id))


async def dead_letters(
    ctx: Context, connection: ProcessorConnection, *, first: int | None, after: str | None
) -> Page[DeadLetterView]:
    """A page of the connection's dead letters (support, or the merchant's own key)."""
    principal = ctx.require_principal()
    require_reader(principal, connection.merchant_id)
    size = page_size(first, ctx.settings)
    async with ctx.db.session(principal.scope) as session:
        rows = await dead_letters_page(session, connection.id, first=size, after=after_key(after))
    return make_page(rows, size, lambda v: (v.row.created_at, v.row.id))


# How long the processor may take to answer a credential check (each of its tries).
CREDENTIAL_CHECK_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


async def update_credentials(
    ctx: Context, *, global_id: str, credentials: Mapping[str, Any], reason: str
) -> ProcessorConnection:
    """Replace a connection's credentials once the processor has accepted them: the check (one
    read of the account with the new credentials) runs between two units of work, so no row
    stays locked while the processor answers. The credentials reach no log and no error."""
    async with ctx.change() as (uow, by):
        _, connection_id = decode_id(global_id, expected="ProcessorConnection")
        connection, info = await rotatable_connection(
            uow,
            principal=by["principal"],
            connection_id=connection_id,
            credentials=credentials,
            box=ctx.credential_box(),
        )
        cursor = dict(connection.cursor)
        base_url = connection.base_url
    # The address is checked again now, resolved: a name that has come to point inside the
    # network since the connection was made is not asked (its answer would reach the caller).
    try:
        await pin(base_url, ctx.settings.url_policy, resolve_host)
    except (UrlForbidden, UrlMalformed):
        raise ValidationFailed(
            [("credentials", "could not be checked: the connection's address is not allowed")]
        ) from None
    except OSError:
        raise ValidationFailed(
            [("credentials", "could not be checked: the connection's host did not resolve")]
        ) from None
    async with httpx.AsyncClient(timeout=CREDENTIAL_CHECK_TIMEOUT, trust_env=False) as http:
        try:
            await check_credentials(info, http, cursor)
        except PermanentProcessorError as exc:
            # The processor's own words are left out: they might echo what was sent.
            if exc.status in (401, 403):
                message = f"the processor refused these credentials (HTTP {exc.status})"
            elif exc.status is not None:
                message = f"the processor refused a read with them (HTTP {exc.status})"
            else:
                message = "the processor's answer to a read with them could not be used"
            raise ValidationFailed([("credentials", message + "; nothing was changed")]) from None
        except ProcessorError as exc:
            raise ValidationFailed(
                [("credentials", f"could not be checked ({exc}); nothing was changed")]
            ) from None
    async with ctx.change() as (uow, by):
        return await replace_credentials(
            uow,
            checked=info,
            connection_id=connection_id,
            reason=reason,
            box=ctx.credential_box(),
            **by,
        )


async def disconnect(
    ctx: Context, *, global_id: str, reason: str
) -> tuple[ProcessorConnection, int]:
    async with ctx.change() as (uow, by):
        _, connection_id = decode_id(global_id, expected="ProcessorConnection")
        return await disconnect_connection(
            uow, connection_id=connection_id, reason=reason, box=ctx.credential_box(), **by
        )
