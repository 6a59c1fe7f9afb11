"""Recovery statistics for the API: validation, then the rollups through the request's loader,
as summed vectors (the schema builds the figures a request selects)."""

import uuid
from datetime import datetime

from app.services.stats.figures import StatsGroups
from app.services.stats.query import EVERYTHING, Granularity, Selection, stats_query
from app.services.stats.rollups import load_stat_groups
from resolvers.context import Context


async def for_merchant(
    ctx: Context,
    merchant_id: uuid.UUID,
    *,
    start: datetime,
    end: datetime,
    granularity: Granularity,
    timezone: str | None,
    selection: Selection = EVERYTHING,
) -> StatsGroups:
    """One merchant's statistics; merchants of one page share one query per distinct request."""
    ctx.require_principal()
    query = stats_query(start, end, granularity, timezone, selection)
    return await ctx.loaders.recovery_stats_by_merchant.load((merchant_id, query))


async def for_viewer(
    ctx: Context,
    *,
    start: datetime,
    end: datetime,
    granularity: Granularity,
    timezone: str | None,
    selection: Selection = EVERYTHING,
) -> StatsGroups:
    """The statistics of every merchant the key may see, added up per currency."""
    principal = ctx.require_principal()
    query = stats_query(start, end, granularity, timezone, selection)
    scope = principal.scope
    ids = None if scope.merchant_ids is None else sorted(scope.merchant_ids)
    async with ctx.db.session(scope) as session:
        found = await load_stat_groups(session, query, merchant_ids=ids, per_merchant=False)
    return found[None]
