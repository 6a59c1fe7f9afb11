"""Retry policies: versioned rows, validated changes, optimistic concurrency, audited."""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from functools import cache
from itertools import pairwise
from typing import Any
from zoneinfo import available_timezones

import sqlalchemy as sa
from sqlalchemy import func
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.db import UnitOfWork
from app.enums import DeclineCategory, EndAction, RetryStrategy
from app.errors import NotFound, ValidationFailed, VersionConflict
from app.models.audit import AuditLog
from app.models.merchant import Merchant
from app.models.retry_policy import RetryPolicy
from app.services import audit
from app.tenancy import Principal

# docs/domain.md §2: Visa allows 15 reattempts per 30 days, Mastercard 10 declines per 24 h.
MAX_ATTEMPTS_LIMIT = 15
MAX_WINDOW_DAYS = 60
MASTERCARD_DAILY_CAP = 10
MAX_MIN_HOURS = 24 * 14
MAX_CONTROL_GROUP_PERCENT = 50

DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "max_attempts": 4,
    "window_days": 14,
    "min_hours_between_attempts": 24,
    "quiet_hours_start": 22,
    "quiet_hours_end": 7,
    "timezone": "UTC",
    "excluded_decline_categories": [],
    "strategy": RetryStrategy.MODEL,
    "fixed_schedule_days": [1, 3, 5, 7],
    "end_action": EndAction.MARK_EXHAUSTED,
    "control_group_percent": 10,
}


class _Keep:
    """Marks a policy field the change leaves as it is."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


@dataclass(frozen=True)
class PolicyChanges:
    """Fields to change; KEEP leaves a field as it is (quiet_hours=None clears them)."""

    enabled: bool = KEEP
    max_attempts: int = KEEP
    window_days: int = KEEP
    min_hours_between_attempts: int = KEEP
    quiet_hours: tuple[int, int] | None = KEEP
    timezone: str = KEEP
    excluded_decline_categories: Sequence[DeclineCategory] = KEEP
    strategy: RetryStrategy = KEEP
    fixed_schedule_days: Sequence[int] = KEEP
    end_action: EndAction = KEEP
    control_group_percent: int = KEEP

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is KEEP for f in fields(self))


@cache
def _timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def snapshot(policy: RetryPolicy) -> dict[str, Any]:
    """The policy's settings as plain JSON values (audit before/after)."""
    return {
        "version": policy.version,
        "enabled": policy.enabled,
        "max_attempts": policy.max_attempts,
        "window_days": policy.window_days,
        "min_hours_between_attempts": policy.min_hours_between_attempts,
        "quiet_hours_start": policy.quiet_hours_start,
        "quiet_hours_end": policy.quiet_hours_end,
        "timezone": policy.timezone,
        "excluded_decline_categories": sorted(policy.excluded_decline_categories),
        "strategy": str(policy.strategy),
        "fixed_schedule_days": list(policy.fixed_schedule_days),
        "end_action": str(policy.end_action),
        "control_group_percent": policy.control_group_percent,
    }


