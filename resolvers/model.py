"""The model registry for the API: list models, compare one with a champion, promote one, a
decision's explanation."""

import uuid
from datetime import datetime, timedelta

from app.errors import InvalidId
from app.models.model_version import ModelDecision, ModelVersion
from app.services import model_registry as registry
from app.services.model_comparison import (
    Comparison,
    ComparisonRequirement,
    check_tolerance,
    promotion_requirement,
)
from app.settings import Settings
from resolvers.context import Context
from resolvers.ids import decode_id, encode_id

MODEL_TYPE = "Model"


def decode_model_id(value: str) -> uuid.UUID:
    """A model's key from its global id, spelt exactly as `encode_id` spells it. Models are not
    nodes: they belong to no merchant and only support sees them."""
    _, key = decode_id(value, expected=MODEL_TYPE)
    if encode_id(MODEL_TYPE, key) != value:
        raise InvalidId(f"id {value[:64]!r} is not a {MODEL_TYPE} id")
    return key


async def models(ctx: Context, *, first: int) -> list[ModelVersion]:
    """Models newest first (support only: others get FORBIDDEN)."""
    principal = ctx.require_principal()
    registry.require_support(principal)
    async with ctx.db.session(principal.scope) as session:
        return await registry.list_models(session, principal=principal, limit=first)


async def comparison(
    ctx: Context, model_id: uuid.UUID, *, champion_global_id: str | None, tolerance_minutes: int
) -> Comparison | None:
    """The model's shadow decisions against a champion's (support only: others get FORBIDDEN);
    the models of one request share one statement per distinct champion and tolerance."""
    registry.require_support(ctx.require_principal())
    tolerance = check_tolerance(timedelta(minutes=tolerance_minutes))
    champion_id = None
    if champion_global_id is not None:
        try:
            champion_id = decode_model_id(champion_global_id)
        except InvalidId as exc:
            raise InvalidId(exc.message, field="championId") from exc
    return await ctx.loaders.model.comparison.load((model_id, champion_id, tolerance))


def requirement(settings: Settings) -> ComparisonRequirement | None:
    """What the settings ask of a model's comparison with the champion before it is promoted."""
    return promotion_requirement(
        settings.model_promotion_min_paired_decisions, settings.model_promotion_margin
    )


async def promote(ctx: Context, *, model_global_id: str, reason: str) -> ModelVersion:
    """Promote a challenger whose gate verdict holds against the current champion (and, when
    the settings require it, whose comparison with that champion holds too)."""
    async with ctx.change() as (uow, by):
        registry.require_support(by["principal"])
        model_id = decode_model_id(model_global_id)
        return await registry.promote(
            uow, model_id=model_id, reason=reason, requirement=requirement(ctx.settings), **by
        )


async def acting_decision(
    ctx: Context, payment_id: uuid.UUID, decided_at: datetime
) -> ModelDecision | None:
    """The model decision a payment's latest retry decision came from, if one did."""
    return await ctx.loaders.model.acting_decision.load((payment_id, decided_at))
