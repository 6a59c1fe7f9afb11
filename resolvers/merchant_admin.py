"""Merchant administration for the API: create merchants (support, or a partner onboarding
one), pause or resume recovery (support)."""

from dataclasses import replace

from app.enums import MerchantStatus, Role
from app.models.merchant import Merchant
from app.services.merchant import create_merchant, set_recovery_status
from app.tenancy import Scope
from resolvers.context import Context
from resolvers.ids import decode_id


async def create(ctx: Context, *, name: str) -> Merchant:
    async with ctx.change() as (uow, by):
        merchant = await create_merchant(uow, name=name, **by)
    principal = ctx.require_principal()
    if principal.role is Role.PARTNER and principal.scope.merchant_ids is not None:
        # The partner key was granted the new merchant: the rest of this request sees it, and
        # this process looks the key up again on its next request.
        granted = Scope(merchant_ids=principal.scope.merchant_ids | {merchant.id})
        ctx.principal = replace(principal, scope=granted)
        ctx.reset_loaders()
        if ctx.principals is not None and principal.key_id is not None:
            ctx.principals.forget(principal.key_id)
    return merchant


async def set_recovery(
    ctx: Context, *, merchant_global_id: str, status: MerchantStatus, reason: str
) -> Merchant:
    async with ctx.change() as (uow, by):
        _, merchant_id = decode_id(merchant_global_id, expected="Merchant")
        return await set_recovery_status(
            uow, merchant_id=merchant_id, status=status, reason=reason, **by
        )
