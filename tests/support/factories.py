"""Typed async factories for test data, through the same services the portal uses."""

import uuid
from datetime import datetime, timedelta

from sqlmodel import col, select, update

from app.crypto import CredentialBox
from app.db import Database
from app.enums import (
    Actor,
    Advice,
    ApiKeyScope,
    AttemptOutcome,
    CardFunding,
    DeclineCategory,
    PaymentState,
    Processor,
    RetryStrategy,
    Role,
)
from app.models.api_key import ApiKey
from app.models.customer import CardCredential, Customer
from app.models.ingestion import ProcessorConnection
from app.models.merchant import Merchant
from app.models.payment import Payment, PaymentAttempt
from app.models.retry_policy import RetryPolicy
from app.services.api_key import create_api_key, hash_token
from app.services.connection import create_connection
from app.services.merchant import create_merchant
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, system_principal
from app.urls import UrlPolicy

# The sandbox processors (and receivers) of tests and benchmarks listen on loopback.
SANDBOX_URLS = UrlPolicy(require_https=False, allow_loopback=True)


async def make_merchant(db: Database, name: str, *, now: datetime) -> Merchant:
    async with db.uow(SYSTEM_SCOPE) as uow:
        merchant = await create_merchant(uow, name=name, principal=system_principal(), now=now)
        await uow.commit()
    return merchant


async def set_strategy(
    db: Database, merchant_id: uuid.UUID, strategy: RetryStrategy, **values: object
) -> None:
    """Put a merchant's stored policy on `strategy` (and other values) without a new version."""
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            update(RetryPolicy)
            .where(col(RetryPolicy.merchant_id) == merchant_id)
            .values(strategy=strategy, **values)
        )
        await uow.commit()


async def make_key(
    db: Database,
    role: Role,
    merchants: list[Merchant],
    *,
    now: datetime,
    name: str = "test",
    scopes: frozenset[ApiKeyScope] = frozenset(ApiKeyScope),
    expires_at: datetime | None = None,
) -> str:
    async with db.uow(SYSTEM_SCOPE) as uow:
        _, token = await create_api_key(
            uow,
            name=name,
            role=role,
            merchant_ids=[m.id for m in merchants],
            now=now,
            scopes=scopes,
            expires_at=expires_at,
        )
        await uow.commit()
    return token


async def key_id(db: Database, token: str) -> uuid.UUID:
    """The id of the key a token belongs to."""
    async with db.session(SYSTEM_SCOPE) as session:
        found = await session.execute(
            select(ApiKey.id).where(col(ApiKey.token_hash) == hash_token(token))
        )
        return found.scalar_one()


async def make_connection(
    db: Database,
    merchant: Merchant,
    *,
    now: datetime,
    settings: Settings,
    kind: Processor = Processor.STRIPE,
) -> ProcessorConnection:
    """A connection with placeholder credentials, sealed with the settings' key."""
    async with db.uow(SYSTEM_SCOPE) as uow:
        connection = await create_connection(
            uow,
            principal=system_principal(),
            merchant_id=merchant.id,
            kind=kind,
            base_url="http://processor.test",
            policy=SANDBOX_URLS,
            credentials={"api_key": "sk_test_placeholder", "hmac_key_hex": "00"},
            box=CredentialBox(settings.secret_key.get_secret_value()),
            now=now,
            account_ref="acct_test",
        )
        await uow.commit()
    return connection


async def make_payments(
    db: Database,
    merchant: Merchant,
    count: int,
    *,
    now: datetime,
    attempts_each: int = 2,
    state: PaymentState = PaymentState.SCHEDULED,
    processor: Processor = Processor.STRIPE,
    category: DeclineCategory = DeclineCategory.INSUFFICIENT_FUNDS,
    connection: ProcessorConnection | None = None,
) -> list[Payment]:
    """`count` payments, failed one minute apart (the newest at `now`), each with attempts."""
    created: list[Payment] = []
    async with db.uow(SYSTEM_SCOPE) as uow:
        for i in range(count):
            customer = Customer(
                merchant_id=merchant.id,
                external_ref=f"cus_{uuid.uuid4().hex[:12]}",
                timezone="Europe/Paris",
                country="FR",
                created_at=now,
            )
            uow.session.add(customer)
            await uow.session.flush()
            card = CardCredential(
                merchant_id=merchant.id,
                customer_id=customer.id,
                brand="visa",
                funding=CardFunding.DEBIT,
                issuer_country="FR",
                bin="497010",
                last4=f"{i % 10_000:04d}",
                exp_month=12,
                exp_year=2028,
                fingerprint=uuid.uuid4().hex,
                created_at=now,
            )
            uow.session.add(card)
            await uow.session.flush()
            failed_at = now - timedelta(minutes=i)
            payment = Payment(
                merchant_id=merchant.id,
                processor=processor,
                processor_payment_id=f"ch_{uuid.uuid4().hex[:16]}",
                amount_minor=1999 + i,
                currency="EUR",
                customer_id=customer.id,
                card_id=card.id,
                first_failed_at=failed_at,
                decline_category=category,
                decline_retryable=True,
                decline_advice=Advice.RETRY,
                decline_raw_code="insufficient_funds",
                decline_network_code="51",
                state=state,
                next_retry_at=now + timedelta(days=1) if state is PaymentState.SCHEDULED else None,
                attempt_count=attempts_each,
                connection_id=None if connection is None else connection.id,
                created_at=now,
                updated_at=now,
            )
            uow.session.add(payment)
            await uow.session.flush()
            for n in range(1, attempts_each + 1):
                uow.session.add(
                    PaymentAttempt(
                        merchant_id=merchant.id,
                        payment_id=payment.id,
                        number=n,
                        attempted_at=failed_at + timedelta(hours=n - 1),
                        outcome=AttemptOutcome.DECLINED,
                        actor=Actor.PROCESSOR if n == 1 else Actor.PORTAL,
                        decline_raw_code="insufficient_funds",
                        decline_category=category,
                        created_at=now,
                    )
                )
            created.append(payment)
        await uow.commit()
    return created
