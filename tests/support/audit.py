"""Reading the audit log as the system sees it."""

import uuid

from sqlalchemy import ColumnElement
from sqlmodel import col, select

from app.db import Database
from app.models.audit import AuditLog
from app.tenancy import SYSTEM_SCOPE


async def audit_entries(
    db: Database,
    *where: ColumnElement[bool],
    action: str | None = None,
    action_prefix: str | None = None,
    merchant_id: uuid.UUID | None = None,
    entity_id: str | None = None,
) -> list[AuditLog]:
    """The audit entries meeting every condition given, oldest first (at one instant, by
    action)."""
    conditions = list(where)
    if action is not None:
        conditions.append(col(AuditLog.action) == action)
    if action_prefix is not None:
        conditions.append(col(AuditLog.action).startswith(action_prefix))
    if merchant_id is not None:
        conditions.append(col(AuditLog.merchant_id) == merchant_id)
    if entity_id is not None:
        conditions.append(col(AuditLog.entity_id) == entity_id)
    async with db.session(SYSTEM_SCOPE) as s:
        rows = await s.execute(
            select(AuditLog)
            .where(*conditions)
            .order_by(col(AuditLog.created_at), col(AuditLog.action), col(AuditLog.id))
        )
        return list(rows.scalars())
