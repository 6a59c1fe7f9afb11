"""Scoring many decisions at once gives each payment the decision it gets alone: `choose_batch`
against `choose`, the model scheduler prepared for a batch against the scheduler unprepared,
on a varied set of payments (declines, networks, time zones, histories, budgets, candidate
sets, none left, past successes)."""

import random
import uuid
from datetime import UTC, datetime, timedelta

from app.enums import Actor, Advice, AttemptOutcome, CardFunding, DeclineCategory, RetryStrategy
from app.retry.rules import AttemptRecord, DeclineView, RetryPolicyView
from app.retry.schedule import PaymentView
from jobs.model import Loaded, ModelCache, ModelScheduler, failure_row
from ml.policy import PolicyConfig, choose, choose_batch
from tests.support.model import small_artifact

NOW = datetime(2026, 10, 5, 9, 30, tzinfo=UTC)
CATEGORIES = (
    DeclineCategory.INSUFFICIENT_FUNDS,
    DeclineCategory.PROCESSING_ERROR,
    DeclineCategory.DO_NOT_HONOR,
    DeclineCategory.VELOCITY_EXCEEDED,
)
ZONES = (None, "America/New_York", "Europe/Berlin", "Asia/Tokyo", "Not/AZone")


def _same(a: object, b: object) -> bool:
    """Equal, a feature value that is NaN (no earlier attempt) included: the exact repr."""
    return repr(a) == repr(b)


def _loaded() -> Loaded:
    return ModelCache().load(uuid.uuid4(), small_artifact())


def _varied(
    n: int, seed: int = 11
) -> list[tuple[PaymentView, list[AttemptRecord], list[datetime], RetryPolicyView]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        failed = NOW - timedelta(hours=rng.randint(1, 200), minutes=rng.randint(0, 59))
        decline = DeclineView(
            category=CATEGORIES[i % len(CATEGORIES)],
            retryable=True,
            advice=Advice.RETRY_LATER,
            declined_at=failed,
            network_decline_code=rng.choice([None, "51", "05", "91"]),
            network_advice_code=rng.choice([None, "01", "24"]),
        )
        payment = PaymentView(
            payment_id=str(uuid.UUID(int=rng.getrandbits(128))),
            merchant_id=str(uuid.UUID(int=rng.getrandbits(128))),
            first_failed_at=failed,
            amount_minor=rng.randint(50, 500_000),
            currency=rng.choice(["USD", "EUR", "JPY"]),
            network=rng.choice(["visa", "mastercard", "amex", None]),
            funding=rng.choice(list(CardFunding)),
            decline=decline if i % 9 else None,
            customer_timezone=ZONES[i % len(ZONES)],
            issuer_country=rng.choice([None, "US", "DE"]),
            past_success_at=tuple(
                sorted(failed - timedelta(days=rng.randint(3, 90)) for _ in range(i % 5))
            ),
        )
        history = [
            AttemptRecord(
                failed + timedelta(hours=6 * (k + 1)), Actor.PORTAL, AttemptOutcome.DECLINED
            )
            for k in range(i % 4)
        ]
        # Irregular allowed sets of different sizes; every eleventh has none left.
        count = 0 if i % 11 == 10 else rng.randint(1, 60)
        candidates = sorted(
            {
                NOW + timedelta(hours=rng.randint(0, 500), minutes=rng.choice([0, 7, 30]))
                for _ in range(count)
            }
        )
        policy = RetryPolicyView(
            strategy=RetryStrategy.MODEL, max_attempts=rng.choice([1, 2, 4, 8]), window_days=30
        )
        out.append((payment, history, candidates, policy))
    return out


def test_choose_batch_gives_each_failure_its_own_decision() -> None:
    model = _loaded().model
    assert model is not None
    items = _varied(60)
    config = PolicyConfig()
    rows = [failure_row(p) for p, _, _, _ in items]
    previous = [[r.at for r in h] for _, h, _, _ in items]
    candidates = [c for _, _, c, _ in items]
    budgets = [max(pol.max_attempts - len(h), 0) for _, h, _, pol in items]
    alone = [
        choose(model, r, p, c, b, config)
        for r, p, c, b in zip(rows, previous, candidates, budgets, strict=True)
    ]
    together = choose_batch(model, rows, previous, candidates, budgets, config)
    assert len(together) == len(alone)
    for got, want in zip(together, alone, strict=True):
        assert _same(got, want), (got, want)
    # The set is varied enough to hold every kind of answer.
    assert {d.source for d in alone} >= {"model", "stop"}
    assert any(d.explanation for d in alone)


def test_choose_batch_without_a_model_falls_back_as_choose_does() -> None:
    items = _varied(8)
    rows = [failure_row(p) for p, _, _, _ in items]
    previous = [[r.at for r in h] for _, h, _, _ in items]
    candidates = [c for _, _, c, _ in items]
    budgets = [2] * len(items)
    together = choose_batch(None, rows, previous, candidates, budgets)
    alone = [choose(None, r, p, c, 2) for r, p, c in zip(rows, previous, candidates, strict=True)]
    assert _same(together, alone)


def test_a_prepared_scheduler_decides_and_records_as_an_unprepared_one() -> None:
    champion, shadow = _loaded(), _loaded()
    items = _varied(40, seed=5)
    alone = ModelScheduler(champion=champion, shadow=shadow)
    prepared = ModelScheduler(champion=champion, shadow=shadow)
    prepared.prepare([(p, h, c, pol, NOW) for p, h, c, pol in items])
    # Both models' choices were scored ahead, for every payment with candidates and budget.
    ready = len(prepared._prepared)
    assert ready == 2 * len(items)
    for payment, history, candidates, policy in items:
        expected = alone(payment, history, candidates, policy=policy, now=NOW)
        assert _same(prepared(payment, history, candidates, policy=policy, now=NOW), expected)
    assert _same(prepared.take_decisions(), alone.take_decisions())
    assert not prepared._prepared  # each taken once


def test_a_call_that_differs_from_what_was_prepared_is_scored_on_its_own() -> None:
    champion = _loaded()
    [(payment, history, candidates, policy)] = _varied(1, seed=3)
    assert candidates
    prepared = ModelScheduler(champion=champion)
    prepared.prepare([(payment, history, candidates, policy, NOW)])
    fewer = candidates[1:] or candidates
    alone = ModelScheduler(champion=champion)
    assert _same(
        prepared(payment, history, fewer, policy=policy, now=NOW),
        alone(payment, history, fewer, policy=policy, now=NOW),
    )
