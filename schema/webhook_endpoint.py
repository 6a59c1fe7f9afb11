"""Webhook endpoint types, their recent deliveries, and the create, rotate, enable, update,
delete, test and redeliver mutations."""

from datetime import datetime, timedelta
from typing import Annotated, Self

import strawberry

from app.errors import ErrorCode
from app.models.webhook_endpoint import WebhookEndpoint as EndpointModel
from app.retry.events import PING_EVENT_TYPE
from app.services.webhook_endpoint import DEFAULT_SECRET_GRACE, RecentDelivery
from app.webhook_events import NAMES as WEBHOOK_EVENT_TYPES
from resolvers import webhook_endpoint as endpoint_resolvers
from resolvers.context import Context
from resolvers.ids import encode_id
from schema.enums import WebhookDeliveryStatus
from schema.mutation import Payload, ReasonArg, mutation
from schema.node import Node
from schema.rows import from_row

Info = strawberry.Info[Context, None]


@strawberry.type(description="One event sent, or being sent, to a webhook endpoint.")
class WebhookDelivery:
    id: strawberry.ID = strawberry.field(
        description="The delivery's global id, to pass to redeliverWebhook."
    )
    redelivery_of: strawberry.ID | None = strawberry.field(
        description="The delivery this one sends again (redeliverWebhook); null otherwise."
    )
    event_type: str = strawberry.field(description="The event's type, e.g. payment.recovered.")
    status: WebhookDeliveryStatus = strawberry.field(
        description="Pending (retried with backoff), delivered, or failed (given up)."
    )
    attempts: int = strawberry.field(description="How many times it was sent.")
    last_status_code: int | None = strawberry.field(
        description="The HTTP status of the last try; null when no response came."
    )
    last_error: str | None = strawberry.field(description="Why the last try failed, if it did.")
    created_at: datetime = strawberry.field(description="When the event was queued for sending.")
    delivered_at: datetime | None = strawberry.field(
        description="When the endpoint acknowledged it, if it did."
    )
    next_attempt_at: datetime | None = strawberry.field(
        description="When it is tried next, while pending."
    )

    @classmethod
    def from_model(cls, row: RecentDelivery) -> Self:
        d = row.delivery
        status = d.status
        return from_row(
            cls,
            d,
            id=strawberry.ID(encode_id("WebhookDelivery", d.id)),
            redelivery_of=(
                None
                if d.redelivery_of is None
                else strawberry.ID(encode_id("WebhookDelivery", d.redelivery_of))
            ),
            event_type=row.event_type,
            status=status,
            next_attempt_at=d.next_attempt_at if status is WebhookDeliveryStatus.PENDING else None,
        )


@strawberry.type(description="A URL a merchant's events are posted to, signed with its secret.")
class WebhookEndpoint(Node):
    url: str = strawberry.field(description="Where events are posted.")
    enabled: bool = strawberry.field(description="Whether new events are sent to it.")
    event_types: list[str] | None = strawberry.field(
        description="The event types it receives; null when it receives every type."
    )
    created_at: datetime = strawberry.field(description="When the endpoint was added.")
    previous_secret_expires_at: datetime | None = strawberry.field(
        description=(
            "Until when deliveries also carry a signature with the secret the last rotation "
            "replaced (a second `v1=` in Portal-Signature); null when that rotation kept none."
        )
    )
    _row: strawberry.Private[EndpointModel]

    @classmethod
    def from_model(cls, row: EndpointModel) -> Self:
        return from_row(cls, row, id=cls.global_id(row.id), _row=row)

    @strawberry.field(description="The newest deliveries to this endpoint, newest first.")
    async def recent_deliveries(
        self,
        info: Info,
        first: Annotated[int, strawberry.argument(description="How many, 1-100.")] = 20,
    ) -> list[WebhookDelivery]:
        rows = await endpoint_resolvers.deliveries(info.context, self._row.id, first)
        return [WebhookDelivery.from_model(r) for r in rows]


@strawberry.input(description="A URL to post a merchant's events to.")
class CreateWebhookEndpointInput:
    merchant_id: strawberry.ID = strawberry.field(description="The merchant's global id.")
    url: str = strawberry.field(
        description=(
            "An http(s) URL of at most 500 characters (https only in production), on a public "
            "host: loopback, private, link-local and other inward addresses are refused."
        )
    )


class CreateWebhookEndpointPayload(Payload):
    webhook_endpoint: WebhookEndpoint | None = strawberry.field(
        description="The new endpoint, when it was created."
    )
    secret: str | None = strawberry.field(
        description=(
            "The signing secret, returned this once only: verify the Portal-Signature header "
            "with it. Never shown again; rotate it if lost."
        ),
    )


