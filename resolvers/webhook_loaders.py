"""Per-request dataloaders of merchants' webhook endpoints and their recent deliveries."""

import uuid
from collections import defaultdict

from strawberry.dataloader import DataLoader

from app.db import Database
from app.models.webhook_endpoint import WebhookEndpoint
from app.services.webhook_endpoint import RecentDelivery, recent_deliveries
from app.tenancy import Scope
from resolvers.batch import row_by_id, rows_by_merchant_id

# An endpoint's id with how many of its newest deliveries are asked for.
DeliveriesKey = tuple[uuid.UUID, int]


class WebhookLoaders:
    """Endpoints by id and by merchant, deliveries by (endpoint, count); each batch one session."""

    def __init__(self, db: Database, scope: Scope) -> None:
        async def deliveries(keys: list[DeliveriesKey]) -> list[list[RecentDelivery]]:
            # One query per distinct count asked for; a page usually asks one.
            groups: dict[int, list[uuid.UUID]] = defaultdict(list)
            for endpoint_id, first in keys:
                groups[first].append(endpoint_id)
            found: dict[DeliveriesKey, list[RecentDelivery]] = {}
            async with db.session(scope) as session:
                for first, endpoint_ids in groups.items():
                    rows = await recent_deliveries(session, endpoint_ids, first=first)
                    for endpoint_id in endpoint_ids:
                        found[(endpoint_id, first)] = rows.get(endpoint_id, [])
            return [found[k] for k in keys]

        self.webhook_endpoint_by_id: DataLoader[uuid.UUID, WebhookEndpoint | None] = row_by_id(
            db, scope, WebhookEndpoint
        )
        self.webhook_endpoints_by_merchant_id: DataLoader[uuid.UUID, list[WebhookEndpoint]] = (
            rows_by_merchant_id(db, scope, WebhookEndpoint)
        )
        self.recent_deliveries_by_endpoint_id: DataLoader[DeliveriesKey, list[RecentDelivery]] = (
            DataLoader(load_fn=deliveries)
        )
