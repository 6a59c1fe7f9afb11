"""Serving the retry-timing model: champion and shadow loading, the model scheduler, decisions."""

import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog

from app.db import Database
from app.enums import ModelStatus, RetryStrategy
from app.processors.normalize.records import CURRENCY_EXPONENTS
from app.retry.rules import AttemptRecord, RetryPolicyView, normalize_network
from app.retry.schedule import Decision, DecisionRequest, PaymentView, decline_aware
from app.services import model_registry as registry
from app.services.model_registry import ROLE_ACTING, ROLE_SHADOW, DecisionRecord, HistoryFailure
from app.tenancy import SYSTEM_SCOPE
from ml.artifact import TimingModel, load_model
from ml.features import FEATURE_LIST
from ml.policy import SOURCE_MODEL, SOURCE_STOP, PolicyConfig, choose, choose_batch
from ml.policy import Decision as ModelDecision
from ml.records import FailureRow

logger = structlog.get_logger("portal.jobs")

REASON_MAX = 1000


@dataclass(frozen=True)
class Loaded:
    """A registry model as served: the model, or why it could not be loaded."""

    id: uuid.UUID
    model: TimingModel | None
    error: str | None = None


class ModelCache:
    """Loaded models by id: an artifact never changes under its id, so it is parsed once.

    A failed load is remembered too, so a corrupt artifact is not parsed on every run.
    """

    def __init__(self, size: int = 4) -> None:
        self._size = size
        self._items: OrderedDict[uuid.UUID, Loaded] = OrderedDict()

    def get(self, model_id: uuid.UUID) -> Loaded | None:
        found = self._items.get(model_id)
        if found is not None:
            self._items.move_to_end(model_id)
        return found

    def load(self, model_id: uuid.UUID, artifact: bytes) -> Loaded:
        try:
            loaded = Loaded(model_id, load_model(artifact, expected=FEATURE_LIST))
        except Exception as exc:  # a bad artifact must degrade to the schedule, not crash jobs
            loaded = Loaded(model_id, None, f"model {model_id} unusable: {exc}")
        self._items[model_id] = loaded
        while len(self._items) > self._size:
            self._items.popitem(last=False)
        return loaded

    def clear(self) -> None:
        self._items.clear()


CACHE = ModelCache()


async def load_current(
    db: Database, status: ModelStatus, cache: ModelCache = CACHE
) -> Loaded | None:
    """The current champion (or shadow): one id lookup, the artifact only when not cached."""
    return (await _load_serving(db, (status,), cache))[status]


async def _load_serving(
    db: Database, statuses: Sequence[ModelStatus], cache: ModelCache
) -> dict[ModelStatus, Loaded | None]:
    """The current model of each status: their ids in one statement outside a transaction
    (every charge job asks, so it costs one round trip), artifacts only when not cached."""
    async with db.read(SYSTEM_SCOPE) as session:
        ids = await registry.current_ids(session, statuses)
    loaded: dict[ModelStatus, Loaded | None] = {}
    for status in statuses:
        model_id = ids.get(status)
        loaded[status] = None if model_id is None else cache.get(model_id)
        if model_id is not None and loaded[status] is None:
            async with db.read(SYSTEM_SCOPE) as session:
                row = await registry.model_by_id(session, model_id)
            loaded[status] = None if row is None else cache.load(row.id, row.artifact)
    return loaded


def _stable_int(value: str | uuid.UUID) -> int:
    key = value if isinstance(value, uuid.UUID) else uuid.UUID(value)
    return int.from_bytes(key.bytes[:7], "big")


