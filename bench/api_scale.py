"""Dashboard reads at scale, over HTTP, on the database `bench/generate.py` loaded.

    python bench/api_scale.py --database portal_scale

Starts `portal serve` as its own process on 127.0.0.1 against that database, then times, one
request at a time, for the largest merchant (40% of the payments) and a small one:

- the payments page (50 payments with their attempts and cards) for every combination of the
  filter's fields (states, decline categories, processors, failed after, failed before), on
  the first page and on a deep page reached by its keyset cursor;
- `recoveryStats` over 90 days, a daily series in the merchant's time zone (its current retry
  policy's), every breakdown;
- a payment's detail (attempts, timeline, decision, ledger) for payments drawn at random.

Prints p50 and p99 per case beside the targets (page p99 < 50 ms, stats and detail < 20 ms).
Then runs each case once in this process with every SQL statement recorded, and writes each
statement's `EXPLAIN (ANALYZE, BUFFERS)` to `--plans` (default bench/out/api_scale_plans.txt),
printing the statements per request and the slowest statement of each case, and the statements
of one page at 10, 50 and 100 payments (they must not grow with the page).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event, text

from app.clock import SystemClock
from app.db import Database
from app.embedded import resolve_services
from app.enums import Role
from app.services.api_key import create_api_key
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from app.workflows.authentication import authenticate
from resolvers.context import Context
from resolvers.ids import encode_id
from schema.root import build_schema

PAGE = """query($id: ID!, $after: String, $filter: PaymentFilter, $first: Int = 50) {
  merchant(id: $id) { payments(first: $first, after: $after, filter: $filter) {
    edges { node { id state processor failedAt nextRetryAt attemptCount
      amount { amountMinor currency } decline { category retryable advice rawCode }
      attempts { number attemptedAt outcome actor decline { category } card { last4 } }
      card { brand last4 funding country } } }
    pageInfo { hasNextPage endCursor } } } }"""

STATS = """query($id: ID!, $from: DateTime!, $to: DateTime!, $timezone: String!) {
  merchant(id: $id) { recoveryStats(from: $from, to: $to, granularity: DAY,
                                    timezone: $timezone) {
    currencies { currency
      summary { failedCount failedAmount eligibleCount recoveredCount recoveredAmount
        recoveryRateByAmount eligibleRecoveryRateByCount attemptsPerRecovery
        medianTimeToRecoverSeconds p90TimeToRecoverSeconds inRecoveryAmount
        recoveredByActor { actor count amount } }
      series { start figures { recoveredAmount failedAmount recoveredCount } }
      byDeclineCategory { category figures { recoveryRateByCount recoveredAmount } }
      byProcessor { processor figures { recoveryRateByCount recoveredAmount } }
      byCardFunding { funding figures { recoveryRateByCount recoveredAmount } }
      uplift { difference lower upper confidenceLevel } } } } }"""

DETAIL = """query($id: ID!) { node(id: $id) { ... on Payment {
  state amount { amountMinor currency } failedAt recoveredAt recoveredBy
  attempts { number attemptedAt outcome actor decline { category } card { last4 } }
  timeline { at fromState toState event reason actor requestedBy }
  decision { chosenAt strategy reason explanation }
  ledger { attemptsLast24h attemptsLast30d nextAllowedAt blockingRule } } } }"""

TARGET_MS = {"page": 50.0, "stats": 20.0, "detail": 20.0}
# Page sizes whose statements per request are compared (the dashboard's page is 50).
PAGE_SIZES = (10, 50, 100)


@dataclass
class Case:
    kind: str
    label: str
    query: str
    variables: dict[str, Any]
    times_ms: list[float] = field(default_factory=list)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _filters(now: datetime, processor: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every combination of the filter's fields, each with a value a dashboard would send."""
    fields: dict[str, Any] = {
        "states": ["SCHEDULED", "RETRYING"],
        "declineCategories": ["INSUFFICIENT_FUNDS"],
        "processors": [processor.upper()],
        "failedAfter": (now - timedelta(days=90)).isoformat(),
        "failedBefore": (now - timedelta(days=7)).isoformat(),
    }
    for size in range(len(fields) + 1):
        for chosen in itertools.combinations(fields, size):
            yield ("+".join(chosen) or "none"), {name: fields[name] for name in chosen}


