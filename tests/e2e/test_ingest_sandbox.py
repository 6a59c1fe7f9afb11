"""Ingestion from the sandbox processors over real HTTP on loopback: full ingests, re-ingests,
faults, interrupted polls, Adyen webhooks and replay."""

import asyncio
import itertools
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import httpx
import pytest
from redis.asyncio import Redis
from sqlmodel import col, func, select

from app.clock import FixedClock
from app.crypto import CredentialBox
from app.db import Database
from app.embedded import Services
from app.enums import Actor, ConnectionStatus, PaymentState, Processor
from app.models.customer import Customer
from app.models.ingestion import DeadLetter, ProcessorConnection, RawRecord
from app.models.merchant import Merchant
from app.models.payment import Payment, PaymentAttempt
from app.processors.base import TransientProcessorError
from app.services.connection import create_connection
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, system_principal
from app.workflows.polling import PollResult, poll_connection
from app.workflows.replay import replay_connection
from jobs.ingest import normalize_connection
from portal.asgi import Resources, create_app
from sandbox.app import create_app as create_sandbox
from sandbox.common import connection_credentials
from sandbox.server import serving
from tests.support.factories import SANDBOX_URLS, make_merchant
from tests.support.sandbox import create_account, set_faults

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
SETTINGS = Settings(environment="test")
BOX = CredentialBox(SETTINGS.secret_key.get_secret_value())
_numbers = itertools.count(1)
PATHS = {
    Processor.STRIPE: "/stripe",
    Processor.BRAINTREE: "/braintree",
    Processor.CHECKOUT: "/checkout",
    Processor.ADYEN: "/adyen",
}
POLLED = [Processor.STRIPE, Processor.BRAINTREE, Processor.CHECKOUT]


@pytest.fixture(scope="module")
async def sandbox_url() -> AsyncIterator[str]:
    async with serving(create_sandbox(lambda: NOW)) as url:
        yield url


@pytest.fixture
async def admin(sandbox_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox_url, timeout=30) as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


async def sandbox_account(
    admin: httpx.AsyncClient, processor: Processor, *, seed: int = 7, **fields: Any
) -> dict[str, Any]:
    n = next(_numbers)
    body = {
        "processor": processor.value,
        "account_id": f"{processor.value}_{n}_{secrets.token_hex(3)}",
        "merchant_seed": seed,
        "api_key": f"key_{n}_{secrets.token_hex(6)}",
        "history_days": 20,
        "customers": 300,
        **fields,
    }
    return await create_account(admin, body)


async def connect(
    db: Database, merchant: Merchant, processor: Processor, account: dict[str, Any], base: str
) -> ProcessorConnection:
    credentials = connection_credentials(
        processor.value, account["account_id"], account["api_key"], account.get("hmac_key_hex")
    )
    async with db.uow(SYSTEM_SCOPE) as uow:
        connection = await create_connection(
            uow,
            principal=system_principal(),
            merchant_id=merchant.id,
            kind=processor,
            base_url=base + PATHS[processor],
            policy=SANDBOX_URLS,
            credentials=credentials,
            box=BOX,
            account_ref=account["account_id"],
            now=NOW,
        )
        await uow.commit()
    return connection


class Twins(Protocol):
    """Makes two sandbox accounts of a processor with the same history, each connected for its
    own merchant: the first is ingested cleanly as the reference; the second is the one a test
    disturbs (with `faults`, its account misbehaves so). Each test passes its own `seed`,
    offset by the processor."""

    def __call__(
        self,
        processor: Processor,
        *,
        seed: int,
        names: tuple[str, str],
        faults: dict[str, Any] | None = None,
    ) -> Awaitable[tuple[ProcessorConnection, ProcessorConnection]]: ...


@pytest.fixture
def twins(db: Database, admin: httpx.AsyncClient, sandbox_url: str) -> Twins:
    async def make(
        processor: Processor,
        *,
        seed: int,
        names: tuple[str, str],
        faults: dict[str, Any] | None = None,
    ) -> tuple[ProcessorConnection, ProcessorConnection]:
        seed += POLLED.index(processor)
        reference_account = await sandbox_account(admin, processor, seed=seed)
        other_account = await sandbox_account(admin, processor, seed=seed)
        if faults is not None:
            await set_faults(admin, other_account["account_id"], **faults)
        reference = await connect(
            db,
            await make_merchant(db, names[0], now=NOW),
            processor,
            reference_account,
            sandbox_url,
        )
        other = await connect(
            db, await make_merchant(db, names[1], now=NOW), processor, other_account, sandbox_url
        )
        return reference, other

    return make


