"""Processor connections: create (credentials sealed), open for use, record poll outcomes."""

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlmodel import col, select

from app.crypto import CredentialBox
from app.db import UnitOfWork
from app.enums import ConnectionStatus, Processor
from app.errors import Forbidden, NotFound, ValidationFailed
from app.models.ingestion import ProcessorConnection
from app.models.merchant import Merchant
from app.processors.base import ConnectionInfo
from app.processors.registry import REQUIRED_CREDENTIALS
from app.services import audit
from app.tenancy import Principal


async def create_connection(
    uow: UnitOfWork,
    *,
    principal: Principal,
    merchant_id: uuid.UUID,
    kind: Processor,
    base_url: str,
    credentials: Mapping[str, Any],
    box: CredentialBox,
    now: datetime,
    name: str | None = None,
    account_ref: str | None = None,
) -> ProcessorConnection:
    """Add a connection; the credentials are encrypted and never appear in the audit log."""
    merchant = (
        await uow.session.execute(select(Merchant).where(col(Merchant.id) == merchant_id))
    ).scalar_one_or_none()
    if merchant is None:
        raise NotFound("merchant not found", field="merchantId")
    if not principal.may_configure(merchant_id):
        raise Forbidden("this key may not change the merchant's configuration")
    problems: list[tuple[str, str]] = []
    parts = urlsplit(base_url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        problems.append(("baseUrl", "must be an http(s) URL"))
    missing = sorted(REQUIRED_CREDENTIALS[kind] - set(credentials))
    if missing:
        problems.append(("credentials", f"{kind.value} needs {', '.join(missing)}"))
    if kind in {Processor.BRAINTREE, Processor.ADYEN} and not account_ref:
        problems.append(("accountRef", f"{kind.value} needs the account id at the processor"))
    if problems:
        raise ValidationFailed(problems)
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
