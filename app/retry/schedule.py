"""Retry scheduling: the scheduler interface, the fixed schedule, the decline-aware rules,
candidate times, control group."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from app.enums import CardFunding, DeclineCategory, RetryStrategy
from app.retry.events import DecisionMade
from app.retry.rules import (
    DEFAULT_RULES,
    AttemptRecord,
    DeclineView,
    Evaluator,
    NetworkRules,
    PaymentLedger,
    RetryPolicyView,
    zone_or_fallback,
)

# The control share of a payment not yet decided under any policy version (and the default).
CONTROL_SHARE = 0.10


@dataclass(frozen=True, slots=True)
class PaymentView:
    """What a scheduler may know of a payment at decision time (never a hidden cause)."""

    payment_id: str
    merchant_id: str
    first_failed_at: datetime
    amount_minor: int
    currency: str
    network: str | None
    funding: CardFunding
    decline: DeclineView | None
    customer_timezone: str | None = None
    issuer_country: str | None = None
    # The customer's latest successful charges before the first failure, oldest first.
    past_success_at: tuple[datetime, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """A scheduler's answer: when to retry (None: not at all), why, and by which strategy."""

    chosen_at: datetime | None
    reason: str
    strategy: RetryStrategy

    def to_event(self) -> DecisionMade:
        return DecisionMade(chosen_at=self.chosen_at, reason=self.reason, strategy=self.strategy)


class Scheduler(Protocol):
    """Chooses a retry time among candidates the rules already allow."""

    def __call__(
        self,
        payment: PaymentView,
        history: Sequence[AttemptRecord],
        candidates: Sequence[datetime],
        *,
        policy: RetryPolicyView,
        now: datetime,
    ) -> Decision: ...


# One decision a scheduler may be asked for: the payment, its history, the allowed candidates,
# the policy and the time.
DecisionRequest = tuple[
    PaymentView, Sequence[AttemptRecord], Sequence[datetime], RetryPolicyView, datetime
]


@runtime_checkable
class BatchScheduler(Scheduler, Protocol):
    """A scheduler that can score many decisions at once ahead of the calls that make them;
    each call then decides as it would unprepared."""

    def prepare(self, requests: Sequence[DecisionRequest]) -> None: ...


def next_fixed_target(
    policy: RetryPolicyView, first_failed_at: datetime, history: Sequence[AttemptRecord]
) -> tuple[int, datetime] | None:
    """The first fixed-schedule day (and its time) after the payment's latest attempt."""
    last = max((r.at for r in history), default=first_failed_at)
    for day in policy.fixed_schedule_days:
        target = first_failed_at + timedelta(days=day)
        if target > last:
            return day, target
    return None


def fixed_schedule(
    payment: PaymentView,
    history: Sequence[AttemptRecord],
    candidates: Sequence[datetime],
    *,
    policy: RetryPolicyView,
    now: datetime,
) -> Decision:
    """Retry on the policy's days after the first failure, at the first allowed time from then."""
    target = next_fixed_target(policy, payment.first_failed_at, history)
    return fixed_schedule_to(target, candidates, policy=policy, now=now)


def fixed_schedule_to(
    target: tuple[int, datetime] | None,
    candidates: Sequence[datetime],
    *,
    policy: RetryPolicyView,
    now: datetime,
) -> Decision:
    """`fixed_schedule` for its target (`next_fixed_target`) already found."""
    strategy = RetryStrategy.FIXED_SCHEDULE
    if target is None:
        days = len(policy.fixed_schedule_days)
        return Decision(None, f"fixed schedule complete: all {days} days used", strategy)
    day, at = target
    chosen, moved = _first_allowed(candidates, at, now)
    if chosen is None:
        return Decision(None, f"no allowed time on or after day {day} within the window", strategy)
    return Decision(chosen, f"fixed schedule: day {day} after the first failure{moved}", strategy)


def _first_allowed(
    candidates: Sequence[datetime], at: datetime, now: datetime
) -> tuple[datetime | None, str]:
    """The first candidate at or after the target (and not in the past), and how it moved."""
    earliest = max(at, now)
    chosen = min((c for c in candidates if c >= earliest), default=None)
    if chosen is None or chosen == at:
        return chosen, ""
    return chosen, f", first allowed time {chosen.isoformat()}"


# The decline-aware rules: retry k at these hours after the first failure, by the latest
# decline's category (a processing error is transient, a velocity limit resets after a day).
DECLINE_AWARE_HOURS: dict[DeclineCategory, tuple[int, ...]] = {
    DeclineCategory.PROCESSING_ERROR: (2, 24, 72, 168),
    DeclineCategory.VELOCITY_EXCEEDED: (25, 72, 168, 336),
}
DECLINE_AWARE_DEFAULT_HOURS: tuple[int, ...] = (24, 72, 168, 336)
# Low balances clear on paydays: Fridays, the 1st and the 15th, in the customer's morning.
PAYDAY_HOUR = 9
PAYDAY_RETRIES = 4
_FRIDAY = 4


