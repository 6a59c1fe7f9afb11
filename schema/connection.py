"""Processor connection types and the connect, sync, pause and resume mutations."""

from datetime import datetime
from typing import Annotated, Any, Self

import strawberry
from strawberry.scalars import JSON

from app.enums import ConnectionStatus as ConnectionStatusValue
from app.errors import (
    ConnectProcessorErrorCode,
    PauseProcessorConnectionErrorCode,
    ResumeProcessorConnectionErrorCode,
    SyncProcessorConnectionErrorCode,
)
from app.models.ingestion import ProcessorConnection as ConnectionModel
from resolvers import connection as connection_resolvers
from resolvers.context import Context
from schema.enums import ConnectionStatus, Processor
from schema.node import Node
from schema.payload import REFUSALS, payload_errors
from schema.scalars import Long

Info = strawberry.Info[Context, None]


@strawberry.type(description="A merchant's account at a processor, polled for failed payments.")
class ProcessorConnection(Node):
    kind: Processor = strawberry.field(description="The processor.")
    name: str = strawberry.field(description="A display name.")
    status: ConnectionStatus = strawberry.field(
        description="Whether it is polled: active, paused by a caller, or failed (see lastError)."
    )
    base_url: str = strawberry.field(description="The processor API's base URL.")
    last_polled_at: datetime | None = strawberry.field(description="When it was last read.")
    last_error: str | None = strawberry.field(description="Why the last poll failed, if it did.")
    cursor_at: datetime | None = strawberry.field(
        description="When the reading position last advanced."
    )
    _row: strawberry.Private[ConnectionModel]

    @classmethod
    def from_model(cls, row: ConnectionModel) -> Self:
        # The sealed credentials are deliberately not mapped: no field can ever return them.
        return cls(
            id=cls.global_id(row.id),
            kind=row.kind,
            name=row.name,
            status=row.status,
            base_url=row.base_url,
            last_polled_at=row.last_polled_at,
            last_error=row.last_error,
            cursor_at=row.cursor_at,
            _row=row,
        )

    @strawberry.field(description="How many payments were ingested through this connection.")
    async def payments_ingested(self, info: Info) -> Long:
        return Long(await connection_resolvers.payments_ingested(info.context, self._row.id))


@strawberry.input(description="A processor account to read a merchant's failed payments from.")
class ConnectProcessorInput:
    merchant_id: strawberry.ID = strawberry.field(description="The merchant's global id.")
    kind: Processor = strawberry.field(description="The processor.")
    credentials: JSON = strawberry.field(
        description=(
            "API credentials as an object (stripe/checkout: api_key; braintree: public_key, "
            "private_key; adyen: api_key, hmac_key_hex). Stored encrypted; never returned."
        )
    )
    base_url: str = strawberry.field(description="The processor API's base URL.")
    account_ref: str | None = strawberry.field(
        default=None,
        description="The account id at the processor (required for braintree and adyen).",
    )
    name: str | None = strawberry.field(
        default=None, description="A display name; defaults to the processor and merchant."
    )


@strawberry.type(description="An error of connectProcessor.")
class ConnectProcessorError:
    code: ConnectProcessorErrorCode = strawberry.field(description="What went wrong.")
    message: str = strawberry.field(description="A human-readable explanation.")
    field: str | None = strawberry.field(description="The input field at fault, if one is.")


@strawberry.type(description="The result of connectProcessor.")
class ConnectProcessorPayload:
    processor_connection: ProcessorConnection | None = strawberry.field(
        description="The new connection, when it was created."
    )
    errors: list[ConnectProcessorError] = strawberry.field(
        description="Why the connection was refused; empty on success."
    )


async def connect_processor(info: Info, input: ConnectProcessorInput) -> ConnectProcessorPayload:
    def error(code: str, message: str, field: str | None) -> ConnectProcessorError:
        return ConnectProcessorError(
            code=ConnectProcessorErrorCode(code), message=message, field=field
        )

    credentials: Any = input.credentials
    if not isinstance(credentials, dict):
        return ConnectProcessorPayload(
            processor_connection=None,
            errors=[
                error("INVALID", "must be an object of credential names to values", "credentials")
            ],
        )
    try:
        row = await connection_resolvers.connect(
            info.context,
            merchant_global_id=str(input.merchant_id),
            kind=input.kind,
            credentials=credentials,
            base_url=input.base_url,
            account_ref=input.account_ref,
            name=input.name,
        )
    except REFUSALS as exc:
        return ConnectProcessorPayload(
            processor_connection=None,
            errors=payload_errors(exc, error, id_field="merchantId"),
        )
    return ConnectProcessorPayload(
        processor_connection=ProcessorConnection.from_model(row), errors=[]
    )


