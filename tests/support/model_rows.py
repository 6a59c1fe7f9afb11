"""Registry rows for tests: models with a given status and gate verdict, decisions."""

import uuid
from datetime import datetime, timedelta
from typing import Any

from app.db import Database
from app.enums import ModelStatus
from app.models.model_version import ModelVersion
from app.services.model_registry import GateVerdict, TrainedModel, record_gate, store_challenger
from app.tenancy import SYSTEM_SCOPE
from tests.support.model import small_artifact, small_model


async def make_model(
    db: Database,
    *,
    now: datetime,
    status: ModelStatus = ModelStatus.CHALLENGER,
    gate: GateVerdict | None = None,
    artifact: bytes | None = None,
) -> ModelVersion:
    """A stored model (the small trained one unless `artifact` is given)."""
    metrics: dict[str, Any] = small_model()[0].metrics
    async with db.uow(SYSTEM_SCOPE) as uow:
        row = store_challenger(
            uow,
            TrainedModel(
                artifact=small_artifact() if artifact is None else artifact,
                trained_at=now,
                data_start=now - timedelta(days=365),
                data_end=now - timedelta(days=30),
                feature_list="attempt_success/v1",
                source="simulated:3000",
                parameters={"seed": 3},
                metrics=metrics,
            ),
        )
        row.status = status
        await uow.session.flush()
        if gate is not None:
            await record_gate(uow, row.id, gate)
        await uow.commit()
    return row


def verdict(promote: bool, champion_id: uuid.UUID | None, reason: str = "") -> GateVerdict:
    return GateVerdict(
        promote=promote,
        reason=reason or ("log loss better by 0.0100" if promote else "champion stays"),
        champion_id=champion_id,
        window_start=None,
        window_end=None,
        challenger_metrics={"auc": 0.74, "log_loss": 0.41, "brier": 0.12, "ece": 0.01},
        champion_metrics=None if champion_id is None else {"auc": 0.72, "log_loss": 0.42},
    )