def _paydays(first_failed_at: datetime, zone: ZoneInfo) -> tuple[datetime, ...]:
    """The first paydays after the first failure's local day, at PAYDAY_HOUR local time."""
    return _paydays_after(first_failed_at.astimezone(zone).date(), zone)


@lru_cache(maxsize=4096)
def _paydays_after(day: date, zone: ZoneInfo) -> tuple[datetime, ...]:
    """`_paydays` for a local day: the same for every failure of that day in that zone (a
    billing run's failures share a few)."""
    found: list[datetime] = []
    while len(found) < PAYDAY_RETRIES:
        day += timedelta(days=1)
        if day.weekday() == _FRIDAY or day.day in (1, 15):
            local = datetime(day.year, day.month, day.day, PAYDAY_HOUR, tzinfo=zone)
            found.append(local.astimezone(UTC))
    return tuple(found)


def next_decline_aware_target(
    policy: RetryPolicyView, payment: PaymentView, history: Sequence[AttemptRecord]
) -> tuple[str, datetime] | None:
    """The decline-aware rules' next retry after the payment's latest attempt, and why."""
    last = max((r.at for r in history), default=payment.first_failed_at)
    category = payment.decline.category if payment.decline is not None else None
    if category is DeclineCategory.INSUFFICIENT_FUNDS:
        zone = zone_or_fallback(payment.customer_timezone, policy.timezone)
        for at in _paydays(payment.first_failed_at, zone):
            if at > last:
                return f"insufficient funds, payday {at.isoformat()}", at
        return None
    hours = DECLINE_AWARE_DEFAULT_HOURS
    if category is not None:
        hours = DECLINE_AWARE_HOURS.get(category, DECLINE_AWARE_DEFAULT_HOURS)
    label = str(category or "no decline")
    for hour in hours:
        at = payment.first_failed_at + timedelta(hours=hour)
        if at > last:
            return f"{label}, {hour} hours after the first failure", at
    return None


def decline_aware(
    payment: PaymentView,
    history: Sequence[AttemptRecord],
    candidates: Sequence[datetime],
    *,
    policy: RetryPolicyView,
    now: datetime,
) -> Decision:
    """Retry at the decline-aware rules' next time, at the first allowed time from then."""
    target = next_decline_aware_target(policy, payment, history)
    return decline_aware_to(target, candidates, now=now)


def decline_aware_to(
    target: tuple[str, datetime] | None, candidates: Sequence[datetime], *, now: datetime
) -> Decision:
    """`decline_aware` for its target (`next_decline_aware_target`) already found."""
    strategy = RetryStrategy.DECLINE_AWARE
    if target is None:
        return Decision(None, "decline-aware rules complete: all retries used", strategy)
    why, at = target
    chosen, moved = _first_allowed(candidates, at, now)
    if chosen is None:
        return Decision(
            None, f"decline-aware rules: no allowed time for {why} in the window", strategy
        )
    return Decision(chosen, f"decline-aware rules: {why}{moved}", strategy)


def candidate_times(
    *,
    ledger: PaymentLedger,
    policy: RetryPolicyView,
    now: datetime,
    step: timedelta = timedelta(hours=1),
    rules: NetworkRules = DEFAULT_RULES,
) -> tuple[datetime, ...]:
    """Every allowed retry time from `now` to the end of the window, on a grid.

    The grid is `now`, each whole `step` (UTC-aligned) after it, and the fixed-schedule days,
    so a fixed-schedule target that is itself allowed is offered exactly.
    """
    if step <= timedelta(0):
        raise ValueError("step must be positive")
    end = policy.window_end(ledger.first_failed_at)
    grid = {now}
    tick = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + step
    while tick < end:
        grid.add(tick)
        tick += step
    for day in policy.fixed_schedule_days:
        target = ledger.first_failed_at + timedelta(days=day)
        if now <= target < end:
            grid.add(target)
    allowed: list[datetime] = []
    blocked_until: datetime | None = None
    evaluate = Evaluator(ledger=ledger, policy=policy, rules=rules)
    for candidate in sorted(grid):
        # Each rule blocks a contiguous stretch up to its next allowed time, so the grid points
        # inside that stretch need no evaluation.
        if blocked_until is not None and candidate < blocked_until:
            continue
        verdict = evaluate(candidate)
        if verdict.allowed:
            allowed.append(candidate)
        elif verdict.next_allowed_at is None:
            break
        else:
            blocked_until = verdict.next_allowed_at
    return tuple(allowed)


def in_control_group(merchant_id: str, payment_id: str, share: float = CONTROL_SHARE) -> bool:
    """Stable membership of the fixed-schedule control group, drawn per merchant."""
    digest = hashlib.sha256(f"{merchant_id}\x1f{payment_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


def effective_policy(
    policy: RetryPolicyView, *, merchant_id: str, payment_id: str
) -> RetryPolicyView:
    """The policy a payment runs under: the policy's control group of a model policy always
    uses the fixed schedule."""
    share = policy.control_group_percent / 100
    if policy.strategy is RetryStrategy.MODEL and in_control_group(merchant_id, payment_id, share):
        return replace(policy, strategy=RetryStrategy.FIXED_SCHEDULE)
    return policy
