"""Audit log types: one configuration change, and a page of them."""

from datetime import datetime
from typing import Self

import strawberry
from strawberry.scalars import JSON

from app.models.audit import AuditLog as AuditLogModel
from schema.relay import Connection, connection
from schema.rows import from_row


@strawberry.type(description="One configuration change: who, what, before, after and why.")
class AuditEntry:
    id: strawberry.ID = strawberry.field(description="The entry's id.")
    actor: str = strawberry.field(
        description="Who made the change: `api_key:<name>`, or the portal itself."
    )
    action: str = strawberry.field(description="What was done, e.g. `retry_policy.update`.")
    entity_type: str = strawberry.field(description="The kind of thing changed.")
    entity_id: str = strawberry.field(description="The id of the thing changed.")
    before: JSON | None = strawberry.field(description="Its settings before; null on creation.")
    after: JSON | None = strawberry.field(description="Its settings after.")
    reason: str | None = strawberry.field(description="Why, as given by the actor.")
    created_at: datetime = strawberry.field(description="When the change was made.")

    @classmethod
    def from_model(cls, row: AuditLogModel) -> Self:
        return from_row(
            cls,
            row,
            id=strawberry.ID(str(row.id)),
            before=None if row.before is None else JSON(row.before),
            after=None if row.after is None else JSON(row.after),
        )


@connection(
    "A page of audit entries, newest first.",
    edge="An audit entry and its cursor.",
    noun="entry",
    nouns="entries",
)
class AuditEntryConnection(Connection[AuditEntry]):
    pass
