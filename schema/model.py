"""Retry-timing model types: the registry's models, their metrics, and promoteModel."""

from datetime import datetime
from typing import Annotated, Any, Self

import strawberry

from app.enums import ModelStatus
from app.errors import ErrorCode
from app.models.model_version import ModelVersion
from resolvers import model as model_resolvers
from resolvers.context import Context
from resolvers.ids import encode_id
from schema.mutation import Payload, ReasonArg, mutation
from schema.rows import from_row

Info = strawberry.Info[Context, None]

strawberry.enum(ModelStatus, description="Where a model stands: acting, waiting or retired.")


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@strawberry.type(description="How well a model predicted attempt success on held-out data.")
class ModelScores:
    rows: int | None = strawberry.field(description="Attempts scored.")
    auc: float | None = strawberry.field(description="Area under the ROC curve.")
    log_loss: float | None = strawberry.field(description="Mean log loss (lower is better).")
    brier: float | None = strawberry.field(description="Brier score (lower is better).")
    ece: float | None = strawberry.field(description="Expected calibration error.")

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Self:
        rows = doc.get("rows")
        return cls(
            rows=rows if isinstance(rows, int) else None,
            auc=_float(doc.get("auc")),
            log_loss=_float(doc.get("log_loss")),
            brier=_float(doc.get("brier")),
            ece=_float(doc.get("ece")),
        )


@strawberry.type(description="Held-out scores of one decline category.")
class CategoryScores:
    category: str = strawberry.field(description="The decline category.")
    scores: ModelScores = strawberry.field(description="The scores on its attempts.")


@strawberry.type(description="A model's held-out metrics, overall and per decline category.")
class ModelMetrics:
    overall: ModelScores = strawberry.field(description="Scores on the test window.")
    by_category: list[CategoryScores] = strawberry.field(
        description="Scores per decline category with enough attempts."
    )
    best_iteration: int | None = strawberry.field(description="Trees kept by early stopping.")

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Self:
        rows = doc.get("rows")
        test_rows = rows.get("test") if isinstance(rows, dict) else rows
        overall = ModelScores.from_json({**doc, "rows": test_rows})
        by_category = [
            CategoryScores(category=name, scores=ModelScores.from_json(scores))
            for name, scores in sorted((doc.get("by_category") or {}).items())
        ]
        best = doc.get("best_iteration")
        return cls(
            overall=overall,
            by_category=by_category,
            best_iteration=best if isinstance(best, int) else None,
        )


@strawberry.type(description="The promotion gate's verdict on a later held-out window.")
class ModelGate:
    promote: bool = strawberry.field(description="Whether the model beat the champion.")
    reason: str = strawberry.field(description="Why, in words.")
    champion_id: strawberry.ID | None = strawberry.field(
        description="The champion it was measured against; null when there was none."
    )
    challenger: ModelScores | None = strawberry.field(description="This model's scores.")
    champion: ModelScores | None = strawberry.field(description="The champion's scores.")

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Self:
        champion_id = doc.get("champion_id")
        return cls(
            promote=bool(doc.get("promote")),
            reason=str(doc.get("reason", "")),
            champion_id=(
                None
                if champion_id is None
                else strawberry.ID(encode_id(model_resolvers.MODEL_TYPE, champion_id))
            ),
            challenger=ModelScores.from_json(doc["challenger"]) if doc.get("challenger") else None,
            champion=ModelScores.from_json(doc["champion"]) if doc.get("champion") else None,
        )


@strawberry.type(description="A trained retry-timing model (global: it serves every merchant).")
class Model:
    id: strawberry.ID = strawberry.field(description="Global id.")
    status: ModelStatus = strawberry.field(description="Champion, challenger, shadow or retired.")
    trained_at: datetime = strawberry.field(description="When it was trained.")
    data_start: datetime = strawberry.field(description="The earliest failure it learned from.")
    data_end: datetime = strawberry.field(description="The latest failure it learned from.")
    feature_list: str = strawberry.field(description="Feature list name and version.")
    source: str = strawberry.field(description="Stored history or the simulator.")
    metrics: ModelMetrics = strawberry.field(description="Held-out metrics from training.")
    gate: ModelGate | None = strawberry.field(
        description="The promotion gate's latest verdict; null when it has not run."
    )
    promoted_at: datetime | None = strawberry.field(description="When it became champion.")
    promoted_by: str | None = strawberry.field(description="Who promoted it.")
    reason: str | None = strawberry.field(description="Why its status last changed.")

    @classmethod
    def from_model(cls, row: ModelVersion) -> Self:
        return from_row(
            cls,
            row,
            id=strawberry.ID(encode_id(model_resolvers.MODEL_TYPE, row.id)),
            metrics=ModelMetrics.from_json(row.metrics),
            gate=None if row.gate is None else ModelGate.from_json(row.gate),
        )


async def models(
    info: Info,
    first: Annotated[int, strawberry.argument(description="How many, 1-100.")] = 20,
) -> list[Model]:
    rows = await model_resolvers.models(info.context, first=max(1, min(first, 100)))
    return [Model.from_model(r) for r in rows]


class PromoteModelPayload(Payload):
    model: Model | None = strawberry.field(description="The new champion, when promoted.")


@mutation(
    refuses=(
        ErrorCode.NOT_FOUND,
        ErrorCode.GATE_FAILED,
        ErrorCode.INVALID_STATE,
        ErrorCode.INVALID,
    ),
    errors="Why the promotion was refused",
    subject="id",
    description=(
        "Make a model the champion when it beat the current champion on a later held-out "
        "window; the old champion is retired (support only). Audited."
    ),
)
async def promote_model(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="The model's global id.")],
    reason: ReasonArg,
) -> PromoteModelPayload:
    row = await model_resolvers.promote(info.context, model_global_id=str(id), reason=reason)
    return PromoteModelPayload(model=Model.from_model(row))
