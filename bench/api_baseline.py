"""The yardstick of `bench/api_request.py`: a hand-written Starlette + asyncpg endpoint that
answers a merchant's newest 50 payments with the same JSON as the GraphQL payments page, from
the same tables. It lives in the benchmark only; the product never serves it.

    GET /payments?merchant=<global id>&first=50    Authorization: Bearer <token>

`BASELINE_DATABASE_URL` names the database; with `BASELINE_CHECK_KEY=true` (the default) each
request checks the bearer token against `api_key` and its grants in one statement, as an
endpoint without a cache would; `false` skips the check (a ceiling, not an endpoint to ship).
Run it as uvicorn's factory: `uvicorn --factory api_baseline:create_app`.
"""

import base64
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

POOL_SIZE = 10  # the portal's default pool (PORTAL's db_pool_size)

KEY_SQL = """
SELECT k.role, array_remove(array_agg(g.merchant_id), NULL) AS merchants
FROM api_key k LEFT JOIN api_key_merchant g ON g.api_key_id = k.id
WHERE k.token_hash = $1 AND k.revoked_at IS NULL
GROUP BY k.id
"""

PAGE_SQL = """
SELECT p.id, p.state, p.processor, p.first_failed_at, p.next_retry_at, p.attempt_count,
       p.amount_minor, p.currency, p.decline_category, p.decline_retryable, p.decline_advice,
       p.decline_raw_code, p.decline_network_advice_code,
       c.brand, c.last4, c.funding, c.issuer_country
FROM payment p
JOIN merchant m ON m.id = p.merchant_id
LEFT JOIN card_credential c ON c.id = p.card_id
WHERE p.merchant_id = $1
ORDER BY p.first_failed_at DESC, p.id DESC
LIMIT $2
"""


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _unb64(value: str) -> str:
    return base64.urlsafe_b64decode((value + "=" * (-len(value) % 4)).encode()).decode()


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _upper(value: str | None) -> str | None:
    return None if value is None else value.upper()


def _node(row: asyncpg.Record) -> dict[str, Any]:
    card = None
    if row["brand"] is not None:
        card = {
            "brand": row["brand"],
            "last4": row["last4"],
            "funding": row["funding"].upper(),
            "country": row["issuer_country"],
        }
    return {
        "id": _b64(f"Payment:{row['id']}"),
        "state": row["state"],
        "processor": row["processor"].upper(),
        "failedAt": row["first_failed_at"].isoformat(),
        "nextRetryAt": _iso(row["next_retry_at"]),
        "attemptCount": row["attempt_count"],
        "amount": {"amountMinor": row["amount_minor"], "currency": row["currency"]},
        "decline": {
            "category": row["decline_category"].upper(),
            "retryable": row["decline_retryable"],
            "advice": row["decline_advice"].upper(),
            "rawCode": row["decline_raw_code"],
            "networkAdviceCode": row["decline_network_advice_code"],
        },
        "card": card,
    }


def _cursor(row: asyncpg.Record) -> str:
    return _b64(json.dumps([row["first_failed_at"].isoformat(), str(row["id"])]))


def _error(message: str) -> JSONResponse:
    return JSONResponse({"data": None, "errors": [{"message": message}]}, 400)


def create_app() -> Starlette:
    url = os.environ["BASELINE_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    check_key = os.environ.get("BASELINE_CHECK_KEY", "true") == "true"
    state: dict[str, asyncpg.Pool] = {}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(url, min_size=POOL_SIZE, max_size=POOL_SIZE)
        try:
            yield
        finally:
            await state["pool"].close()

    async def payments(request: Request) -> JSONResponse:
        try:
            kind, _, key = _unb64(request.query_params["merchant"]).partition(":")
            merchant_id = uuid.UUID(key)
            first = int(request.query_params.get("first", "20"))
        except (KeyError, ValueError) as exc:
            return _error(f"bad arguments: {type(exc).__name__}")
        if kind != "Merchant" or not 1 <= first <= 100:
            return _error("bad arguments")
        async with state["pool"].acquire() as conn:
            if check_key:
                scheme, _, token = request.headers.get("authorization", "").partition(" ")
                digest = hashlib.sha256(token.strip().encode()).hexdigest()
                key_row = None
                if scheme.lower() == "bearer":
                    key_row = await conn.fetchrow(KEY_SQL, digest)
                if key_row is None:
                    return JSONResponse({"data": None, "errors": [{"message": "no key"}]}, 401)
                if key_row["role"] != "support" and merchant_id not in key_row["merchants"]:
                    return JSONResponse({"data": {"merchant": None}})
            rows = await conn.fetch(PAGE_SQL, merchant_id, first + 1)
        kept = rows[:first]
        page = {
            "edges": [{"cursor": _cursor(r), "node": _node(r)} for r in kept],
            "pageInfo": {
                "hasNextPage": len(rows) > first,
                "endCursor": _cursor(kept[-1]) if kept else None,
            },
        }
        return JSONResponse({"data": {"merchant": {"payments": page}}})

    return Starlette(routes=[Route("/payments", payments)], lifespan=lifespan)
