"""Property tests: random event sequences against the retry engine's invariants."""

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_case
from hypothesis import strategies as st

from app.enums import (
    TERMINAL_STATES,
    Actor,
    Advice,
    AttemptOutcome,
    DeclineCategory,
    EndAction,
    PaymentState,
    RetryStrategy,
)
from app.retry import events as ev
from app.retry.rules import (
    DEFAULT_RULES,
    AttemptRecord,
    DeclineView,
    PaymentLedger,
    RetryPolicyView,
    earliest_allowed,
    evaluate,
)
from app.retry.state_machine import ILLEGAL_EVENTS, transition

S = PaymentState
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Pacific/Auckland"]
# Side events, drawn now and then between the steps of the normal life of a payment.
KINDS = [
    "decide",
    "claim",
    "resolve",
    "external",
    "noise_card",
    "noise_card",
    "noise_customer",
    "noise_customer",
    "end",
    "credential",
    "policy",
    "window",
    "pause",
    "resume",
    "ingest",
]
# The step each state waits for: a decision, the due claim, the charge's outcome.
NATURAL = {S.PENDING: "decide", S.SCHEDULED: "claim", S.RETRYING: "resolve"}


@st.composite
def declines(draw: st.DrawFn, at: datetime) -> DeclineView:
    if draw(st.integers(0, 9)):
        category = draw(
            st.sampled_from([DeclineCategory.INSUFFICIENT_FUNDS, DeclineCategory.DO_NOT_HONOR])
        )
        retryable, advice = True, Advice.RETRY
    else:
        category = draw(st.sampled_from(list(DeclineCategory)))
        retryable = draw(st.booleans())
        advice = draw(st.sampled_from(list(Advice)))
    not_before = draw(st.none() | st.integers(0, 72).map(lambda h: at + timedelta(hours=h)))
    return DeclineView(
        category=category,
        retryable=retryable,
        advice=advice,
        declined_at=at,
        not_before=not_before,
        network_decline_code=draw(st.sampled_from([None] * 8 + ["05", "51", "43"])),
        network_advice_code=draw(st.sampled_from([None] * 8 + ["02", "03", "24", "25"])),
    )


@st.composite
def policies(draw: st.DrawFn) -> RetryPolicyView:
    quiet = draw(st.none() | st.tuples(st.integers(0, 23), st.integers(0, 23)))
    days = draw(st.lists(st.integers(1, 30), min_size=0, max_size=6, unique=True))
    return RetryPolicyView(
        enabled=draw(st.integers(0, 9)) > 0,
        max_attempts=draw(st.integers(1, 15)),
        window_days=draw(st.integers(1, 45) | st.integers(10, 45)),
        min_hours_between_attempts=draw(st.sampled_from([0, 0, 1, 4, 24])),
        quiet_hours_start=None if quiet is None else quiet[0],
        quiet_hours_end=None if quiet is None else quiet[1],
        timezone=draw(st.sampled_from(ZONES)),
        excluded_decline_categories=frozenset(
            draw(st.lists(st.sampled_from(list(DeclineCategory)), max_size=1))
        ),
        strategy=draw(st.sampled_from(list(RetryStrategy))),
        fixed_schedule_days=tuple(sorted(days)),
        end_action=draw(st.sampled_from(list(EndAction))),
    )


@dataclass
class Sim:
    """The stored side of one payment, kept the way the jobs layer would keep it."""

    policy: RetryPolicyView
    network: str | None
    tz: str | None
    now: datetime
    last_decline: DeclineView
    state: PaymentState = S.PENDING
    paused: bool = False
    retries: list[AttemptRecord] = field(default_factory=list)
    card: list[AttemptRecord] = field(default_factory=list)
    customer: list[AttemptRecord] = field(default_factory=list)
    credential_since: datetime | None = None
    next_retry_at: datetime | None = None
    in_flight: AttemptRecord | None = None
    portal_successes: int = 0
    paid: bool = False

    @property
    def effective_policy(self) -> RetryPolicyView:
        return replace(self.policy, enabled=False) if self.paused else self.policy

    def ledger(self) -> PaymentLedger:
        return PaymentLedger(
            network=self.network,
            first_failed_at=START,
            last_decline=self.last_decline,
            retries=tuple(self.retries),
            card_history=tuple(self.card),
            customer_history=tuple(self.customer),
            credential_since=self.credential_since,
            customer_timezone=self.tz,
        )

    def resolve(self, record: AttemptRecord | None) -> None:
        flying = self.in_flight
        assert flying is not None
        for history in (self.retries, self.card, self.customer):
            history.remove(flying)
            if record is not None:
                history.append(record)
        self.in_flight = None


