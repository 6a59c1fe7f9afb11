"""Merchants: create (with a default retry policy), pause or resume recovery, list and load."""

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.db import UnitOfWork
from app.enums import MerchantStatus, Role
from app.errors import InvalidArgument, NotFound
from app.models.merchant import Merchant
from app.services import audit
from app.services.api_key import grant_merchant
from app.services.retry_policy import create_default_policy
from app.tenancy import Principal, Scope


async def create_merchant(
    uow: UnitOfWork, *, name: str, principal: Principal, now: datetime
) -> Merchant:
    """A new merchant with the default retry policy as version 1, audited. Support may
    create merchants, and so may a partner key (onboarding), which is then granted the new
    merchant: it sees it from its next request on every API process (the grant is read when a
    key is authenticated; see `PORTAL_AUTH_CACHE_SECONDS`)."""
    onboarding = principal.role is Role.PARTNER and principal.key_id is not None
    if not onboarding:
        principal.require_support("create merchants")
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidArgument("name must be 1-200 characters", field="name")
    merchant = Merchant(name=name, created_at=now)
    uow.session.add(merchant)
    await uow.session.flush()
    policy = create_default_policy(uow, merchant.id, created_by=principal.actor_label, now=now)
    if onboarding and principal.key_id is not None:
        await grant_merchant(uow, key_id=principal.key_id, merchant_id=merchant.id)
    audit.record(
        uow,
        principal=principal,
        merchant_id=merchant.id,
        action="merchant.create",
        entity_type="merchant",
        entity_id=str(merchant.id),
        before=None,
        after={
            "name": merchant.name,
            "retry_policy_version": policy.version,
            **({"granted_to_api_key": str(principal.key_id)} if onboarding else {}),
        },
        reason=None,
        now=now,
    )
    await uow.session.flush()
    return merchant


async def list_merchants(
    session: AsyncSession, *, first: int, after: tuple[datetime, uuid.UUID] | None
) -> Sequence[Merchant]:
    """Merchants visible to the session's scope, oldest first, keyset on (created_at, id)."""
    query = select(Merchant).order_by(col(Merchant.created_at), col(Merchant.id)).limit(first + 1)
    if after is not None:
        query = query.where(tuple_(col(Merchant.created_at), col(Merchant.id)) > tuple_(*after))
    return (await session.execute(query)).scalars().all()


def merchant_count_query(scope: Scope) -> Any:
    """The merchants a scope may see, for `totalCount`; the scope is in the query itself."""
    query = select(col(Merchant.id))
    if scope.merchant_ids is not None:
        query = query.where(col(Merchant.id).in_(sorted(scope.merchant_ids)))
    return query


async def set_recovery_status(
    uow: UnitOfWork,
    *,
    principal: Principal,
    merchant_id: uuid.UUID,
    status: MerchantStatus,
    reason: str,
    now: datetime,
) -> Merchant:
    """Pause or resume a merchant's recovery (support only), audited; setting the status it
    already has changes nothing and is not logged."""
    # FOR NO KEY UPDATE: pauses and resumes of one merchant queue here, while writers of the
    # merchant's payments (whose foreign keys take the merchant row FOR KEY SHARE) go on.
    merchant = (
        await uow.session.execute(
            select(Merchant).where(col(Merchant.id) == merchant_id).with_for_update(key_share=True)
        )
    ).scalar_one_or_none()
    if merchant is None:
        raise NotFound("merchant not found", field="merchantId")
    principal.require_support("pause or resume a merchant's recovery")
    reason = audit.clean_reason(reason)
    if merchant.status is status:
        return merchant
    before = {"status": merchant.status.value}
    merchant.status = status
    audit.record(
        uow,
        principal=principal,
        merchant_id=merchant.id,
        action="merchant.pause" if status is MerchantStatus.PAUSED else "merchant.resume",
        entity_type="merchant",
        entity_id=str(merchant.id),
        before=before,
        after={"status": status.value},
        reason=reason,
        now=now,
    )
    await uow.session.flush()
    return merchant
