"""Sandbox state: the clock, merchant accounts, lazily generated charges, retries and faults."""

from __future__ import annotations

import bisect
import dataclasses
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np

from ml.simulator.config import SimulatorConfig
from ml.simulator.stream import StreamCard, StreamCharge, stream_charges
from ml.simulator.world import SimFailure, attempt
from sandbox import codes
from sandbox.billing import Billing, new_card

Processor = Literal["stripe", "braintree", "adyen", "checkout"]
PROCESSORS: tuple[Processor, ...] = ("stripe", "braintree", "adyen", "checkout")
# Who paid an invoice outside the portal's retries (the `paid_elsewhere` event's `by`): the
# billing system's own retry, the customer by themselves, or the processor's own retry, where
# the processor has one of its own (Braintree's retried transactions, Adyen's Auto Rescue).
Payer = Literal["billing_system", "customer", "processor"]
PAYERS: dict[Processor, tuple[Payer, ...]] = {
    "stripe": ("billing_system", "customer"),
    "braintree": ("billing_system", "customer", "processor"),
    "adyen": ("billing_system", "customer", "processor"),
    "checkout": ("billing_system", "customer"),
}

MAX_CUSTOMERS = 200_000
MAX_HISTORY_DAYS = 730
MAX_ACCOUNTS = 10_000
# Retries and out-of-band charges an account may accumulate; beyond it the sandbox refuses more.
MAX_EXTRA_CHARGES = 500_000
# The stream is generated up to a far horizon; it is consumed lazily, one month at a time.
_STREAM_END = datetime(2200, 1, 1, tzinfo=UTC)


class SandboxClock:
    """The sandbox's "now": an injected callable, or an accelerated clock set over the admin API."""

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._base = clock or (lambda: datetime.now(UTC))
        self._accelerated: tuple[datetime, float, float] | None = None

    def accelerate(self, start: datetime, speed: float) -> None:
        """From now on, simulated time is start + real elapsed x speed."""
        self._accelerated = (start, speed, time.monotonic())

    def now(self) -> datetime:
        """The current simulated time (timezone-aware UTC)."""
        if self._accelerated is not None:
            start, speed, real0 = self._accelerated
            return start + timedelta(seconds=(time.monotonic() - real0) * speed)
        now = self._base()
        if now.tzinfo is None:
            raise ValueError("the sandbox clock must return timezone-aware datetimes")
        return now.astimezone(UTC)


@dataclass
class Faults:
    """Faults injected into an account's next requests and pages."""

    rate_limit: int = 0
    server_error: int = 0
    slow: int = 0
    slow_seconds: float = 0.0
    malformed: int = 0
    truncated: int = 0
    # Adyen: the next N pushed batches carry signatures made with the wrong key.
    bad_signature: int = 0
    duplicates: bool = False
    out_of_order: bool = False
    # Whether request-level faults also hit retry (write) requests, not only reads.
    writes: bool = False
    # Pages served so far, so shuffles differ from page to page yet stay reproducible.
    pages: int = 0

    def take_request(self, *, write: bool) -> tuple[float, str | None]:
        """Consume request-level faults: (seconds to stall, error kind or None)."""
        if write and not self.writes:
            return 0.0, None
        delay = 0.0
        if self.slow > 0:
            self.slow -= 1
            delay = self.slow_seconds
        if self.rate_limit > 0:
            self.rate_limit -= 1
            return delay, "rate_limit"
        if self.server_error > 0:
            self.server_error -= 1
            return delay, "server_error"
        return delay, None

    def take_corruption(self) -> str | None:
        """Consume one record corruption, if any is pending."""
        if self.malformed > 0:
            self.malformed -= 1
            return "malformed"
        if self.truncated > 0:
            self.truncated -= 1
            return "truncated"
        return None

    def public(self) -> dict[str, object]:
        """The settings as the admin API shows them."""
        out = dataclasses.asdict(self)
        del out["pages"]
        return out