async def ingest_all(
    db: Database, connection: ProcessorConnection, http: httpx.AsyncClient, *, max_pages: int = 50
) -> PollResult:
    """Poll until caught up, retrying transient failures the way the job does."""
    for _ in range(200):
        try:
            result = await poll_connection(
                db, connection.id, client=http, box=BOX, clock=FixedClock(NOW), max_pages=max_pages
            )
        except TransientProcessorError:
            continue
        if not result.more:
            return result
    raise AssertionError("ingestion never caught up")


async def payment_ids(db: Database, connection: ProcessorConnection) -> list[str]:
    async with db.session(SYSTEM_SCOPE) as s:
        rows = await s.execute(
            select(col(Payment.processor_payment_id)).where(
                col(Payment.connection_id) == connection.id
            )
        )
        return sorted(rows.scalars())


async def count(db: Database, model: Any, connection: ProcessorConnection) -> int:
    async with db.session(SYSTEM_SCOPE) as s:
        value = await s.scalar(
            select(func.count()).select_from(model).where(model.connection_id == connection.id)
        )
    return int(value or 0)


async def charges_visible(admin: httpx.AsyncClient, account_id: str) -> int:
    return int((await admin.get(f"/_sandbox/accounts/{account_id}")).json()["charges"])


@pytest.mark.parametrize("processor", POLLED, ids=lambda p: p.value)
async def test_full_ingest_then_again_duplicates_nothing(
    db: Database,
    admin: httpx.AsyncClient,
    http: httpx.AsyncClient,
    sandbox_url: str,
    processor: Processor,
) -> None:
    account = await sandbox_account(admin, processor)
    merchant = await make_merchant(db, f"Sandbox {processor.value}", now=NOW)
    connection = await connect(db, merchant, processor, account, sandbox_url)
    await ingest_all(db, connection, http)
    charges = await charges_visible(admin, account["account_id"])
    assert charges > 150  # several pages for every processor
    assert await count(db, RawRecord, connection) == charges
    assert await count(db, DeadLetter, connection) == 0
    first = await payment_ids(db, connection)
    assert len(first) > 5
    again = await ingest_all(db, connection, http)
    assert again.stats.landed == 0
    assert await count(db, RawRecord, connection) == charges
    assert await payment_ids(db, connection) == first


FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("rate_limit", {"rate_limit": 3}),
    ("server_error", {"server_error": 3}),
    ("duplicates", {"duplicates": True}),
    ("out_of_order", {"out_of_order": True}),
    ("slow", {"slow": 2, "slow_seconds": 1.5}),
]