def assert_charge_is_compliant(sim: Sim) -> None:
    """Independent of the rules module: the raw caps and policy limits at charge time."""
    now, policy = sim.now, sim.effective_policy
    for cap in DEFAULT_RULES.caps_for(sim.network):
        recent = [r for r in sim.card if now - cap.window < r.at <= now]
        assert len(recent) + 1 <= cap.limit, cap.name
    for cap in DEFAULT_RULES.customer_caps:
        recent = [r for r in sim.customer if now - cap.window < r.at <= now]
        assert len(recent) + 1 <= cap.limit, cap.name
    last = max([START, *(r.at for r in sim.card), *(r.at for r in sim.retries)])
    assert now - last >= timedelta(hours=policy.min_hours_between_attempts)
    assert now < policy.window_end(START)
    assert len(sim.retries) < policy.max_attempts
    start, end = policy.quiet_hours_start, policy.quiet_hours_end
    if start is not None and end is not None and start != end:
        try:
            zone = ZoneInfo(sim.tz or policy.timezone)
        except (KeyError, ValueError):
            zone = ZoneInfo(policy.timezone)
        hour = now.astimezone(zone).hour
        quiet = (hour >= start or hour < end) if start > end else start <= hour < end
        assert not quiet
    for decline in (sim.last_decline, *(r.decline for r in sim.card if r.decline)):
        if sim.credential_since is None or decline.declined_at >= sim.credential_since:
            assert decline.advice is not Advice.NEVER
    assert sim.last_decline.category is not DeclineCategory.PAYMENT_REVOKED


def next_event(data: st.DataObject, sim: Sim, kind: str) -> ev.Event | None:
    now = sim.now
    match kind:
        case "decide":
            far = data.draw(st.integers(0, 9)) == 0
            offset = data.draw(st.integers(-24, 24 * (40 if far else 5)))
            none = data.draw(st.integers(0, 19)) == 0
            chosen = None if none else now + timedelta(hours=offset)
            return ev.DecisionMade(chosen, "drawn", data.draw(st.sampled_from(list(RetryStrategy))))
        case "claim":
            if sim.next_retry_at is not None:
                sim.now = max(now, sim.next_retry_at)
            return ev.AttemptStarted()
        case "resolve":
            if sim.in_flight is None:
                return None
            outcome = data.draw(st.sampled_from(["succeed", "decline", "decline", "abandon"]))
            if outcome == "succeed":
                return ev.AttemptSucceeded()
            if outcome == "abandon":
                return ev.AttemptAbandoned("drawn")
            return ev.AttemptDeclined(data.draw(declines(now)))
        case "external":
            actor = data.draw(st.sampled_from([Actor.PROCESSOR, Actor.BILLING_SYSTEM]))
            return ev.ExternalAttemptDeclined(data.draw(declines(now)), actor)
        case "noise_card" | "noise_customer":
            # Attempts on other invoices of the same card or customer: history only.
            count = data.draw(st.integers(1, 12))
            for i in range(count):
                record = AttemptRecord(
                    now - timedelta(minutes=7 * i), Actor.PROCESSOR, AttemptOutcome.DECLINED
                )
                if kind == "noise_card":
                    sim.card.append(record)
                sim.customer.append(record)
            return None
        case "end":
            how = data.draw(st.sampled_from(["paid", "canceled", "voided"]))
            if how == "canceled":
                return ev.SubscriptionCanceled()
            if how == "voided":
                return ev.InvoiceVoided()
            return ev.PaidElsewhere(data.draw(st.sampled_from([Actor.CUSTOMER, Actor.PROCESSOR])))
        case "credential":
            return ev.CredentialUpdated(now, Actor.PROCESSOR)
        case "policy":
            sim.policy = data.draw(policies())
            return ev.PolicyChanged()
        case "window":
            return ev.WindowExpired()
        case "pause":
            sim.paused = True
            return ev.MerchantPaused()
        case "resume":
            sim.paused = False
            return ev.MerchantResumed()
        case "ingest":
            return ev.FailureIngested(sim.last_decline)
        case _:
            raise AssertionError(kind)