async def _post(http: httpx.AsyncClient, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = await http.post("/graphql", json={"query": query, "variables": variables})
    body: dict[str, Any] = response.json()
    if response.status_code != 200 or body.get("errors"):
        raise SystemExit(f"request failed ({response.status_code}): {str(body)[:500]}")
    return body


async def _deep_cursor(
    http: httpx.AsyncClient, merchant_gid: str, flt: dict[str, Any], pages: int
) -> str | None:
    """The cursor of page `pages`, walked by keyset (None when the filter has fewer pages)."""
    after: str | None = None
    for _ in range(pages - 1):
        body = await _post(http, PAGE, {"id": merchant_gid, "after": after, "filter": flt})
        info = body["data"]["merchant"]["payments"]["pageInfo"]
        if not info["hasNextPage"]:
            return None
        after = info["endCursor"]
    return after


@contextmanager
def _recorded(db: Database) -> Iterator[list[tuple[str, Any]]]:
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    assert db.engine is not None
    target = db.engine.sync_engine
    event.listen(target, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(target, "before_cursor_execute", record)


async def _explain(
    db: Database, settings: Settings, cases: list[Case], principal: Any, out: Path
) -> None:
    """Each case once in-process, every statement explained with its own parameters."""
    schema = build_schema(settings)
    lines: list[str] = []
    print()
    print(f"{'case':<58}{'statements':>11}{'slowest (ms)':>14}")

    async def run(query: str, variables: dict[str, Any], label: str) -> list[tuple[str, Any]]:
        context = Context(db=db, principal=principal, clock=SystemClock(), settings=settings)
        with _recorded(db) as statements:
            result = await schema.execute(query, variable_values=variables, context_value=context)
        if result.errors:
            raise SystemExit(f"{label}: {result.errors}")
        return statements

    for case in cases:
        statements = await run(case.query, case.variables, case.label)
        slowest = 0.0
        lines.append(f"=== {case.kind}: {case.label} ({len(statements)} statements)")
        assert db.engine is not None
        async with db.engine.connect() as conn:
            await conn.exec_driver_sql("SET jit = off")
            for statement, parameters in statements:
                explained = await conn.exec_driver_sql(
                    f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters
                )
                plan = [row[0] for row in explained]
                took = float(plan[-1].split(":")[1].split("ms")[0]) if plan else 0.0
                slowest = max(slowest, took)
                lines += ["", " ".join(statement.split()), *plan, ""]
            await conn.rollback()
        print(f"{case.kind + ': ' + case.label:<58.58}{len(statements):>11}{slowest:>14.2f}")
    await asyncio.to_thread(_write, out, "\n".join(lines))
    print(f"plans written to {out}")
    pages = [c for c in cases if c.kind == "page"]
    if pages:
        # Statements per request must not grow with the page: each page size once, unfiltered.
        case = pages[0]
        counts = [
            len(await run(case.query, {**case.variables, "first": first}, case.label))
            for first in PAGE_SIZES
        ]
        sizes = ", ".join(
            f"{n} at first: {first}" for first, n in zip(PAGE_SIZES, counts, strict=True)
        )
        verdict = "constant" if len(set(counts)) == 1 else "NOT constant"
        print(f"statements per page ({case.label}): {sizes} ({verdict})")


def _write(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


def _serve(url: str, redis_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": redis_url,
        "PORTAL_RATE_LIMIT_ENABLED": "false",
        "PORTAL_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(  # noqa: S603 - this interpreter's own portal command
        [sys.executable, "-m", "portal", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="portal_scale")
    parser.add_argument("--repeat", type=int, default=30, help="Timed requests per case.")
    parser.add_argument("--deep-page", type=int, default=20, help="Which page is 'deep'.")
    parser.add_argument("--details", type=int, default=200, help="Payments whose detail is read.")
    parser.add_argument("--port", type=int, default=8731)
    parser.add_argument("--plans", type=Path, default=Path("bench/out/api_scale_plans.txt"))
    parser.add_argument(
        "--only",
        choices=sorted(TARGET_MS),
        action="append",
        help="Time only these kinds of read (repeatable); every kind when left out.",
    )
    args = parser.parse_args()
    kinds = set(args.only or TARGET_MS)

    settings = Settings()
    services = await resolve_services(settings)
    base, _, query = services.database_url.partition("?")
    url = f"{base.rsplit('/', 1)[0]}/{args.database}" + (f"?{query}" if query else "")
    db = Database.from_url(url)
    now = datetime.now(UTC)
    async with db.uow(SYSTEM_SCOPE) as uow:
        rows = (
            await uow.session.execute(
                text(
                    "SELECT p.merchant_id, min(c.kind) AS kind, count(*) AS n, "
                    "(SELECT r.timezone FROM retry_policy r WHERE r.merchant_id = p.merchant_id "
                    " ORDER BY r.version DESC LIMIT 1) AS timezone FROM payment p "
                    "JOIN processor_connection c ON c.merchant_id = p.merchant_id "
                    "GROUP BY p.merchant_id ORDER BY n DESC"
                )
            )
        ).all()
        if not rows:
            raise SystemExit(f"no payments in {args.database}: run bench/generate.py first")
        _, token = await create_api_key(
            uow, name=f"api-scale-{now:%H%M%S}", role=Role.SUPPORT, merchant_ids=[], now=now
        )
        await uow.commit()
    picked = [rows[0], rows[len(rows) // 2]]
    print(f"{args.database}: {sum(r.n for r in rows):,} payments in {len(rows)} merchants")
    cases: list[Case] = []
    server = _serve(url, services.redis_url, args.port)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{args.port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        ) as http:
            for _ in range(600):
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
            for merchant_id, kind, count, zone in picked:
                gid = encode_id("Merchant", merchant_id)
                who = f"{count:,} payments"
                for label, flt in _filters(now, kind) if "page" in kinds else ():
                    cases.append(
                        Case("page", f"{who}, {label}, page 1", PAGE, {"id": gid, "filter": flt})
                    )
                    after = await _deep_cursor(http, gid, flt, args.deep_page)
                    if after is not None:
                        cases.append(
                            Case(
                                "page",
                                f"{who}, {label}, page {args.deep_page}",
                                PAGE,
                                {"id": gid, "filter": flt, "after": after},
                            )
                        )
                if "stats" not in kinds:
                    continue
                cases.append(
                    Case(
                        "stats",
                        f"{who}, 90 days daily, {zone or 'UTC'}",
                        STATS,
                        {
                            "id": gid,
                            "timezone": zone or "UTC",
                            "from": (now - timedelta(days=90)).isoformat(),
                            "to": now.isoformat(),
                        },
                    )
                )
            async with db.uow(SYSTEM_SCOPE) as uow:
                ids = (
                    (
                        await uow.session.execute(
                            # A page holds dozens of payments loaded together: sample pages,
                            # then payments at random among them, not the first pages' rows.
                            text(
                                "SELECT id FROM payment TABLESAMPLE SYSTEM (1) "
                                "ORDER BY random() LIMIT :n"
                            ),
                            {"n": args.details},
                        )
                    )
                    .scalars()
                    .all()
                )
            details = [
                Case("detail", "payment", DETAIL, {"id": encode_id("Payment", i)})
                for i in (ids if "detail" in kinds else [])
            ]
            rng = random.Random(7)
            started = time.perf_counter()
            for case in cases:
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    await _post(http, case.query, case.variables)
                    case.times_ms.append((time.perf_counter() - t) * 1000)
            detail_ms: list[float] = []
            for case in rng.sample(details, len(details)):
                t = time.perf_counter()
                await _post(http, case.query, case.variables)
                detail_ms.append((time.perf_counter() - t) * 1000)
            took = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"\n{'case':<60}{'p50 ms':>9}{'p99 ms':>9}{'target':>8}")
    worst: dict[str, float] = {}
    for case in cases:
        p99 = _percentile(case.times_ms, 0.99)
        worst[case.kind] = max(worst.get(case.kind, 0.0), p99)
        print(
            f"{case.kind + ': ' + case.label:<60.60}{statistics.median(case.times_ms):>9.1f}"
            f"{p99:>9.1f}{TARGET_MS[case.kind]:>8.0f}"
        )
    if detail_ms:
        p99 = _percentile(detail_ms, 0.99)
        worst["detail"] = p99
        print(
            f"{'detail: ' + str(len(detail_ms)) + ' payments':<60}"
            f"{statistics.median(detail_ms):>9.1f}{p99:>9.1f}{TARGET_MS['detail']:>8.0f}"
        )
    print(f"\n{'kind':<10}{'worst p99 ms':>14}{'target':>8}  met")
    for kind, value in worst.items():
        print(f"{kind:<10}{value:>14.1f}{TARGET_MS[kind]:>8.0f}  {value < TARGET_MS[kind]}")
    print(f"{sum(len(c.times_ms) for c in cases) + len(detail_ms):,} requests in {took:.0f} s")

    principal = await authenticate(db, token, now=now)
    await _explain(db, settings, [*cases, *details[:3]], principal, args.plans)
    await db.dispose()
    services.close()


if __name__ == "__main__":
    asyncio.run(main())
