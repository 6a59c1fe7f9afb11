"""Network-rule ledger: card-network caps, never-retry rules and merchant policy, all pure."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.declines import (
    MASTERCARD_ADVICE_DELAYS,
    MASTERCARD_BRANDS,
    MASTERCARD_NEVER_ADVICE,
    VISA_BRANDS,
    VISA_CATEGORY_1_CODES,
    Decline,
    normalize_network_code,
)
from app.enums import (
    Actor,
    Advice,
    AttemptOutcome,
    DeclineCategory,
    EndAction,
    PaymentState,
    RetryStrategy,
)

VISA = "visa"
MASTERCARD = "mastercard"

# Rule names: stored as a payment's blocking rule and shown in the "why (not) retried" view.
RULE_RECOVERY_DISABLED = "recovery_disabled"
RULE_STOP_PAYMENT = "stop_payment"
RULE_VISA_CATEGORY_1 = "visa_category_1"
RULE_DECLINE_ADVICE_NEVER = "decline_advice_never"
RULE_UPDATE_CREDENTIALS = "update_credentials"
RULE_HARD_DECLINE = "hard_decline"
RULE_EXCLUDED_CATEGORY = "excluded_category"
RULE_MAX_ATTEMPTS = "max_attempts"
RULE_RETRY_WINDOW = "retry_window"
RULE_NOT_BEFORE = "not_before"
RULE_MIN_SPACING = "min_spacing"
RULE_QUIET_HOURS = "quiet_hours"
RULE_NO_ALLOWED_TIME = "no_allowed_time"


def mastercard_advice_rule(code: str) -> str:
    """The rule name for a Mastercard merchant advice code (never, or a delay)."""
    return f"mastercard_advice_{code}"


@lru_cache(maxsize=256)
def normalize_network(brand: str | None) -> str | None:
    """The network whose rules a card brand follows (Maestro: Mastercard's), or None if unknown.
    (Kept for the few brands seen: a batch asks about each payment's several times.)"""
    key = (brand or "").strip().lower()
    if key in VISA_BRANDS:
        return VISA
    if key in MASTERCARD_BRANDS:
        return MASTERCARD
    return None if key in {"", "unknown"} else key


def _follows(network: str | None, rules_of: str) -> bool:
    # With the brand unknown, the stricter reading holds: every network's rules apply.
    return network is None or network == rules_of


@dataclass(frozen=True, slots=True)
class DeclineView:
    """A canonical decline (docs/domain.md §1) with the time it happened."""

    category: DeclineCategory
    retryable: bool
    advice: Advice
    declined_at: datetime
    not_before: datetime | None = None
    network_decline_code: str | None = None
    network_advice_code: str | None = None

    @classmethod
    def from_decline(cls, decline: Decline, declined_at: datetime) -> "DeclineView":
        """The taxonomy's reading of a decline, dated."""
        return cls(
            category=decline.category,
            retryable=decline.retryable,
            advice=decline.advice,
            declined_at=declined_at,
            not_before=decline.not_before,
            network_decline_code=decline.network_decline_code,
            network_advice_code=decline.network_advice_code,
        )


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One charge attempt on a card, whoever made it; `outcome` None means still in flight."""

    at: datetime
    actor: Actor
    outcome: AttemptOutcome | None
    decline: DeclineView | None = None


@dataclass(frozen=True, slots=True)
class AttemptCap:
    """At most `limit` attempts in any rolling `window`."""

    name: str
    limit: int
    window: timedelta


def _default_network_caps() -> Mapping[str, tuple[AttemptCap, ...]]:
    return MappingProxyType(
        {
            VISA: (AttemptCap("visa_reattempts_30d", 15, timedelta(days=30)),),
            MASTERCARD: (
                AttemptCap("mastercard_declines_24h", 10, timedelta(hours=24)),
                AttemptCap("mastercard_declines_30d", 35, timedelta(days=30)),
            ),
        }
    )


def _default_advice_delays() -> Mapping[str, timedelta]:
    return MappingProxyType(dict(MASTERCARD_ADVICE_DELAYS))


@dataclass(frozen=True, slots=True)
class NetworkRules:
    """Card-network rules of docs/domain.md §2; every number is configurable.

    Caps count every attempt on the credential whatever its outcome (in flight, errored,
    declined) and the first failure too: the conservative reading of "declined attempts" and
    "reattempts", since an errored attempt may have reached the issuer.
    """

    network_caps: Mapping[str, tuple[AttemptCap, ...]] = field(
        default_factory=_default_network_caps
    )
    # Amex, Discover and any network without its own entry.
    default_caps: tuple[AttemptCap, ...] = (
        AttemptCap("network_attempts_30d", 20, timedelta(days=30)),
    )
    customer_caps: tuple[AttemptCap, ...] = (
        AttemptCap("customer_attempts_hourly", 5, timedelta(hours=1)),
    )
    visa_category_1_codes: frozenset[str] = VISA_CATEGORY_1_CODES
    mastercard_never_advice_codes: frozenset[str] = MASTERCARD_NEVER_ADVICE
    # Normalizers already turn these into `not_before`; applying them again costs nothing
    # and keeps a normalizer bug from becoming a network fine.
    mastercard_advice_delays: Mapping[str, timedelta] = field(
        default_factory=_default_advice_delays
    )
    stop_payment_categories: frozenset[DeclineCategory] = frozenset(
        {DeclineCategory.PAYMENT_REVOKED}
    )

    def caps_for(self, network: str | None) -> tuple[AttemptCap, ...]:
        """The per-credential caps of one network; all of them when the network is unknown."""
        key = normalize_network(network)
        if key is None:
            every = [cap for caps in self.network_caps.values() for cap in caps]
            return tuple(dict.fromkeys([*every, *self.default_caps]))
        return self.network_caps.get(key, self.default_caps)


DEFAULT_RULES = NetworkRules()


@dataclass(frozen=True, slots=True)
class RetryPolicyView:
    """The merchant's current retry policy as the engine reads it."""

    enabled: bool = True
    max_attempts: int = 4
    window_days: int = 21
    min_hours_between_attempts: int = 24
    quiet_hours_start: int | None = None
    quiet_hours_end: int | None = None
    timezone: str = "UTC"
    excluded_decline_categories: frozenset[DeclineCategory] = frozenset()
    strategy: RetryStrategy = RetryStrategy.FIXED_SCHEDULE
    fixed_schedule_days: tuple[int, ...] = (1, 3, 7, 14)
    end_action: EndAction = EndAction.MARK_EXHAUSTED
    # A model policy's share of payments kept on the fixed schedule (the control group).
    control_group_percent: int = 10

    def __post_init__(self) -> None:
        # Equal quiet-hour bounds are accepted and mean "no quiet hours".
        if self.max_attempts < 0 or self.window_days <= 0 or self.min_hours_between_attempts < 0:
            raise ValueError("max_attempts >= 0, window_days > 0, min spacing >= 0 required")
        hours = (self.quiet_hours_start, self.quiet_hours_end)
        if (hours[0] is None) != (hours[1] is None):
            raise ValueError("quiet hours need both a start and an end, or neither")
        if any(h is not None and not 0 <= h <= 23 for h in hours):
            raise ValueError("quiet hours are hours 0-23")
        days = self.fixed_schedule_days
        if any(d <= 0 for d in days) or list(days) != sorted(set(days)):
            raise ValueError("fixed_schedule_days must be positive and strictly increasing")

    def window_end(self, first_failed_at: datetime) -> datetime:
        """The first instant at which no retry is allowed any more."""
        return first_failed_at + timedelta(days=self.window_days)


@dataclass(frozen=True, slots=True)
class PaymentLedger:
    """What the rules know of one payment, its card credential and its customer.

    `retries` are attempts on this payment after its first failure, by any actor.
    `card_history` is every attempt at this merchant, by any actor and on any payment, the
    first failure included, on a credential a retry of this payment may hit: its card (by
    fingerprint, across expiries), the card that replaced it, and the cards its own attempts
    were made on. Each attempt counts against the card it was made on; counting the cards
    together can only overstate a card's count, never understate it (and a never-rule on any
    of them holds the payment, which is as conservative). `customer_history`
    every attempt on any card of this customer at this merchant. `credential_since` is when the
    current credential took effect: declines before it no longer bind, except a stop-payment.
    """

    network: str | None
    first_failed_at: datetime
    last_decline: DeclineView | None = None
    retries: tuple[AttemptRecord, ...] = ()
    card_history: tuple[AttemptRecord, ...] = ()
    customer_history: tuple[AttemptRecord, ...] = ()
    credential_since: datetime | None = None
    customer_timezone: str | None = None

    @property
    def portal_attempts(self) -> int:
        """Retries the portal itself started on this payment, in flight included."""
        return sum(1 for r in self.retries if r.actor is Actor.PORTAL)

    def last_attempt_at(self) -> datetime:
        """The latest attempt on this payment or its credential (the first failure at least)."""
        times = [r.at for r in self.retries] + [r.at for r in self.card_history]
        return max([self.first_failed_at, *times])


@dataclass(frozen=True, slots=True)
class RuleVerdict:
    """Whether one candidate time is allowed and, if not, what blocks it and until when.

    Blocked with `next_allowed_at` None: `end_state` says how the payment ends (EXHAUSTED or
    NOT_RETRYABLE); `end_state` None as well means recovery is switched off (held).
    """

    allowed: bool
    next_allowed_at: datetime | None
    blocking_rule: str | None
    end_state: PaymentState | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a requested retry time lands once every rule has had its say."""

    requested_at: datetime
    at: datetime | None
    blocking_rule: str | None
    end_state: PaymentState | None
    detail: str

    @property
    def moved(self) -> bool:
        return self.at is not None and self.at != self.requested_at


@dataclass(frozen=True, slots=True)
class LedgerView:
    """The "why was / wasn't it retried" summary of one payment's credential."""

    attempts_last_24h: int
    attempts_last_30d: int
    next_allowed_at: datetime | None
    blocking_rule: str | None


@dataclass(frozen=True, slots=True)
class LocalZone:
    """The time zone a payment's local times (quiet hours, paydays) are read in, and why."""

    zone: ZoneInfo
    why: str

    def describe(self) -> str:
        """One clause for a decision's reason: which zone applied, and why that one."""
        return f"local time: {self.zone.key} ({self.why})"


@lru_cache(maxsize=1024)
def local_zone(customer: str | None, policy: str) -> LocalZone:
    """The customer's time zone; else the policy's (the customer has none, or a stored name
    that is not a zone); else UTC. A bad stored zone never stops a decision. (Kept for the
    names seen: a decision asks three or four times, with the same names.)"""
    bad_customer = None
    if customer:
        zone = _zone(customer)
        if zone is not None:
            return LocalZone(zone, "the customer's time zone")
        bad_customer = customer
    lacking = (
        f"the customer's {bad_customer[:64]!r} is not a time zone"
        if bad_customer is not None
        else "the customer has none"
    )
    zone = _zone(policy) if policy else None
    if zone is not None:
        return LocalZone(zone, f"the policy's time zone: {lacking}")
    policy_lacks = f"the policy's {policy[:64]!r} is not one" if policy else "the policy has none"
    return LocalZone(ZoneInfo("UTC"), f"the fallback: {lacking} and {policy_lacks}")


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def zone_or_fallback(name: str | None, fallback: str) -> ZoneInfo:
    """The time zone `name`, else `fallback`, else UTC (see `local_zone`)."""
    return local_zone(name, fallback).zone


def _aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")


def _all_declines(ledger: PaymentLedger) -> list[DeclineView]:
    declines = [r.decline for r in (*ledger.retries, *ledger.card_history) if r.decline]
    if ledger.last_decline is not None:
        declines.append(ledger.last_decline)
    return declines


def _credential_declines(
    ledger: PaymentLedger, every: Sequence[DeclineView] | None = None
) -> list[DeclineView]:
    """Declines that bind the current credential: those since it took effect (`every`: the
    ledger's declines, `_all_declines`, when the caller has them)."""
    since = ledger.credential_since
    if every is None:
        every = _all_declines(ledger)
    return [d for d in every if since is None or d.declined_at >= since]


def forever_block(
    *,
    ledger: PaymentLedger,
    policy: RetryPolicyView,
    rules: NetworkRules = DEFAULT_RULES,
    declines: tuple[Sequence[DeclineView], Sequence[DeclineView]] | None = None,
) -> RuleVerdict | None:
    """The rule that forbids any further retry regardless of time, or None.

    Order is precedence: network never-rules first, then the payment's own decline, then the
    merchant's exclusions, then the attempt budget. `declines`: the ledger's declines and
    those that bind its credential (`_all_declines`, `_credential_declines`), when the caller
    has them.
    """
    network = normalize_network(ledger.network)
    not_retryable = PaymentState.NOT_RETRYABLE
    if declines is None:
        found = _all_declines(ledger)
        declines = (found, _credential_declines(ledger, found))
    every, credential = declines
    # A stop-payment revokes the mandate, not the card: a new card does not lift it.
    for d in every:
        if d.category in rules.stop_payment_categories:
            return RuleVerdict(False, None, RULE_STOP_PAYMENT, not_retryable, "stop-payment order")
    for d in credential:
        code = normalize_network_code(d.network_decline_code)
        if _follows(network, VISA) and code in rules.visa_category_1_codes:
            detail = f"Visa category 1 code {d.network_decline_code}"
            return RuleVerdict(False, None, RULE_VISA_CATEGORY_1, not_retryable, detail)
        advice = normalize_network_code(d.network_advice_code)
        if _follows(network, MASTERCARD) and advice in rules.mastercard_never_advice_codes:
            rule = mastercard_advice_rule(advice)
            return RuleVerdict(False, None, rule, not_retryable, "Mastercard: do not retry")
    for d in credential:
        if d.advice is Advice.NEVER:
            detail = f"{d.category} decline advises never"
            return RuleVerdict(False, None, RULE_DECLINE_ADVICE_NEVER, not_retryable, detail)
    last = ledger.last_decline
    since = ledger.credential_since
    if last is not None and (since is None or last.declined_at >= since):
        if last.advice is Advice.UPDATE_CREDENTIALS:
            detail = f"{last.category}: needs new card details"
            return RuleVerdict(False, None, RULE_UPDATE_CREDENTIALS, not_retryable, detail)
        if not last.retryable:
            detail = f"{last.category} is a hard decline"
            return RuleVerdict(False, None, RULE_HARD_DECLINE, not_retryable, detail)
        if last.category in policy.excluded_decline_categories:
            detail = f"{last.category} excluded by the merchant's policy"
            return RuleVerdict(False, None, RULE_EXCLUDED_CATEGORY, not_retryable, detail)
    # Retries by the processor or billing system use up the budget too: the customer and the
    # issuer see every one of them.
    if len(ledger.retries) >= policy.max_attempts:
        detail = f"{len(ledger.retries)} of {policy.max_attempts} retries made"
        return RuleVerdict(False, None, RULE_MAX_ATTEMPTS, PaymentState.EXHAUSTED, detail)
    return None


def _cap_wait(candidate: datetime, times: Sequence[datetime], cap: AttemptCap) -> datetime | None:
    # Attempts on either side of the candidate count: any rolling window that would hold the
    # new attempt must stay within the cap, and a candidate may precede recorded attempts.
    near = sorted(t for t in times if candidate - cap.window < t < candidate + cap.window)
    excess = len(near) - cap.limit + 1
    if excess <= 0:
        return None
    return near[excess - 1] + cap.window


def _quiet_until(candidate: datetime, policy: RetryPolicyView, zone: ZoneInfo) -> datetime | None:
    start, end = policy.quiet_hours_start, policy.quiet_hours_end
    if start is None or end is None or start == end:
        return None
    local = candidate.astimezone(zone)
    hour = local.hour
    wraps = start > end
    quiet = (hour >= start or hour < end) if wraps else start <= hour < end
    if not quiet:
        return None
    day = local.date()
    if wraps and hour >= start:
        day += timedelta(days=1)
    # Built from the wall-clock date so a DST change in between does not shift the hour; a
    # non-existent local time resolves forward, i.e. still outside the quiet hours.
    return datetime.combine(day, time(end), tzinfo=zone).astimezone(UTC)


def _not_before(
    ledger: PaymentLedger, rules: NetworkRules, credential: Sequence[DeclineView]
) -> tuple[datetime, str] | None:
    """The latest not-before among the declines that bind the credential (`credential`)."""
    network = normalize_network(ledger.network)
    best: tuple[datetime, str] | None = None
    for d in credential:
        options: list[tuple[datetime, str]] = []
        if d.not_before is not None:
            options.append((d.not_before, RULE_NOT_BEFORE))
        advice = normalize_network_code(d.network_advice_code)
        if (
            _follows(network, MASTERCARD)
            and advice is not None
            and advice in rules.mastercard_advice_delays
        ):
            delay = rules.mastercard_advice_delays[advice]
            options.append((d.declined_at + delay, mastercard_advice_rule(advice)))
        for option in options:
            if best is None or option[0] > best[0]:
                best = option
    return best


def evaluate(
    candidate_time: datetime,
    *,
    ledger: PaymentLedger,
    policy: RetryPolicyView,
    rules: NetworkRules = DEFAULT_RULES,
) -> RuleVerdict:
    """Whether a retry at `candidate_time` breaks no rule, and if it does, which and until when.

    `ledger` carries the card history, the customer history, the payment's retries and its
    latest decline (see `PaymentLedger`).
    """
    return Evaluator(ledger=ledger, policy=policy, rules=rules)(candidate_time)


class Evaluator:
    """`evaluate` for one ledger and policy at many candidate times: what does not depend on
    the time (the never-rules, the window's end, not-before, spacing, the attempt times the
    caps count, the local zone) is read once, the rest at each call."""

    __slots__ = (
        "_blocked",
        "_caps",
        "_card_times",
        "_customer_caps",
        "_customer_times",
        "_not_before",
        "_policy",
        "_spaced_until",
        "_window_end",
        "_zone",
        "forever",
    )

    def __init__(
        self,
        *,
        ledger: PaymentLedger,
        policy: RetryPolicyView,
        rules: NetworkRules = DEFAULT_RULES,
    ) -> None:
        self._policy = policy
        # The rule that forbids any further retry (`forever_block`), whatever the policy's
        # switch says: the state machine reads it too.
        every = _all_declines(ledger)
        credential = _credential_declines(ledger, every)
        self.forever = forever_block(
            ledger=ledger, policy=policy, rules=rules, declines=(every, credential)
        )
        self._blocked: RuleVerdict | None = self.forever
        if not policy.enabled:
            self._blocked = RuleVerdict(
                False, None, RULE_RECOVERY_DISABLED, None, "recovery is switched off"
            )
        self._window_end = policy.window_end(ledger.first_failed_at)
        self._not_before = _not_before(ledger, rules, credential)
        spacing = timedelta(hours=policy.min_hours_between_attempts)
        self._spaced_until = ledger.last_attempt_at() + spacing if spacing else None
        self._card_times = [r.at for r in ledger.card_history]
        self._caps = rules.caps_for(ledger.network)
        self._customer_times = [r.at for r in ledger.customer_history]
        self._customer_caps = rules.customer_caps
        self._zone = zone_or_fallback(ledger.customer_timezone, policy.timezone)

    def __call__(self, candidate_time: datetime) -> RuleVerdict:
        _aware(candidate_time, "candidate time")
        if self._blocked is not None:
            return self._blocked
        window_end = self._window_end
        if candidate_time >= window_end:
            detail = f"the retry window closed at {window_end.isoformat()}"
            return RuleVerdict(False, None, RULE_RETRY_WINDOW, PaymentState.EXHAUSTED, detail)
        waits: list[tuple[datetime, str]] = []
        not_before = self._not_before
        if not_before is not None and candidate_time < not_before[0]:
            waits.append(not_before)
        spaced_until = self._spaced_until
        if spaced_until is not None and candidate_time < spaced_until:
            waits.append((spaced_until, RULE_MIN_SPACING))
        for cap in self._caps:
            wait = _cap_wait(candidate_time, self._card_times, cap)
            if wait is not None:
                waits.append((wait, cap.name))
        for cap in self._customer_caps:
            wait = _cap_wait(candidate_time, self._customer_times, cap)
            if wait is not None:
                waits.append((wait, cap.name))
        quiet = _quiet_until(candidate_time, self._policy, self._zone)
        if quiet is not None:
            waits.append((quiet, RULE_QUIET_HOURS))
        if not waits:
            return RuleVerdict(True, None, None)
        until, rule = max(waits)
        return RuleVerdict(False, until, rule, None, f"{rule} until {until.isoformat()}")


# Each step moves the candidate strictly later; this bound only guards against a rule table
# that keeps pushing without end.
_MAX_STEPS = 256


def earliest_allowed(
    candidate_time: datetime,
    *,
    ledger: PaymentLedger,
    policy: RetryPolicyView,
    rules: NetworkRules = DEFAULT_RULES,
) -> Placement:
    """Move a requested retry time to the earliest allowed one, or say how the payment ends."""
    at, placed = _evaluator(ledger, policy, rules)
    key = (candidate_time, candidate_time.tzinfo)
    placement = placed.get(key)
    if placement is None:
        placement = placed[key] = _place(candidate_time, at)
    return placement


# The evaluator of the latest (ledger, policy, rules) asked about, and the placements it made
# by requested time: a decision and the transition that carries it out place the same time
# for the same ledger one after the other. All three are immutable and held here, so their
# identities cannot be reused while they are.
_last_entry: list[
    tuple[PaymentLedger, RetryPolicyView, NetworkRules, "Evaluator", dict[Any, Placement]]
] = []


def evaluator_for(
    ledger: PaymentLedger, policy: RetryPolicyView, rules: NetworkRules = DEFAULT_RULES
) -> Evaluator:
    """The evaluator of this very ledger, policy and rules: the one `earliest_allowed` uses
    (kept for the latest ones asked about), so a transition that checks the never-rules and
    then places a time on the same ledger reads the rules once."""
    return _evaluator(ledger, policy, rules)[0]


def _evaluator(
    ledger: PaymentLedger, policy: RetryPolicyView, rules: NetworkRules
) -> tuple["Evaluator", dict[Any, Placement]]:
    if _last_entry:
        last = _last_entry[0]
        if last[0] is ledger and last[1] is policy and last[2] is rules:
            return last[3], last[4]
    at = Evaluator(ledger=ledger, policy=policy, rules=rules)
    placed: dict[Any, Placement] = {}
    _last_entry[:] = [(ledger, policy, rules, at, placed)]
    return at, placed


def _place(candidate_time: datetime, at: "Evaluator") -> Placement:
    candidate = candidate_time
    pushed_by: str | None = None
    for _ in range(_MAX_STEPS):
        verdict = at(candidate)
        if verdict.allowed:
            return Placement(candidate_time, candidate, pushed_by, None, "")
        if verdict.next_allowed_at is None:
            rule, detail = verdict.blocking_rule, verdict.detail
            if verdict.blocking_rule == RULE_RETRY_WINDOW and pushed_by is not None:
                # Name the rule that pushed the retry out of the window, not the window itself.
                rule = pushed_by
                detail = f"{pushed_by} pushes the next retry past the window: {verdict.detail}"
            return Placement(candidate_time, None, rule, verdict.end_state, detail)
        candidate = verdict.next_allowed_at
        pushed_by = verdict.blocking_rule
    detail = "no allowed time found"
    return Placement(candidate_time, None, RULE_NO_ALLOWED_TIME, PaymentState.EXHAUSTED, detail)


def ledger_view(
    *,
    ledger: PaymentLedger,
    policy: RetryPolicyView,
    now: datetime,
    rules: NetworkRules = DEFAULT_RULES,
) -> LedgerView:
    """Attempts on the credential and, as of `now`, the next allowed retry and what blocks it."""
    _aware(now, "now")

    def count(window: timedelta) -> int:
        return sum(1 for r in ledger.card_history if now - window < r.at <= now)

    placement = earliest_allowed(now, ledger=ledger, policy=policy, rules=rules)
    return LedgerView(
        attempts_last_24h=count(timedelta(hours=24)),
        attempts_last_30d=count(timedelta(days=30)),
        next_allowed_at=placement.at,
        blocking_rule=placement.blocking_rule,
    )
