"""Retries against the sandbox processors over HTTP: an account of each processor connected
to a merchant, its failures ingested and decided, one payment claimed, the sandbox's admin
events, and the sandbox's own views of what was charged."""

import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from sqlmodel import col, select

from app.clock import FixedClock
from app.db import Database
from app.enums import PaymentState, Processor, RetryStrategy
from app.models.ingestion import ProcessorConnection
from app.models.payment import Payment
from app.processors.base import RawItem
from app.services.connection import create_connection
from app.services.ingestion import land, normalize_raw_records
from app.tenancy import SYSTEM_SCOPE, system_principal
from app.workflows.polling import poll_connection
from app.workflows.retry_attempt import AttemptResult, default_adapters, execute_attempt
from sandbox import adyen
from sandbox.app import create_app
from sandbox.common import connection_credentials
from sandbox.server import serving
from sandbox.state import Sandbox
from tests.support.factories import SANDBOX_URLS, make_merchant, set_strategy
from tests.support.retry import BOX, claim, decide, reload
from tests.support.sandbox import create_account


class _Clock:
    """The sandbox's now: the portal's clock, moved together."""

    def __init__(self, clock: FixedClock) -> None:
        self._clock = clock

    def __call__(self) -> datetime:
        return self._clock.now()


@dataclass
class SandboxWorld:
    """The sandbox on loopback, a client for it, the shared clock, and its state."""

    url: str
    http: httpx.AsyncClient
    clock: FixedClock
    state: Sandbox


@asynccontextmanager
async def sandbox_world(now: datetime) -> AsyncIterator[SandboxWorld]:
    clock = FixedClock(now)
    app = create_app(_Clock(clock))
    async with (
        serving(app) as url,
        httpx.AsyncClient(base_url=url, trust_env=False, timeout=10) as http,
    ):
        yield SandboxWorld(url, http, clock, app.state.sandbox)


@dataclass
class Connected:
    """A sandbox account and the portal connection reading it."""

    processor: Processor
    account_id: str
    api_key: str
    connection: ProcessorConnection


async def stripe_account(world: SandboxWorld) -> str:
    """A small sandbox Stripe account (at `{world.url}/stripe`); returns its API key."""
    suffix = secrets.token_hex(4)
    key = f"key_{suffix}"
    body = {
        "processor": "stripe",
        "account_id": f"stripe_{suffix}",
        "merchant_seed": 1,
        "api_key": key,
        "history_days": 1,
        "customers": 5,
    }
    await create_account(world.http, body)
    return key


async def connect_account(
    world: SandboxWorld, db: Database, processor: Processor, *, seed: int, **policy: object
) -> Connected:
    """A sandbox account with 20 days of history, a merchant on the fixed schedule (with the
    policy `values` given) connected to it, every failure ingested and decided."""
    suffix = secrets.token_hex(4)
    account_id, key = f"{processor.value}_{suffix}", f"key_{suffix}"
    # Adyen signs its notifications; these tests land them directly, unsigned.
    hmac_key = secrets.token_hex(32) if processor is Processor.ADYEN else None
    body = {
        "processor": processor.value,
        "account_id": account_id,
        "merchant_seed": seed,
        "api_key": key,
        "history_days": 20,
        "customers": 120,
    }
    await create_account(world.http, {**body, "hmac_key_hex": hmac_key} if hmac_key else body)
    now = world.clock.now()
    merchant = await make_merchant(db, f"Billing {suffix}", now=now)
    await set_strategy(db, merchant.id, RetryStrategy.FIXED_SCHEDULE, **policy)
    async with db.uow(SYSTEM_SCOPE) as uow:
        connection = await create_connection(
            uow,
            principal=system_principal(),
            merchant_id=merchant.id,
            kind=processor,
            base_url=f"{world.url}/{processor.value}",
            policy=SANDBOX_URLS,
            credentials=connection_credentials(processor.value, account_id, key, hmac_key),
            box=BOX,
            account_ref=account_id,
            now=now,
        )
        await uow.commit()
    connected = Connected(processor, account_id, key, connection)
    await ingest(world, db, connected)
    while await decide(db, world.clock.now()):
        pass
    return connected


