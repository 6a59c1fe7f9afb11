"""Processor connection types and the connect, sync, pause, resume, credential rotation and
disconnect mutations."""

from datetime import datetime
from typing import Annotated, Any, Self

import strawberry
from strawberry.scalars import JSON

from app.enums import ConnectionStatus as ConnectionStatusValue
from app.errors import ErrorCode, InvalidArgument
from app.models.ingestion import ProcessorConnection as ConnectionModel
from app.services.ingestion_view import DeadLetterView, RawRecordView
from resolvers import connection as connection_resolvers
from resolvers.context import Context
from resolvers.counts import CountOf, counter
from schema.enums import ConnectionStatus, Processor
from schema.mutation import Payload, ReasonArg, mutation
from schema.node import Node
from schema.relay import AfterArg, Connection, FirstArg, connection
from schema.rows import from_row
from schema.scalars import Long

Info = strawberry.Info[Context, None]
IdArg = Annotated[strawberry.ID, strawberry.argument(description="The connection's global id.")]


PAYLOAD_DESCRIPTION = (
    "The record as the processor sent it (Braintree XML as `{xml}`), scrubbed for display: "
    "card numbers were never stored, and the values of secrets (keys, tokens, signatures, "
    "passwords), card verification values, track data, the cardholder's name and the card's "
    "fingerprint read `[redacted]`. Of the card, only its brand, last four digits, BIN and "
    "expiry remain."
)


@strawberry.type(description="One record read from a processor, kept as it came.")
class RawRecord:
    id: strawberry.ID = strawberry.field(description="The record's id.")
    processor: Processor = strawberry.field(description="The processor it came from.")
    external_id: str | None = strawberry.field(
        description="The processor's id of the payment or event, when the record has one."
    )
    received_at: datetime = strawberry.field(description="When the portal read it.")
    content_hash: str = strawberry.field(
        description="SHA-256 of its canonical JSON: the same record read twice is stored once."
    )
    normalized_at: datetime | None = strawberry.field(
        description="When the normalizer last read it; null while it waits (webhooks)."
    )
    normalizer_version: int | None = strawberry.field(
        description="The normalizer version that last read it."
    )
    payload: JSON = strawberry.field(description=PAYLOAD_DESCRIPTION)

    @classmethod
    def from_view(cls, view: RawRecordView) -> Self:
        return from_row(
            cls, view.row, id=strawberry.ID(str(view.row.id)), payload=JSON(view.payload)
        )


@strawberry.type(description="A raw record the normalizer could not read, and why.")
class DeadLetter:
    id: strawberry.ID = strawberry.field(description="The dead letter's id.")
    reason: str = strawberry.field(description="Why it could not be normalized.")
    normalizer_version: int = strawberry.field(description="The normalizer version that failed.")
    created_at: datetime = strawberry.field(description="When it failed.")
    raw_record: RawRecord = strawberry.field(
        description="The record it was read from (it stays stored; a replay reads it again)."
    )

    @classmethod
    def from_view(cls, view: DeadLetterView) -> Self:
        return from_row(
            cls,
            view.row,
            id=strawberry.ID(str(view.row.id)),
            raw_record=RawRecord.from_view(view.raw),
        )


@connection(
    "A page of raw records, newest received first.",
    edge="A raw record and its cursor.",
    noun="record",
    nouns="records",
)
class RawRecordConnection(Connection[RawRecord]):
    pass


@connection(
    "A page of dead letters, newest first.",
    edge="A dead letter and its cursor.",
    noun="dead letter",
    nouns="dead letters",
)
class DeadLetterConnection(Connection[DeadLetter]):
    pass


READERS = (
    " Support, or the merchant's own key (a partner key is refused FORBIDDEN: payloads carry "
    "the merchant's customers' personal data)."
)


