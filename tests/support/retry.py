"""Retry engine test helpers: Stripe-shaped charges, ingested payments, the engine's steps each
committed, a recording processor."""

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import col, select

from app.crypto import CredentialBox
from app.db import Database
from app.enums import Processor, RetryStrategy
from app.models.customer import CardCredential
from app.models.ingestion import ProcessorConnection
from app.models.merchant import Merchant
from app.models.payment import Payment, PaymentAttempt
from app.models.retry import OutboxEvent, PaymentTransition
from app.processors.adapters import REQUIRED_CREDENTIALS
from app.processors.base import (
    BillingRefs,
    BillingState,
    CancelResult,
    ChargeResult,
    ListPage,
    PermanentProcessorError,
    RawItem,
    TransientProcessorError,
)
from app.services.connection import create_connection
from app.services.ingestion import land, normalize_raw_records
from app.services.retry.engine import claim_due, decide_pending
from app.tenancy import SYSTEM_SCOPE, system_principal
from tests.support.factories import SANDBOX_URLS, make_merchant, set_strategy

BOX = CredentialBox("test-secret")


def stripe_charge(
    charge_id: str,
    *,
    created: datetime,
    status: str = "failed",
    customer: str = "cus_A",
    invoice: str | None = None,
    reason: str = "insufficient_funds",
    amount: int = 2900,
    brand: str = "visa",
    fingerprint: str = "fpA",
    exp: tuple[int, int] = (4, 2029),
    network_decline_code: str | None = None,
    network_advice_code: str | None = None,
    subscription: str | None = None,
    secure: bool = False,
    metadata: dict[str, str] | None = None,
    billing: tuple[str, str | None] | None = None,
) -> dict[str, Any]:
    """A Stripe charge as the list and retrieve endpoints return it; with `subscription`, its
    invoice expanded (as `expand[]=invoice` returns it) to name the subscription; `secure`:
    the cardholder authenticated it with 3-D Secure (a payment they made themselves);
    `billing`: the (country, state) of its billing address."""
    failed = status == "failed"
    invoice_id = invoice if invoice is not None else f"in_{charge_id}"
    outcome: dict[str, Any] = {
        "type": "issuer_declined" if failed else "authorized",
        "reason": reason if failed else None,
        "network_status": "declined_by_network" if failed else "approved_by_network",
    }
    if network_decline_code:
        outcome["network_decline_code"] = network_decline_code
    if network_advice_code:
        outcome["network_advice_code"] = network_advice_code
    country, state = billing if billing is not None else (None, None)
    return {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "billing_details": {"address": {"country": country, "state": state}},
        "metadata": dict(metadata or {}),
        "currency": "usd",
        "created": int(created.timestamp()),
        "customer": customer,
        "invoice": (
            {"id": invoice_id, "object": "invoice", "subscription": subscription}
            if subscription
            else invoice_id
        ),
        "status": status,
        "paid": not failed,
        "failure_code": "card_declined" if failed else None,
        "outcome": outcome,
        "payment_method_details": {
            "type": "card",
            "card": {
                "brand": brand,
                "country": "US",
                "exp_month": exp[0],
                "exp_year": exp[1],
                "fingerprint": fingerprint,
                "funding": "debit",
                "last4": "4242",
                "three_d_secure": {"result": "authenticated"} if secure else None,
            },
        },
    }


async def make_connection(
    db: Database,
    merchant: Merchant,
    now: datetime,
    base_url: str = "http://127.0.0.1:1/stripe",
    kind: Processor = Processor.STRIPE,
) -> ProcessorConnection:
    async with db.uow(SYSTEM_SCOPE) as uow:
        connection = await create_connection(
            uow,
            principal=system_principal(),
            merchant_id=merchant.id,
            kind=kind,
            base_url=base_url,
            policy=SANDBOX_URLS,
            credentials=(
                {"api_key": "sk_test_x"}
                if kind is Processor.STRIPE
                else dict.fromkeys(REQUIRED_CREDENTIALS[kind], "ab" * 16)
            ),
            # Braintree's merchant id and Adyen's merchant account name the account.
            account_ref=None if kind in (Processor.STRIPE, Processor.CHECKOUT) else "acct_1",
            box=BOX,
            now=now,
        )
        await uow.commit()
    return connection


async def land_records(
    db: Database,
    connection: ProcessorConnection,
    records: Sequence[Mapping[str, Any]],
    now: datetime,
) -> tuple[int, int]:
    """Land records and normalize the new ones as polling would, in one committed unit of work;
    returns how many landed and how many were duplicates."""
    items = [RawItem.from_json(r, str(r.get("id"))) for r in records]
    return await land_items(db, connection, items, now)


