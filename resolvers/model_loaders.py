"""Per-request dataloaders of the model registry's read models: decisions behind payments."""

import uuid
from datetime import datetime

from strawberry.dataloader import DataLoader

from app.db import Database
from app.models.model_version import ModelDecision
from app.services import model_registry as registry
from app.tenancy import Scope

DecisionKey = tuple[uuid.UUID, datetime]


class ModelLoaders:
    """The acting model decision behind (payment, decision time), one query per batch."""

    def __init__(self, db: Database, scope: Scope) -> None:
        async def acting(keys: list[DecisionKey]) -> list[ModelDecision | None]:
            async with db.session(scope) as session:
                found = await registry.acting_decisions(session, keys)
            return [found.get(k) for k in keys]

        self.acting_decision: DataLoader[DecisionKey, ModelDecision | None] = DataLoader(
            load_fn=acting
        )
