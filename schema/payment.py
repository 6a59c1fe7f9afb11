"""Payment types: a failed charge in recovery, its attempts, customer, card and money."""

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Self, cast

import strawberry

from app.models.customer import CardCredential as CardModel
from app.models.customer import Customer as CustomerModel
from app.models.payment import Payment as PaymentModel
from app.models.payment import PaymentAttempt as AttemptModel
from app.services.payment import OrderDirection, PaymentOrderField
from app.services.payment import PaymentFilter as PaymentFilterValues
from app.services.payment import PaymentOrder as PaymentOrderValues
from resolvers import model as model_resolvers
from resolvers import payment as payment_resolvers
from resolvers import payment_recovery as recovery_resolvers
from resolvers.context import Context
from resolvers.counts import Counter
from resolvers.pagination import Page
from schema.enums import (
    Actor,
    Advice,
    AttemptOutcome,
    CardFunding,
    DeclineCategory,
    EndAction,
    EndActionStatus,
    PaymentState,
    Processor,
    RetryStrategy,
)
from schema.node import Node
from schema.relay import AfterArg, Connection, FirstArg, connection, selects
from schema.rows import from_row
from schema.scalars import Long

Info = strawberry.Info[Context, None]

# A payment's card not read yet (see Payment.from_model).
UNREAD = object()


@strawberry.type(description="An amount of money: integer minor units and an ISO-4217 currency.")
class Money:
    amount_minor: Long = strawberry.field(description="Amount in minor units (cents, pence…).")
    currency: str = strawberry.field(description="ISO-4217 currency code, upper case.")


@strawberry.type(description="The canonical reading of a processor's decline.")
class Decline:
    category: DeclineCategory = strawberry.field(description="Canonical decline category.")
    retryable: bool = strawberry.field(description="Whether the same card may be retried.")
    advice: Advice = strawberry.field(description="What the decline says about retrying.")
    raw_code: str | None = strawberry.field(description="The processor's own decline code.")
    network_decline_code: str | None = strawberry.field(
        description="The card network's response code, when reported."
    )
    network_advice_code: str | None = strawberry.field(
        description="The network's merchant advice code (e.g. Mastercard MAC), when reported."
    )


@strawberry.type(description="The decline of one attempt.")
class AttemptDecline:
    category: DeclineCategory = strawberry.field(description="Canonical decline category.")
    raw_code: str | None = strawberry.field(description="The processor's own decline code.")


@strawberry.type(description="One state change of a payment in recovery.")
class PaymentTransition:
    at: datetime = strawberry.field(description="When the change happened.")
    from_state: PaymentState = strawberry.field(description="The state before.")
    to_state: PaymentState = strawberry.field(description="The state after (may be the same).")
    event: str = strawberry.field(description="What happened, e.g. attempt_declined.")
    reason: str = strawberry.field(
        description=(
            "Why the engine moved as it did. Attempts are named by their `PaymentAttempt.number` "
            "(the payment's count: the original charge is 1, the first retry 2)."
        )
    )
    actor: Actor = strawberry.field(
        description=(
            "Who brought the change about, in the same enum as attempts and recoveries: PORTAL "
            "for the engine's own moves and for changes it made at someone's request (see "
            "`requestedBy`); PROCESSOR, BILLING_SYSTEM or CUSTOMER for what they did."
        )
    )
    requested_by: str | None = strawberry.field(
        description=(
            "The API key at whose request the change was made (`api_key:<name>`, as in the "
            "audit log); null when no one asked."
        )
    )


