"""Processor connections: create (credentials sealed), pause, resume, rotate credentials,
disconnect, open for use, list."""

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.crypto import CredentialBox
from app.db import UnitOfWork
from app.enums import ConnectionStatus, PaymentState, Processor
from app.errors import InvalidState, NotFound, UrlNotAllowed, ValidationFailed
from app.models.ingestion import ProcessorConnection
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.processors.adapters import REQUIRED_CREDENTIALS
from app.processors.base import ConnectionInfo
from app.retry.events import RecoveryCanceled
from app.services import audit
from app.services.lookup import configurable_row
from app.services.retry.engine import run_event
from app.services.retry.ledger import load_contexts
from app.services.retry.writes import Writes
from app.tenancy import Principal
from app.urls import UrlForbidden, UrlMalformed, UrlPolicy, check_url


async def create_connection(
    uow: UnitOfWork,
    *,
    principal: Principal,
    merchant_id: uuid.UUID,
    kind: Processor,
    base_url: str,
    credentials: Mapping[str, Any],
    box: CredentialBox,
    policy: UrlPolicy,
    now: datetime,
    name: str | None = None,
    account_ref: str | None = None,
) -> ProcessorConnection:
    """Add a connection; the credentials are encrypted and never appear in the audit log.

    The base URL is checked like a webhook URL at creation (`app/urls.py`): the portal polls
    it and sends charges to it with the merchant's credentials, so an address or a name that
    is inward by its spelling is refused. What a name resolves to is not checked again at each
    poll and charge yet, as it is for webhook deliveries."""
    merchant = (
        await uow.session.execute(select(Merchant).where(col(Merchant.id) == merchant_id))
    ).scalar_one_or_none()
    if merchant is None:
        raise NotFound("merchant not found", field="merchantId")
    principal.require_integrate(merchant_id)
    problems: list[tuple[str, str]] = []
    forbidden: UrlForbidden | None = None
    try:
        check_url(base_url, policy)
    except UrlMalformed:
        problems.append(("baseUrl", "must be an http(s) URL"))
    except UrlForbidden as exc:
        forbidden = exc
    problems += credential_problems(kind, credentials)
    if kind in {Processor.BRAINTREE, Processor.ADYEN} and not account_ref:
        problems.append(("accountRef", f"{kind.value} needs the account id at the processor"))
    problems += _length_problems(base_url=base_url, name=name, account_ref=account_ref)
    if problems:
        raise ValidationFailed(problems)
    if forbidden is not None:
        raise UrlNotAllowed(f"the URL is not allowed: {forbidden}", field="baseUrl")
    connection = ProcessorConnection(
        merchant_id=merchant_id,
        kind=kind,
        name=name or f"{kind.value} ({merchant.name})",
        base_url=base_url.rstrip("/"),
        account_ref=account_ref,
        credentials_encrypted=box.seal(dict(credentials)),
        created_at=now,
    )
    uow.session.add(connection)
    await uow.session.flush()
    audit.record(
        uow,
        principal=principal,
        merchant_id=merchant_id,
        action="processor_connection.create",
        entity_type="processor_connection",
        entity_id=str(connection.id),
        before=None,
        after={"kind": kind.value, "base_url": connection.base_url, "name": connection.name},
        reason=None,
        now=now,
    )
    return connection


