"""API keys: issue (token shown once, hash stored), list, revoke, list grants.

Authentication, which commits on its own, is `app/workflows/authentication.py`."""

import hashlib
import secrets
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.db import UnitOfWork
from app.enums import ApiKeyScope, Role
from app.errors import Forbidden, InvalidArgument, NotFound, ValidationFailed
from app.models.api_key import ApiKey, ApiKeyMerchant
from app.models.merchant import Merchant
from app.services import audit
from app.tenancy import Principal, Scope

TOKEN_PREFIX = "rp_"  # noqa: S105 - a marker, not a secret
# Writing last_used_at on every request would turn reads into writes; a minute is precise enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(token: str) -> str:
    """SHA-256 of the token: tokens carry 256 random bits, so a fast hash is sufficient."""
    return hashlib.sha256(token.encode()).hexdigest()


async def create_api_key(
    uow: UnitOfWork,
    *,
    name: str,
    role: Role,
    merchant_ids: list[uuid.UUID],
    now: datetime,
    scopes: frozenset[ApiKeyScope] = frozenset(ApiKeyScope),
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the token, which is never retrievable again. Every
    key reads (READ); WRITE adds the mutations. A key may expire, at a future time."""
    problems: list[tuple[str, str]] = []
    name = name.strip()
    if not name or len(name) > NAME_MAX_LENGTH:
        problems.append(("name", f"must be 1-{NAME_MAX_LENGTH} characters"))
    if ApiKeyScope.READ not in scopes:
        problems.append(("scopes", "must include READ: every key reads; WRITE adds mutations"))
    if expires_at is not None and (expires_at.tzinfo is None or expires_at <= now):
        problems.append(("expiresAt", "must be a time in the future, with its UTC offset"))
    if problems:
        raise ValidationFailed(problems)
    unique_ids = list(dict.fromkeys(merchant_ids))
    if role is Role.MERCHANT and len(unique_ids) != 1:
        raise InvalidArgument("a merchant key is granted exactly one merchant", field="merchantIds")
    if role is Role.PARTNER and not unique_ids:
        raise InvalidArgument("a partner key needs at least one merchant", field="merchantIds")
    if role is Role.SUPPORT and unique_ids:
        raise InvalidArgument("a support key sees every merchant; grant none", field="merchantIds")
    if unique_ids:
        found = set(
            (
                await uow.session.execute(
                    select(Merchant.id).where(col(Merchant.id).in_(unique_ids))
                )
            ).scalars()
        )
        missing = [str(m) for m in unique_ids if m not in found]
        if missing:
            raise NotFound(f"merchant not found: {', '.join(missing)}", field="merchantIds")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name,
        prefix=token[: len(TOKEN_PREFIX) + 6],
        token_hash=hash_token(token),
        role=role,
        created_at=now,
        scopes=[s.value for s in ApiKeyScope if s in scopes],
        expires_at=expires_at,
    )
    uow.session.add(key)
    await uow.session.flush()
    uow.session.add_all(ApiKeyMerchant(api_key_id=key.id, merchant_id=m) for m in unique_ids)
    await uow.session.flush()
    return key, token


NAME_MAX_LENGTH = 200
SelectT = TypeVar("SelectT", bound=Select[Any])


def _session_scope(session: AsyncSession) -> Scope:
    scope = session.info.get("scope")
    if not isinstance(scope, Scope):
        raise RuntimeError("a database session was opened without a tenancy scope")
    return scope


def _visible(query: SelectT, scope: Scope) -> SelectT:
    """Keys a scope may see: every key when unrestricted, otherwise keys with at least one
    grant and none outside the scope. api_key is not tenant-owned (one key may span several
    merchants), so the session hook cannot filter it; this is its one filter."""
    if scope.merchant_ids is None:
        return query
    has_grant = select(ApiKeyMerchant.api_key_id).where(
        col(ApiKeyMerchant.api_key_id) == col(ApiKey.id)
    )
    grant_outside = has_grant.where(col(ApiKeyMerchant.merchant_id).not_in(scope.merchant_ids))
    return query.where(has_grant.exists(), ~grant_outside.exists())


def snapshot(key: ApiKey) -> dict[str, Any]:
    """A key as the audit log keeps it: never the token or its hash."""
    return {
        "name": key.name,
        "role": key.role.value,
        "prefix": key.prefix,
        "revoked_at": None if key.revoked_at is None else key.revoked_at.isoformat(),
        "scopes": list(key.scopes),
        "expires_at": None if key.expires_at is None else key.expires_at.isoformat(),
    }


def _record(
    uow: UnitOfWork,
    *,
    principal: Principal,
    key: ApiKey,
    merchant_ids: Sequence[uuid.UUID],
    action: str,
    before: dict[str, Any] | None,
    reason: str | None,
    now: datetime,
) -> None:
    # One entry per granted merchant, so each merchant's log shows who may read its data;
    # a key without grants (support) is logged once, under no merchant.
    targets: list[uuid.UUID | None] = [*merchant_ids] or [None]
    for merchant_id in targets:
        audit.record(
            uow,
            principal=principal,
            merchant_id=merchant_id,
            action=action,
            entity_type="api_key",
            entity_id=str(key.id),
            before=before,
            after=snapshot(key),
            reason=reason,
            now=now,
        )


async def issue_api_key(
    uow: UnitOfWork,
    *,
    principal: Principal,
    name: str,
    role: Role,
    merchant_ids: list[uuid.UUID],
    now: datetime,
    scopes: frozenset[ApiKeyScope] = frozenset(ApiKeyScope),
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key on a caller's behalf, audited. Support may create any key; a merchant key
    only merchant keys for its own merchant (others are not found in its scope); partners none.
    Every key reads (READ); WRITE adds the mutations. A key may expire, at a future time; a
    caller whose key expires may only create keys that expire no later."""
    if principal.role is Role.PARTNER:
        raise Forbidden("a partner key may not create API keys")
    if principal.role is Role.MERCHANT and role is not Role.MERCHANT:
        raise Forbidden("a merchant key may only create merchant keys")
    if principal.expires_at is not None and (
        expires_at is None or expires_at > principal.expires_at
    ):
        # Else an expiring key could outlive itself through a key it made.
        raise ValidationFailed(
            [
                (
                    "expiresAt",
                    "a key that expires may only create keys that expire no later than it "
                    f"does ({principal.expires_at.isoformat()})",
                )
            ]
        )
    key, token = await create_api_key(
        uow,
        name=name,
        role=role,
        merchant_ids=merchant_ids,
        now=now,
        scopes=scopes,
        expires_at=expires_at,
    )
    granted = list(dict.fromkeys(merchant_ids))
    _record(
        uow,
        principal=principal,
        key=key,
        merchant_ids=granted,
        action="api_key.create",
        before=None,
        reason=None,
        now=now,
    )
    await uow.session.flush()
    return key, token


async def revoke_api_key(
    uow: UnitOfWork,
    *,
    principal: Principal,
    key_id: uuid.UUID,
    reason: str,
    now: datetime,
) -> ApiKey:
    """Revoke a key the caller can see (support, or a merchant key for its own merchant's keys);
    revoking a revoked key changes nothing and is not logged again."""
    key = (
        await uow.session.execute(
            _visible(select(ApiKey).where(col(ApiKey.id) == key_id), uow.scope).with_for_update()
        )
    ).scalar_one_or_none()
    if key is None:
        raise NotFound("API key not found", field="id")
    if principal.role is Role.PARTNER:
        raise Forbidden("a partner key may not revoke API keys")
    reason = audit.clean_reason(reason)
    if key.revoked_at is not None:
        return key
    before = snapshot(key)
    key.revoked_at = now
    granted = (await grants_by_api_key_ids(uow.session, [key.id])).get(key.id, [])
    _record(
        uow,
        principal=principal,
        key=key,
        merchant_ids=granted,
        action="api_key.revoke",
        before=before,
        reason=reason,
        now=now,
    )
    await uow.session.flush()
    return key


async def grant_merchant(uow: UnitOfWork, *, key_id: uuid.UUID, merchant_id: uuid.UUID) -> None:
    """Let a key see one more merchant (a partner key's own onboarding)."""
    uow.session.add(ApiKeyMerchant(api_key_id=key_id, merchant_id=merchant_id))
    await uow.session.flush()


async def list_api_keys(
    session: AsyncSession, *, first: int, before_key: tuple[datetime, uuid.UUID] | None
) -> Sequence[ApiKey]:
    """Keys visible to the session's scope, newest first, keyset on (created_at, id); reads
    `first + 1` rows so the caller knows whether another page follows."""
    query = (
        select(ApiKey)
        .order_by(col(ApiKey.created_at).desc(), col(ApiKey.id).desc())
        .limit(first + 1)
    )
    if before_key is not None:
        query = query.where(tuple_(col(ApiKey.created_at), col(ApiKey.id)) < tuple_(*before_key))
    return (await session.execute(_visible(query, _session_scope(session)))).scalars().all()


def api_key_count_query(scope: Scope) -> Any:
    """The keys a scope may see, for `totalCount`."""
    return _visible(select(col(ApiKey.id)), scope)


async def api_keys_by_ids(
    session: AsyncSession, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, ApiKey]:
    query = _visible(select(ApiKey).where(col(ApiKey.id).in_(ids)), _session_scope(session))
    return {k.id: k for k in (await session.execute(query)).scalars()}


async def grants_by_api_key_ids(
    session: AsyncSession, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[uuid.UUID]]:
    """The merchants each key is granted, in id order."""
    rows = await session.execute(
        select(ApiKeyMerchant.api_key_id, ApiKeyMerchant.merchant_id)
        .where(col(ApiKeyMerchant.api_key_id).in_(ids))
        .order_by(col(ApiKeyMerchant.api_key_id), col(ApiKeyMerchant.merchant_id))
    )
    grouped: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for key_id, merchant_id in rows:
        grouped[key_id].append(merchant_id)
    return grouped
