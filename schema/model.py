"""Retry-timing model types: the registry's models, their metrics, their comparison with the
champion, and promoteModel."""

import uuid
from datetime import datetime
from typing import Annotated, Any, Self

import strawberry

from app.enums import ModelStatus
from app.errors import ErrorCode
from app.models.model_version import ModelVersion
from app.services import model_comparison as comparison_svc
from resolvers import model as model_resolvers
from resolvers.context import Context
from resolvers.ids import encode_id
from schema.mutation import Payload, ReasonArg, mutation
from schema.rows import from_row
from schema.scalars import Long

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


@strawberry.type(
    description=(
        "Shadow minus champion: each model's own predicted chance of success for its own choice "
        "at the same decision points, over pairs where both chances are known (a retry the "
        "model scored, or a stop, which counts 0). Each model judges its own choice, so a model "
        "that overestimates its chances looks better here than it is: read it beside the gate's "
        "held-out calibration."
    )
)
class ModelPredictedDifference:
    decisions: int = strawberry.field(description="Paired decisions with both chances known.")
    payments: int = strawberry.field(description="The payments those decisions belong to.")
    shadow_mean: float = strawberry.field(
        description="The shadow's mean predicted chance for its choices."
    )
    champion_mean: float = strawberry.field(
        description="The champion's mean predicted chance for its choices."
    )
    difference: float = strawberry.field(
        description="Shadow mean minus champion mean (a share: 0.01 is one point)."
    )
    lower: float | None = strawberry.field(
        description=(
            "Lower bound of the 95% normal interval, its standard error clustered by payment; "
            f"null while fewer than {comparison_svc.MIN_PAYMENTS} payments have a known "
            "difference."
        )
    )
    upper: float | None = strawberry.field(description="Upper bound of the interval.")
    confidence_level: float = strawberry.field(description="The interval's level: 0.95.")


@strawberry.type(description="A group's payments in one currency and how they ended.")
class ModelOutcomeCurrency:
    currency: str = strawberry.field(description="ISO-4217 currency code.")
    payments: int = strawberry.field(description="Payments in the group in this currency.")
    settled_payments: int = strawberry.field(
        description=(
            "The group's payments in this currency in a terminal state (recovered, exhausted, "
            "not retryable, canceled)."
        )
    )
    recovered_payments: int = strawberry.field(
        description="The group's payments in this currency recovered, by any actor."
    )
    settled_amount: Long = strawberry.field(
        description="Amount of the settled payments, in minor units."
    )
    recovered_amount: Long = strawberry.field(
        description="Amount of the recovered payments, in minor units."
    )


@strawberry.type(description="Payments with paired decisions, by whether the two models agreed.")
class ModelOutcomeGroup:
    payments: int = strawberry.field(description="Payments in the group, every currency.")
    settled_payments: int = strawberry.field(
        description="The group's payments in a terminal state."
    )
    recovered_payments: int = strawberry.field(
        description="The group's payments recovered, by any actor."
    )
    recovery_rate: float | None = strawberry.field(
        description="Recovered ÷ settled, by count; null when none has settled."
    )
    currencies: list[ModelOutcomeCurrency] = strawberry.field(
        description="The same per currency, with amounts (never added across currencies)."
    )

    @classmethod
    def from_group(cls, group: comparison_svc.OutcomeGroup) -> Self:
        currencies = [from_row(ModelOutcomeCurrency, c) for c in group.currencies]
        return from_row(cls, group, currencies=currencies)


@strawberry.type(
    description=(
        "What happened to the payments, as the champion acted on all of them. Agreement "
        "payments: every paired decision agreed, so the champion's outcome stands for what the "
        "shadow's timing would have brought (to within the tolerance, at the points both "
        "scored). Disagreement payments: at least one did not; only the champion's outcome is "
        "known, "
        "never what the shadow's time would have brought, and the two groups differ in make-up. "
        "A gap between them describes those payments (where the models part ways, recovery is "
        "harder or easier), not the shadow's worth: only letting the shadow act on a random "
        "share would measure that."
    )
)
class ModelRealizedRecovery:
    agreement: ModelOutcomeGroup = strawberry.field(
        description="Payments whose paired decisions all agreed."
    )
    disagreement: ModelOutcomeGroup = strawberry.field(
        description="Payments with at least one paired decision that disagreed."
    )
    difference: float | None = strawberry.field(
        description=(
            "Disagreement recovery rate minus agreement recovery rate; null while either group "
            f"has fewer than {comparison_svc.MIN_PAYMENTS} settled payments."
        )
    )
    lower: float | None = strawberry.field(
        description="Lower bound of Newcombe's hybrid score 95% interval of the difference."
    )
    upper: float | None = strawberry.field(description="Upper bound of that interval.")

    @classmethod
    def from_comparison(cls, c: comparison_svc.Comparison) -> Self:
        gap = c.realized_difference
        return cls(
            agreement=ModelOutcomeGroup.from_group(c.agreement),
            disagreement=ModelOutcomeGroup.from_group(c.disagreement),
            difference=None if gap is None else gap.difference,
            lower=None if gap is None else gap.lower,
            upper=None if gap is None else gap.upper,
        )


