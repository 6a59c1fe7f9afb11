"""Support's merchant administration for the API: create merchants, pause or resume recovery."""

from app.enums import MerchantStatus
from app.models.merchant import Merchant
from app.services.merchant import create_merchant, set_recovery_status
from resolvers.context import Context
from resolvers.ids import decode_id


async def create(ctx: Context, *, name: str) -> Merchant:
    async with ctx.change() as (uow, by):
        return await create_merchant(uow, name=name, **by)


async def set_recovery(
    ctx: Context, *, merchant_global_id: str, status: MerchantStatus, reason: str
) -> Merchant:
    async with ctx.change() as (uow, by):
        _, merchant_id = decode_id(merchant_global_id, expected="Merchant")
        return await set_recovery_status(
            uow, merchant_id=merchant_id, status=status, reason=reason, **by
        )
