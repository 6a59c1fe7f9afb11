"""Writing audit entries: every configuration change goes through `record`."""

import uuid
from datetime import datetime
from typing import Any

from app.db import UnitOfWork
from app.models.audit import AuditLog
from app.tenancy import Principal


def record(
    uow: UnitOfWork,
    *,
    principal: Principal,
    merchant_id: uuid.UUID,
    action: str,
    entity_type: str,
    entity_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    reason: str | None,
    now: datetime,
) -> AuditLog:
    """Add an audit entry to the unit of work (committed with the change it describes)."""
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