@strawberry.type(description="The latest retry decision: when, why and by which strategy.")
class RetryDecision:
    chosen_at: datetime = strawberry.field(description="When the decision was made.")
    reason: str = strawberry.field(
        description=(
            "Why this time (and which rule moved it), ending with the time zone its local "
            "times (quiet hours, paydays) were read in and why: the customer's, the policy's, "
            "or UTC."
        )
    )
    strategy: RetryStrategy | None = strawberry.field(
        description="Fixed schedule, decline-aware rules or model."
    )
    _payment_id: strawberry.Private[uuid.UUID | None] = None

    @strawberry.field(
        description=(
            "When the model chose the time: what weighed most on its chance of success, in "
            "plain words, strongest first. Empty for fixed-schedule decisions."
        )
    )
    async def explanation(self, info: Info) -> list[str]:
        if self._payment_id is None or self.strategy is not RetryStrategy.MODEL:
            return []
        row = await model_resolvers.acting_decision(info.context, self._payment_id, self.chosen_at)
        if row is None:
            return []
        return [str(item.get("text", "")) for item in row.explanation if item.get("text")]


@strawberry.type(description="Why a payment was or was not retried: its card's recent attempts.")
class PaymentLedger:
    attempts_last_24h: int = strawberry.field(
        description=(
            "Attempts in the last 24 hours at this merchant, by anyone, on the cards a retry of "
            "this payment may hit: its card, the card that replaced it, the cards its attempts "
            "were made on."
        )
    )
    attempts_last_30d: int = strawberry.field(
        description=(
            "Attempts in the last 30 days at this merchant, by anyone, on the same cards as "
            "attemptsLast24h."
        )
    )
    next_allowed_at: datetime | None = strawberry.field(
        description="The earliest time the rules allow a retry; null when none is allowed."
    )
    blocking_rule: str | None = strawberry.field(
        description="The rule that holds the retry back or forbids it, if one does."
    )


@strawberry.input(description="Filters for a merchant's payments; all given filters apply.")
class PaymentFilter:
    states: list[PaymentState] | None = strawberry.field(
        default=None, description="Only payments in these states."
    )
    decline_categories: list[DeclineCategory] | None = strawberry.field(
        default=None, description="Only payments whose first decline is in these categories."
    )
    processors: list[Processor] | None = strawberry.field(
        default=None, description="Only payments from these processors."
    )
    failed_after: datetime | None = strawberry.field(
        default=None, description="Only payments that first failed at or after this time."
    )
    failed_before: datetime | None = strawberry.field(
        default=None, description="Only payments that first failed before this time."
    )
    currencies: list[str] | None = strawberry.field(
        default=None, description="Only payments in these currencies (ISO 4217, e.g. EUR)."
    )
    recovered_by: list[Actor] | None = strawberry.field(
        default=None, description="Only payments recovered by these actors."
    )
    next_retry_after: datetime | None = strawberry.field(
        default=None, description="Only payments whose next retry is at or after this time."
    )
    next_retry_before: datetime | None = strawberry.field(
        default=None, description="Only payments whose next retry is before this time."
    )
    amount_min: Long | None = strawberry.field(
        default=None,
        description=(
            "Only payments of at least this amount, in minor units; needs exactly one currency "
            "in `currencies` (minor units of different currencies do not compare)."
        ),
    )
    amount_max: Long | None = strawberry.field(
        default=None,
        description="Only payments of at most this amount, in minor units; as `amountMin`.",
    )
    search: str | None = strawberry.field(
        default=None,
        description=(
            "What a merchant has in hand, matched exactly: the processor's payment id, the "
            "invoice reference, the customer's reference at the processor, or a card's last "
            "four digits."
        ),
    )

    def to_values(self) -> PaymentFilterValues:
        return PaymentFilterValues(
            states=tuple(self.states or ()),
            decline_categories=tuple(self.decline_categories or ()),
            processors=tuple(self.processors or ()),
            currencies=tuple(self.currencies or ()),
            recovered_by=tuple(self.recovered_by or ()),
            failed_after=self.failed_after,
            failed_before=self.failed_before,
            next_retry_after=self.next_retry_after,
            next_retry_before=self.next_retry_before,
            amount_min=self.amount_min,
            amount_max=self.amount_max,
            search=self.search,
        )