def credential_problems(kind: Processor, credentials: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What is wrong with a set of credentials for `kind`, on `credentials`: names missing,
    values empty. Messages name the offending keys only: a value never reaches an error."""
    problems: list[tuple[str, str]] = []
    missing = sorted(REQUIRED_CREDENTIALS[kind] - set(credentials))
    if missing:
        problems.append(("credentials", f"{kind.value} needs {', '.join(missing)}"))
    empty = sorted(k for k in REQUIRED_CREDENTIALS[kind] & set(credentials) if not credentials[k])
    if empty:
        problems.append(("credentials", f"empty value for {', '.join(empty)}"))
    hmac_key = credentials.get("hmac_key_hex")
    if kind is Processor.ADYEN and hmac_key and not _is_hex(hmac_key):
        # The one credential the processor cannot check: it signs what Adyen sends.
        problems.append(("credentials", "hmac_key_hex must be hexadecimal"))
    return problems


def _is_hex(value: object) -> bool:
    try:
        bytes.fromhex(str(value))
    except ValueError:
        return False
    return True


_MAX_LENGTHS = {"baseUrl": 500, "name": 200, "accountRef": 255}


def _length_problems(
    *, base_url: str, name: str | None, account_ref: str | None
) -> list[tuple[str, str]]:
    values = {"baseUrl": base_url, "name": name, "accountRef": account_ref}
    return [
        (field, f"must be at most {limit} characters")
        for field, limit in _MAX_LENGTHS.items()
        if (value := values[field]) is not None and len(value) > limit
    ]


async def _configurable(
    uow: UnitOfWork, principal: Principal, connection_id: uuid.UUID
) -> ProcessorConnection:
    """The connection, locked, if visible and the caller may configure its merchant."""
    return await configurable_row(
        uow,
        principal,
        ProcessorConnection,
        connection_id,
        not_found="processor connection not found",
        field="id",
        integration=True,
    )


async def set_connection_status(
    uow: UnitOfWork,
    *,
    principal: Principal,
    connection_id: uuid.UUID,
    status: ConnectionStatus,
    reason: str,
    now: datetime,
) -> ProcessorConnection:
    """Pause a connection, or resume one (paused or failed), audited; setting the status it
    already has changes nothing and is not logged."""
    if status in (ConnectionStatus.ERROR, ConnectionStatus.DISCONNECTED):
        raise ValueError(f"the {status.value} status is not set by pausing or resuming")
    connection = await _configurable(uow, principal, connection_id)
    reason = audit.clean_reason(reason)
    _refuse_disconnected(connection)
    if connection.status is status:
        return connection
    before = {"status": connection.status.value}
    connection.status = status
    audit.record(
        uow,
        principal=principal,
        merchant_id=connection.merchant_id,
        action=(
            "processor_connection.pause"
            if status is ConnectionStatus.PAUSED
            else "processor_connection.resume"
        ),
        entity_type="processor_connection",
        entity_id=str(connection.id),
        before=before,
        after={"status": status.value},
        reason=reason,
        now=now,
    )
    await uow.session.flush()
    return connection


def _refuse_disconnected(connection: ProcessorConnection) -> None:
    if connection.status is ConnectionStatus.DISCONNECTED:
        raise InvalidState("the connection is disconnected; connect the processor again")


async def rotatable_connection(
    uow: UnitOfWork,
    *,
    principal: Principal,
    connection_id: uuid.UUID,
    credentials: Mapping[str, Any],
    box: CredentialBox,
) -> tuple[ProcessorConnection, ConnectionInfo]:
    """A connection whose credentials the caller may replace with `credentials` (its
    processor's names, none empty), and what a check of the new ones at the processor needs."""
    connection = await _configurable(uow, principal, connection_id)
    _refuse_disconnected(connection)
    problems = credential_problems(connection.kind, credentials)
    if problems:
        raise ValidationFailed(problems)
    return connection, replace(connection_info(connection, box), credentials=dict(credentials))


async def replace_credentials(
    uow: UnitOfWork,
    *,
    principal: Principal,
    checked: ConnectionInfo,
    connection_id: uuid.UUID,
    reason: str,
    box: CredentialBox,
    now: datetime,
) -> ProcessorConnection:
    """Seal the credentials `checked` carries (accepted by the processor) in place of the
    connection's, audited by the credentials' names only. Refused when the connection changed
    meanwhile (disconnected, or another account). A connection failed by polling is active
    again: its credentials were just accepted."""
    reason = audit.clean_reason(reason)
    connection = await _configurable(uow, principal, connection_id)
    _refuse_disconnected(connection)
    if (connection.kind, connection.base_url, connection.account_ref) != (
        checked.kind,
        checked.base_url,
        checked.account_ref,
    ):
        raise InvalidState("the connection changed while its credentials were checked; retry")
    before = {"status": connection.status.value}
    connection.credentials_encrypted = box.seal(dict(checked.credentials))
    if connection.status is ConnectionStatus.ERROR:
        connection.status = ConnectionStatus.ACTIVE
        connection.last_error = None
    audit.record(
        uow,
        principal=principal,
        merchant_id=connection.merchant_id,
        action="processor_connection.update_credentials",
        entity_type="processor_connection",
        entity_id=str(connection.id),
        before=before,
        after={
            "status": connection.status.value,
            "credential_names": sorted(checked.credentials),
            "credentials_rotated_at": now.isoformat(),
        },
        reason=reason,
        now=now,
    )
    await uow.session.flush()
    return connection


# Payments whose recovery a disconnection ends; RETRYING (a charge in flight) refuses it.
_OPEN = (PaymentState.PENDING, PaymentState.SCHEDULED)
_CANCEL_BATCH = 500


async def disconnect_connection(
    uow: UnitOfWork,
    *,
    principal: Principal,
    connection_id: uuid.UUID,
    reason: str,
    box: CredentialBox,
    now: datetime,
) -> tuple[ProcessorConnection, int]:
    """Disconnect for good, audited: never polled or charged again, its credentials erased,
    inbound webhooks refused; its raw records, payments, attempts and timelines are kept.
    The recovery of its open payments (pending or scheduled) is canceled, each with a
    `connection_disconnected` transition: no charge can be made for them any more. Refused
    while a charge of one of its payments is in flight (pause the connection, then disconnect
    once the charge's outcome is recorded). Returns the connection and how many recoveries
    were canceled; disconnecting a disconnected connection changes nothing."""
    connection = await _configurable(uow, principal, connection_id)
    reason = audit.clean_reason(reason)
    if connection.status is ConnectionStatus.DISCONNECTED:
        return connection, 0
    # Its unfinished payments, locked (in id order, as every batch locks them): a claim of
    # one for a charge either committed before (it is RETRYING here) or skips it, and once
    # this commits none is due any more.
    unfinished = (
        await uow.session.execute(
            select(col(Payment.id), col(Payment.state))
            .where(
                col(Payment.connection_id) == connection.id,
                col(Payment.state).in_((*_OPEN, PaymentState.RETRYING)),
            )
            .order_by(col(Payment.id))
            .with_for_update()
        )
    ).all()
    in_flight = sum(state is PaymentState.RETRYING for _, state in unfinished)
    if in_flight:
        raise InvalidState(
            f"{in_flight} charge(s) in flight; pause the connection and disconnect once settled"
        )
    open_ids = [payment_id for payment_id, _ in unfinished]
    canceled = 0
    for start in range(0, len(open_ids), _CANCEL_BATCH):
        batch = open_ids[start : start + _CANCEL_BATCH]
        contexts = await load_contexts(uow.session, batch, now=now, lock=True)
        # Each batch's timelines, outbox events and payment changes in one statement each.
        writes = Writes()
        for ctx in contexts.values():
            await run_event(
                uow,
                ctx,
                RecoveryCanceled("processor connection disconnected"),
                now=now,
                actor_label=principal.actor_label,
                event_label="connection_disconnected",
                writes=writes,
            )
            writes.touch(ctx.payment)
            canceled += 1
        await writes.flush(uow.session)
        await uow.session.flush()
    before = {"status": connection.status.value}
    connection.status = ConnectionStatus.DISCONNECTED
    connection.credentials_encrypted = box.seal({})
    audit.record(
        uow,
        principal=principal,
        merchant_id=connection.merchant_id,
        action="processor_connection.disconnect",
        entity_type="processor_connection",
        entity_id=str(connection.id),
        before=before,
        after={"status": connection.status.value, "recoveries_canceled": canceled},
        reason=reason,
        now=now,
    )
    await uow.session.flush()
    return connection, canceled


async def pollable_connection(
    uow: UnitOfWork, *, principal: Principal, connection_id: uuid.UUID
) -> ProcessorConnection:
    """A connection the caller may have polled now: active, of a processor with a list API."""
    connection = await _configurable(uow, principal, connection_id)
    if connection.kind is Processor.ADYEN:
        raise ValidationFailed([("id", "adyen connections receive webhooks; nothing to poll")])
    if connection.status is not ConnectionStatus.ACTIVE:
        raise ValidationFailed(
            [("id", f"the connection is {connection.status.value}; resume it first")]
        )
    return connection


async def payment_counts(session: AsyncSession, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    """How many payments each connection has ingested, in one grouped query."""
    rows = await session.execute(
        select(col(Payment.connection_id), func.count())
        .where(col(Payment.connection_id).in_(ids))
        .group_by(col(Payment.connection_id))
    )
    return {cid: count for cid, count in rows if cid is not None}


def connection_info(connection: ProcessorConnection, box: CredentialBox) -> ConnectionInfo:
    return ConnectionInfo(
        kind=connection.kind,
        base_url=connection.base_url,
        credentials=box.open(connection.credentials_encrypted),
        account_ref=connection.account_ref,
    )


async def active_connection_ids(uow: UnitOfWork) -> list[uuid.UUID]:
    """Connections to poll: active ones of processors that have a list API."""
    rows = await uow.session.execute(
        select(col(ProcessorConnection.id)).where(
            col(ProcessorConnection.status) == ConnectionStatus.ACTIVE,
            col(ProcessorConnection.kind) != Processor.ADYEN,
        )
    )
    return list(rows.scalars())
