"""Network-rule ledger: every cap, every never rule, quiet hours, spacing, window, budget."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from zoneinfo import ZoneInfo

import pytest

from app.declines import Decline
from app.enums import Actor, Advice, AttemptOutcome, DeclineCategory, PaymentState
from app.retry.rules import (
    AttemptCap,
    AttemptRecord,
    DeclineView,
    NetworkRules,
    PaymentLedger,
    RetryPolicyView,
    RuleVerdict,
    earliest_allowed,
    evaluate,
    ledger_view,
    normalize_network,
)

FAILED_AT = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
NOW = FAILED_AT + timedelta(days=2)
# Spacing and window out of the way unless a test is about them.
OPEN = RetryPolicyView(min_hours_between_attempts=0, window_days=60, max_attempts=15)
ACTORS = (Actor.PORTAL, Actor.PROCESSOR, Actor.BILLING_SYSTEM)


def soft(at: datetime = FAILED_AT, **kw: object) -> DeclineView:
    base = DeclineView(DeclineCategory.DO_NOT_HONOR, True, Advice.RETRY, at)
    return replace(base, **kw)  # type: ignore[arg-type]


def attempts(
    times: list[datetime], decline: DeclineView | None = None
) -> tuple[AttemptRecord, ...]:
    # Every kind of actor in turn: the caps count attempts whoever made them.
    return tuple(
        AttemptRecord(t, ACTORS[i % len(ACTORS)], AttemptOutcome.DECLINED, decline)
        for i, t in enumerate(times)
    )


def spread(n: int, end: datetime, over: timedelta) -> list[datetime]:
    """n attempts evenly spread over `over`, the last at `end`."""
    if n == 1:
        return [end]
    return [end - over + over * i / (n - 1) for i in range(n)]


def ledger(**kw: object) -> PaymentLedger:
    base = PaymentLedger(network="visa", first_failed_at=FAILED_AT, last_decline=soft())
    return replace(base, **kw)  # type: ignore[arg-type]


def check(
    at: datetime, led: PaymentLedger, policy: RetryPolicyView = OPEN, **kw: NetworkRules
) -> RuleVerdict:
    return evaluate(at, ledger=led, policy=policy, **kw)


# --- Caps per credential ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "limit", "window", "rule"),
    [
        ("visa", 15, timedelta(days=30), "visa_reattempts_30d"),
        ("mastercard", 10, timedelta(hours=24), "mastercard_declines_24h"),
        ("amex", 20, timedelta(days=30), "network_attempts_30d"),
        ("discover", 20, timedelta(days=30), "network_attempts_30d"),
        ("unionpay", 20, timedelta(days=30), "network_attempts_30d"),
    ],
)
def test_cap_allows_up_to_the_limit_and_then_waits(
    network: str, limit: int, window: timedelta, rule: str
) -> None:
    first = NOW - window + timedelta(hours=1)
    below = spread(limit - 1, NOW - timedelta(minutes=1), NOW - timedelta(minutes=1) - first)
    led = ledger(network=network, first_failed_at=first, card_history=attempts(below))
    assert check(NOW, led).allowed
    at_limit = spread(limit, NOW - timedelta(minutes=1), NOW - timedelta(minutes=1) - first)
    verdict = check(NOW, replace(led, card_history=attempts(at_limit)))
    assert not verdict.allowed
    assert verdict.blocking_rule == rule
    # The oldest attempt leaves the rolling window: exactly then one more is allowed.
    assert verdict.next_allowed_at == min(at_limit) + window
    assert check(min(at_limit) + window, replace(led, card_history=attempts(at_limit))).allowed


def test_mastercard_30_day_cap() -> None:
    # 35 declines over 30 days, never more than 10 in any 24 h.
    times = [NOW - timedelta(days=29) + timedelta(hours=19.5) * i for i in range(35)]
    led = ledger(network="mastercard", first_failed_at=times[0], card_history=attempts(times))
    verdict = check(times[-1] + timedelta(hours=1), led)
    assert verdict.blocking_rule == "mastercard_declines_30d"
    assert verdict.next_allowed_at == times[0] + timedelta(days=30)
    assert check(times[0] + timedelta(days=30), led).allowed


def test_caps_are_configurable() -> None:
    times = spread(15, NOW - timedelta(hours=1), timedelta(days=10))
    led = ledger(card_history=attempts(times))
    assert not check(NOW, led).allowed
    twenty = NetworkRules(
        network_caps=MappingProxyType({"visa": (AttemptCap("visa_30d", 20, timedelta(days=30)),)})
    )
    assert check(NOW, led, rules=twenty).allowed


def test_counts_include_processor_and_billing_system_attempts() -> None:
    times = spread(10, NOW - timedelta(minutes=5), timedelta(hours=20))
    records = tuple(
        AttemptRecord(t, actor, AttemptOutcome.DECLINED)
        for t, actor in zip(times, [Actor.PROCESSOR, Actor.BILLING_SYSTEM] * 5, strict=True)
    )
    led = ledger(network="mastercard", first_failed_at=times[0], card_history=records)
    assert check(NOW, led).blocking_rule == "mastercard_declines_24h"
    view = ledger_view(ledger=led, policy=OPEN, now=NOW)
    assert view.attempts_last_24h == 10
    assert view.attempts_last_30d == 10
    assert view.blocking_rule == "mastercard_declines_24h"
    assert view.next_allowed_at == times[0] + timedelta(hours=24)


def test_in_flight_and_errored_attempts_count() -> None:
    times = spread(10, NOW - timedelta(minutes=5), timedelta(hours=2))
    records = tuple(
        AttemptRecord(t, Actor.PORTAL, None if i % 2 else AttemptOutcome.ERROR)
        for i, t in enumerate(times)
    )
    led = ledger(network="mastercard", card_history=records)
    assert not check(NOW, led).allowed


def test_brand_families_follow_their_network() -> None:
    assert normalize_network(" MC ") == "mastercard"
    assert normalize_network("Maestro") == "mastercard"
    assert normalize_network("visa_electron") == "visa"
    assert normalize_network("amex") == "amex"
    assert normalize_network(None) is None
    assert normalize_network("unknown") is None
    times = spread(10, NOW - timedelta(minutes=5), timedelta(hours=2))
    assert not check(NOW, ledger(network="maestro", card_history=attempts(times))).allowed


def test_an_unknown_network_gets_the_strictest_rules() -> None:
    times = spread(10, NOW - timedelta(minutes=5), timedelta(hours=2))
    assert check(NOW, ledger(network=None, card_history=attempts(times))).blocking_rule == (
        "mastercard_declines_24h"
    )
    month = spread(15, NOW - timedelta(minutes=5), timedelta(days=20))
    assert check(NOW, ledger(network=None, card_history=attempts(month))).blocking_rule == (
        "visa_reattempts_30d"
    )
    for decline, rule in (
        (soft(network_advice_code="21"), "mastercard_advice_21"),
        (soft(network_decline_code="41"), "visa_category_1"),
    ):
        assert check(NOW, ledger(network="unknown", last_decline=decline)).blocking_rule == rule


def test_decline_view_from_the_taxonomy() -> None:
    decline = Decline(
        category=DeclineCategory.PROCESSING_ERROR,
        retryable=True,
        advice=Advice.RETRY_LATER,
        not_before=NOW + timedelta(hours=2),
        raw_code="91",
        network_decline_code="91",
        network_advice_code=None,
    )
    view = DeclineView.from_decline(decline, NOW)
    assert view == DeclineView(
        DeclineCategory.PROCESSING_ERROR,
        True,
        Advice.RETRY_LATER,
        NOW,
        NOW + timedelta(hours=2),
        "91",
        None,
    )


# --- Per customer -----------------------------------------------------------------------------


def test_customer_hourly_cap_across_cards() -> None:
    times = spread(5, NOW - timedelta(minutes=1), timedelta(minutes=50))
    led = ledger(customer_history=attempts(times))
    verdict = check(NOW, led)
    assert verdict.blocking_rule == "customer_attempts_hourly"
    assert verdict.next_allowed_at == times[0] + timedelta(hours=1)
    assert check(NOW, replace(led, customer_history=attempts(times[1:]))).allowed


# --- Never rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["04", "07", "12", "14", "15", "41", "43", "46", "57", "4"])
def test_visa_category_1_never(code: str) -> None:
    led = ledger(last_decline=soft(network_decline_code=code))
    verdict = check(NOW, led)
    assert (verdict.allowed, verdict.next_allowed_at) == (False, None)
    assert verdict.blocking_rule == "visa_category_1"
    assert verdict.end_state is PaymentState.NOT_RETRYABLE


@pytest.mark.parametrize("code", ["05", "51", "91"])
def test_visa_category_2_to_4_codes_are_retryable(code: str) -> None:
    assert check(NOW, ledger(last_decline=soft(network_decline_code=code))).allowed


def test_visa_category_1_code_on_another_network_is_not_the_visa_rule() -> None:
    led = ledger(network="mastercard", last_decline=soft(network_decline_code="43"))
    assert check(NOW, led).allowed


def test_visa_category_1_on_another_payment_of_the_card() -> None:
    other = attempts(
        [NOW - timedelta(days=1)], soft(NOW - timedelta(days=1), network_decline_code="14")
    )
    assert check(NOW, ledger(card_history=other)).blocking_rule == "visa_category_1"


@pytest.mark.parametrize("code", ["03", "21", "3"])
def test_mastercard_advice_never(code: str) -> None:
    led = ledger(network="mastercard", last_decline=soft(network_advice_code=code))
    verdict = check(NOW, led)
    assert verdict.blocking_rule == f"mastercard_advice_{code.zfill(2)}"
    assert verdict.end_state is PaymentState.NOT_RETRYABLE


@pytest.mark.parametrize(
    ("code", "delay"),
    [
        ("02", timedelta(hours=72)),
        ("24", timedelta(hours=1)),
        ("25", timedelta(hours=24)),
        ("26", timedelta(days=2)),
        ("27", timedelta(days=4)),
        ("28", timedelta(days=6)),
        ("29", timedelta(days=8)),
        ("30", timedelta(days=10)),
    ],
)
def test_mastercard_advice_delays_even_without_not_before(code: str, delay: timedelta) -> None:
    led = ledger(network="mastercard", last_decline=soft(NOW, network_advice_code=code))
    verdict = check(NOW, led)
    assert verdict.blocking_rule == f"mastercard_advice_{code}"
    assert verdict.next_allowed_at == NOW + delay
    assert check(NOW + delay, led).allowed


def test_not_before_is_honoured() -> None:
    led = ledger(last_decline=soft(NOW, not_before=NOW + timedelta(hours=30)))
    verdict = check(NOW, led)
    assert (verdict.blocking_rule, verdict.next_allowed_at) == (
        "not_before",
        NOW + timedelta(hours=30),
    )


def test_stop_payment_never_even_with_a_new_card() -> None:
    revoked = DeclineView(DeclineCategory.PAYMENT_REVOKED, False, Advice.NEVER, FAILED_AT)
    led = ledger(last_decline=revoked, credential_since=NOW - timedelta(hours=1))
    verdict = check(NOW, led)
    assert verdict.blocking_rule == "stop_payment"
    assert verdict.end_state is PaymentState.NOT_RETRYABLE


def test_decline_advice_never_on_the_credential() -> None:
    never = soft(NOW - timedelta(days=1), advice=Advice.NEVER, category=DeclineCategory.LOST_STOLEN)
    led = ledger(card_history=attempts([never.declined_at], never))
    assert check(NOW, led).blocking_rule == "decline_advice_never"


def test_a_new_credential_lifts_never_and_hard_declines() -> None:
    never = soft(FAILED_AT, advice=Advice.NEVER, network_decline_code="43")
    expired = DeclineView(DeclineCategory.CARD_EXPIRED, False, Advice.UPDATE_CREDENTIALS, FAILED_AT)
    for decline, rule in ((never, "visa_category_1"), (expired, "update_credentials")):
        led = ledger(last_decline=decline, card_history=attempts([FAILED_AT], decline))
        assert check(NOW, led).blocking_rule == rule
        assert check(NOW, replace(led, credential_since=FAILED_AT + timedelta(hours=1))).allowed


def test_hard_decline_and_excluded_category() -> None:
    fraud = DeclineView(DeclineCategory.FRAUD_SUSPECTED, False, Advice.RETRY, FAILED_AT)
    assert check(NOW, ledger(last_decline=fraud)).blocking_rule == "hard_decline"
    policy = replace(OPEN, excluded_decline_categories=frozenset({DeclineCategory.DO_NOT_HONOR}))
    verdict = check(NOW, ledger(), policy)
    assert verdict.blocking_rule == "excluded_category"
    assert verdict.end_state is PaymentState.NOT_RETRYABLE


def test_network_rules_take_precedence_over_the_merchant_exclusions() -> None:
    policy = replace(OPEN, excluded_decline_categories=frozenset({DeclineCategory.DO_NOT_HONOR}))
    led = ledger(last_decline=soft(network_decline_code="07"))
    assert check(NOW, led, policy).blocking_rule == "visa_category_1"


# --- Merchant policy --------------------------------------------------------------------------


def test_max_attempts_counts_every_retry() -> None:
    policy = replace(OPEN, max_attempts=3)
    retries = attempts(spread(3, NOW - timedelta(hours=1), timedelta(days=1)))
    verdict = check(NOW, ledger(retries=retries), policy)
    assert (verdict.blocking_rule, verdict.end_state) == ("max_attempts", PaymentState.EXHAUSTED)
    assert check(NOW, ledger(retries=retries[:2]), policy).allowed


def test_window() -> None:
    policy = replace(OPEN, window_days=7)
    end = FAILED_AT + timedelta(days=7)
    assert check(end - timedelta(seconds=1), ledger(), policy).allowed
    verdict = check(end, ledger(), policy)
    assert (verdict.blocking_rule, verdict.end_state) == ("retry_window", PaymentState.EXHAUSTED)


def test_a_cap_pushing_past_the_window_is_named() -> None:
    policy = replace(OPEN, window_days=10)
    times = spread(15, FAILED_AT + timedelta(days=9), timedelta(days=9))
    placement = earliest_allowed(
        NOW + timedelta(days=7), ledger=ledger(card_history=attempts(times)), policy=policy
    )
    assert placement.at is None
    assert placement.end_state is PaymentState.EXHAUSTED
    assert placement.blocking_rule == "visa_reattempts_30d"


def test_min_spacing() -> None:
    policy = replace(OPEN, min_hours_between_attempts=24)
    last = NOW - timedelta(hours=10)
    led = ledger(card_history=attempts([last]))
    verdict = check(NOW, led, policy)
    assert (verdict.blocking_rule, verdict.next_allowed_at) == (
        "min_spacing",
        last + timedelta(hours=24),
    )
    # The first failure itself counts as an attempt.
    assert check(FAILED_AT + timedelta(hours=23), ledger(), policy).blocking_rule == "min_spacing"


def test_recovery_disabled_holds_without_ending() -> None:
    verdict = check(NOW, ledger(), replace(OPEN, enabled=False))
    assert (verdict.allowed, verdict.next_allowed_at, verdict.end_state) == (False, None, None)
    assert verdict.blocking_rule == "recovery_disabled"
    assert (
        earliest_allowed(NOW, ledger=ledger(), policy=replace(OPEN, enabled=False)).end_state
        is None
    )


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"max_attempts": -1}, "max_attempts"),
        ({"window_days": 0}, "window_days"),
        ({"quiet_hours_start": 22}, "both"),
        ({"quiet_hours_start": 24, "quiet_hours_end": 7}, "0-23"),
        ({"fixed_schedule_days": (3, 1)}, "increasing"),
        ({"fixed_schedule_days": (0, 1)}, "positive"),
    ],
)
def test_policy_validation(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicyView(**kw)  # type: ignore[arg-type]


# --- Quiet hours in the customer's timezone ---------------------------------------------------

NIGHT = replace(OPEN, quiet_hours_start=22, quiet_hours_end=7, timezone="UTC")
NEW_YORK = "America/New_York"


def ny(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(NEW_YORK))


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        (ny(2026, 4, 14, 21, 59), None),
        (ny(2026, 4, 14, 22, 0), ny(2026, 4, 15, 7, 0)),
        (ny(2026, 4, 14, 23, 30), ny(2026, 4, 15, 7, 0)),
        (ny(2026, 4, 15, 3, 0), ny(2026, 4, 15, 7, 0)),
        (ny(2026, 4, 15, 6, 59), ny(2026, 4, 15, 7, 0)),
        (ny(2026, 4, 15, 7, 0), None),
    ],
)
def test_quiet_hours_across_midnight(local: datetime, expected: datetime | None) -> None:
    led = ledger(first_failed_at=local - timedelta(days=1), customer_timezone=NEW_YORK)
    verdict = check(local.astimezone(UTC), led, NIGHT)
    if expected is None:
        assert verdict.allowed
    else:
        assert verdict.blocking_rule == "quiet_hours"
        assert verdict.next_allowed_at == expected.astimezone(UTC)


def test_quiet_hours_within_one_day() -> None:
    policy = replace(OPEN, quiet_hours_start=1, quiet_hours_end=6)
    led = ledger(first_failed_at=datetime(2026, 4, 1, tzinfo=UTC))
    assert check(datetime(2026, 4, 2, 0, 30, tzinfo=UTC), led, policy).allowed
    verdict = check(datetime(2026, 4, 2, 1, 0, tzinfo=UTC), led, policy)
    assert verdict.next_allowed_at == datetime(2026, 4, 2, 6, 0, tzinfo=UTC)
    assert check(datetime(2026, 4, 2, 6, 0, tzinfo=UTC), led, policy).allowed


def test_quiet_hours_over_the_spring_forward_night() -> None:
    # 2026-03-08: New York skips 02:00-03:00; the night is an hour shorter in UTC.
    led = ledger(first_failed_at=datetime(2026, 3, 7, tzinfo=UTC), customer_timezone=NEW_YORK)
    verdict = check(ny(2026, 3, 7, 23, 0).astimezone(UTC), led, NIGHT)
    assert verdict.next_allowed_at == datetime(2026, 3, 8, 11, 0, tzinfo=UTC)  # 07:00 EDT


def test_quiet_hours_over_the_fall_back_night() -> None:
    led = ledger(first_failed_at=datetime(2026, 10, 31, tzinfo=UTC), customer_timezone=NEW_YORK)
    verdict = check(ny(2026, 10, 31, 23, 0).astimezone(UTC), led, NIGHT)
    assert verdict.next_allowed_at == datetime(2026, 11, 1, 12, 0, tzinfo=UTC)  # 07:00 EST
    # 01:30 happens twice that night; both are quiet.
    first = datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    second = datetime(2026, 11, 1, 6, 30, tzinfo=UTC)
    for at in (first, second):
        assert check(at, led, NIGHT).next_allowed_at == datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def test_quiet_hours_ending_in_the_skipped_hour() -> None:
    policy = replace(OPEN, quiet_hours_start=23, quiet_hours_end=2)
    led = ledger(first_failed_at=datetime(2026, 3, 7, tzinfo=UTC), customer_timezone=NEW_YORK)
    placement = earliest_allowed(ny(2026, 3, 8, 1, 30).astimezone(UTC), ledger=led, policy=policy)
    # 02:00 does not exist that night; the first allowed instant is 03:00 EDT.
    assert placement.at == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)


def test_policy_timezone_is_the_fallback() -> None:
    policy = replace(NIGHT, timezone="Asia/Tokyo")
    at = datetime(2026, 4, 14, 14, 0, tzinfo=UTC)  # 23:00 in Tokyo, 10:00 in New York
    led = ledger(first_failed_at=at - timedelta(days=1))
    assert check(at, led, policy).blocking_rule == "quiet_hours"
    assert check(at, replace(led, customer_timezone=NEW_YORK), policy).allowed
    assert (
        check(at, replace(led, customer_timezone="Not/AZone"), policy).blocking_rule
        == "quiet_hours"
    )


# --- Moving a decision ------------------------------------------------------------------------


def test_earliest_allowed_combines_rules() -> None:
    policy = replace(NIGHT, min_hours_between_attempts=24)
    requested = datetime(2026, 3, 4, 6, 0, tzinfo=UTC)
    last = datetime(2026, 3, 3, 20, 30, tzinfo=UTC)
    card = attempts([last])
    led = ledger(card_history=card, customer_history=card)
    placement = earliest_allowed(requested, ledger=led, policy=policy)
    # Spacing ends at 20:30 the next day, before the quiet hours: spacing alone decides.
    assert placement.at == last + timedelta(hours=24)
    assert placement.blocking_rule == "min_spacing"
    assert placement.moved
    late = attempts([datetime(2026, 3, 3, 23, 0, tzinfo=UTC)])
    led = ledger(card_history=late, customer_history=late)
    moved = earliest_allowed(requested, ledger=led, policy=policy)
    # Spacing ends at 23:00, inside the quiet hours: the next morning at 07:00.
    assert moved.at == datetime(2026, 3, 5, 7, 0, tzinfo=UTC)
    assert moved.blocking_rule == "quiet_hours"


def test_allowed_now_needs_no_move() -> None:
    placement = earliest_allowed(NOW, ledger=ledger(), policy=OPEN)
    assert (placement.at, placement.moved, placement.blocking_rule) == (NOW, False, None)
    view = ledger_view(ledger=ledger(), policy=OPEN, now=NOW)
    assert (view.next_allowed_at, view.blocking_rule) == (NOW, None)


def test_naive_times_are_rejected() -> None:
    with pytest.raises(ValueError, match="aware"):
        check(datetime(2026, 3, 3), ledger())  # noqa: DTZ001