@mutation(
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID, ErrorCode.URL_NOT_ALLOWED),
    why="refused an endpoint",
    errors="Why the endpoint was refused",
    subject="merchantId",
    description=(
        "Add a URL to post a merchant's events to (support, the merchant's own key, or a "
        "partner key granted the merchant); the signing secret is generated and returned "
        "once. It receives every event type until updateWebhookEndpoint narrows them. Audited."
    ),
)
async def create_webhook_endpoint(
    info: Info, input: CreateWebhookEndpointInput
) -> CreateWebhookEndpointPayload:
    row, secret = await endpoint_resolvers.create(
        info.context, merchant_global_id=str(input.merchant_id), url=input.url
    )
    return CreateWebhookEndpointPayload(
        webhook_endpoint=WebhookEndpoint.from_model(row), secret=secret
    )


@strawberry.input(description="Which endpoint gets a new signing secret, and why.")
class RotateWebhookSecretInput:
    endpoint_id: strawberry.ID = strawberry.field(description="The endpoint's global id.")
    reason: str = strawberry.field(description="Why; kept in the audit log.")
    previous_secret_valid_hours: int = strawberry.field(
        default=int(DEFAULT_SECRET_GRACE.total_seconds() // 3600),
        description=(
            "For how many hours (0-168) deliveries also carry a signature with the old secret, "
            "so receivers can switch without losing events. 0 ends the old secret at once: use "
            "it when the old secret leaked."
        ),
    )


class RotateWebhookSecretPayload(Payload):
    webhook_endpoint: WebhookEndpoint | None = strawberry.field(
        description="The endpoint, when its secret was replaced."
    )
    secret: str | None = strawberry.field(
        description=(
            "The new signing secret, returned this once only; deliveries sent from now on are "
            "signed with it, and with the old one too until previousSecretExpiresAt."
        ),
    )


@mutation(
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID),
    errors="Why the rotation was refused",
    subject="endpointId",
    description=(
        "Replace an endpoint's signing secret (support, the merchant's key, or a partner key "
        "granted the merchant); the new "
        "secret is returned once, and the old one keeps signing deliveries too for the "
        "grace period asked for (24 hours unless told). Audited, without the secrets."
    ),
)
async def rotate_webhook_secret(
    info: Info, input: RotateWebhookSecretInput
) -> RotateWebhookSecretPayload:
    row, secret = await endpoint_resolvers.rotate(
        info.context,
        global_id=str(input.endpoint_id),
        reason=input.reason,
        grace=timedelta(hours=input.previous_secret_valid_hours),
    )
    return RotateWebhookSecretPayload(
        webhook_endpoint=WebhookEndpoint.from_model(row), secret=secret
    )


@strawberry.input(description="Turn an endpoint on or off, and why.")
class SetWebhookEndpointEnabledInput:
    endpoint_id: strawberry.ID = strawberry.field(description="The endpoint's global id.")
    enabled: bool = strawberry.field(description="Whether new events are sent to it.")
    reason: str = strawberry.field(description="Why; kept in the audit log.")


class SetWebhookEndpointEnabledPayload(Payload):
    webhook_endpoint: WebhookEndpoint | None = strawberry.field(
        description="The endpoint, when the change was applied."
    )


@mutation(
    # URL_NOT_ALLOWED: enabling an endpoint stored before its URL became refused (app/urls.py).
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID, ErrorCode.URL_NOT_ALLOWED),
    subject="endpointId",
    description=(
        "Turn an endpoint on or off (support, the merchant's key, or a partner key granted "
        "the merchant); a disabled one "
        "receives no new events, and one whose URL is no longer allowed is not turned back "
        "on. Audited."
    ),
)
async def set_webhook_endpoint_enabled(
    info: Info, input: SetWebhookEndpointEnabledInput
) -> SetWebhookEndpointEnabledPayload:
    row = await endpoint_resolvers.set_enabled(
        info.context,
        global_id=str(input.endpoint_id),
        enabled=input.enabled,
        reason=input.reason,
    )
    return SetWebhookEndpointEnabledPayload(webhook_endpoint=WebhookEndpoint.from_model(row))


_EVENT_TYPES = ", ".join(WEBHOOK_EVENT_TYPES)


@strawberry.input(
    description="What to change of an endpoint, and why; a field left out stays as it is."
)
class UpdateWebhookEndpointInput:
    endpoint_id: strawberry.ID = strawberry.field(description="The endpoint's global id.")
    reason: str = strawberry.field(description="Why; kept in the audit log.")
    url: str | None = strawberry.field(
        default=strawberry.UNSET,
        description=(
            "A new URL, checked like createWebhookEndpoint's; pending deliveries go to it from "
            "their next try. Null or left out: unchanged."
        ),
    )
    enabled: bool | None = strawberry.field(
        default=strawberry.UNSET,
        description="Whether new events are sent to it. Null or left out: unchanged.",
    )
    event_types: list[str] | None = strawberry.field(
        default=strawberry.UNSET,
        description=(
            "The event types it receives, for events fanned out from now on: at least one of "
            f"{_EVENT_TYPES}. Null: every type. Left out: unchanged."
        ),
    )


