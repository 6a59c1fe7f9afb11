"""Authenticating a request's bearer token: a workflow, it commits the key's last use."""

import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import col, select

from app.db import Database
from app.enums import ApiKeyScope, Role
from app.models.api_key import ApiKey, ApiKeyMerchant
from app.services.api_key import LAST_USED_RESOLUTION, TOKEN_PREFIX, hash_token
from app.tenancy import SYSTEM_SCOPE, Principal, Scope

logger = logging.getLogger(__name__)


async def authenticate(db: Database, token: str, *, now: datetime) -> Principal | None:
    """The principal for a bearer token, or None when unknown, revoked or expired (answered
    alike; the log says which, by the key's id and prefix, never the token)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    async with db.uow(SYSTEM_SCOPE) as uow:
        row = (
            await uow.session.execute(select(ApiKey).where(ApiKey.token_hash == hash_token(token)))
        ).scalar_one_or_none()
        if row is None:
            return None
        if row.revoked_at is not None:
            logger.info("API key %s (%s) refused: revoked", row.id, row.prefix)
            return None
        if row.expires_at is not None and row.expires_at <= now:
            logger.info("API key %s (%s) refused: expired", row.id, row.prefix)
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
        return Principal(
            key_id=row.id,
            name=row.name,
            role=row.role,
            scope=scope,
            scopes=frozenset(ApiKeyScope(s) for s in row.scopes),
            expires_at=row.expires_at,
        )


class PrincipalCache:
    """The principals of recently authenticated tokens, so that a busy key is not looked up in
    PostgreSQL on every request.

    An entry is trusted for `ttl` after its lookup and then looked up again: a key revoked (or
    its grants changed) on any process stops working on every process within `ttl`, and at
    once on the process that revoked it (`forget`). A key's expiry is exact on every process:
    an entry is never trusted at or after its principal's `expires_at`. Unknown, revoked and
    expired tokens are never cached, so guessing tokens cannot fill it; it keeps at most
    `max_entries` tokens (the oldest lookups go first) by their SHA-256, never the tokens
    themselves. Times are the caller's clock. A `ttl` of zero turns caching off. The caller
    looks a missing token up (`authenticate`) and `put`s what it found.
    """

    def __init__(self, ttl: timedelta, *, max_entries: int = 10_000) -> None:
        if ttl < timedelta(0) or max_entries <= 0:
            raise ValueError("the cache needs a non-negative ttl and room for one entry")
        self.ttl = ttl
        self._max_entries = max_entries
        self._entries: dict[str, tuple[datetime, Principal]] = {}
        # How many times `forget` ran: a lookup that began before a revocation on this
        # process and ends after it must not put the key back (`put`'s `generation`).
        self.generation = 0

    def get(self, token: str, *, now: datetime) -> Principal | None:
        """The cached principal of `token`, unless its lookup is `ttl` old (or in the future:
        a clock set back does not extend an entry's life)."""
        digest = hash_token(token)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        looked_up, principal = entry
        if not looked_up <= now < looked_up + self.ttl or principal.expired(now):
            del self._entries[digest]
            return None
        return principal

    def put(
        self, token: str, principal: Principal, *, now: datetime, generation: int | None = None
    ) -> None:
        """Cache what a lookup found; with `generation` (read when the lookup began), nothing
        when a key was forgotten since: the lookup may have read a key revoked meanwhile."""
        if self.ttl <= timedelta(0) or (generation is not None and generation != self.generation):
            return
        digest = hash_token(token)
        self._entries.pop(digest, None)
        while len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[digest] = (now, principal)

    def forget(self, key_id: uuid.UUID) -> None:
        """Drop every entry of a key (revoked by this process), and keep lookups under way
        from putting it back."""
        self.generation += 1
        for digest in [d for d, (_, p) in self._entries.items() if p.key_id == key_id]:
            del self._entries[digest]