async def land_items(
    db: Database, connection: ProcessorConnection, items: Sequence[RawItem], now: datetime
) -> tuple[int, int]:
    """`land_records` for raw items of any processor (Braintree's XML too)."""
    async with db.uow(SYSTEM_SCOPE) as uow:
        ids, stats = await land(uow, connection, items, now=now)
        await normalize_raw_records(uow, connection, ids, now=now)
        await uow.commit()
    return stats.landed, stats.duplicates


async def ingest(
    db: Database,
    connection: ProcessorConnection,
    charges: Sequence[Mapping[str, Any]],
    now: datetime,
) -> list[Payment]:
    """Land and normalize charges as polling would; returns the payments they opened."""
    await land_records(db, connection, charges, now)
    async with db.session(SYSTEM_SCOPE) as s:
        rows = await s.execute(
            select(Payment).where(
                col(Payment.processor_payment_id).in_([c["id"] for c in charges]),
                col(Payment.connection_id) == connection.id,
            )
        )
        found = {p.processor_payment_id: p for p in rows.scalars()}
    return [found[c["id"]] for c in charges if c["id"] in found]


async def fixed_schedule_payments(
    db: Database, n: int, now: datetime, *, customer: str | None = None, **charge: Any
) -> list[Payment]:
    """N failed Stripe charges of a new merchant on the fixed schedule, ingested at `now`, each
    on its own card; of one customer when `customer` is given, else each of its own. `charge`
    goes to every `stripe_charge`. (New merchants start on the model; these follow the fixed
    schedule's days.)"""
    merchant = await make_merchant(db, f"Retry {uuid.uuid4().hex[:6]}", now=now)
    await set_strategy(db, merchant.id, RetryStrategy.FIXED_SCHEDULE)
    connection = await make_connection(db, merchant, now)
    prefix = uuid.uuid4().hex[:8]
    bodies = [
        stripe_charge(
            f"ch_{prefix}_{i}",
            created=now,
            customer=customer or f"cus_{prefix}_{i}",
            fingerprint=f"fp_{prefix}_{i}",
            **charge,
        )
        for i in range(n)
    ]
    return await ingest(db, connection, bodies, now)


async def decide(db: Database, now: datetime) -> int:
    """Decide the pending payments, committed as the worker's cron does; returns how many."""
    async with db.uow(SYSTEM_SCOPE) as uow:
        done = await decide_pending(uow, now=now)
        await uow.commit()
    return done


async def claim(db: Database, now: datetime) -> list[tuple[uuid.UUID, int]]:
    """Claim the due payments, committed; returns the (payment, attempt number) to enqueue."""
    async with db.uow(SYSTEM_SCOPE) as uow:
        applied = await claim_due(uow, now=now)
        await uow.commit()
    return applied.enqueue


async def reload(db: Database, payment_id: uuid.UUID) -> Payment:
    async with db.session(SYSTEM_SCOPE) as s:
        payment = await s.get(Payment, payment_id, populate_existing=True)
    assert payment is not None
    return payment


async def fingerprint_of(db: Database, card_id: uuid.UUID | None) -> str:
    """The fingerprint of a stored card credential."""
    assert card_id is not None
    async with db.session(SYSTEM_SCOPE) as s:
        card = await s.get(CardCredential, card_id)
    assert card is not None
    return card.fingerprint


async def attempts_of(db: Database, payment_id: uuid.UUID) -> list[PaymentAttempt]:
    async with db.session(SYSTEM_SCOPE) as s:
        rows = await s.execute(
            select(PaymentAttempt)
            .where(col(PaymentAttempt.payment_id) == payment_id)
            .order_by(col(PaymentAttempt.number))
            .execution_options(populate_existing=True)
        )
        return list(rows.scalars())


async def timeline(db: Database, payment_id: uuid.UUID) -> list[PaymentTransition]:
    async with db.session(SYSTEM_SCOPE) as s:
        rows = await s.execute(
            select(PaymentTransition)
            .where(col(PaymentTransition.payment_id) == payment_id)
            .order_by(col(PaymentTransition.at), col(PaymentTransition.seq))
        )
        return list(rows.scalars())


async def outbox(db: Database, payment_id: uuid.UUID) -> list[str]:
    async with db.session(SYSTEM_SCOPE) as s:
        rows = await s.execute(
            select(col(OutboxEvent.event_type))
            .where(col(OutboxEvent.payment_id) == payment_id)
            .order_by(col(OutboxEvent.created_at))
        )
        return list(rows.scalars())


class WorkerKilled(BaseException):
    """Stands in for SIGKILL between the processor's answer and the portal's record."""