class UpdateWebhookEndpointPayload(Payload):
    webhook_endpoint: WebhookEndpoint | None = strawberry.field(
        description="The endpoint, when the change was applied."
    )


@mutation(
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID, ErrorCode.URL_NOT_ALLOWED),
    subject="endpointId",
    description=(
        "Change an endpoint's URL, whether it is enabled, and the event types it receives "
        "(support, the merchant's own key, or a partner key granted the merchant). An "
        "unknown event type is INVALID on eventTypes. Audited with what changed."
    ),
)
async def update_webhook_endpoint(
    info: Info, input: UpdateWebhookEndpointInput
) -> UpdateWebhookEndpointPayload:
    event_types = input.event_types
    set_types = event_types is not strawberry.UNSET
    row = await endpoint_resolvers.update(
        info.context,
        global_id=str(input.endpoint_id),
        reason=input.reason,
        url=None if input.url is strawberry.UNSET else input.url,
        enabled=None if input.enabled is strawberry.UNSET else input.enabled,
        event_types=event_types if set_types else None,
        set_event_types=set_types,
    )
    return UpdateWebhookEndpointPayload(webhook_endpoint=WebhookEndpoint.from_model(row))


@strawberry.input(description="Which endpoint to delete, and why.")
class DeleteWebhookEndpointInput:
    endpoint_id: strawberry.ID = strawberry.field(description="The endpoint's global id.")
    reason: str = strawberry.field(description="Why; kept in the audit log.")


class DeleteWebhookEndpointPayload(Payload):
    deleted_webhook_endpoint_id: strawberry.ID | None = strawberry.field(
        description="The deleted endpoint's global id, when it was deleted."
    )


@mutation(
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID),
    subject="endpointId",
    description=(
        "Delete an endpoint (support, the merchant's own key, or a partner key granted the "
        "merchant): its secrets and its delivery history go with it, and its pending "
        "deliveries are never tried again. The audit log keeps its URL and how many "
        "deliveries it had. Audited."
    ),
)
async def delete_webhook_endpoint(
    info: Info, input: DeleteWebhookEndpointInput
) -> DeleteWebhookEndpointPayload:
    row = await endpoint_resolvers.delete(
        info.context, global_id=str(input.endpoint_id), reason=input.reason
    )
    return DeleteWebhookEndpointPayload(
        deleted_webhook_endpoint_id=WebhookEndpoint.global_id(row.id)
    )


class SendTestWebhookPayload(Payload):
    webhook_endpoint: WebhookEndpoint | None = strawberry.field(
        description="The endpoint the test event is sent to."
    )
    delivery: WebhookDelivery | None = strawberry.field(
        description=(
            "The test event's delivery, pending: follow it in the endpoint's recentDeliveries."
        )
    )


@mutation(
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.URL_NOT_ALLOWED),
    subject="endpointId",
    description=(
        f"Send a `{PING_EVENT_TYPE}` event to one endpoint (enabled or not, whatever event "
        "types it receives), signed like every delivery and retried like one; it reports no "
        "change and goes to no other endpoint (support, the merchant's own key, or a partner "
        "key granted the merchant). Audited."
    ),
)
async def send_test_webhook(
    info: Info,
    endpoint_id: Annotated[
        strawberry.ID, strawberry.argument(description="The endpoint's global id.")
    ],
) -> SendTestWebhookPayload:
    row, sent = await endpoint_resolvers.send_test(info.context, global_id=str(endpoint_id))
    return SendTestWebhookPayload(
        webhook_endpoint=WebhookEndpoint.from_model(row), delivery=WebhookDelivery.from_model(sent)
    )


class RedeliverWebhookPayload(Payload):
    webhook_endpoint: WebhookEndpoint | None = strawberry.field(
        description="The endpoint the event is sent to again."
    )
    delivery: WebhookDelivery | None = strawberry.field(
        description="The new delivery, pending (its redeliveryOf names the one repeated)."
    )


@mutation(
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID, ErrorCode.INVALID_STATE),
    subject="deliveryId",
    description=(
        "Send a delivery's event again to its endpoint, as a new delivery with its own id "
        "(Portal-Delivery), signed anew with the endpoint's secrets when sent (support, the "
        "merchant's own key, or a partner key granted the merchant). INVALID_STATE while a "
        "delivery of that event to that endpoint is still pending. Audited."
    ),
)
async def redeliver_webhook(
    info: Info,
    delivery_id: Annotated[
        strawberry.ID,
        strawberry.argument(description="The global id of the delivery to send again."),
    ],
    reason: ReasonArg,
) -> RedeliverWebhookPayload:
    row, sent = await endpoint_resolvers.redeliver_delivery(
        info.context, global_id=str(delivery_id), reason=reason
    )
    return RedeliverWebhookPayload(
        webhook_endpoint=WebhookEndpoint.from_model(row), delivery=WebhookDelivery.from_model(sent)
    )
