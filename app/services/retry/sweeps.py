"""Batch sweeps of the decide cron: windows that ran out, schedules that must be chosen again."""

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, assert_never

import sqlalchemy as sa
from sqlmodel import col, func, select

from app.db import UnitOfWork
from app.enums import PaymentState
from app.models.payment import Payment
from app.models.retry_policy import RetryPolicy
from app.retry.events import PolicyChanged, WindowExpired
from app.retry.schedule import Scheduler
from app.services.retry.engine import decide, prepare_decisions, run_event
from app.services.retry.ledger import load_contexts
from app.services.retry.writes import Writes

P = PaymentState
Sweep = Literal["window", "policy", "decision"]


def _current_policies() -> Any:
    """Each merchant's current policy version and window, as a derived table."""
    return (
        select(
            col(RetryPolicy.merchant_id).label("merchant_id"),
            func.max(col(RetryPolicy.version)).label("version"),
        )
        .group_by(col(RetryPolicy.merchant_id))
        .subquery("current_policy")
    )


async def _claim(uow: UnitOfWork, query: Any) -> list[uuid.UUID]:
    return list((await uow.session.execute(query)).scalars())


async def expire_windows(
    uow: UnitOfWork, *, now: datetime, limit: int = 500, scheduler: Scheduler | None = None
) -> int:
    """End PENDING and SCHEDULED payments whose retry window has closed (WindowExpired).

    Deciding ends a payment whose window closed only when something asks for a decision; a
    payment held while its merchant is paused (or recovery is off) is never decided, so the
    window is swept here, whatever the merchant's status. No commit.
    """
    current = _current_policies()
    window_end = col(Payment.first_failed_at) + func.make_interval(
        0, 0, 0, col(RetryPolicy.window_days)
    )
    ids = await _claim(
        uow,
        select(col(Payment.id))
        .join(current, current.c.merchant_id == col(Payment.merchant_id))
        .join(
            RetryPolicy,
            (col(RetryPolicy.merchant_id) == current.c.merchant_id)
            & (col(RetryPolicy.version) == current.c.version),
        )
        .where(
            col(Payment.state).in_((P.PENDING, P.SCHEDULED)),
            # Never decided yet: the first decision ends it, with its failure on the timeline.
            ~((col(Payment.state) == P.PENDING) & col(Payment.needs_decision)),
            window_end <= now,
        )
        .order_by(col(Payment.first_failed_at))
        .limit(limit)
        .with_for_update(of=Payment, skip_locked=True),
    )
    return await _run(uow, ids, now=now, scheduler=scheduler, sweep="window")


async def redecide_scheduled(
    uow: UnitOfWork, *, now: datetime, limit: int = 500, scheduler: Scheduler | None = None
) -> int:
    """Choose again the schedules a policy change or an event made stale; no commit.

    A schedule chosen under an older policy version than the merchant's current one gets the
    core's PolicyChanged (a timeline row, then a decision under the new policy, or an end if
    the new policy forbids a retry). One flagged for a new decision (a new card, read by
    ingestion) is decided again. Payments are taken in batches with `SKIP LOCKED`, so a
    large merchant is worked through over several runs and concurrent runs split it.
    """
    current = _current_policies()
    stale = await _claim(
        uow,
        select(col(Payment.id))
        .join(current, current.c.merchant_id == col(Payment.merchant_id))
        .where(
            col(Payment.state) == P.SCHEDULED,
            sa.or_(
                col(Payment.policy_version).is_(None),
                col(Payment.policy_version) < current.c.version,
            ),
        )
        .order_by(col(Payment.next_retry_at))
        .limit(limit)
        .with_for_update(of=Payment, skip_locked=True),
    )
    done = await _run(uow, stale, now=now, scheduler=scheduler, sweep="policy")
    flagged = await _claim(
        uow,
        select(col(Payment.id))
        .where(col(Payment.state) == P.SCHEDULED, col(Payment.needs_decision))
        .order_by(col(Payment.next_retry_at))
        .limit(limit)
        .with_for_update(skip_locked=True),
    )
    return done + await _run(uow, flagged, now=now, scheduler=scheduler, sweep="decision")


async def _run(
    uow: UnitOfWork,
    ids: Sequence[uuid.UUID],
    *,
    now: datetime,
    scheduler: Scheduler | None,
    sweep: Sweep,
) -> int:
    if not ids:
        return 0
    contexts = await load_contexts(uow.session, ids, now=now)
    # A schedule chosen again is the model's choice: scored for the whole batch at once.
    prepared = None
    if sweep != "window":
        prepared = prepare_decisions(list(contexts.values()), now=now, scheduler=scheduler)
    writes = Writes()
    for pid in ids:
        ctx = contexts.get(pid)
        if ctx is None:
            continue
        match sweep:
            case "window":
                await run_event(
                    uow, ctx, WindowExpired(), now=now, scheduler=scheduler, writes=writes
                )
            case "policy":
                await run_event(
                    uow,
                    ctx,
                    PolicyChanged(),
                    now=now,
                    scheduler=scheduler,
                    writes=writes,
                    prepared=prepared,
                )
                # Whatever the outcome, the payment has been seen under this version.
                ctx.payment.policy_version = ctx.policy_version
            case "decision":
                candidates = None if prepared is None else prepared.candidates(ctx, now)
                event = decide(ctx, now=now, scheduler=scheduler, candidates=candidates).to_event()
                await run_event(uow, ctx, event, now=now, scheduler=scheduler, writes=writes)
                ctx.payment.needs_decision = False
            case _:
                assert_never(sweep)
        writes.touch(ctx.payment)
    # Written (and flushed) so that a later query in the same unit of work sees these
    # payments as handled.
    await writes.flush(uow.session)
    await uow.session.flush()
    return len(ids)
