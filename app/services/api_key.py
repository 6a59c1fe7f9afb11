"""API keys: issue (token shown once, hash stored), authenticate, list grants."""

import hashlib
import secrets
import uuid
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import col, select

from app.db import Database, UnitOfWork
from app.enums import Role
from app.errors import InvalidArgument, NotFound
from app.models.api_key import ApiKey, ApiKeyMerchant
from app.models.merchant import Merchant
from app.tenancy import SYSTEM_SCOPE, Principal, Scope

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
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the token, which is never retrievable again."""
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
    )
    uow.session.add(key)
    await uow.session.flush()
    uow.session.add_all(ApiKeyMerchant(api_key_id=key.id, merchant_id=m) for m in unique_ids)
    await uow.session.flush()
    return key, token


async def authenticate(db: Database, token: str, *, now: datetime) -> Principal | None:
    """The principal for a bearer token, or None when unknown or revoked."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    async with db.uow(SYSTEM_SCOPE) as uow:
        row = (
            await uow.session.execute(
                select(ApiKey).where(
                    ApiKey.token_hash == hash_token(token), col(ApiKey.revoked_at).is_(None)
                )
            )
        ).scalar_one_or_none()
        if row is None:
            return None
        scope = SYSTEM_SCOPE
        if row.role is not Role.SUPPORT:
            granted = (
                await uow.session.execute(
                    select(ApiKeyMerchant.merchant_id).where(ApiKeyMerchant.api_key_id == row.id)
                )
            ).scalars()
            scope = Scope(merchant_ids=frozenset(granted))
        if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
            await uow.session.execute(
                update(ApiKey).where(col(ApiKey.id) == row.id).values(last_used_at=now)
            )
            await uow.commit()
        return Principal(key_id=row.id, name=row.name, role=row.role, scope=scope)
