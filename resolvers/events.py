"""The event feed and its live stream, for the API."""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

from app.errors import CursorExpired, InvalidArgument, NotFound, Unauthenticated
from app.event_notices import FALLBACK_SECONDS
from app.outages import Dependency, outage_of
from app.services.event_feed import FeedEvent, feed_page, head_position
from app.webhook_events import BY_NAME
from resolvers.context import Context
from resolvers.ids import decode_event_cursor, encode_event_cursor
from resolvers.merchant import merchant_by_global_id
from resolvers.pagination import Page, page_size

logger = logging.getLogger(__name__)

# Events one read of the stream takes at most (it reads again at once when it got as many).
STREAM_BATCH = 100
# An event may wait this long between its commit and its position (the sequencer runs every
# second): a cursor is refused only once the events after it may have been pruned.
SEQUENCING_MARGIN = timedelta(hours=1)
DATABASE_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)


def cursor_of(event: FeedEvent) -> str:
    return encode_event_cursor(event.position, event.created_at)


def _after(ctx: Context, after: str | None) -> int | None:
    """The position a cursor points at; refused when older than the outbox's retention."""
    if after is None:
        return None
    position, at = decode_event_cursor(after)
    days = ctx.settings.outbox_retention_days
    if days > 0 and at < ctx.clock.now() - timedelta(days=days) + SEQUENCING_MARGIN:
        raise CursorExpired(
            f"the cursor is older than the event retention ({days} days): events after it may "
            "have been deleted; read the feed again from its start (after: null)",
            field="after",
        )
    return position


def _types(types: Sequence[str] | None) -> list[str] | None:
    if types is None:
        return None
    unknown = sorted(set(types) - BY_NAME.keys())
    if unknown:
        raise InvalidArgument(
            f"unknown event type(s) {', '.join(unknown)[:200]}; see webhookEventTypes",
            field="types",
        )
    return list(types)


async def events_page(
    ctx: Context,
    *,
    merchant_id: uuid.UUID,
    first: int | None,
    after: str | None,
    types: Sequence[str] | None,
) -> Page[FeedEvent]:
    size = page_size(first, ctx.settings)
    position = _after(ctx, after)
    wanted = _types(types)
    async with ctx.db.session(ctx.require_principal().scope) as session:
        rows = await feed_page(
            session, merchant_id=merchant_id, after=position, types=wanted, limit=size + 1
        )
    kept = rows[:size]
    return Page(items=[(cursor_of(e), e) for e in kept], has_next_page=len(rows) > size)


async def _read(ctx: Context, merchant_id: uuid.UUID, position: int) -> list[FeedEvent]:
    """The next events past `position` if the key still stands, waiting out a database
    outage."""
    attempt = 0
    while True:
        try:
            await _still_authenticated(ctx)
            async with ctx.db.session(ctx.require_principal().scope) as session:
                return await feed_page(
                    session,
                    merchant_id=merchant_id,
                    after=position,
                    types=None,
                    limit=STREAM_BATCH,
                )
        except Exception as exc:
            if outage_of(exc) is not Dependency.DATABASE:
                raise
            delay = DATABASE_RETRY_SECONDS[min(attempt, len(DATABASE_RETRY_SECONDS) - 1)]
            logger.warning("event stream waits for the database (%s)", type(exc).__name__)
            attempt += 1
            await asyncio.sleep(delay)


async def _still_authenticated(ctx: Context) -> None:
    if ctx.reauthenticate is not None and await ctx.reauthenticate() is None:
        raise Unauthenticated("the API key was revoked")


async def event_stream(
    ctx: Context, *, merchant_global_id: str, after: str | None
) -> AsyncIterator[FeedEvent]:
    """The merchant's events as they reach the feed: first those past `after` (from now when
    None), then each new one as its notice arrives, never twice and never skipping one: every
    read asks for the positions past the last one sent."""
    merchant = await merchant_by_global_id(ctx, merchant_global_id)
    if merchant is None:
        raise NotFound("merchant not found", field="merchantId")
    position = _after(ctx, after)
    notices = ctx.notices
    if notices is None:
        raise RuntimeError("subscriptions need the process's event notices")
    with notices.watch(merchant.id) as wake:
        if position is None:
            async with ctx.db.session(ctx.require_principal().scope) as session:
                position = await head_position(session, merchant_id=merchant.id)
        while True:
            # Cleared before the read: a notice arriving meanwhile makes the next wait short.
            wake.clear()
            events = await _read(ctx, merchant.id, position)
            for event in events:
                yield event
                position = event.position
            if len(events) == STREAM_BATCH:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), FALLBACK_SECONDS)


__all__ = ["cursor_of", "event_stream", "events_page"]
