"""Webhook test helpers: a resolver answering from a table, so no test ever asks real DNS."""

import ipaddress
import socket
import uuid
from datetime import timedelta
from typing import Any

from app.clock import FixedClock
from app.db import Database
from app.models.merchant import Merchant
from app.models.retry import OutboxEvent
from app.models.webhook_endpoint import WebhookDelivery
from app.services.retry.pinning import Resolver
from app.tenancy import SYSTEM_SCOPE
from app.urls import IPAddress

# A public address (example.com's) for hosts whose requests a mock transport answers: the
# checks allow it, and nothing is ever sent to it.
PUBLIC = "93.184.216.34"


def table_resolver(table: dict[str, list[str]]) -> Resolver:
    """Resolve from `table`; a host not in it fails as an unknown name does."""

    async def resolve(host: str, port: int) -> list[IPAddress]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not in the test's table")
        return [ipaddress.ip_address(a) for a in table[host]]

    return resolve


async def queue_delivery(
    db: Database,
    merchant: Merchant,
    endpoint_id: uuid.UUID,
    clock: FixedClock,
    *,
    event_type: str,
    age: timedelta = timedelta(0),
    **fields: Any,
) -> uuid.UUID:
    """One event and its delivery to the endpoint, due `age` ago; returns the delivery's id."""
    at = clock.now() - age
    async with db.uow(SYSTEM_SCOPE) as uow:
        event = OutboxEvent(
            merchant_id=merchant.id,
            event_type=event_type,
            payload={"n": event_type},
            created_at=at,
            dispatched_at=at,
        )
        uow.session.add(event)
        await uow.session.flush()
        delivery = WebhookDelivery(
            merchant_id=merchant.id,
            event_id=event.id,
            event_created_at=event.created_at,
            endpoint_id=endpoint_id,
            next_attempt_at=at,
            created_at=at,
            **fields,
        )
        uow.session.add(delivery)
        await uow.commit()
    return delivery.id
