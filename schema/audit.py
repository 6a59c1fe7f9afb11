"""Audit log types: one configuration change, and a page of them."""

from datetime import datetime
from typing import Self

import strawberry
from strawberry.scalars import JSON

from app.models.audit import AuditLog as AuditLogModel
from resolvers.pagination import Page
from schema.payment import PageInfo


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
        return cls(
            id=strawberry.ID(str(row.id)),
            actor=row.actor,
            action=row.action,
            entity_type=row.entity_type,
            entity_id=row.entity_id,
            before=None if row.before is None else JSON(row.before),
            after=None if row.after is None else JSON(row.after),
            reason=row.reason,
            created_at=row.created_at,
        )


@strawberry.type(description="An audit entry and its cursor.")
class AuditEntryEdge:
    cursor: str = strawberry.field(description="Opaque keyset cursor of this entry.")
    node: AuditEntry = strawberry.field(description="The entry.")


@strawberry.type(description="A page of audit entries, newest first.")
class AuditEntryConnection:
    edges: list[AuditEntryEdge] = strawberry.field(description="The entries of this page.")
    page_info: PageInfo = strawberry.field(description="Paging information.")

    @classmethod
    def from_page(cls, page: Page[AuditLogModel]) -> Self:
        return cls(
            edges=[AuditEntryEdge(cursor=c, node=AuditEntry.from_model(e)) for c, e in page.items],
            page_info=PageInfo(has_next_page=page.has_next_page, end_cursor=page.end_cursor),
        )
