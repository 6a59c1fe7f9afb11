"""`node(id:)`: any entity by global id, through the same scoped loaders."""

from app.models.customer import CardCredential, Customer
from app.models.merchant import Merchant
from app.models.payment import Payment
from resolvers.context import Context
from resolvers.ids import decode_id


async def node(
    ctx: Context, global_id: str
) -> Merchant | Payment | Customer | CardCredential | None:
    ctx.require_principal()
    type_name, key = decode_id(global_id)
    loaders = ctx.loaders
    if type_name == "Merchant":
        return await loaders.merchant_by_id.load(key)
    if type_name == "Payment":
        return await loaders.payment_by_id.load(key)
    if type_name == "Customer":
        return await loaders.customer_by_id.load(key)
    return await loaders.card_by_id.load(key)