def _tz_offset_minutes(name: str | None, at: datetime) -> int:
    if not name:
        return 0
    try:
        offset = at.astimezone(ZoneInfo(name)).utcoffset()
    except (ZoneInfoNotFoundError, ValueError):
        return 0
    return 0 if offset is None else int(offset.total_seconds() // 60)


def _row(
    *,
    failure_id: int,
    customer_id: int,
    failed_at: datetime,
    amount_minor: int,
    currency: str,
    category: str,
    network_code: str | None,
    advice_code: str | None,
    funding: str,
    network: str | None,
    timezone: str | None,
    country: str | None,
    past_success_at: tuple[datetime, ...],
) -> FailureRow:
    # Serving and training both build rows here, from the same reading of a payment: past
    # successes are the customer's latest before the first failure on both sides (the feature
    # builder drops any later one too), so the two never disagree and nothing later leaks in.
    return FailureRow(
        failure_id=failure_id,
        customer_id=customer_id,
        failed_at=failed_at,
        amount_minor=amount_minor,
        currency=currency,
        category=category,
        network_code=network_code or "",
        advice_code=advice_code or "",
        funding=funding,
        brand=network or "other",
        country=country,
        tz_offset_minutes=_tz_offset_minutes(timezone, failed_at),
        past_success_at=tuple(t for t in past_success_at if t < failed_at),
    )


def failure_row(view: PaymentView) -> FailureRow:
    """The model's reading of a payment at decision time."""
    decline = view.decline
    return _row(
        failure_id=_stable_int(view.payment_id),
        customer_id=_stable_int(view.payment_id),
        failed_at=view.first_failed_at,
        amount_minor=view.amount_minor,
        currency=view.currency,
        category=str(decline.category) if decline else "other",
        network_code=decline.network_decline_code if decline else None,
        advice_code=decline.network_advice_code if decline else None,
        funding=str(view.funding),
        network=view.network,
        timezone=view.customer_timezone,
        country=view.issuer_country,
        past_success_at=view.past_success_at,
    )


def history_row(failure: HistoryFailure) -> FailureRow:
    """The same reading of a stored failure, for training."""
    return _row(
        failure_id=_stable_int(failure.payment_id),
        customer_id=_stable_int(failure.customer_id),
        failed_at=failure.first_failed_at,
        amount_minor=failure.amount_minor,
        currency=failure.currency,
        category=str(failure.category),
        network_code=failure.network_code,
        advice_code=failure.advice_code,
        funding=str(failure.funding),
        network=normalize_network(failure.brand),
        timezone=failure.customer_timezone,
        country=failure.issuer_country,
        past_success_at=failure.past_success_at,
    )


def _nearest(candidates: Sequence[datetime], t: float) -> datetime:
    """The allowed candidate a model time came from (epoch floats lose the exact instant)."""
    return min(candidates, key=lambda c: abs(c.timestamp() - t))


def _explanation(decision: ModelDecision) -> list[dict[str, object]]:
    return [
        {"feature": c.feature, "text": c.text, "log_odds": c.log_odds} for c in decision.explanation
    ]


def money(minor: int, currency: str) -> str:
    """An amount in minor units as people read it: `26.66 EUR`, `980 JPY`."""
    exponent = CURRENCY_EXPONENTS.get(currency.upper(), 2)
    return f"{Decimal(minor).scaleb(-exponent):.{exponent}f} {currency}"


def _model_reason(decision: ModelDecision, currency: str) -> str:
    p = decision.probability or 0.0
    words = "; ".join(c.text for c in decision.explanation)
    reason = (
        f"model: {p:.0%} chance at this time; {len(decision.planned)} planned retries expected "
        f"to recover {money(decision.expected_recovered_minor, currency)}"
    )
    return f"{reason} ({words})" if words else reason


@dataclass(frozen=True)
class _Asked:
    """What a model's choice is made from: the payment, the retries before (times), the
    allowed candidates from now on (sorted) and the budget left."""

    payment: PaymentView
    previous: tuple[datetime, ...]
    allowed: tuple[datetime, ...]
    remaining: int


def _asked(
    payment: PaymentView,
    history: Sequence[AttemptRecord],
    candidates: Sequence[datetime],
    *,
    policy: RetryPolicyView,
    now: datetime,
) -> _Asked:
    return _Asked(
        payment=payment,
        previous=tuple(r.at for r in history),
        allowed=tuple(sorted(c for c in candidates if c >= now)),
        remaining=max(policy.max_attempts - len(history), 0),
    )


@dataclass
class ModelScheduler:
    """Chooses retry times with the champion among the allowed candidates (the Scheduler).

    Without a usable champion, or when scoring fails, it answers with the decline-aware rules
    and says why in the reason. A shadow model scores the same candidates alongside;
    its decision is kept for comparison and never acted on. Decisions made are collected in
    `decisions` for the caller to store in its unit of work.
    """

    champion: Loaded | None = None
    shadow: Loaded | None = None
    config: PolicyConfig = field(default_factory=PolicyConfig)
    decisions: list[DecisionRecord] = field(default_factory=list)
    seconds: float = 0.0
    # Choices scored ahead by `prepare`, by model id and by what the choice was made from.
    _prepared: dict[tuple[uuid.UUID, "_Asked"], ModelDecision] = field(
        default_factory=dict, repr=False
    )

    def prepare(self, requests: Sequence[DecisionRequest]) -> None:
        """Score many decisions at once, ahead of the calls that make them: the champion and
        the shadow each score every request's candidates in one batch (`choose_batch`). A
        later call with the same payment, history, candidates, policy budget and time takes
        its model's choice from here, once; anything else is scored as it comes. Nothing is
        decided or recorded here: the calls do that, as without preparing."""
        started = time.perf_counter()
        try:
            asked: list[tuple[_Asked, FailureRow]] = []
            for payment, history, candidates, policy, now in requests:
                key = _asked(payment, history, candidates, policy=policy, now=now)
                with suppress(Exception):  # left to the call, which falls back with the reason
                    asked.append((key, failure_row(payment)))
            for loaded in (self.champion, self.shadow):
                if loaded is None or loaded.model is None or not asked:
                    continue
                try:
                    chosen = choose_batch(
                        loaded.model,
                        [row for _, row in asked],
                        [list(key.previous) for key, _ in asked],
                        [list(key.allowed) for key, _ in asked],
                        [key.remaining for key, _ in asked],
                        self.config,
                    )
                except Exception as exc:  # each call then scores on its own, as unprepared
                    logger.warning("batch scoring failed", model_id=str(loaded.id), error=str(exc))
                    continue
                for (key, _), decision in zip(asked, chosen, strict=True):
                    self._prepared[(loaded.id, key)] = decision
        finally:
            self.seconds += time.perf_counter() - started

    def _choose(
        self,
        loaded: Loaded,
        model: TimingModel,
        key: "_Asked",
        row: FailureRow,
    ) -> ModelDecision:
        ready = self._prepared.pop((loaded.id, key), None)
        if ready is not None:
            return ready
        return choose(model, row, list(key.previous), list(key.allowed), key.remaining, self.config)

    def __call__(
        self,
        payment: PaymentView,
        history: Sequence[AttemptRecord],
        candidates: Sequence[datetime],
        *,
        policy: RetryPolicyView,
        now: datetime,
    ) -> Decision:
        started = time.perf_counter()
        try:
            return self._decide(payment, history, candidates, policy=policy, now=now)
        finally:
            self.seconds += time.perf_counter() - started

    def _decide(
        self,
        payment: PaymentView,
        history: Sequence[AttemptRecord],
        candidates: Sequence[datetime],
        *,
        policy: RetryPolicyView,
        now: datetime,
    ) -> Decision:
        key = _asked(payment, history, candidates, policy=policy, now=now)
        allowed = list(key.allowed)
        champion = self.champion
        if champion is None or champion.model is None:
            why = "no champion model" if champion is None else (champion.error or "unusable")
            return self._fallback(payment, history, allowed, policy, now, why, champion)
        try:
            row = failure_row(payment)
            decision = self._choose(champion, champion.model, key, row)
        except Exception as exc:  # scoring must never stop a decision
            return self._fallback(
                payment, history, allowed, policy, now, f"model failed: {exc}", champion
            )
        if self.shadow is not None:
            self._score_shadow(payment, row, key, now)
        if decision.source == SOURCE_STOP:
            self._record(payment, champion.id, ROLE_ACTING, decision, None, now)
            return Decision(None, f"model: {decision.reason}"[:REASON_MAX], RetryStrategy.MODEL)
        if decision.source != SOURCE_MODEL or decision.attempt_at is None:
            return self._fallback(payment, history, allowed, policy, now, decision.reason, champion)
        chosen = _nearest(allowed, decision.attempt_at)
        self._record(payment, champion.id, ROLE_ACTING, decision, chosen, now)
        reason = _model_reason(decision, payment.currency)
        return Decision(chosen, reason[:REASON_MAX], RetryStrategy.MODEL)

    def _fallback(
        self,
        payment: PaymentView,
        history: Sequence[AttemptRecord],
        allowed: Sequence[datetime],
        policy: RetryPolicyView,
        now: datetime,
        why: str,
        champion: Loaded | None,
    ) -> Decision:
        rules = decline_aware(payment, history, allowed, policy=policy, now=now)
        reason = f"{rules.reason} (model fallback: {why})"[:REASON_MAX]
        self.decisions.append(
            DecisionRecord(
                merchant_id=uuid.UUID(payment.merchant_id),
                payment_id=uuid.UUID(payment.payment_id),
                model_version_id=None if champion is None else champion.id,
                role=ROLE_ACTING,
                source="fallback",
                decided_at=now,
                chosen_at=rules.chosen_at,
                probability=None,
                expected_recovered_minor=0,
                reason=reason,
                explanation=[],
            )
        )
        return Decision(rules.chosen_at, reason, RetryStrategy.DECLINE_AWARE)

    def _score_shadow(
        self, payment: PaymentView, row: FailureRow, key: "_Asked", now: datetime
    ) -> None:
        shadow = self.shadow
        if shadow is None or shadow.model is None:
            return
        try:
            decision = self._choose(shadow, shadow.model, key, row)
        except Exception as exc:  # a shadow never affects the acting decision
            logger.warning("shadow model failed", model_id=str(shadow.id), error=str(exc))
            return
        allowed = key.allowed
        chosen = None if decision.attempt_at is None else _nearest(allowed, decision.attempt_at)
        self._record(payment, shadow.id, ROLE_SHADOW, decision, chosen, now)

    def _record(
        self,
        payment: PaymentView,
        model_id: uuid.UUID,
        role: str,
        decision: ModelDecision,
        chosen: datetime | None,
        now: datetime,
    ) -> None:
        self.decisions.append(
            DecisionRecord(
                merchant_id=uuid.UUID(payment.merchant_id),
                payment_id=uuid.UUID(payment.payment_id),
                model_version_id=model_id,
                role=role,
                source=decision.source,
                decided_at=now,
                chosen_at=chosen,
                probability=decision.probability,
                expected_recovered_minor=decision.expected_recovered_minor,
                reason=(
                    _model_reason(decision, payment.currency)
                    if decision.source == SOURCE_MODEL
                    else decision.reason
                ),
                explanation=_explanation(decision),
            )
        )

    def take_decisions(self) -> list[DecisionRecord]:
        """The decisions made since the last call, handed over once."""
        out, self.decisions = self.decisions, []
        return out


async def serving_scheduler(db: Database, cache: ModelCache = CACHE) -> ModelScheduler:
    """A scheduler over the current champion and shadow (loaded once per model id)."""
    serving = await _load_serving(db, (ModelStatus.CHAMPION, ModelStatus.SHADOW), cache)
    champion, shadow = serving[ModelStatus.CHAMPION], serving[ModelStatus.SHADOW]
    if champion is not None and champion.error:
        logger.warning("champion model unusable; decline-aware rules in use", error=champion.error)
    return ModelScheduler(champion=champion, shadow=shadow)


async def store_decisions(db: Database, scheduler: ModelScheduler) -> int:
    """Store what the scheduler decided (acting and shadow) in its own unit of work."""
    records = scheduler.take_decisions()
    if not records:
        return 0
    async with db.uow(SYSTEM_SCOPE) as uow:
        stored = await registry.record_decisions(uow, records)
        await uow.commit()
    return stored


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