@strawberry.type(description="A merchant's account at a processor, polled for failed payments.")
class ProcessorConnection(Node):
    kind: Processor = strawberry.field(description="The processor.")
    name: str = strawberry.field(description="A display name.")
    status: ConnectionStatus = strawberry.field(
        description=(
            "Whether it is polled: active, paused by a caller, failed (see lastError), or "
            "disconnected for good (disconnectProcessor)."
        )
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
        return from_row(cls, row, id=cls.global_id(row.id), _row=row)

    @strawberry.field(description="How many payments were ingested through this connection.")
    async def payments_ingested(self, info: Info) -> Long:
        return Long(await connection_resolvers.payments_ingested(info.context, self._row.id))

    @strawberry.field(
        description="Records read from the processor, newest received first, payloads scrubbed."
        + READERS
    )
    async def raw_records(
        self,
        info: Info,
        first: FirstArg = None,
        after: AfterArg = None,
        since: Annotated[
            datetime | None,
            strawberry.argument(description="Only records received at or after this time."),
        ] = None,
        unnormalized_only: Annotated[
            bool,
            strawberry.argument(
                description="Only records the normalizer has not read yet (webhooks waiting)."
            ),
        ] = False,
    ) -> RawRecordConnection:
        page = await connection_resolvers.raw_records(
            info.context,
            self._row,
            first=first,
            after=after,
            since=since,
            unnormalized_only=unnormalized_only,
        )
        count = counter(
            info.context,
            CountOf(
                "raw_records",
                self._row.id,
                since=since,
                unnormalized_only=unnormalized_only,
            ),
        )
        return RawRecordConnection.from_page(page, RawRecord.from_view, count)

    @strawberry.field(
        description="Records the normalizer could not read, newest first, payloads scrubbed."
        + READERS
    )
    async def dead_letters(
        self, info: Info, first: FirstArg = None, after: AfterArg = None
    ) -> DeadLetterConnection:
        page = await connection_resolvers.dead_letters(
            info.context, self._row, first=first, after=after
        )
        count = counter(info.context, CountOf("dead_letters", self._row.id))
        return DeadLetterConnection.from_page(page, DeadLetter.from_view, count)


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


class ConnectProcessorPayload(Payload):
    processor_connection: ProcessorConnection | None = strawberry.field(
        description="The new connection, when it was created."
    )


@mutation(
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID, ErrorCode.URL_NOT_ALLOWED),
    why="refused a connection",
    errors="Why the connection was refused",
    subject="merchantId",
    description=(
        "Connect a merchant to a processor account (support, the merchant's own key, or a "
        "partner key granted the merchant). Credentials are stored encrypted and never "
        "returned. Audited."
    ),
)
async def connect_processor(info: Info, input: ConnectProcessorInput) -> ConnectProcessorPayload:
    credentials: Any = input.credentials
    if not isinstance(credentials, dict):
        raise InvalidArgument(
            "must be an object of credential names to values", field="credentials"
        )
    row = await connection_resolvers.connect(
        info.context,
        merchant_global_id=str(input.merchant_id),
        kind=input.kind,
        credentials=credentials,
        base_url=input.base_url,
        account_ref=input.account_ref,
        name=input.name,
    )
    return ConnectProcessorPayload(processor_connection=ProcessorConnection.from_model(row))


class SyncProcessorConnectionPayload(Payload):
    processor_connection: ProcessorConnection | None = strawberry.field(
        description="The connection, when a poll was requested."
    )
    queued: bool = strawberry.field(
        default=False,
        description="True when a poll was queued; false when one was already queued or running.",
    )


@mutation(
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID),
    why="queued no poll",
    errors="Why no poll was requested",
    subject="id",
    description=(
        "Queue a poll of an active connection now (support, the merchant's key, or a partner "
        "key granted the merchant)."
    ),
)
async def sync_processor_connection(info: Info, id: IdArg) -> SyncProcessorConnectionPayload:
    row, queued = await connection_resolvers.sync(info.context, global_id=str(id))
    connection = ProcessorConnection.from_model(row)
    return SyncProcessorConnectionPayload(processor_connection=connection, queued=queued)


class PauseProcessorConnectionPayload(Payload):
    processor_connection: ProcessorConnection | None = strawberry.field(
        description="The connection, paused, when the change was applied."
    )


class ResumeProcessorConnectionPayload(Payload):
    processor_connection: ProcessorConnection | None = strawberry.field(
        description="The connection, active again, when the change was applied."
    )


StatusPayload = PauseProcessorConnectionPayload | ResumeProcessorConnectionPayload


