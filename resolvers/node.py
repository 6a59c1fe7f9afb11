"""`node(id:)`: any entity by global id, through the same scoped loaders."""

from app.errors import InvalidId
from app.models.api_key import ApiKey
from app.models.customer import CardCredential, Customer
from app.models.ingestion import ProcessorConnection
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.models.retry import WebhookEndpoint
from resolvers.context import Context
from resolvers.ids import decode_id

Entity = (
    Merchant | Payment | Customer | CardCredential | ProcessorConnection | ApiKey | WebhookEndpoint
)


async def node(ctx: Context, global_id: str) -> Entity | None:
    ctx.require_principal()
    type_name, key = decode_id(global_id)
    loaders = ctx.loaders
    match type_name:
        case "Merchant":
            return await loaders.merchant_by_id.load(key)
        case "Payment":
            return await loaders.payment_by_id.load(key)
        case "Customer":
            return await loaders.customer_by_id.load(key)
        case "Card":
            return await loaders.card_by_id.load(key)
        case "ProcessorConnection":
            return await loaders.processor_connection_by_id.load(key)
        case "ApiKey":
            return await loaders.api_key_by_id.load(key)
        case "WebhookEndpoint":
            return await loaders.webhook.webhook_endpoint_by_id.load(key)
    # decode_id accepts only NODE_TYPES; a type added there without a branch here lands here.
    raise InvalidId(f"no node lookup for {type_name}")
