"""Statistics served from the rollup table: one grouping-sets statement per request."""

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.models.stats import MEASURES, RecoveryRollup
from app.services.stats.figures import GroupKey, RecoveryStats, RollupKey, Sums, assemble
from app.services.stats.query import StatsQuery, series_bounds


def _grouping_bits(kind: str) -> int:
    """GROUPING() of the statistics query's dimensions for a group kind (1 bit: not grouped)."""
    grouped = {
        "total": (),
        "series": ("idx",),
        "decline_category": ("decline_category",),
        "processor": ("processor",),
        "funding": ("funding",),
        "arm": ("model_merchant", "control_group"),
    }[kind]
    names = ("idx", "decline_category", "processor", "funding", "model_merchant", "control_group")
    return sum(1 << (len(names) - 1 - i) for i, n in enumerate(names) if n not in grouped)


_KIND_BY_BITS = {
    _grouping_bits(k): k
    for k in ("total", "series", "decline_category", "processor", "funding", "arm")
}


def _range(query: StatsQuery, merchant_ids: Sequence[uuid.UUID] | None) -> list[Any]:
    where = [
        col(RecoveryRollup.bucket_start) >= query.start,
        col(RecoveryRollup.bucket_start) < query.end,
    ]
    if merchant_ids is not None:
        where.append(col(RecoveryRollup.merchant_id).in_(sorted(merchant_ids)))
    return where


async def load_stats(
    session: AsyncSession,
    query: StatsQuery,
    *,
    merchant_ids: Sequence[uuid.UUID] | None,
    per_merchant: bool,
) -> dict[uuid.UUID | None, RecoveryStats]:
    """The statistics from the rollups in one statement (grouping sets), within the session's
    scope and, when given, `merchant_ids`. `per_merchant`: one result per merchant id given,
    else one for them all under the key None. A payment counts when the quarter hour (UTC) of
    its first failure starts in [start, end)."""
    r = RecoveryRollup
    bounds = series_bounds(query)
    where = _range(query, merchant_ids)
    model_merchants = (
        sa.select(col(r.merchant_id))
        .where(*where)
        .group_by(col(r.merchant_id))
        .having(sa.func.sum(col(r.model_count)) > 0)
    )
    bounds_param = sa.bindparam(
        "bounds", bounds, type_=postgresql.ARRAY(sa.DateTime(timezone=True))
    )
    inner = (
        sa.select(
            col(r.merchant_id),
            col(r.currency),
            sa.func.width_bucket(col(r.bucket_start), bounds_param).label("idx"),
            col(r.decline_category),
            col(r.processor),
            col(r.funding),
            col(r.merchant_id).in_(model_merchants).label("model_merchant"),
            col(r.control_group),
            col(r.retryable),
            *(getattr(r, m) for m in MEASURES),
            col(r.ttr_histogram),
        )
        .where(*where)
        .subquery()
    )
    c = inner.c
    dims = [c.idx, c.decline_category, c.processor, c.funding, c.model_merchant, c.control_group]
    base = [c.currency, c.retryable, *([c.merchant_id] if per_merchant else [])]
    sets = [sa.tuple_(*base)] + [
        sa.tuple_(*base, *d) for d in ([c.idx], [c.decline_category], [c.processor], [c.funding])
    ]
    sets.append(sa.tuple_(*base, c.model_merchant, c.control_group))
    statement = sa.select(
        *base,
        *dims,
        sa.func.grouping(*dims).label("bits"),
        *(sa.func.sum(c[m]) for m in MEASURES),
        sa.func.recovery_hist_sum(c.ttr_histogram),
    ).group_by(sa.func.grouping_sets(*sets))
    groups: dict[GroupKey, Sums] = {}
    for row in (await session.execute(statement)).all():
        currency, retryable = row[0], row[1]
        owner = row[2] if per_merchant else None
        rest = row[len(base) :]
        idx, category, processor, funding, model_merchant, control, bits = rest[:7]
        kind = _KIND_BY_BITS[bits]
        value = {
            "total": None,
            "series": idx,
            "decline_category": category,
            "processor": processor,
            "funding": funding,
            "arm": (model_merchant, control),
        }[kind]
        groups[(owner, currency, kind, value, retryable)] = Sums.of(
            rest[7 : 7 + len(MEASURES)], rest[7 + len(MEASURES)]
        )
    owners: list[uuid.UUID | None] = list(merchant_ids or []) if per_merchant else [None]
    return assemble(query, groups, owners)


async def stored_rollups(
    session: AsyncSession, merchant_ids: Sequence[uuid.UUID] | None = None
) -> dict[RollupKey, Sums]:
    """The rollup rows the session may see, without rows whose sums fell back to zero."""
    r = RecoveryRollup
    statement = sa.select(r)
    if merchant_ids is not None:
        statement = statement.where(col(r.merchant_id).in_(sorted(merchant_ids)))
    found: dict[RollupKey, Sums] = {}
    for (row,) in (await session.execute(statement)).all():
        sums = Sums.of([getattr(row, m) for m in MEASURES], row.ttr_histogram)
        if not sums.is_zero:
            found[
                RollupKey(
                    row.merchant_id,
                    row.bucket_start,
                    row.currency,
                    row.processor,
                    row.decline_category,
                    row.funding,
                    row.control_group,
                    row.retryable,
                )
            ] = sums
    return found
