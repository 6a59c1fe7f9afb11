"""Billing objects behind an account's charges, and the events that change them.

Each failed charge bills one invoice (Stripe's `in_…`, the merchant reference elsewhere) of one
subscription per customer (Stripe's `sub_…`, Braintree's six-character ids); each customer
keeps stored cards (Stripe PaymentMethods, Braintree tokens, Adyen stored payment methods,
Checkout.com instruments), the newest one its default. Adyen and Checkout.com have no
subscription objects and Braintree no invoices: their endpoints simply do not show them.

Everything is indexed as charges are materialized (`index`), in constant time per charge;
Stripe invoice ids, which are hashes of the merchant reference, are hashed only when an invoice
is first looked up, once per reference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from ml.simulator.stream import StreamCard
from sandbox import codes

if TYPE_CHECKING:
    from sandbox.state import Account, Charge

_LOWER = "0123456789abcdefghijklmnopqrstuvwxyz"
InvoiceStatus = Literal["open", "paid", "void"]


@dataclass
class StoredCard:
    """A card the processor keeps for a customer, under the processor's id for it."""

    id: str
    card: StreamCard
    created: datetime | None = None


@dataclass
class Subscription:
    """A customer's subscription: active until canceled, or ended at its scheduled end."""

    id: str
    customer: str
    status: Literal["active", "canceled", "ended"] = "active"
    canceled_at: datetime | None = None
    # When it ended: on cancellation, or at its scheduled end (`cancel_at`).
    ended_at: datetime | None = None
    cancel_at: datetime | None = None
    # Cancellations requested through the processor API, repeats included.
    cancel_requests: int = 0

    @property
    def open(self) -> bool:
        return self.status == "active"


@dataclass
class Billing:
    """Invoices, subscriptions, customers and stored cards of one account."""

    account: Account
    by_reference: dict[str, list[Charge]] = field(default_factory=dict)
    # Each customer's latest charge outside the portal's retries: its card is the one on file.
    latest: dict[str, Charge] = field(default_factory=dict)
    invoices: dict[str, str] = field(default_factory=dict)
    _unhashed: list[str] = field(default_factory=list)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    subscription_ids: dict[str, str] = field(default_factory=dict)
    deleted: dict[str, datetime] = field(default_factory=dict)
    cards: dict[str, list[StoredCard]] = field(default_factory=dict)

    def index(self, charge: Charge) -> None:
        """Called for every charge as it is materialized; a retry counts for its original's
        invoice whatever reference the request gave it."""
        reference = (charge.root or charge).reference
        found = self.by_reference.get(reference)
        if found is None:
            self.by_reference[reference] = [charge]
            self._unhashed.append(reference)
        else:
            found.append(charge)
        if charge.kind != "retry":
            self.latest[charge.customer] = charge

    # --- invoices (Stripe) --------------------------------------------------------------

    def invoice_id(self, reference: str) -> str:
        """Stripe's id for the invoice of a merchant reference (as charges render it)."""
        return codes.stripe_id("in_", reference)

    def invoice(self, invoice_id: str) -> str | None:
        """The merchant reference of a Stripe invoice id, if the account has that invoice."""
        while self._unhashed and invoice_id not in self.invoices:
            reference = self._unhashed.pop()
            self.invoices[self.invoice_id(reference)] = reference
        return self.invoices.get(invoice_id)

    def invoice_status(self, reference: str, now: datetime) -> InvoiceStatus:
        """Void when the billing system voided it, paid once any charge of it succeeded."""
        charges = [c for c in self.by_reference.get(reference, []) if c.created <= now]
        roots = {(c.root or c).id for c in charges}
        if roots & self.account.voided:
            return "void"
        if any(c.status == "succeeded" for c in charges):
            return "paid"
        return "open"

    def invoice_charges(self, reference: str, now: datetime) -> list[Charge]:
        return [c for c in self.by_reference.get(reference, []) if c.created <= now]

    # --- subscriptions (Stripe, Braintree) ------------------------------------------------

    def subscription_of(self, customer: str) -> Subscription:
        """The customer's subscription, created on first use."""
        found = self.subscriptions.get(customer)
        if found is None:
            seed = self.account.merchant_seed
            if self.account.processor == "braintree":
                sub_id = codes.token(_LOWER, 6, "btsub", seed, customer)
            else:
                sub_id = codes.stripe_id("sub_", seed, customer)
            found = self.subscriptions[customer] = Subscription(sub_id, customer)
            self.subscription_ids[sub_id] = customer
        return found

    def subscription(self, sub_id: str) -> Subscription | None:
        customer = self.subscription_ids.get(sub_id)
        return None if customer is None else self.subscriptions[customer]

    def end_subscription(self, customer: str, now: datetime, *, scheduled: bool) -> Subscription:
        """Cancel now, or (`scheduled`) reach the end it was scheduled to have."""
        sub = self.subscription_of(customer)
        if sub.open:
            sub.status = "ended" if scheduled else "canceled"
            sub.ended_at = now
            if scheduled:
                sub.cancel_at = now
            else:
                sub.canceled_at = now
        return sub

    # --- customers and their cards ----------------------------------------------------------

    def exists(self, customer: str) -> bool:
        """Whether the processor still has the customer (it had a charge and was not deleted)."""
        return customer in self.latest and customer not in self.deleted

    def delete_customer(self, customer: str, now: datetime) -> None:
        self.deleted.setdefault(customer, now)

    def _card_id(self, customer: str, card: StreamCard, first: bool) -> str:
        processor = self.account.processor
        if processor == "stripe":
            return codes.stripe_id("pm_", customer, card.fingerprint)
        if processor == "braintree":
            # The first card keeps the token the customer's transactions show.
            parts = (customer,) if first else (customer, card.fingerprint)
            return codes.token(_LOWER, 7, *parts)
        if processor == "adyen":
            return codes.token("0123456789", 16, "adyen-pm", customer, card.fingerprint)
        return "src_" + codes.token(_LOWER, 26, card.fingerprint)

    def stored(self, customer: str) -> list[StoredCard]:
        """The customer's stored cards, oldest first (the last is the default); none once the
        customer is deleted."""
        if customer in self.deleted:
            return []
        found = self.cards.get(customer)
        if found is None:
            latest = self.latest.get(customer)
            if latest is None:
                return []
            first = StoredCard(self._card_id(customer, latest.card, True), latest.card)
            found = self.cards[customer] = [first]
        return found

    def default(self, customer: str) -> StoredCard | None:
        stored = self.stored(customer)
        return stored[-1] if stored else None

    def card(self, customer: str, method_id: str) -> StreamCard | None:
        """The card behind one of the customer's stored methods."""
        return next((s.card for s in self.stored(customer) if s.id == method_id), None)

    def add_card(self, customer: str, card: StreamCard, now: datetime) -> StoredCard:
        """A new card becomes the customer's default; at Adyen it replaces the old token."""
        stored = self.stored(customer)
        fresh = StoredCard(self._card_id(customer, card, False), card, now)
        if self.account.processor == "adyen":
            stored.clear()
        stored.append(fresh)
        return fresh


def new_card(old: StreamCard, customer: str, now: datetime) -> StreamCard:
    """Another card of the same brand and funding, as a reissue or a replacement gives."""
    fresh = codes.digest("new card", customer, old.fingerprint)
    return dataclasses.replace(
        old,
        last4=f"{fresh % 10_000:04d}",
        exp_month=1 + (fresh >> 20) % 12,
        exp_year=now.year + 3,
        fingerprint=f"{fresh >> 40:016x}"[:16],
    )