strawberry.enum(
    PaymentOrderField,
    description=(
        "What a payments list is sorted by, ties broken by the payment's id: FAILED_AT (the "
        "first failure), NEXT_RETRY_AT, AMOUNT (needs exactly one currency in the filter), "
        "RECOVERED_AT. Payments without the value (no retry scheduled, not recovered) come "
        "last in either direction."
    ),
)
strawberry.enum(OrderDirection, description="ASC: smallest or earliest first; DESC: the reverse.")


@strawberry.input(
    description=(
        "The order of a payments list; the default, FAILED_AT DESC, is the newest failure "
        "first. Payments without a value of the field (nextRetryAt or recoveredAt null) come "
        "after all the others whichever the direction, among themselves by id in the same "
        "direction. A cursor belongs to the order it was read in: passed with another order "
        "it is refused (INVALID_ARGUMENT)."
    )
)
class PaymentOrder:
    field: PaymentOrderField = strawberry.field(
        default=PaymentOrderField.FAILED_AT,
        description=(
            "The field to sort by. AMOUNT needs exactly one currency in `filter.currencies`: "
            "minor units of different currencies do not compare."
        ),
    )
    direction: OrderDirection = strawberry.field(
        default=OrderDirection.DESC, description="ASC or DESC (the default)."
    )

    def to_values(self) -> PaymentOrderValues:
        return PaymentOrderValues(field=self.field, direction=self.direction)


FilterArg = Annotated[PaymentFilter | None, strawberry.argument(description="Narrow the list.")]
OrderByArg = Annotated[
    PaymentOrder | None,
    strawberry.argument(description="The list's order; newest failure first when not given."),
]


def order_values(order: PaymentOrder | None) -> PaymentOrderValues:
    return (order or PaymentOrder()).to_values()


def filter_values(filter: PaymentFilter | None) -> PaymentFilterValues:
    return (filter or PaymentFilter()).to_values()


@strawberry.type(description="A merchant's customer, as the processor knows them.")
class Customer(Node):
    external_ref: str = strawberry.field(description="The processor's customer reference.")
    timezone: str | None = strawberry.field(
        description=(
            "IANA time zone, from the country and region of the billing address (else the card "
            "issuer's country); null when the country spans several zones and no region is "
            "known, so the retry policy's zone applies."
        )
    )
    country: str | None = strawberry.field(
        description=(
            "ISO 3166 alpha-2 country of the billing address, else of the card's issuer; null "
            "when the processor sent neither."
        )
    )

    _row_id: strawberry.Private[uuid.UUID]

    @classmethod
    def from_model(cls, row: CustomerModel) -> Self:
        return from_row(cls, row, id=cls.global_id(row.id), _row_id=row.id)

    @strawberry.field(
        description=(
            "The customer's payments, newest failure first unless `orderBy` says otherwise. "
            "The customers of one request are read together, one statement for all."
        )
    )
    async def payments(
        self,
        info: Info,
        first: FirstArg = None,
        after: AfterArg = None,
        filter: FilterArg = None,
        order_by: OrderByArg = None,
    ) -> "PaymentConnection":
        page, count = await payment_resolvers.customer_payments_page(
            info.context,
            customer_id=self._row_id,
            filters=filter_values(filter),
            first=first,
            after=after,
            order=order_values(order_by),
        )
        return await payment_connection(info, page, count)


@strawberry.type(description="A card credential; the card number is never stored.")
class Card(Node):
    brand: str = strawberry.field(description="Lower-case brand: visa, mastercard, amex, …")
    last4: str = strawberry.field(description="Last four digits.")
    bin: str | None = strawberry.field(description="Issuer identification number (first digits).")
    funding: CardFunding = strawberry.field(description="Credit, debit, prepaid or unknown.")
    country: str | None = strawberry.field(description="Issuer country, ISO 3166 alpha-2.")
    exp_month: int = strawberry.field(description="Expiry month, 1-12.")
    exp_year: int = strawberry.field(description="Expiry year, four digits.")

    @classmethod
    def from_model(cls, row: CardModel) -> Self:
        return from_row(cls, row, id=cls.global_id(row.id), country=row.issuer_country)