@strawberry.type(
    description=(
        "A model's shadow decisions against a champion's at the same decision points (the same "
        "payment at the same instant): a pair. Read from the model's newest "
        f"{comparison_svc.WINDOW:,} shadow decisions. A challenger has none until it is made "
        "the shadow; a shadow decision has no pair when the champion of the time was another "
        "model, fell back to the decline-aware rules, or had no choice to make (no retry left "
        "in the budget or no allowed time)."
    )
)
class ModelComparison:
    champion_id: strawberry.ID = strawberry.field(description="The champion compared with.")
    tolerance_minutes: int = strawberry.field(
        description="Two retry times this close or closer agree."
    )
    shadow_decisions: int = strawberry.field(
        description="The model's shadow decisions read (its newest, up to the window)."
    )
    paired_decisions: int = strawberry.field(
        description=(
            "Shadow decisions read with the champion's own decision (a retry time or a stop) "
            "for the same payment at the same instant."
        )
    )
    agreeing_decisions: int = strawberry.field(
        description=(
            "Pairs that agree: both stopped, or both chose retry times at most the tolerance apart."
        )
    )
    identical_decisions: int = strawberry.field(
        description="Pairs with the very same choice (the same time, or both stopped)."
    )
    agreement_rate: float | None = strawberry.field(
        description="Agreeing ÷ paired decisions; null without pairs."
    )
    predicted: ModelPredictedDifference | None = strawberry.field(
        description="The predicted difference; null when no pair has both chances known."
    )
    realized: ModelRealizedRecovery = strawberry.field(
        description="Realized recovery of agreement and disagreement payments."
    )
    not_worse: bool | None = strawberry.field(
        description=(
            "Whether the model is not worse than the champion by the promotion criterion: the "
            "predicted difference's lower bound is at least minus the margin "
            "(PORTAL_MODEL_PROMOTION_MARGIN). Null without an interval."
        )
    )

    @classmethod
    def from_comparison(cls, c: comparison_svc.Comparison, margin: float) -> Self:
        p = c.predicted
        return from_row(
            cls,
            c,
            champion_id=strawberry.ID(encode_id(model_resolvers.MODEL_TYPE, c.champion_id)),
            tolerance_minutes=int(c.tolerance.total_seconds() // 60),
            predicted=None if p is None else from_row(ModelPredictedDifference, p),
            realized=ModelRealizedRecovery.from_comparison(c),
            not_worse=None if p is None else p.not_worse(margin),
        )


ToleranceArg = Annotated[
    int,
    strawberry.argument(
        description=(
            "Retry times at most this many minutes apart agree (0-1440; default one step of "
            "the retry engine's hourly candidate grid)."
        )
    ),
]
ChampionArg = Annotated[
    strawberry.ID | None,
    strawberry.argument(
        description="The champion to compare with (a model id); the current champion when null."
    ),
]


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
    _key: strawberry.Private[uuid.UUID]

    @strawberry.field(
        description=(
            "This model's shadow decisions compared with a champion's at the same decision "
            "points, and what the payments did (support only); null when there is no champion."
        )
    )
    async def comparison(
        self, info: Info, champion_id: ChampionArg = None, tolerance_minutes: ToleranceArg = 60
    ) -> ModelComparison | None:
        found = await model_resolvers.comparison(
            info.context,
            self._key,
            champion_global_id=None if champion_id is None else str(champion_id),
            tolerance_minutes=tolerance_minutes,
        )
        if found is None:
            return None
        return ModelComparison.from_comparison(found, info.context.settings.model_promotion_margin)

    @classmethod
    def from_model(cls, row: ModelVersion) -> Self:
        return from_row(
            cls,
            row,
            id=strawberry.ID(encode_id(model_resolvers.MODEL_TYPE, row.id)),
            metrics=ModelMetrics.from_json(row.metrics),
            gate=None if row.gate is None else ModelGate.from_json(row.gate),
            _key=row.id,
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
        "window and, when PORTAL_MODEL_PROMOTION_MIN_PAIRED_DECISIONS is set, its comparison "
        "with that champion has that many paired decisions and it is not worse (see "
        "Model.comparison.notWorse); the old champion is retired (support only). Audited."
    ),
)
async def promote_model(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="The model's global id.")],
    reason: ReasonArg,
) -> PromoteModelPayload:
    row = await model_resolvers.promote(info.context, model_global_id=str(id), reason=reason)
    return PromoteModelPayload(model=Model.from_model(row))
