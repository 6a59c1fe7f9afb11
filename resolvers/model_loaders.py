"""Per-request dataloaders of the model registry's read models: decisions behind payments, and
shadow models compared with a champion."""

import uuid
from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.dataloader import DataLoader

from app.db import Database
from app.errors import PortalError
from app.models.model_version import ModelDecision
from app.services import model_comparison
from app.services import model_registry as registry
from app.services.model_comparison import Comparison
from app.tenancy import Scope

DecisionKey = tuple[uuid.UUID, datetime]
# (the compared model, the champion it is compared with (None: the current one), tolerance).
ComparisonKey = tuple[uuid.UUID, uuid.UUID | None, timedelta]


async def _compare_group(
    session: AsyncSession,
    model_ids: list[uuid.UUID],
    champion_id: uuid.UUID | None,
    tolerance: timedelta,
) -> dict[uuid.UUID, Comparison | PortalError | None]:
    """One group's comparisons; a refusal (no such champion) answers for that group only."""
    try:
        found = await model_comparison.comparisons(
            session, model_ids, champion_id=champion_id, tolerance=tolerance
        )
    except PortalError as exc:
        return dict.fromkeys(model_ids, exc)
    return {model_id: found.get(model_id) for model_id in model_ids}


class ModelLoaders:
    """The acting model decision behind (payment, decision time), one query per batch; model
    comparisons, one statement per distinct (champion, tolerance) of a batch."""

    def __init__(self, db: Database, scope: Scope) -> None:
        async def acting(keys: list[DecisionKey]) -> list[ModelDecision | None]:
            async with db.read(scope) as session:
                found = await registry.acting_decisions(session, keys)
            return [found.get(k) for k in keys]

        async def compared(keys: list[ComparisonKey]) -> list[Comparison | PortalError | None]:
            groups: dict[tuple[uuid.UUID | None, timedelta], list[uuid.UUID]] = defaultdict(list)
            for model_id, champion_id, tolerance in keys:
                groups[(champion_id, tolerance)].append(model_id)
            found: dict[ComparisonKey, Comparison | PortalError | None] = {}
            async with db.session(scope) as session:
                for (champion_id, tolerance), model_ids in groups.items():
                    for model_id, value in (
                        await _compare_group(session, model_ids, champion_id, tolerance)
                    ).items():
                        found[(model_id, champion_id, tolerance)] = value
            return [found[k] for k in keys]

        self.acting_decision: DataLoader[DecisionKey, ModelDecision | None] = DataLoader(
            load_fn=acting
        )
        # Callers check that the principal is support first: a comparison spans every merchant.
        self.comparison: DataLoader[ComparisonKey, Comparison | None] = DataLoader(load_fn=compared)
