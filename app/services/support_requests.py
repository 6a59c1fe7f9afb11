"""Work support requests through the API and the worker carries out: a connection's replay, a
training run. Each request is checked, then recorded as an audit entry naming the job that
carries it out (the caller queues the job in the same unit of work, just before it commits).

A request while an earlier one of the same work is still queued or running adds nothing: the
caller answers with the earlier job. The check and the record run under a lock (the
connection's row; a transaction-level advisory lock for training), so two requests at once
never both queue."""

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlmodel import col

from app.db import UnitOfWork
from app.errors import NotFound
from app.models.audit import AuditLog
from app.models.ingestion import ProcessorConnection
from app.services import audit
from app.tenancy import Principal

REPLAY_ACTION = "processor_connection.replay"
RETRAIN_ACTION = "model.retrain"
_RETRAIN_ENTITY = ("model_version", "training")


@dataclass(frozen=True)
class Request:
    """A checked request: what it is about, its cleaned reason, and the latest earlier
    request of the same work (its job may still be queued or running)."""

    merchant_id: uuid.UUID | None
    entity_type: str
    entity_id: str
    action: str
    reason: str
    previous: AuditLog | None


def _lock_key(name: str) -> int:
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def check_replay(
    uow: UnitOfWork, *, principal: Principal, connection_id: uuid.UUID, reason: str
) -> tuple[ProcessorConnection, Request]:
    """The connection, locked, if visible and the caller is support; `NotFound` on `id` when
    it is unknown (or another tenant's), `Forbidden` for any key but support's."""
    connection = (
        await uow.session.execute(
            select(ProcessorConnection)
            .where(col(ProcessorConnection.id) == connection_id)
            .with_for_update()
        )
    ).scalar_one_or_none()
    if connection is None:
        raise NotFound("connection not found", field="id")
    principal.require_support("replay a connection")
    entity = ("processor_connection", str(connection.id))
    previous = await audit.latest_entry(
        uow.session, action=REPLAY_ACTION, entity_type=entity[0], entity_id=entity[1]
    )
    request = Request(
        connection.merchant_id, *entity, REPLAY_ACTION, audit.clean_reason(reason), previous
    )
    return connection, request


async def check_retrain(uow: UnitOfWork, *, principal: Principal, reason: str) -> Request:
    """A training request, if the caller is support (`Forbidden` otherwise)."""
    principal.require_support("retrain the model")
    await uow.session.execute(select(func.pg_advisory_xact_lock(_lock_key(RETRAIN_ACTION))))
    previous = await audit.latest_entry(
        uow.session,
        action=RETRAIN_ACTION,
        entity_type=_RETRAIN_ENTITY[0],
        entity_id=_RETRAIN_ENTITY[1],
    )
    return Request(None, *_RETRAIN_ENTITY, RETRAIN_ACTION, audit.clean_reason(reason), previous)


async def record_request(
    uow: UnitOfWork,
    request: Request,
    *,
    principal: Principal,
    job_id: Callable[[uuid.UUID], str],
    now: datetime,
) -> AuditLog:
    """The request's audit entry, flushed; `after.job_id` names its job (`job_id(entry.id)`)."""
    entry = audit.record(
        uow,
        principal=principal,
        merchant_id=request.merchant_id,
        action=request.action,
        entity_type=request.entity_type,
        entity_id=request.entity_id,
        before=None,
        after=None,
        reason=request.reason,
        now=now,
    )
    entry.after = {"job_id": job_id(entry.id)}
    await uow.session.flush()
    return entry