@dataclass(slots=True)
class Charge:
    """One charge as the sandbox holds it; each processor module renders it in its own format."""

    id: str
    created: datetime
    customer: str
    amount_minor: int
    currency: str
    card: StreamCard
    status: Literal["succeeded", "failed"]
    category: str | None
    network_code: str | None
    advice_code: str | None
    failure: SimFailure | None
    reference: str
    kind: Literal["stream", "retry", "out_of_band"] = "stream"
    retry_of: str | None = None
    root: Charge | None = None
    idempotency_key: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    # Insertion order within the account: ties in creation time keep their arrival order, so
    # offset paging stays stable while charges arrive.
    seq: int = -1
    # The customer's billing address (country, region) as the simulated world has it.
    billing_country: str | None = None
    billing_region: str | None = None
    # Who paid, for an out-of-band charge made with a `by` (None: rendered like its original).
    paid_by: Payer | None = None

    @property
    def key(self) -> tuple[float, int]:
        """Sort key: creation time, then arrival."""
        return (self.created.timestamp(), self.seq)

    @property
    def style(self) -> int:
        """Stable per-charge bits that pick among a processor's historical payload shapes."""
        return codes.digest("style", self.id)

    @property
    def address(self) -> tuple[str, str | None] | None:
        """The billing address (country, region) the payload carries. A customer paying by
        themselves always gives one; otherwise three customers in four have one on file (the
        same for all their charges), the rest leave only the card's issuer country."""
        if self.billing_country is None:
            return None
        if self.paid_by == "customer" or codes.digest("address", self.customer) % 4:
            return self.billing_country, self.billing_region
        return None


@dataclass
class StoredResponse:
    """A response kept for idempotent replay."""

    fingerprint: str
    status: int
    body: bytes
    media_type: str
    headers: dict[str, str]


