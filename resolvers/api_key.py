"""Listing, creating and revoking API keys for the API."""

import uuid
from datetime import datetime

from app.enums import ApiKeyScope, Role
from app.models.api_key import ApiKey
from app.models.merchant import Merchant
from app.services.api_key import issue_api_key, list_api_keys, revoke_api_key
from resolvers.context import Context
from resolvers.ids import decode_id
from resolvers.pagination import Page, after_key, make_page, page_size


async def api_keys_page(ctx: Context, *, first: int | None, after: str | None) -> Page[ApiKey]:
    size = page_size(first, ctx.settings)
    key = after_key(after)
    async with ctx.db.session(ctx.require_principal().scope) as session:
        rows = await list_api_keys(session, first=size, before_key=key)
    return make_page(rows, size, lambda k: (k.created_at, k.id))


async def merchants(ctx: Context, key_id: uuid.UUID) -> list[Merchant]:
    ids = await ctx.loaders.merchant_ids_by_api_key_id.load(key_id)
    found = await ctx.loaders.merchant_by_id.load_many(ids)
    return [m for m in found if m is not None]


async def create(
    ctx: Context,
    *,
    role: Role,
    merchant_global_ids: list[str],
    name: str,
    scopes: frozenset[ApiKeyScope],
    expires_at: datetime | None,
) -> tuple[ApiKey, str]:
    """Create a key in its own unit of work; returns it with its token (shown only now)."""
    async with ctx.change() as (uow, by):
        merchant_ids = [decode_id(g, expected="Merchant")[1] for g in merchant_global_ids]
        return await issue_api_key(
            uow,
            name=name,
            role=role,
            merchant_ids=merchant_ids,
            scopes=scopes,
            expires_at=expires_at,
            **by,
        )


async def revoke(ctx: Context, *, global_id: str, reason: str) -> ApiKey:
    async with ctx.change() as (uow, by):
        _, key_id = decode_id(global_id, expected="ApiKey")
        key = await revoke_api_key(uow, key_id=key_id, reason=reason, **by)
    if ctx.principals is not None and key.revoked_at is not None:
        # Refused at once here; other processes refuse it when their entry expires.
        ctx.principals.forget(key.id)
    return key