def apply(sim: Sim, event: ev.Event) -> None:
    before = sim.state
    ledger = sim.ledger()
    try:
        t = transition(before, event, policy=sim.effective_policy, ledger=ledger, now=sim.now)
    except ev.IllegalTransitionError:
        assert (before, type(event)) in ILLEGAL_EVENTS
        return
    kinds = [type(a) for a in t.actions]

    # Terminal states absorb, except the documented exits.
    if before in {S.RECOVERED, S.CANCELED}:
        assert t.new_state is before
    if before is S.EXHAUSTED:
        assert t.new_state in {S.EXHAUSTED, S.RECOVERED}
    if before is S.NOT_RETRYABLE:
        assert t.new_state in {S.NOT_RETRYABLE, S.RECOVERED} or (
            t.new_state is S.PENDING and isinstance(event, ev.CredentialUpdated)
        )
    if before in TERMINAL_STATES and t.new_state is before:
        assert set(kinds) <= {ev.AlertDuplicateCharge, ev.RecordTransition, ev.EmitEvent}
        assert ev.EnqueueAttempt not in kinds
        assert ev.ScheduleRetry not in kinds
    if not t.changed:
        assert t.actions == ()
        assert t.new_state is before

    # One charge at a time, and none once paid.
    if ev.EnqueueAttempt in kinds:
        assert before is S.SCHEDULED
        assert t.new_state is S.RETRYING
        assert sim.in_flight is None
        assert not sim.paid
        assert sim.portal_successes == 0
        assert_charge_is_compliant(sim)
        note_case("a charge was started")
        if sum(r.actor is Actor.PORTAL for r in sim.retries) >= 2:
            note_case("a third or later charge was started")

    # Fold the event into the stored history, as the jobs do.
    if isinstance(event, ev.AttemptSucceeded):
        assert sim.in_flight is not None
        if sim.paid or before is S.CANCELED:
            assert ev.AlertDuplicateCharge in kinds
        sim.resolve(replace(sim.in_flight, outcome=AttemptOutcome.SUCCEEDED))
        sim.portal_successes += 1
        sim.paid = True
    elif isinstance(event, ev.AttemptDeclined):
        assert sim.in_flight is not None
        sim.resolve(replace(sim.in_flight, outcome=AttemptOutcome.DECLINED, decline=event.decline))
        sim.last_decline = event.decline
    elif isinstance(event, ev.AttemptAbandoned):
        sim.resolve(None)
    elif isinstance(event, ev.ExternalAttemptDeclined):
        record = AttemptRecord(sim.now, event.actor, AttemptOutcome.DECLINED, event.decline)
        for history in (sim.retries, sim.card, sim.customer):
            history.append(record)
        sim.last_decline = event.decline
    elif isinstance(event, ev.CredentialUpdated):
        sim.credential_since = event.at
    elif isinstance(event, ev.PaidElsewhere):
        sim.paid = True

    for action in t.actions:
        if isinstance(action, ev.ScheduleRetry):
            assert action.at >= sim.now
            verdict = evaluate(action.at, ledger=sim.ledger(), policy=sim.effective_policy)
            assert verdict.allowed, verdict
            sim.next_retry_at = action.at
        elif isinstance(action, ev.ClearSchedule):
            sim.next_retry_at = None
        elif isinstance(action, ev.RecordAttempt):
            assert action.at == sim.now
            assert action.attempt_number == 1 + sum(r.actor is Actor.PORTAL for r in sim.retries)
            flying = AttemptRecord(action.at, Actor.PORTAL, None)
            for history in (sim.retries, sim.card, sim.customer):
                history.append(flying)
            sim.in_flight = flying
    sim.state = t.new_state
    note_case(f"reached {sim.state}")
    if t.new_state is not before and t.new_state in TERMINAL_STATES:
        note_case(f"ended by {t.reason.split(':')[0][:30]}")

    assert (sim.next_retry_at is not None) == (sim.state is S.SCHEDULED)
    assert sim.portal_successes <= 1
    if sim.state is S.RETRYING:
        assert sim.in_flight is not None
    if sim.in_flight is not None:
        assert sim.state in {S.RETRYING, S.RECOVERED, S.CANCELED}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_random_event_sequences_keep_the_invariants(data: st.DataObject) -> None:
    network = data.draw(st.sampled_from(["visa", "mastercard", "amex", None]))
    original = data.draw(declines(START))
    sim = Sim(
        policy=data.draw(policies()),
        network=network,
        tz=data.draw(st.sampled_from([None, *ZONES, "Not/AZone"])),
        now=START,
        last_decline=original,
    )
    first = AttemptRecord(START, Actor.BILLING_SYSTEM, AttemptOutcome.DECLINED, original)
    sim.card.append(first)
    sim.customer.append(first)
    apply(sim, ev.FailureIngested(original))
    steps = data.draw(st.integers(5, 60))
    for _ in range(steps):
        long_gap = data.draw(st.integers(0, 4)) == 0
        minutes = data.draw(st.integers(0, 3 * 24 * 60 if long_gap else 180))
        sim.now += timedelta(minutes=minutes)
        natural = NATURAL.get(sim.state)
        if natural is not None and data.draw(st.integers(0, 9)) < 7:
            kind = natural
        else:
            kind = data.draw(st.sampled_from(KINDS))
        event = next_event(data, sim, kind)
        if event is not None:
            apply(sim, event)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_terminal_states_absorb_everything_but_the_documented_exits(data: st.DataObject) -> None:
    state = data.draw(st.sampled_from([S.RECOVERED, S.CANCELED, S.EXHAUSTED, S.NOT_RETRYABLE]))
    sim = Sim(
        policy=data.draw(policies()),
        network="visa",
        tz=None,
        now=START + timedelta(hours=data.draw(st.integers(0, 24 * 60))),
        last_decline=data.draw(declines(START)),
        state=state,
    )
    kind = data.draw(st.sampled_from(KINDS))
    event = next_event(data, sim, kind)
    if event is None or isinstance(
        event, ev.AttemptSucceeded | ev.AttemptDeclined | ev.AttemptAbandoned
    ):
        return
    t = transition(state, event, policy=sim.policy, ledger=sim.ledger(), now=sim.now)
    exits = {
        (S.EXHAUSTED, ev.PaidElsewhere): S.RECOVERED,
        (S.NOT_RETRYABLE, ev.PaidElsewhere): S.RECOVERED,
        (S.NOT_RETRYABLE, ev.CredentialUpdated): S.PENDING,
    }
    expected = exits.get((state, type(event)))
    if expected is None:
        assert t.new_state is state
        assert not t.changed
    else:
        assert t.new_state in {expected, state}