def _set_status(
    payload: type[StatusPayload], status: ConnectionStatusValue, description: str
) -> StatusPayload:
    """pauseProcessorConnection and resumeProcessorConnection: the same change to two states."""

    @mutation(
        payload=payload,
        # INVALID_STATE: the connection is disconnected.
        refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID, ErrorCode.INVALID_STATE),
        subject="id",
        description=description,
    )
    async def set_status(info: Info, id: IdArg, reason: ReasonArg) -> StatusPayload:
        row = await connection_resolvers.set_status(
            info.context, global_id=str(id), status=status, reason=reason
        )
        return payload(processor_connection=ProcessorConnection.from_model(row))

    return set_status


pause_processor_connection = _set_status(
    PauseProcessorConnectionPayload,
    ConnectionStatusValue.PAUSED,
    "Stop polling a connection (support, the merchant's own key, or a partner key granted the "
    "merchant); refused for a disconnected one. Audited.",
)
resume_processor_connection = _set_status(
    ResumeProcessorConnectionPayload,
    ConnectionStatusValue.ACTIVE,
    "Poll a paused or failed connection again (support, the merchant's own key, or a partner "
    "key granted the merchant); refused for a disconnected one. Audited.",
)


@strawberry.input(description="New credentials for a connection, and why.")
class UpdateProcessorCredentialsInput:
    id: strawberry.ID = strawberry.field(description="The connection's global id.")
    credentials: JSON = strawberry.field(
        description=(
            "The new API credentials, as connectProcessor takes them. Checked at the processor "
            "first (one read of the account with them); stored encrypted only once accepted, "
            "never returned, logged or audited (the audit log names the keys only)."
        )
    )
    reason: str = strawberry.field(description="Why; kept in the audit log.")


class UpdateProcessorCredentialsPayload(Payload):
    processor_connection: ProcessorConnection | None = strawberry.field(
        description="The connection, when its credentials were replaced."
    )


@mutation(
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID, ErrorCode.INVALID_STATE),
    errors="Why the credentials were not replaced",
    subject="id",
    description=(
        "Rotate a connection's credentials (support, the merchant's own key, or a partner key "
        "granted the merchant). The processor is asked first: credentials it refuses, or that "
        "cannot be checked because it is unreachable, are INVALID on credentials and nothing "
        "changes. A connection failed by polling is active again. INVALID_STATE for a "
        "disconnected connection. Audited."
    ),
)
async def update_processor_credentials(
    info: Info, input: UpdateProcessorCredentialsInput
) -> UpdateProcessorCredentialsPayload:
    credentials: Any = input.credentials
    if not isinstance(credentials, dict):
        raise InvalidArgument(
            "must be an object of credential names to values", field="credentials"
        )
    row = await connection_resolvers.update_credentials(
        info.context, global_id=str(input.id), credentials=credentials, reason=input.reason
    )
    return UpdateProcessorCredentialsPayload(
        processor_connection=ProcessorConnection.from_model(row)
    )


class DisconnectProcessorPayload(Payload):
    processor_connection: ProcessorConnection | None = strawberry.field(
        description="The connection, disconnected, when the change was applied."
    )
    recoveries_canceled: int | None = strawberry.field(
        description=(
            "How many of its payments' recoveries (pending or scheduled) were canceled by "
            "this disconnection; 0 when it was disconnected already."
        )
    )


@mutation(
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID, ErrorCode.INVALID_STATE),
    errors="Why the connection was not disconnected",
    subject="id",
    description=(
        "Disconnect a processor for good (support, the merchant's own key, or a partner key "
        "granted the merchant): it is never polled or charged again, its credentials are "
        "erased and its inbound webhooks refused; its raw records, payments, attempts and "
        "timelines are kept. The recovery of its pending and scheduled payments is canceled "
        "(each shows a connection_disconnected transition). INVALID_STATE while one of its "
        "charges is in flight: pause it and try again once the charge settles. Audited."
    ),
)
async def disconnect_processor(
    info: Info, id: IdArg, reason: ReasonArg
) -> DisconnectProcessorPayload:
    row, canceled = await connection_resolvers.disconnect(
        info.context, global_id=str(id), reason=reason
    )
    return DisconnectProcessorPayload(
        processor_connection=ProcessorConnection.from_model(row), recoveries_canceled=canceled
    )