@dataclass
class FakeStripe:
    """A processor that keeps every charge by idempotency key and replays it, like Stripe.

    `approve` decides new charges; `kill_after_charge` raises once after a charge is made;
    `timeout_after_charge` makes the next N charges time out after the processor made them.
    Pre-flight: the invoice of a charge in `paid` (its `in_<charge id>`) is paid; `can_fetch`
    False is a processor whose API tells nothing before a charge; `billing` answers instead
    when set, and `preflight_unanswered` makes the next N pre-flights time out.
    """

    now: datetime
    approve: bool = True
    paid: set[str] = field(default_factory=set)
    kill_after_charge: bool = False
    timeout_after_charge: int = 0
    charges: dict[str, ChargeResult] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    fetches: list[str] = field(default_factory=list)
    can_fetch: bool = True
    refuse: PermanentProcessorError | None = None
    # The card new charges are made on (the customer's card on file).
    fingerprint: str = "fpA"
    exp: tuple[int, int] = (4, 2029)
    billing: BillingState | None = None
    preflight_unanswered: int = 0
    preflights: list[BillingRefs] = field(default_factory=list)
    # The payment method each charge named (None: the customer's default), by key.
    methods: dict[str, str | None] = field(default_factory=dict)

    def __call__(self, connection: ProcessorConnection) -> "FakeStripe":
        return self

    async def billing_state(self, refs: BillingRefs) -> BillingState:
        self.preflights.append(refs)
        if self.preflight_unanswered:
            self.preflight_unanswered -= 1
            raise TransientProcessorError("stripe: GET timed out")
        if self.billing is not None:
            return self.billing
        if not self.can_fetch:
            return BillingState()
        paid = {f"in_{charge_id}" for charge_id in self.paid}
        if refs.invoice_ref is not None and refs.invoice_ref in paid:
            detail = f"invoice {refs.invoice_ref} is paid"
            return BillingState(stop="invoice_paid", detail=detail, checked=frozenset({"invoice"}))
        return BillingState(checked=frozenset({"invoice", "customer"}))

    async def cancel_subscription(self, refs: BillingRefs, *, idempotency_key: str) -> CancelResult:
        return CancelResult(refs.subscription_ref or "sub_fake", "canceled")

    async def list_page(self, cursor: Mapping[str, Any]) -> ListPage:
        return ListPage(items=[], cursor=dict(cursor), more=False)

    async def fetch(self, processor_payment_id: str) -> RawItem:
        self.fetches.append(processor_payment_id)
        if not self.can_fetch:
            raise PermanentProcessorError("no fetch")
        for result in self.charges.values():
            if result.processor_payment_id == processor_payment_id:
                return result.item
        status = "succeeded" if processor_payment_id in self.paid else "failed"
        body = stripe_charge(processor_payment_id, created=self.now, status=status)
        return RawItem.from_json(body, processor_payment_id)

    async def charge(
        self,
        *,
        retry_of: str,
        amount_minor: int,
        currency: str,
        customer_ref: str,
        idempotency_key: str,
        payment_method_ref: str | None = None,
    ) -> ChargeResult:
        self.requests.append(idempotency_key)
        self.methods.setdefault(idempotency_key, payment_method_ref)
        if self.refuse is not None:
            raise self.refuse
        result = self.charges.get(idempotency_key)
        if result is None:
            charge_id = f"ch_retry_{len(self.charges) + 1}"
            body = stripe_charge(
                charge_id,
                created=self.now,
                status="succeeded" if self.approve else "failed",
                customer=customer_ref,
                amount=amount_minor,
                fingerprint=self.fingerprint,
                exp=self.exp,
            )
            result = ChargeResult(charge_id, self.approve, RawItem.from_json(body, charge_id))
            self.charges[idempotency_key] = result
            if self.kill_after_charge:
                self.kill_after_charge = False
                raise WorkerKilled
        if self.timeout_after_charge:
            # The processor did its work; the answer is lost on the way back.
            self.timeout_after_charge -= 1
            raise TransientProcessorError("stripe: POST timed out")
        return result

    @property
    def charge_count(self) -> int:
        return len(self.charges)


VARIED_REASONS = (
    "insufficient_funds",
    "processing_error",
    "do_not_honor",
    "card_velocity_exceeded",
    "expired_card",
)
VARIED_BRANDS = ("visa", "mastercard", "amex", "discover")


def varied_charges(
    prefix: str,
    count: int,
    *,
    created: datetime,
    customers: int,
    fingerprints: int,
    amount: int,
    step: int,
    currencies: Sequence[str],
) -> list[dict[str, Any]]:
    """`count` failed Stripe charges that differ in what the timing model reads (decline,
    brand, amount, currency), some sharing customers and cards: a batch to decide or preview."""
    charges = []
    for i in range(count):
        charge = stripe_charge(
            f"{prefix}_{i}",
            created=created,
            customer=f"cus_{i % customers}",
            fingerprint=f"fp_{i % fingerprints}",
            amount=amount + step * i,
            reason=VARIED_REASONS[i % len(VARIED_REASONS)],
            brand=VARIED_BRANDS[i % len(VARIED_BRANDS)],
        )
        charge["currency"] = currencies[i % len(currencies)]
        charges.append(charge)
    return charges