async def ingest(world: SandboxWorld, db: Database, connected: Connected) -> None:
    """Everything the account shows now: polled, or for Adyen (which pushes) its
    notifications landed as its webhook would land them."""
    if connected.processor is not Processor.ADYEN:
        while (
            await poll_connection(
                db, connected.connection.id, client=world.http, box=BOX, clock=world.clock
            )
        ).more:
            pass
        return
    account = world.state.accounts[connected.account_id]
    charges = account.items[: account.visible(world.clock.now())]
    items = [
        RawItem.from_json({"NotificationRequestItem": adyen.notification_item(c, account)}, c.id)
        for c in charges
    ]
    async with db.uow(SYSTEM_SCOPE) as uow:
        ids, _ = await land(uow, connected.connection, items, now=world.clock.now())
        await normalize_raw_records(uow, connected.connection, ids, now=world.clock.now())
        await uow.commit()


async def scheduled_payment(
    db: Database, connected: Connected, *, with_invoice: bool = False
) -> Payment:
    """The first scheduled payment of the connection (one naming an invoice, if asked)."""
    async with db.session(SYSTEM_SCOPE) as s:
        query = select(Payment).where(
            col(Payment.connection_id) == connected.connection.id,
            col(Payment.state) == PaymentState.SCHEDULED,
        )
        if with_invoice:
            query = query.where(col(Payment.invoice_ref).is_not(None))
        found = (await s.execute(query.order_by(col(Payment.next_retry_at)))).scalars().first()
    assert found is not None, "no scheduled payment"
    return found


async def claim_one(
    world: SandboxWorld, db: Database, connected: Connected, *, with_invoice: bool = False
) -> tuple[Payment, int]:
    """The first scheduled payment of the connection (one naming an invoice, if asked),
    claimed at its retry time: the payment and its attempt number."""
    found = await scheduled_payment(db, connected, with_invoice=with_invoice)
    assert found.next_retry_at is not None
    world.clock.set(max(world.clock.now(), found.next_retry_at))
    claimed = dict(await claim(db, world.clock.now()))
    assert found.id in claimed, "the payment was not claimed"
    return await reload(db, found.id), claimed[found.id]


async def attempt(
    world: SandboxWorld, db: Database, payment_id: uuid.UUID, number: int
) -> AttemptResult:
    """Run the attempt with the real adapters over HTTP."""
    return await execute_attempt(
        db,
        payment_id=payment_id,
        attempt_number=number,
        adapters=default_adapters(world.http, BOX),
        clock=world.clock,
    )


async def sandbox_event(
    world: SandboxWorld, connected: Connected, kind: str, charge_id: str
) -> dict[str, Any]:
    response = await world.http.post(
        f"/_sandbox/accounts/{connected.account_id}/events",
        json={"kind": kind, "charge_id": charge_id},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def sandbox_retries(world: SandboxWorld, connected: Connected) -> list[dict[str, Any]]:
    """Every retry charge the sandbox accepted for the account (its /charges view)."""
    response = await world.http.get(f"/_sandbox/accounts/{connected.account_id}/charges")
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def sandbox_keys(world: SandboxWorld, connected: Connected) -> dict[str, int]:
    """Charges made per idempotency key (the sandbox's /idempotency view)."""
    response = await world.http.get(f"/_sandbox/accounts/{connected.account_id}/idempotency")
    assert response.status_code == 200, response.text
    return {k["key"]: k["charges"] for k in response.json()["keys"]}


async def assert_not_charged(world: SandboxWorld, connected: Connected, payment: Payment) -> None:
    """Neither view shows a charge of the payment, nor any use of its attempt's key."""
    retries = await sandbox_retries(world, connected)
    assert [r for r in retries if r["retry_of"] == payment.processor_payment_id] == []
    keys = await sandbox_keys(world, connected)
    assert not [k for k in keys if k.startswith(f"retry-{payment.id}-")]