def validate(values: dict[str, Any]) -> list[tuple[str, str]]:
    """Every problem with a complete set of policy values, as (field, message)."""
    problems: list[tuple[str, str]] = []
    max_attempts = values["max_attempts"]
    window = values["window_days"]
    min_hours = values["min_hours_between_attempts"]
    if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        problems.append(
            ("maxAttempts", f"must be 1-{MAX_ATTEMPTS_LIMIT} (Visa allows 15 per 30 days)")
        )
    if not 1 <= window <= MAX_WINDOW_DAYS:
        problems.append(("windowDays", f"must be 1-{MAX_WINDOW_DAYS}"))
    if not 1 <= min_hours <= MAX_MIN_HOURS:
        problems.append(("minHoursBetweenAttempts", f"must be 1-{MAX_MIN_HOURS}"))
    elif min(max_attempts, 24 // min_hours + 1) > MASTERCARD_DAILY_CAP:
        problems.append(
            (
                "minHoursBetweenAttempts",
                "allows more than 10 attempts in 24 hours (Mastercard's cap)",
            )
        )
    start, end = values["quiet_hours_start"], values["quiet_hours_end"]
    if (start is None) != (end is None):
        problems.append(("quietHours", "give both start and end hours, or neither"))
    elif start is not None and end is not None:
        if not (0 <= start <= 23 and 0 <= end <= 23):
            problems.append(("quietHours", "hours must be 0-23"))
        elif start == end:
            problems.append(("quietHours", "start and end must differ"))
    if not 0 <= values["control_group_percent"] <= MAX_CONTROL_GROUP_PERCENT:
        problems.append(("controlGroupPercent", f"must be 0-{MAX_CONTROL_GROUP_PERCENT}"))
    if values["timezone"] not in _timezones():
        problems.append(("timezone", f"unknown IANA time zone {values['timezone']!r}"))
    days = list(values["fixed_schedule_days"])
    if not days:
        problems.append(
            (
                "fixedScheduleDays",
                "needs at least one day (it also times the retry placed after each decline "
                "until a fresh decision)",
            )
        )
    elif any(b <= a for a, b in pairwise(days)):
        problems.append(("fixedScheduleDays", "days must be strictly increasing"))
    elif days[0] < 1 or days[-1] > window:
        problems.append(("fixedScheduleDays", f"days must lie within 1-{window} (the window)"))
    elif len(days) > max_attempts:
        problems.append(("fixedScheduleDays", "more days than maxAttempts"))
    elif any((b - a) * 24 < min_hours for a, b in pairwise(days)):
        problems.append(("fixedScheduleDays", "days closer than minHoursBetweenAttempts"))
    return problems


def create_default_policy(
    uow: UnitOfWork, merchant_id: uuid.UUID, *, created_by: str, now: datetime
) -> RetryPolicy:
    policy = RetryPolicy(
        merchant_id=merchant_id,
        version=1,
        created_at=now,
        created_by=created_by,
        reason="default policy",
        **DEFAULTS,
    )
    uow.session.add(policy)
    return policy


async def current_policies(
    session: AsyncSession, merchant_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, RetryPolicy]:
    """Each merchant's highest policy version."""
    rows = (
        await session.execute(_current_policies_statement(), {"merchant_ids": list(merchant_ids)})
    ).scalars()
    return {p.merchant_id: p for p in rows}


@cache
def _current_policies_statement() -> Any:
    """Built once (the engine reads policies with every batch), the ids bound as one array."""
    ids = sa.bindparam("merchant_ids", type_=postgresql.ARRAY(sa.Uuid))
    latest = (
        select(RetryPolicy.merchant_id, func.max(col(RetryPolicy.version)).label("version"))
        .where(col(RetryPolicy.merchant_id) == sa.any_(ids))
        .group_by(col(RetryPolicy.merchant_id))
        .subquery()
    )
    return select(RetryPolicy).join(
        latest,
        (col(RetryPolicy.merchant_id) == latest.c.merchant_id)
        & (RetryPolicy.version == latest.c.version),
    )


async def update_retry_policy(
    uow: UnitOfWork,
    *,
    principal: Principal,
    merchant_id: uuid.UUID,
    expected_version: int,
    changes: PolicyChanges,
    reason: str,
    now: datetime,
) -> RetryPolicy:
    """Add the next policy version if `expected_version` is still current."""
    # Lock the merchant row: concurrent updates of one merchant's policy queue here. FOR NO
    # KEY UPDATE, so writers of the merchant's rows (their foreign keys take the merchant row
    # FOR KEY SHARE) are not held up by it, nor hold it up.
    merchant = (
        await uow.session.execute(
            select(Merchant).where(Merchant.id == merchant_id).with_for_update(key_share=True)
        )
    ).scalar_one_or_none()
    if merchant is None:
        raise NotFound("merchant not found", field="merchantId")
    principal.require_configure(merchant_id)
    reason = audit.clean_reason(reason)
    if changes.is_empty():
        raise ValidationFailed([("input", "no policy field to change")])
    current = (await current_policies(uow.session, [merchant_id]))[merchant_id]
    if current.version != expected_version:
        raise VersionConflict(
            f"policy is at version {current.version}, not {expected_version}; reload and retry",
            field="expectedVersion",
        )
    values = {k: v for k, v in snapshot(current).items() if k != "version"}
    for f in fields(changes):
        value = getattr(changes, f.name)
        if value is KEEP:
            continue
        if f.name == "quiet_hours":
            values["quiet_hours_start"], values["quiet_hours_end"] = value or (None, None)
        elif f.name == "excluded_decline_categories":
            values[f.name] = sorted({str(c) for c in value})
        else:
            values[f.name] = list(value) if isinstance(value, list | tuple) else value
    problems = validate(values)
    if problems:
        raise ValidationFailed(problems)
    new = RetryPolicy(
        merchant_id=merchant_id,
        version=current.version + 1,
        created_at=now,
        created_by=principal.actor_label,
        reason=reason,
        **{
            **values,
            "strategy": RetryStrategy(values["strategy"]),
            "end_action": EndAction(values["end_action"]),
        },
    )
    uow.session.add(new)
    try:
        await uow.session.flush()
    except IntegrityError as exc:
        raise VersionConflict("policy changed concurrently; reload and retry") from exc
    audit.record(
        uow,
        principal=principal,
        merchant_id=merchant_id,
        action="retry_policy.update",
        entity_type="retry_policy",
        entity_id=str(merchant_id),
        before=snapshot(current),
        after=snapshot(new),
        reason=reason,
        now=now,
    )
    await uow.session.flush()
    return new


@dataclass(frozen=True)
class FieldChange:
    """One setting a policy version changed: its API name, the value before and after."""

    field: str
    old: Any
    new: Any


@dataclass(frozen=True)
class PolicyVersion:
    """A policy version as its history shows it: the row, the change it made over the version
    before it (empty for the first), and the audit entry that recorded it, when one did."""

    policy: RetryPolicy
    changes: tuple[FieldChange, ...]
    actor_key_id: uuid.UUID | None


# Settings as the API names them, in the order the history lists their changes.
_API_NAMES = {
    "enabled": "enabled",
    "max_attempts": "maxAttempts",
    "window_days": "windowDays",
    "min_hours_between_attempts": "minHoursBetweenAttempts",
    "quiet_hours": "quietHours",
    "timezone": "timezone",
    "excluded_decline_categories": "excludedDeclineCategories",
    "strategy": "strategy",
    "fixed_schedule_days": "fixedScheduleDays",
    "end_action": "endAction",
    "control_group_percent": "controlGroupPercent",
}


def _api_values(policy: RetryPolicy) -> dict[str, Any]:
    """The policy's settings as the API shows them: enums by their names (`MODEL`)."""
    values = snapshot(policy)
    values["strategy"] = RetryStrategy(values["strategy"]).name
    values["end_action"] = EndAction(values["end_action"]).name
    values["excluded_decline_categories"] = sorted(
        DeclineCategory(c).name for c in values["excluded_decline_categories"]
    )
    start, end = values.pop("quiet_hours_start"), values.pop("quiet_hours_end")
    values["quiet_hours"] = (
        None if start is None or end is None else {"startHour": start, "endHour": end}
    )
    return values


def diff(before: RetryPolicy | None, after: RetryPolicy) -> tuple[FieldChange, ...]:
    """What `after` changed over `before`, field by field (nothing for a first version)."""
    if before is None:
        return ()
    old, new = _api_values(before), _api_values(after)
    return tuple(
        FieldChange(field=api, old=old[name], new=new[name])
        for name, api in _API_NAMES.items()
        if old[name] != new[name]
    )


def policy_history_count_query(merchant_id: uuid.UUID) -> Any:
    """The versions of a merchant's policy, for their `totalCount`."""
    return select(col(RetryPolicy.id)).where(col(RetryPolicy.merchant_id) == merchant_id)


async def policy_history(
    session: AsyncSession,
    merchant_id: uuid.UUID,
    *,
    first: int,
    after_id: uuid.UUID | None,
) -> list[PolicyVersion]:
    """Up to `first + 1` versions of a merchant's policy, newest first, older than the version
    whose row id is `after_id` when given (the page's cursor): each with its diff against the
    version before it and the audit entry's key.

    Versions are rows that are never updated, so the diff is computed from them (one more row
    than the page is read for the oldest version's predecessor); the audit entry of a version
    is the `retry_policy.update` entry whose `after.version` is that version."""
    query = select(RetryPolicy).where(col(RetryPolicy.merchant_id) == merchant_id)
    if after_id is not None:
        cursor_version = (
            select(col(RetryPolicy.version))
            .where(col(RetryPolicy.id) == after_id, col(RetryPolicy.merchant_id) == merchant_id)
            .scalar_subquery()
        )
        query = query.where(col(RetryPolicy.version) < cursor_version)
    rows = list(
        (await session.execute(query.order_by(col(RetryPolicy.version).desc()).limit(first + 2)))
        .scalars()
        .all()
    )
    versions = [r.version for r in rows[: first + 1]]
    keys: dict[int, uuid.UUID | None] = {}
    if versions:
        version_of = AuditLog.after["version"].as_integer()  # type: ignore[index]
        entries = await session.execute(
            select(version_of, col(AuditLog.actor_key_id)).where(
                col(AuditLog.merchant_id) == merchant_id,
                col(AuditLog.action) == "retry_policy.update",
                version_of.in_(versions),
            )
        )
        keys = {int(row[0]): row[1] for row in entries.all()}
    return [
        PolicyVersion(
            policy=row,
            changes=diff(rows[i + 1] if i + 1 < len(rows) else None, row),
            actor_key_id=keys.get(row.version),
        )
        for i, row in enumerate(rows[: first + 1])
    ]
