"""What a retry policy change would do to the payments already scheduled, without making it.

The change is made for real inside a unit of work that is never committed: the same checks as
updateRetryPolicy refuse it the same way (unknown merchant, a key that may not configure it,
invalid values), and the payments' contexts are read twice through the engine's own loader,
before the change and after it, so each is seen under exactly the policy the engine would
apply (the control group and a paused merchant included). The caller's unit of work rolls
back; the contexts are detached first so they can be read after it."""

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlmodel import col, select

from app.db import UnitOfWork
from app.enums import PaymentState
from app.errors import NotFound
from app.models.payment import Payment
from app.models.retry_policy import RetryPolicy
from app.services.retry.ledger import PaymentContext, load_contexts
from app.services.retry_policy import PolicyChanges, current_policies, update_retry_policy
from app.tenancy import Principal

# A preview reads and scores at most this many scheduled payments (the soonest retries first);
# the count of payments the change would re-decide is exact whatever the number.
PREVIEW_PAYMENT_LIMIT = 100
_PREVIEW_REASON = "preview (never committed)"


@dataclass(frozen=True)
class PreviewInput:
    """The policy now and as changed, how many scheduled payments the change would re-decide,
    and up to the limit of them under each policy (same order)."""

    current: RetryPolicy
    proposed: RetryPolicy
    scheduled: int
    before: list[PaymentContext]
    after: list[PaymentContext]


async def preview_contexts(
    uow: UnitOfWork,
    *,
    principal: Principal,
    merchant_id: uuid.UUID,
    changes: PolicyChanges,
    now: datetime,
    limit: int = PREVIEW_PAYMENT_LIMIT,
) -> PreviewInput:
    """Make the change in `uow` (which the caller must not commit) and read the scheduled
    payments under the policy before and after it. Raises what updateRetryPolicy raises."""
    stored = (await current_policies(uow.session, [merchant_id])).get(merchant_id)
    if stored is None:
        # Every merchant has a policy from its creation: none means none visible.
        raise NotFound("merchant not found", field="merchantId")
    principal.require_configure(merchant_id)
    scheduled = (col(Payment.merchant_id) == merchant_id) & (
        col(Payment.state) == PaymentState.SCHEDULED
    )
    ids = list(
        (
            await uow.session.execute(
                select(col(Payment.id))
                .where(scheduled)
                .order_by(col(Payment.next_retry_at), col(Payment.id))
                .limit(limit)
            )
        ).scalars()
    )
    before = await load_contexts(uow.session, ids, now=now)
    proposed = await update_retry_policy(
        uow,
        principal=principal,
        merchant_id=merchant_id,
        expected_version=stored.version,
        changes=changes,
        reason=_PREVIEW_REASON,
        now=now,
    )
    after = await load_contexts(uow.session, ids, now=now)
    count = (
        await uow.session.execute(select(func.count()).select_from(Payment).where(scheduled))
    ).scalar_one()
    uow.session.expunge_all()
    kept = [pid for pid in ids if pid in before and pid in after]
    return PreviewInput(
        current=stored,
        proposed=proposed,
        scheduled=int(count),
        before=[before[pid] for pid in kept],
        after=[after[pid] for pid in kept],
    )