class RetryRefused(Exception):
    """A retry request the processor would reject before reaching the network."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class Account:
    """A sandbox merchant account of one processor, with its charge history and state."""

    def __init__(
        self,
        *,
        processor: Processor,
        account_id: str,
        merchant_seed: int,
        api_key: str,
        history_start: datetime,
        config: SimulatorConfig,
        webhook_url: str | None = None,
        hmac_key_hex: str | None = None,
    ) -> None:
        self.processor = processor
        self.account_id = account_id
        self.merchant_seed = merchant_seed
        self.api_key = api_key
        self.history_start = history_start
        self.config = config
        self.webhook_url = webhook_url
        self.hmac_key = bytes.fromhex(hmac_key_hex) if hmac_key_hex else None
        self.faults = Faults()
        self.keys: list[tuple[float, int]] = []
        self.items: list[Charge] = []
        self.by_id: dict[str, Charge] = {}
        self.retries: list[Charge] = []
        self.extra_count = 0
        self.failed_retry_times: dict[str, list[datetime]] = {}
        self.idempotency: dict[str, StoredResponse] = {}
        self.replays: dict[str, int] = {}
        # Cards replaced after a "card_updated" event, by processor customer id.
        self.updated_cards: dict[str, StreamCard] = {}
        # Original charges whose invoice the billing system voided: no more retries of them.
        self.voided: set[str] = set()
        # Invoices, subscriptions, customers and their stored cards.
        self.billing = Billing(self)
        # Adyen notifications waiting to be pushed, oldest first.
        self.outbox: deque[Charge] = deque()
        self._stream: Iterator[StreamCharge] = stream_charges(
            merchant_seed, history_start, _STREAM_END, config
        )
        self._peek: StreamCharge | None = None
        self._customers: dict[str, str] = {}
        # A customer's card repeats month after month: one shared object per distinct card.
        self._cards: dict[StreamCard, StreamCard] = {}

    @property
    def pushes(self) -> bool:
        """Whether the sandbox pushes webhooks for this account."""
        return self.processor == "adyen" and self.webhook_url is not None

    # ids in each processor's format; the same seed and parts always give the same id.
    def charge_id(self, *parts: object) -> str:
        """A new charge id in this processor's format."""
        seed = self.merchant_seed
        if self.processor == "stripe":
            return codes.stripe_id("ch_", seed, *parts)
        if self.processor == "braintree":
            return codes.braintree_id(seed, *parts)
        if self.processor == "adyen":
            return codes.adyen_psp(seed, *parts)
        return codes.checkout_id("pay_", seed, *parts)

    def customer_id(self, stream_customer: str) -> str:
        """The processor's id of a simulator customer."""
        found = self._customers.get(stream_customer)
        if found is None:
            found = self._customers[stream_customer] = self._new_customer_id(stream_customer)
        return found

    def _new_customer_id(self, stream_customer: str) -> str:
        seed = self.merchant_seed
        if self.processor == "stripe":
            return codes.stripe_id("cus_", seed, stream_customer)[:18]
        if self.processor == "braintree":
            return codes.token("0123456789", 9, "btcus", seed, stream_customer)
        if self.processor == "adyen":
            return "shopper_" + codes.token("0123456789abcdef", 12, seed, stream_customer)
        return codes.checkout_id("cus_", seed, stream_customer)

    def reference(self, stream_id: str) -> str:
        """The merchant's own reference (an invoice or order number) for a charge."""
        return "INV-" + codes.token("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ", 10, stream_id)

    def _insert(self, charge: Charge) -> None:
        charge.seq = len(self.items)
        key = charge.key
        at = bisect.bisect_left(self.keys, key)
        self.keys.insert(at, key)
        self.items.insert(at, charge)
        self.by_id[charge.id] = charge
        self.billing.index(charge)
        if self.pushes:
            self.outbox.append(charge)

    def advance(self, now: datetime) -> None:
        """Materialize every stream charge created up to now (generation is lazy by month)."""
        while True:
            if self._peek is None:
                self._peek = next(self._stream, None)
                if self._peek is None:
                    return
            if self._peek.created > now:
                return
            sc, self._peek = self._peek, None
            charge_id = self.charge_id(sc.charge_id)
            clash = 0
            while charge_id in self.by_id:
                # Short id formats (Braintree's eight characters) can collide in big histories.
                clash += 1
                charge_id = self.charge_id(sc.charge_id, clash)
            self._insert(
                Charge(
                    id=charge_id,
                    created=sc.created,
                    customer=self.customer_id(sc.customer_id),
                    amount_minor=sc.amount_minor,
                    currency=sc.currency,
                    card=self._cards.setdefault(sc.card, sc.card),
                    status="failed" if sc.status == "failed" else "succeeded",
                    category=sc.decline_category,
                    network_code=sc.network_code,
                    advice_code=sc.advice_code,
                    failure=sc.failure,
                    reference=self.reference(sc.charge_id),
                    billing_country=sc.billing_country,
                    billing_region=sc.billing_region,
                )
            )

    def visible(self, now: datetime) -> int:
        """How many charges (oldest first in `items`) exist at `now`."""
        self.advance(now)
        return bisect.bisect_right(self.keys, (now.timestamp(), sys.maxsize))

    def index_of(self, charge: Charge) -> int:
        """Position of a charge in `items`."""
        return bisect.bisect_left(self.keys, charge.key)

    def first_at_or_after(self, t: float) -> int:
        """Position of the first charge created at or after epoch seconds t."""
        return bisect.bisect_left(self.keys, (t, -1))

    def get(self, charge_id: str, now: datetime) -> Charge | None:
        """A charge by id, if it exists at now."""
        self.advance(now)
        charge = self.by_id.get(charge_id)
        if charge is None or charge.created > now:
            return None
        return charge

    def retry(
        self,
        now: datetime,
        *,
        retry_of: str,
        idempotency_key: str | None,
        amount_minor: int,
        currency: str,
        customer: str | None,
        reference: str | None,
        payment_method: str | None = None,
    ) -> Charge:
        """Accept a retry of an earlier charge and draw its outcome from the world simulator.

        It is made on `payment_method` (one of the customer's stored cards) when given, else
        on the customer's default card; a card other than the failed one is approved."""
        original = self.get(retry_of, now)
        if original is None:
            raise RetryRefused(f"No such charge: '{retry_of}'", "retry_of")
        root = original.root or original
        if customer is not None and customer != root.customer:
            raise RetryRefused(
                f"Customer '{customer}' does not own charge '{retry_of}'", "customer"
            )
        if currency.upper() != root.currency:
            raise RetryRefused(
                f"Currency '{currency}' differs from the original charge's", "currency"
            )
        if amount_minor <= 0:
            raise RetryRefused("Amount must be a positive integer", "amount")
        if root.id in self.voided:
            raise RetryRefused(f"The invoice of charge '{retry_of}' is void", "invoice")
        if root.customer in self.billing.deleted:
            raise RetryRefused(f"No such customer: '{root.customer}'", "customer")
        card = self.updated_cards.get(root.customer, root.card)
        if payment_method is not None:
            stored = self.billing.card(root.customer, payment_method)
            if stored is None:
                raise RetryRefused(f"No such payment method: '{payment_method}'", "payment_method")
            card = stored
        if self.extra_count >= MAX_EXTRA_CHARGES:
            raise RetryRefused("This sandbox account accepts no more charges")
        history = self.failed_retry_times.setdefault(root.id, [])
        salt = idempotency_key if idempotency_key is not None else f"#{len(self.retries)}"
        rng = np.random.default_rng(codes.digest("retry", retry_of, salt) % (1 << 63))
        if root.failure is None or card != root.card:
            approved = True
        else:
            approved = attempt(root.failure, now, rng, history)
        if not approved:
            history.append(now)
        charge = Charge(
            id=self.charge_id("retry", retry_of, salt),
            created=now,
            customer=root.customer,
            amount_minor=amount_minor,
            currency=root.currency,
            card=card,
            status="succeeded" if approved else "failed",
            category=None if approved else root.category,
            network_code=None if approved else root.network_code,
            advice_code=None if approved else root.advice_code,
            failure=None,
            reference=reference or root.reference,
            kind="retry",
            retry_of=retry_of,
            root=root,
            idempotency_key=idempotency_key,
            metadata=(("retry_of", retry_of),),
            billing_country=root.billing_country,
            billing_region=root.billing_region,
        )
        if charge.id in self.by_id:
            # Two retries of one charge without idempotency keys at the same instant: keep both.
            charge.id = self.charge_id("retry", retry_of, salt, len(self.retries))
        self.extra_count += 1
        self.retries.append(charge)
        self._insert(charge)
        return charge

    def paid_elsewhere(self, now: datetime, charge_id: str, by: Payer | None = None) -> Charge:
        """A failed charge's invoice was paid outside the portal: a successful charge appears.

        Without `by` it is rendered like the original charge, with metadata `paid_invoice_of`;
        with `by` it is the billing system's retry, the customer's own payment or the
        processor's retry, each in the processor's wire format (CONTRACT.md)."""
        original = self.get(charge_id, now)
        if original is None:
            raise RetryRefused(f"No such charge: '{charge_id}'", "charge_id")
        root = original.root or original
        if self.extra_count >= MAX_EXTRA_CHARGES:
            raise RetryRefused("This sandbox account accepts no more charges")
        self.extra_count += 1
        charge = Charge(
            id=self.charge_id("oob", charge_id, self.extra_count),
            created=now,
            customer=root.customer,
            amount_minor=root.amount_minor,
            currency=root.currency,
            card=self.updated_cards.get(root.customer, root.card),
            status="succeeded",
            category=None,
            network_code=None,
            advice_code=None,
            failure=None,
            reference=root.reference,
            kind="out_of_band",
            root=root,
            metadata=(("paid_invoice_of", root.id),) if by is None else (),
            billing_country=root.billing_country,
            billing_region=root.billing_region,
            paid_by=by,
        )
        self._insert(charge)
        return charge

    def invoice_voided(self, now: datetime, charge_id: str) -> None:
        """The billing system voided the invoice of a charge: retries of it are refused."""
        original = self.get(charge_id, now)
        if original is None:
            raise RetryRefused(f"No such charge: '{charge_id}'", "charge_id")
        self.voided.add((original.root or original).id)

    def customer_of(self, charge_id: str, now: datetime) -> str:
        """The customer billed by a charge (its original's)."""
        original = self.get(charge_id, now)
        if original is None:
            raise RetryRefused(f"No such charge: '{charge_id}'", "charge_id")
        return (original.root or original).customer

    def card_updated(self, now: datetime, charge_id: str) -> StreamCard:
        """The customer of a charge got a new card: later retries for them are approved."""
        original = self.get(charge_id, now)
        if original is None:
            raise RetryRefused(f"No such charge: '{charge_id}'", "charge_id")
        root = original.root or original
        old = self.updated_cards.get(root.customer, root.card)
        card = new_card(old, root.customer, now)
        self.updated_cards[root.customer] = card
        # It becomes the customer's default stored card (at Adyen it replaces the old one).
        self.billing.add_card(root.customer, card, now)
        return card


class Sandbox:
    """Every account of the sandbox, by processor and id."""

    def __init__(self, clock: SandboxClock, config: SimulatorConfig) -> None:
        self.clock = clock
        self.config = config
        self.accounts: dict[str, Account] = {}
        self._keys: dict[tuple[str, str], Account] = {}

    def add(self, account: Account) -> None:
        """Register a new account."""
        self.accounts[account.account_id] = account
        self._keys[(account.processor, account.api_key)] = account

    def by_key(self, processor: Processor, api_key: str) -> Account | None:
        """The account of a processor that owns an API key."""
        return self._keys.get((processor, api_key))
