"""Events for data teams and dashboards: the feed, the published types, the live stream."""

from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Annotated, Self

import strawberry
from strawberry.scalars import JSON

from app.services.event_feed import FeedEvent
from app.webhook_events import EVENT_TYPES
from resolvers import events as event_resolvers
from resolvers.context import Context
from schema.relay import Connection, connection

Info = strawberry.Info[Context, None]

EVENTS_DESCRIPTION = (
    "The merchant's events (the outbox that webhooks deliver) in the order they committed, "
    "oldest first, keyset-paged: pass the last `cursor` (or `pageInfo.endCursor`) as `after` "
    "to read on, now or later; an event committed after a page was read always comes after "
    "it. Reaches back `PORTAL_OUTBOX_RETENTION_DAYS` (30 by default); an older cursor is "
    "`CURSOR_EXPIRED`. An event appears within about a second of its commit."
)


@strawberry.type(description="One event of a merchant: a change of one of its payments.")
class PaymentEvent:
    id: strawberry.ID = strawberry.field(
        description="The event's id: the same as the `id` of its webhook body."
    )
    type: str = strawberry.field(
        description="Its type, e.g. `payment.recovered` (see `webhookEventTypes`)."
    )
    version: int = strawberry.field(description="The version of its type's payload schema.")
    occurred_at: datetime = strawberry.field(description="When the change happened.")
    payload: JSON = strawberry.field(
        description="Exactly the `data` its webhook carries; valid against the schema of its "
        "`type` and `version` in `webhookEventTypes`."
    )
    cursor: str = strawberry.field(
        description="Its position in the feed: pass as `after` to read or stream what follows."
    )

    @classmethod
    def from_event(cls, event: FeedEvent) -> Self:
        return cls(
            id=strawberry.ID(str(event.id)),
            type=event.event_type,
            version=event.version,
            occurred_at=event.created_at,
            payload=JSON(event.payload),
            cursor=event_resolvers.cursor_of(event),
        )


@connection(
    "A page of a merchant's events, in commit order.",
    edge="An event and its cursor.",
    noun="event",
    nouns="events",
)
class PaymentEventConnection(Connection[PaymentEvent]):
    pass


TypesArg = Annotated[
    list[str] | None,
    strawberry.argument(description="Only events of these types (see `webhookEventTypes`)."),
]


@strawberry.type(description="A type of event webhooks, the feed and subscriptions carry.")
class WebhookEventType:
    type: str = strawberry.field(description="Its name, e.g. `payment.recovered`.")
    version: int = strawberry.field(description="The current version of its payload schema.")
    description: str = strawberry.field(description="When it is emitted.")
    schema: JSON = strawberry.field(
        description="The JSON Schema (draft 2020-12) of its payload (`data` in webhooks, "
        "`payload` in the feed)."
    )


def webhook_event_types(info: Info) -> list[WebhookEventType]:
    info.context.require_principal()
    return [
        WebhookEventType(
            type=t.name, version=t.version, description=t.description, schema=JSON(t.schema())
        )
        for t in EVENT_TYPES
    ]


@strawberry.type(description="Entry points for live updates (graphql-transport-ws on /graphql).")
class Subscription:
    @strawberry.subscription(
        description="The merchant's events as they commit, in feed order, each once. With "
        "`after` (an event's `cursor`) it first sends every event after it, then goes on live: "
        "reconnect with the last cursor received and nothing is missed. Without `after` it "
        "starts with the next event. Authenticate with `connection_init` payload "
        '`{"authorization": "Bearer <key>"}`; a merchant the key may not see is `NOT_FOUND`.'
    )
    async def payment_events(
        self,
        info: Info,
        merchant_id: Annotated[strawberry.ID, strawberry.argument(description="Global id.")],
        after: Annotated[
            str | None, strawberry.argument(description="An event's cursor to resume after.")
        ] = None,
    ) -> AsyncGenerator[PaymentEvent, None]:
        stream = event_resolvers.event_stream(
            info.context, merchant_global_id=str(merchant_id), after=after
        )
        async for event in stream:
            yield PaymentEvent.from_event(event)