@pytest.mark.parametrize("processor", POLLED, ids=lambda p: p.value)
@pytest.mark.parametrize(("name", "faults"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_faults_lose_and_duplicate_nothing(
    db: Database, twins: Twins, processor: Processor, name: str, faults: dict[str, Any]
) -> None:
    clean, faulty = await twins(
        processor, seed=100, names=(f"Faults {name}", f"Faults {name} (faulty)"), faults=faults
    )
    # A short timeout so the slow fault really times out on the client side.
    async with httpx.AsyncClient(timeout=1.0) as http:
        await ingest_all(db, clean, http, max_pages=3)
        await ingest_all(db, faulty, http, max_pages=3)
    assert await payment_ids(db, faulty) == await payment_ids(db, clean)
    assert await count(db, RawRecord, faulty) == await count(db, RawRecord, clean)


@pytest.mark.parametrize("processor", POLLED, ids=lambda p: p.value)
async def test_corrupt_records_are_quarantined_and_the_rest_goes_on(
    db: Database, http: httpx.AsyncClient, twins: Twins, processor: Processor
) -> None:
    clean, bad = await twins(
        processor, seed=200, names=("Clean", "Corrupt"), faults={"malformed": 3, "truncated": 2}
    )
    await ingest_all(db, clean, http)
    await ingest_all(db, bad, http)
    assert await count(db, DeadLetter, bad) == 5
    assert await count(db, RawRecord, bad) == await count(db, RawRecord, clean)
    async with db.session(SYSTEM_SCOPE) as s:
        quarantined = set(
            (
                await s.execute(
                    select(col(RawRecord.external_id))
                    .join(DeadLetter, col(DeadLetter.raw_record_id) == col(RawRecord.id))
                    .where(col(DeadLetter.connection_id) == bad.id)
                )
            ).scalars()
        )
    got, expected = set(await payment_ids(db, bad)), set(await payment_ids(db, clean))
    assert got <= expected
    assert expected - got <= quarantined


@pytest.mark.parametrize("processor", POLLED, ids=lambda p: p.value)
async def test_interrupted_polls_resume_to_the_same_end_state(
    db: Database, http: httpx.AsyncClient, twins: Twins, processor: Processor
) -> None:
    clean, cut = await twins(
        processor, seed=300, names=("Whole", "Cut"), faults={"slow": 1, "slow_seconds": 3}
    )
    await ingest_all(db, clean, http)
    # A worker that dies in the middle of a (slow) page: the page's transaction never commits.
    task = asyncio.create_task(
        poll_connection(db, cut.id, client=http, box=BOX, clock=FixedClock(NOW))
    )
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Then one page at a time, as a worker restarted between pages would.
    for _ in range(400):
        result = await poll_connection(
            db, cut.id, client=http, box=BOX, clock=FixedClock(NOW), max_pages=1
        )
        if not result.more:
            break
    assert await payment_ids(db, cut) == await payment_ids(db, clean)
    assert await count(db, RawRecord, cut) == await count(db, RawRecord, clean)


@pytest.mark.parametrize("processor", POLLED, ids=lambda p: p.value)
async def test_racing_pollers_write_each_batch_once(
    db: Database, http: httpx.AsyncClient, twins: Twins, processor: Processor
) -> None:
    """Two workers on one connection: the one whose cursor went stale drops its batch (and the
    batch it read ahead) and the end state is that of a single poller."""
    clean, raced = await twins(processor, seed=500, names=("Alone", "Raced"))
    await ingest_all(db, clean, http)
    stale = 0
    for _ in range(200):
        results = await asyncio.gather(
            *(
                poll_connection(
                    db, raced.id, client=http, box=BOX, clock=FixedClock(NOW), max_pages=4
                )
                for _ in range(2)
            )
        )
        stale += sum(1 for r in results if r.more and r.stats.landed == 0)
        if not any(r.more for r in results):
            break
    assert stale > 0  # the race did happen
    assert await payment_ids(db, raced) == await payment_ids(db, clean)
    assert await count(db, RawRecord, raced) == await count(db, RawRecord, clean)


async def test_replay_gives_the_same_clean_rows(
    db: Database, admin: httpx.AsyncClient, http: httpx.AsyncClient, sandbox_url: str
) -> None:
    account = await sandbox_account(admin, Processor.STRIPE, seed=400)
    connection = await connect(
        db, await make_merchant(db, "Replay", now=NOW), Processor.STRIPE, account, sandbox_url
    )
    await ingest_all(db, connection, http)

    async def snapshot() -> list[tuple[Any, ...]]:
        async with db.session(SYSTEM_SCOPE) as s:
            payments = (
                (
                    await s.execute(
                        select(Payment).where(col(Payment.connection_id) == connection.id)
                    )
                )
                .scalars()
                .all()
            )
            attempts = await s.scalar(
                select(func.count())
                .select_from(PaymentAttempt)
                .join(Payment, col(Payment.id) == col(PaymentAttempt.payment_id))
                .where(col(Payment.connection_id) == connection.id)
            )
        rows = sorted(
            (p.id, p.state, p.decline_category, p.decline_advice, p.attempt_count) for p in payments
        )
        return [*rows, ("attempts", attempts)]

    before = await snapshot()
    stats = await replay_connection(db, connection.id, since=None, clock=FixedClock(NOW))
    assert stats.payments_created == 0
    assert await snapshot() == before


async def test_bad_credentials_mark_the_connection(
    db: Database, admin: httpx.AsyncClient, http: httpx.AsyncClient, sandbox_url: str
) -> None:
    account = await sandbox_account(admin, Processor.CHECKOUT, seed=500)
    account["api_key"] = "wrong"
    connection = await connect(
        db, await make_merchant(db, "Wrong key", now=NOW), Processor.CHECKOUT, account, sandbox_url
    )
    result = await poll_connection(db, connection.id, client=http, box=BOX, clock=FixedClock(NOW))
    assert result.error is not None
    assert "401" in result.error
    async with db.session(SYSTEM_SCOPE) as s:
        row = await s.get(ProcessorConnection, connection.id)
    assert row is not None
    assert row.status is ConnectionStatus.ERROR
    assert "wrong" not in (row.last_error or "")


@pytest.fixture
async def portal_url(db: Database, services: Services) -> AsyncIterator[str]:
    redis = Redis.from_url(services.redis_url)
    app = create_app(
        SETTINGS, resources=Resources(db=db, redis=redis, arq=None, clock=FixedClock(NOW))
    )
    async with serving(app) as url:
        yield url
    await redis.aclose()


async def test_adyen_webhooks_land_verify_and_normalize(
    db: Database,
    admin: httpx.AsyncClient,
    http: httpx.AsyncClient,
    sandbox_url: str,
    portal_url: str,
) -> None:
    merchant = await make_merchant(db, "Adyen", now=NOW)
    connection_id = uuid.uuid4()
    hmac_key = secrets.token_hex(32)
    account = await sandbox_account(
        admin,
        Processor.ADYEN,
        seed=600,
        webhook_url=f"{portal_url}/webhooks/adyen/{connection_id}",
        hmac_key_hex=hmac_key,
        customers=60,
    )
    account["hmac_key_hex"] = hmac_key
    connection = await connect(db, merchant, Processor.ADYEN, account, sandbox_url)
    # The webhook URL names the connection: give the connection the id the URL carries.
    async with db.uow(SYSTEM_SCOPE) as uow:
        row = await uow.session.get(ProcessorConnection, connection.id)
        assert row is not None
        await uow.session.delete(row)
        await uow.session.flush()
        row.id = connection_id
        uow.session.add(ProcessorConnection(**{**row.model_dump(), "id": connection_id}))
        await uow.commit()
    connection.id = connection_id
    for _ in range(20):
        pushed = (await admin.post(f"/_sandbox/accounts/{account['account_id']}/push")).json()
        if pushed["pending"] == 0:
            break
    assert pushed["last_error"] is None
    charges = await charges_visible(admin, account["account_id"])
    assert await count(db, RawRecord, connection) == charges
    await normalize_connection({"db": db, "clock": FixedClock(NOW)}, str(connection_id))  # type: ignore[typeddict-item]
    assert len(await payment_ids(db, connection)) > 0
    # A forged batch is refused and nothing of it is stored.
    forged = {
        "live": "false",
        "notificationItems": [
            {
                "NotificationRequestItem": {
                    "pspReference": "FORGED1",
                    "merchantAccountCode": account["account_id"],
                    "merchantReference": "x",
                    "amount": {"value": 100, "currency": "EUR"},
                    "eventCode": "AUTHORISATION",
                    "success": "true",
                    "additionalData": {"hmacSignature": "bm90IGEgc2lnbmF0dXJl"},
                }
            }
        ],
    }
    response = await http.post(f"{portal_url}/webhooks/adyen/{connection_id}", json=forged)
    assert response.status_code == 401
    assert await count(db, RawRecord, connection) == charges


# Who pays each processor's failed invoices outside the portal, as its sandbox renders it.
PAYERS: dict[Processor, list[tuple[str, Actor]]] = {
    Processor.STRIPE: [("billing_system", Actor.BILLING_SYSTEM), ("customer", Actor.CUSTOMER)],
    Processor.BRAINTREE: [
        ("billing_system", Actor.BILLING_SYSTEM),
        ("customer", Actor.CUSTOMER),
        ("processor", Actor.PROCESSOR),
    ],
    Processor.CHECKOUT: [("billing_system", Actor.BILLING_SYSTEM), ("customer", Actor.CUSTOMER)],
}


@pytest.mark.parametrize("processor", POLLED, ids=lambda p: p.value)
async def test_recoveries_and_customers_as_polled_from_the_sandbox(
    db: Database,
    admin: httpx.AsyncClient,
    http: httpx.AsyncClient,
    sandbox_url: str,
    processor: Processor,
) -> None:
    account = await sandbox_account(admin, processor, seed=700)
    merchant = await make_merchant(db, f"Payers {processor.value}", now=NOW)
    connection = await connect(db, merchant, processor, account, sandbox_url)
    await ingest_all(db, connection, http)
    async with db.session(SYSTEM_SCOPE) as s:
        open_ = (
            (
                await s.execute(
                    select(Payment)
                    .where(
                        col(Payment.connection_id) == connection.id,
                        col(Payment.invoice_ref).is_not(None),
                    )
                    .order_by(col(Payment.processor_payment_id))
                )
            )
            .scalars()
            .all()
        )
    payers = PAYERS[processor]
    paid = dict(zip([p.id for p in open_], payers, strict=False))
    for payment in open_[: len(payers)]:
        event = {"kind": "paid_elsewhere", "charge_id": payment.processor_payment_id}
        event["by"] = paid[payment.id][0]
        response = await admin.post(
            f"/_sandbox/accounts/{account['account_id']}/events", json=event
        )
        assert response.status_code == 200, response.text
    await ingest_all(db, connection, http)
    async with db.session(SYSTEM_SCOPE) as s:
        for payment_id, (_, actor) in paid.items():
            row = await s.get(Payment, payment_id)
            assert row is not None
            assert (row.state, row.recovered_by) == (PaymentState.RECOVERED, actor)
        places = (
            await s.execute(
                select(col(Customer.country), col(Customer.timezone)).where(
                    col(Customer.merchant_id) == merchant.id
                )
            )
        ).all()
    # Customers are placed from what the processor sent: most with a country, those in a
    # country of one clock or whose address names their state with a zone, every zone real.
    countries = [c for c, _ in places if c is not None]
    zones = [z for _, z in places if z is not None]
    assert len(countries) > len(places) // 2
    assert zones
    assert {ZoneInfo(z).key for z in zones} == set(zones)