@strawberry.type(description="An error of syncProcessorConnection.")
class SyncProcessorConnectionError:
    code: SyncProcessorConnectionErrorCode = strawberry.field(description="What went wrong.")
    message: str = strawberry.field(description="A human-readable explanation.")
    field: str | None = strawberry.field(description="The argument at fault, if one is.")


@strawberry.type(description="The result of syncProcessorConnection.")
class SyncProcessorConnectionPayload:
    processor_connection: ProcessorConnection | None = strawberry.field(
        description="The connection, when a poll was requested."
    )
    queued: bool = strawberry.field(
        description="True when a poll was queued; false when one was already queued or running."
    )
    errors: list[SyncProcessorConnectionError] = strawberry.field(
        description="Why no poll was requested; empty on success."
    )


async def sync_processor_connection(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="The connection's global id.")],
) -> SyncProcessorConnectionPayload:
    def error(code: str, message: str, field: str | None) -> SyncProcessorConnectionError:
        return SyncProcessorConnectionError(
            code=SyncProcessorConnectionErrorCode(code), message=message, field=field
        )

    try:
        row, queued = await connection_resolvers.sync(info.context, global_id=str(id))
    except REFUSALS as exc:
        return SyncProcessorConnectionPayload(
            processor_connection=None,
            queued=False,
            errors=payload_errors(exc, error, id_field="id"),
        )
    return SyncProcessorConnectionPayload(
        processor_connection=ProcessorConnection.from_model(row), queued=queued, errors=[]
    )


@strawberry.type(description="An error of pauseProcessorConnection.")
class PauseProcessorConnectionError:
    code: PauseProcessorConnectionErrorCode = strawberry.field(description="What went wrong.")
    message: str = strawberry.field(description="A human-readable explanation.")
    field: str | None = strawberry.field(description="The argument at fault, if one is.")


@strawberry.type(description="The result of pauseProcessorConnection.")
class PauseProcessorConnectionPayload:
    processor_connection: ProcessorConnection | None = strawberry.field(
        description="The connection, paused, when the change was applied."
    )
    errors: list[PauseProcessorConnectionError] = strawberry.field(
        description="Why the change was refused; empty on success."
    )


async def pause_processor_connection(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="The connection's global id.")],
    reason: Annotated[str, strawberry.argument(description="Why; kept in the audit log.")],
) -> PauseProcessorConnectionPayload:
    def error(code: str, message: str, field: str | None) -> PauseProcessorConnectionError:
        return PauseProcessorConnectionError(
            code=PauseProcessorConnectionErrorCode(code), message=message, field=field
        )

    try:
        row = await connection_resolvers.set_status(
            info.context,
            global_id=str(id),
            status=ConnectionStatusValue.PAUSED,
            reason=reason,
        )
    except REFUSALS as exc:
        return PauseProcessorConnectionPayload(
            processor_connection=None,
            errors=payload_errors(exc, error, id_field="id"),
        )
    return PauseProcessorConnectionPayload(
        processor_connection=ProcessorConnection.from_model(row), errors=[]
    )


@strawberry.type(description="An error of resumeProcessorConnection.")
class ResumeProcessorConnectionError:
    code: ResumeProcessorConnectionErrorCode = strawberry.field(description="What went wrong.")
    message: str = strawberry.field(description="A human-readable explanation.")
    field: str | None = strawberry.field(description="The argument at fault, if one is.")


@strawberry.type(description="The result of resumeProcessorConnection.")
class ResumeProcessorConnectionPayload:
    processor_connection: ProcessorConnection | None = strawberry.field(
        description="The connection, active again, when the change was applied."
    )
    errors: list[ResumeProcessorConnectionError] = strawberry.field(
        description="Why the change was refused; empty on success."
    )


async def resume_processor_connection(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="The connection's global id.")],
    reason: Annotated[str, strawberry.argument(description="Why; kept in the audit log.")],
) -> ResumeProcessorConnectionPayload:
    def error(code: str, message: str, field: str | None) -> ResumeProcessorConnectionError:
        return ResumeProcessorConnectionError(
            code=ResumeProcessorConnectionErrorCode(code), message=message, field=field
        )

    try:
        row = await connection_resolvers.set_status(
            info.context,
            global_id=str(id),
            status=ConnectionStatusValue.ACTIVE,
            reason=reason,
        )
    except REFUSALS as exc:
        return ResumeProcessorConnectionPayload(
            processor_connection=None,
            errors=payload_errors(exc, error, id_field="id"),
        )
    return ResumeProcessorConnectionPayload(
        processor_connection=ProcessorConnection.from_model(row), errors=[]
    )
