"""Dashboard reads of two checkouts of the portal, interleaved, on one data set.

    python bench/api_compare.py --before /path/to/other/checkout --database portal_scale

Starts `portal serve` twice against the database `bench/generate.py` loaded: once from the
checkout given as `--before` (its own code, this interpreter and its packages), once from this
one. Then sends `bench/api_scale.py`'s requests (`recoveryStats` over 90 days for the largest
and a middle merchant; payment details drawn at random), one at a time, alternating between the
two servers request by request, so that both see the same machine: on a machine shared with
other work, two runs one after the other do not. Prints p50 and p99 per case and side, and the
ratio after/before of each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from api_scale import DETAIL, STATS, _percentile, _post
from sqlalchemy import text

from app.db import Database
from app.embedded import resolve_services
from app.enums import Role
from app.services.api_key import create_api_key
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from resolvers.ids import encode_id

HERE = Path(__file__).resolve().parents[1]


def _serve(checkout: Path, url: str, redis_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "DATABASE_URL": url,
        "REDIS_URL": redis_url,
        "PORTAL_RATE_LIMIT_ENABLED": "false",
        "PORTAL_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(  # noqa: S603 - this interpreter's own portal command
        [sys.executable, "-m", "portal", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=checkout,
    )


async def _ready(http: httpx.AsyncClient) -> None:
    for _ in range(600):
        try:
            if (await http.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit(f"{http.base_url} did not come up")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="The other checkout.")
    parser.add_argument("--database", default="portal_scale")
    parser.add_argument("--repeat", type=int, default=100, help="Timed requests per case.")
    parser.add_argument("--details", type=int, default=200, help="Payments whose detail is read.")
    parser.add_argument("--port", type=int, default=8741)
    parser.add_argument("--only", choices=("stats", "detail"), action="append")
    args = parser.parse_args()
    kinds = set(args.only or ("stats", "detail"))

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
                    "SELECT p.merchant_id, count(*) AS n, (SELECT r.timezone FROM retry_policy r "
                    "WHERE r.merchant_id = p.merchant_id ORDER BY r.version DESC LIMIT 1) AS zone "
                    "FROM payment p GROUP BY p.merchant_id ORDER BY n DESC"
                )
            )
        ).all()
        ids = (
            (
                await uow.session.execute(
                    text("SELECT id FROM payment TABLESAMPLE SYSTEM (1) LIMIT :n"),
                    {"n": args.details},
                )
            )
            .scalars()
            .all()
        )
        _, token = await create_api_key(
            uow, name=f"api-compare-{now:%H%M%S}", role=Role.SUPPORT, merchant_ids=[], now=now
        )
        await uow.commit()
    await db.dispose()
    cases: list[tuple[str, str, list[dict[str, Any]]]] = []
    if "stats" in kinds:
        for merchant_id, count, zone in [rows[0], rows[len(rows) // 2]]:
            request = {
                "id": encode_id("Merchant", merchant_id),
                "timezone": zone or "UTC",
                "from": (now - timedelta(days=90)).isoformat(),
                "to": now.isoformat(),
            }
            cases.append((f"stats: {count:,} payments, 90 days daily", STATS, [request]))
    if "detail" in kinds:
        details = [{"id": encode_id("Payment", i)} for i in ids]
        random.Random(7).shuffle(details)
        cases.append((f"detail: {len(details)} payments", DETAIL, details))

    sides = {"before": args.before.resolve(), "after": HERE}
    servers = [
        _serve(checkout, url, services.redis_url, args.port + i)
        for i, checkout in enumerate(sides.values())
    ]
    times: dict[tuple[str, str], list[float]] = {}
    try:
        clients = [
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{args.port + i}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            for i in range(len(sides))
        ]
        for client in clients:
            await _ready(client)
        started = time.perf_counter()
        for label, document, variables in cases:
            repeat = args.repeat if label.startswith("stats") else len(variables)
            # A few untimed requests on each side first (statement caches, imports).
            for client in clients:
                for v in variables[:3]:
                    await _post(client, document, v)
            for i in range(repeat):
                order = list(zip(sides, clients, strict=True))
                if i % 2:
                    order.reverse()
                for side, client in order:
                    t = time.perf_counter()
                    await _post(client, document, variables[i % len(variables)])
                    times.setdefault((label, side), []).append((time.perf_counter() - t) * 1000)
        took = time.perf_counter() - started
        for client in clients:
            await client.aclose()
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
    services.close()

    print(f"before: {sides['before']}\nafter:  {sides['after']}\n")
    print(f"{'case':<44}{'side':>8}{'p50 ms':>9}{'p99 ms':>9}{'p50 ratio':>11}{'p99 ratio':>11}")
    for label, _, _ in cases:
        figures = {}
        for side in sides:
            found = times[(label, side)]
            figures[side] = (statistics.median(found), _percentile(found, 0.99))
        for side, (p50, p99) in figures.items():
            ratio = ""
            if side == "after":
                b50, b99 = figures["before"]
                ratio = f"{p50 / b50:>11.2f}{p99 / b99:>11.2f}"
            print(f"{label:<44}{side:>8}{p50:>9.1f}{p99:>9.1f}{ratio}")
    count = sum(len(v) for v in times.values())
    print(f"\n{count:,} requests in {took:.0f} s, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