@st.composite
def histories(draw: st.DrawFn, end: datetime) -> list[AttemptRecord]:
    # Dense bursts as well as a month's spread, so that every cap gets to bind.
    minutes = st.integers(0, 31 * 24 * 60) | st.integers(0, 26 * 60) | st.integers(0, 70)
    offsets = draw(st.lists(minutes, max_size=40))
    actors = st.sampled_from([Actor.PORTAL, Actor.PROCESSOR, Actor.BILLING_SYSTEM])
    return [
        AttemptRecord(end - timedelta(minutes=m), draw(actors), AttemptOutcome.DECLINED)
        for m in offsets
    ]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_placed_times_never_break_a_cap(data: st.DataObject) -> None:
    now = START + timedelta(days=data.draw(st.integers(0, 3)))
    network = data.draw(st.sampled_from(["visa", "mastercard", "amex", None]))
    card = data.draw(histories(now))
    customer = card + data.draw(histories(now))
    policy = replace(data.draw(policies()), enabled=True, excluded_decline_categories=frozenset())
    decline = DeclineView(DeclineCategory.DO_NOT_HONOR, True, Advice.RETRY, START)
    ledger = PaymentLedger(
        network=network,
        first_failed_at=START,
        last_decline=decline,
        card_history=tuple(card),
        customer_history=tuple(customer),
    )
    requested = now + timedelta(minutes=data.draw(st.integers(0, 20 * 24 * 60)))
    placement = earliest_allowed(requested, ledger=ledger, policy=policy)
    if placement.at is None:
        note_case(f"ended by {placement.blocking_rule}")
        return
    at = placement.at
    note_case(f"moved by {placement.blocking_rule}" if placement.moved else "kept")
    assert at >= requested
    for cap in (*DEFAULT_RULES.caps_for(network), *DEFAULT_RULES.customer_caps):
        history = customer if cap in DEFAULT_RULES.customer_caps else card
        # Any rolling window holding the new attempt stays within the cap.
        assert sum(1 for r in history if at - cap.window < r.at <= at) + 1 <= cap.limit
    assert at < policy.window_end(START)