async def _card(info: Info, card_id: uuid.UUID | None) -> Card | None:
    row = await payment_resolvers.card(info.context, card_id)
    return None if row is None else Card.from_model(row)


@strawberry.type(description="One charge attempt on a payment.")
class PaymentAttempt:
    number: int = strawberry.field(description="1 for the first failure, then 2, 3, …")
    attempted_at: datetime = strawberry.field(description="When the attempt was made.")
    outcome: AttemptOutcome = strawberry.field(description="What the attempt achieved.")
    actor: Actor = strawberry.field(description="Who made the attempt.")
    decline: AttemptDecline | None = strawberry.field(
        description="The decline, when the attempt was declined."
    )
    _card_id: strawberry.Private[uuid.UUID | None] = None

    @strawberry.field(
        description=(
            "The card the attempt was made on; the payment's card when the processor's "
            "answer did not show it (the card-network rules count the attempt against it)."
        )
    )
    async def card(self, info: Info) -> Card | None:
        return await _card(info, self._card_id)

    @classmethod
    def from_model(cls, row: AttemptModel, payment_card_id: uuid.UUID | None) -> Self:
        decline = (
            AttemptDecline(category=row.decline_category, raw_code=row.decline_raw_code)
            if row.decline_category is not None
            else None
        )
        return from_row(cls, row, decline=decline, _card_id=row.card_id or payment_card_id)


@strawberry.type(
    description=(
        "The merchant's end action for a payment whose recovery ended unpaid, and how carrying "
        "it out at the processor went."
    )
)
class PaymentEndAction:
    action: EndAction = strawberry.field(description="The policy's end action.")
    status: EndActionStatus = strawberry.field(
        description=(
            "PENDING until the processor confirmed it (tried again after a failure); DONE; "
            "NOT_SUPPORTED when the processor's API cannot do it (see detail); SKIPPED when the "
            "invoice was paid first; FAILED when every try failed (see lastError)."
        )
    )
    tries: int = strawberry.field(description="Requests made to the processor so far.")
    detail: str | None = strawberry.field(
        description="What was done at the processor, or why it could not be."
    )
    last_error: str | None = strawberry.field(
        description="Why the latest try failed, while it is tried again or once it FAILED."
    )
    next_attempt_at: datetime | None = strawberry.field(
        description="When the next try is due, while PENDING."
    )
    created_at: datetime = strawberry.field(description="When the payment's recovery ended.")
    completed_at: datetime | None = strawberry.field(
        description="When it reached DONE, NOT_SUPPORTED, SKIPPED or FAILED."
    )


