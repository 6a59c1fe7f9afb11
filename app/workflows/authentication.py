"""Authenticating a request's bearer token: a workflow, it commits the key's last use."""

from datetime import datetime

from sqlalchemy import update
from sqlmodel import col, select

from app.db import Database
from app.enums import Role
from app.models.api_key import ApiKey, ApiKeyMerchant
from app.services.api_key import LAST_USED_RESOLUTION, TOKEN_PREFIX, hash_token
from app.tenancy import SYSTEM_SCOPE, Principal, Scope


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
