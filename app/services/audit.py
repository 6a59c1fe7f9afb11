"""The audit log: every configuration change is written through `record`, and read by page."""

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlmodel import col, select

from app.db import UnitOfWork
from app.errors import ValidationFailed
from app.models.audit import AuditLog
from app.tenancy import Principal

REASON_MAX_LENGTH = 1000


def clean_reason(reason: str) -> str:
    """A change's reason, trimmed; a change that needs one refuses a blank or overlong one."""
    reason = reason.strip()
    if not reason or len(reason) > REASON_MAX_LENGTH:
        raise ValidationFailed([("reason", f"must be 1-{REASON_MAX_LENGTH} characters")])
    return reason


def record(
    uow: UnitOfWork,
    *,
    principal: Principal,
    merchant_id: uuid.UUID | None,
    action: str,
    entity_type: str,
    entity_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    reason: str | None,
    now: datetime,
) -> AuditLog:
    """Add an audit entry to the unit of work (committed with the change it describes).
    `merchant_id` is None for changes that belong to no merchant (support keys)."""
    entry = AuditLog(
        merchant_id=merchant_id,
        actor=principal.actor_label,
        actor_key_id=principal.key_id,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        before=before,
        after=after,
        reason=reason,
        created_at=now,
    )
    uow.session.add(entry)
    return entry


def audit_count_query(merchant_id: uuid.UUID) -> Any:
    """The entries of a merchant's audit log, for its `totalCount`."""
    return select(col(AuditLog.id)).where(col(AuditLog.merchant_id) == merchant_id)


async def entries_by_merchant_ids(
    session: AsyncSession,
    merchant_ids: Sequence[uuid.UUID],
    *,
    first: int,
    before_key: tuple[datetime, uuid.UUID] | None,
) -> dict[uuid.UUID, list[AuditLog]]:
    """The same page of several merchants' audit logs in one query: newest first, keyset on
    (created_at, id), up to `first + 1` entries each so callers know whether more follow."""
    newest_first = (col(AuditLog.created_at).desc(), col(AuditLog.id).desc())
    ranked = select(
        AuditLog,
        func.row_number()
        .over(partition_by=col(AuditLog.merchant_id), order_by=newest_first)
        .label("rank"),
    ).where(col(AuditLog.merchant_id).in_(merchant_ids))
    if before_key is not None:
        ranked = ranked.where(
            tuple_(col(AuditLog.created_at), col(AuditLog.id)) < tuple_(*before_key)
        )
    page = ranked.subquery()
    entry = aliased(AuditLog, page)
    rows = await session.execute(
        select(entry).where(page.c.rank <= first + 1).order_by(page.c.merchant_id, page.c.rank)
    )
    grouped: dict[uuid.UUID, list[AuditLog]] = defaultdict(list)
    for row in rows.scalars():
        if row.merchant_id is not None:
            grouped[row.merchant_id].append(row)
    return grouped


async def entry_exists(session: AsyncSession, entry_id: uuid.UUID) -> bool:
    """Whether an audit entry was committed (a job started by a request checks its entry)."""
    found = await session.execute(select(col(AuditLog.id)).where(col(AuditLog.id) == entry_id))
    return found.scalar_one_or_none() is not None


async def latest_entry(
    session: AsyncSession, *, action: str, entity_type: str, entity_id: str
) -> AuditLog | None:
    """The newest audit entry of one action on one thing, if any."""
    found = await session.execute(
        select(AuditLog)
        .where(
            col(AuditLog.action) == action,
            col(AuditLog.entity_type) == entity_type,
            col(AuditLog.entity_id) == entity_id,
        )
        .order_by(col(AuditLog.created_at).desc(), col(AuditLog.id).desc())
        .limit(1)
    )
    return found.scalar_one_or_none()