@strawberry.type(description="A failed recurring charge in recovery.")
class Payment(Node):
    processor: Processor = strawberry.field(description="The processor that charged it.")
    processor_payment_id: str = strawberry.field(description="The processor's id of the charge.")
    state: PaymentState = strawberry.field(description="Where the payment is in recovery.")
    amount: Money = strawberry.field(description="The amount due.")
    decline: Decline = strawberry.field(description="The decline of the first failure.")
    failed_at: datetime = strawberry.field(description="When the charge first failed.")
    next_retry_at: datetime | None = strawberry.field(
        description="When the next retry is scheduled (set only while SCHEDULED)."
    )
    recovered_at: datetime | None = strawberry.field(description="When it was recovered.")
    recovered_by: Actor | None = strawberry.field(description="Who recovered it.")
    attempt_count: int = strawberry.field(
        description="Attempts so far, the first failure included."
    )
    invoice_ref: str | None = strawberry.field(description="The billing system's invoice id.")
    subscription_ref: str | None = strawberry.field(description="The subscription id.")
    _row: strawberry.Private[PaymentModel]
    # The card when it was read with the payment's page; UNREAD sends `card` to the loader.
    _card: strawberry.Private[object] = UNREAD

    @classmethod
    def from_model(
        cls, row: PaymentModel, cards: Mapping[uuid.UUID, CardModel | None] | None = None
    ) -> Self:
        """The payment; with `cards` (read with its page, by id) its card comes from there."""
        card: object = UNREAD
        if cards is not None:
            found = None if row.card_id is None else cards.get(row.card_id)
            card = None if found is None else Card.from_model(found)
        return from_row(
            cls,
            row,
            _card=card,
            id=cls.global_id(row.id),
            amount=Money(amount_minor=Long(row.amount_minor), currency=row.currency),
            decline=Decline(
                category=row.decline_category,
                retryable=row.decline_retryable,
                advice=row.decline_advice,
                raw_code=row.decline_raw_code,
                network_decline_code=row.decline_network_code,
                network_advice_code=row.decline_network_advice_code,
            ),
            failed_at=row.first_failed_at,
            _row=row,
        )

    @strawberry.field(description="Every attempt, oldest first.")
    async def attempts(self, info: Info) -> list[PaymentAttempt]:
        rows = await payment_resolvers.attempts(info.context, self._row.id)
        return [PaymentAttempt.from_model(r, self._row.card_id) for r in rows]

    @strawberry.field(description="Every state change of the recovery, oldest first.")
    async def timeline(self, info: Info) -> list[PaymentTransition]:
        rows = await recovery_resolvers.timeline(info.context, self._row.id)
        return [
            from_row(PaymentTransition, r, actor=actor, requested_by=requested_by)
            for r in rows
            for actor, requested_by in [r.who()]
        ]

    @strawberry.field(description="The latest retry decision; null before the first one.")
    def decision(self) -> RetryDecision | None:
        row = self._row
        if row.decision_at is None:
            return None
        return RetryDecision(
            chosen_at=row.decision_at,
            reason=row.decision_reason or "",
            strategy=row.decision_strategy,
            _payment_id=row.id,
        )

    @strawberry.field(
        description=(
            "The end action carried out when recovery ended unpaid: null while recovery goes "
            "on, and for a policy that only marks the payment exhausted."
        )
    )
    async def end_action(self, info: Info) -> PaymentEndAction | None:
        row = await recovery_resolvers.end_action(info.context, self._row.id)
        return None if row is None else from_row(PaymentEndAction, row)

    @strawberry.field(description="The card-network ledger as of now: why (not) retried.")
    async def ledger(self, info: Info) -> PaymentLedger | None:
        view = await recovery_resolvers.ledger(info.context, self._row.id)
        return None if view is None else from_row(PaymentLedger, view)

    @strawberry.field(description="The customer charged.")
    async def customer(self, info: Info) -> Customer | None:
        row = await payment_resolvers.customer(info.context, self._row.customer_id)
        return None if row is None else Customer.from_model(row)

    @strawberry.field(description="The card charged, when known.")
    def card(self, info: Info) -> Card | None:
        if isinstance(self._card, Card) or self._card is None:
            # Read with the page: no coroutine per payment for graphql-core to await.
            return self._card
        # Read alone (a node, a mutation's payload): through the loader; graphql-core awaits
        # the coroutine a resolver returns as it awaits an async resolver's.
        return cast("Card | None", _card(info, self._row.card_id))


@connection(
    "A page of payments, in the order asked for (newest failure first by default).",
    edge="A payment and its cursor.",
    noun="payment",
    nouns="payments",
)
class PaymentConnection(Connection[Payment]):
    pass


async def payment_connection(
    info: Info, page: Page[PaymentModel], count: Counter
) -> PaymentConnection:
    """A page of payments as a connection; when their cards are asked for, the page's cards
    are read in one batch now, so each payment's `card` resolves at once."""
    cards = None
    if selects(info.selected_fields, "edges", "node", "card"):
        cards = await payment_resolvers.cards(info.context, [row for _, row in page.items])
    return PaymentConnection.from_page(page, lambda row: Payment.from_model(row, cards), count)
