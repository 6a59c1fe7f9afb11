"""Payment exports at scale: the API process's memory against the rows it streams.

    python bench/generate.py --payments 250000 --merchants 2 --top-share 0.8 \
        --database portal_export_bench
    python bench/export.py --database portal_export_bench

Runs `portal serve` on that database in a process of its own, then exports every merchant's
payments (largest first) as CSV and as Parquet through `GET /exports/payments.<format>`,
reading the body as it streams and throwing it away (Parquet is spooled to a temporary file to
count its rows from the footer). Meanwhile it samples the server's resident set size
(/proc/<pid>/status, every 20 ms). Prints per export: rows, bytes, seconds, rows/s, the
server's RSS before, its peak during the export, and the RSS when a quarter, half, three
quarters and all of the body had arrived: memory that stays flat shows as the same peak for
50,000 rows as for 200,000, and as no growth from the first quarter to the last.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import pyarrow.parquet as pq
from sqlalchemy import text

from app.db import Database
from app.embedded import resolve_services
from app.enums import Role
from app.services.api_key import create_api_key
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from portal.migrate import upgrade_database
from resolvers.ids import encode_id


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Sampler:
    """The server's RSS every 20 ms, each sample with the bytes received by then."""

    pid: int
    received: int = 0
    samples: list[tuple[int, float]] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            self.samples.append((self.received, rss_mib(self.pid)))
            await asyncio.sleep(0.02)

    def at_share(self, total: int, share: float) -> float:
        """The largest RSS sampled before `share` of the body had arrived."""
        seen = [rss for got, rss in self.samples if got <= total * share]
        return max(seen) if seen else float("nan")


@dataclass(frozen=True)
class Result:
    label: str
    rows: int
    bytes: int
    seconds: float
    rss_before: float
    rss_peak: float
    quarters: tuple[float, float, float, float]


async def export_once(
    http: httpx.AsyncClient, pid: int, merchant_gid: str, fmt: str, label: str
) -> Result:
    rss_before = rss_mib(pid)
    sampler = Sampler(pid)
    task = asyncio.create_task(sampler.run())
    newlines = 0
    started = time.perf_counter()
    with tempfile.TemporaryFile() as spool:
        async with http.stream(
            "GET", f"/exports/payments.{fmt}", params={"merchantId": merchant_gid}
        ) as response:
            response.raise_for_status()
            async for chunk in response.aiter_bytes(1 << 16):
                sampler.received += len(chunk)
                if fmt == "csv":
                    newlines += chunk.count(b"\n")
                else:
                    spool.write(chunk)
        seconds = time.perf_counter() - started
        task.cancel()
        if fmt == "csv":
            rows = newlines - 1
        else:
            spool.seek(0)
            rows = pq.ParquetFile(spool).metadata.num_rows
    total = sampler.received
    quarters = tuple(sampler.at_share(total, s) for s in (0.25, 0.5, 0.75, 1.0))
    return Result(
        label,
        rows,
        total,
        seconds,
        rss_before,
        max(rss for _, rss in sampler.samples),
        quarters,  # type: ignore[arg-type]
    )


def serve(url: str, redis_url: str, port: int) -> subprocess.Popen[bytes]:
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
    parser.add_argument("--database", default="portal_export_bench")
    parser.add_argument("--port", type=int, default=8741)
    parser.add_argument("--formats", default="csv,parquet")
    args = parser.parse_args()

    services = await resolve_services(Settings())
    base, _, query = services.database_url.partition("?")
    url = f"{base.rsplit('/', 1)[0]}/{args.database}" + (f"?{query}" if query else "")
    await asyncio.to_thread(upgrade_database, url)
    db = Database.from_url(url)
    now = datetime.now(UTC)
    async with db.uow(SYSTEM_SCOPE) as uow:
        merchants = (
            await uow.session.execute(
                text(
                    "SELECT merchant_id, count(*) AS n FROM payment GROUP BY merchant_id "
                    "ORDER BY n DESC"
                )
            )
        ).all()
        if not merchants:
            raise SystemExit(f"no payments in {args.database}: run bench/generate.py first")
        _, token = await create_api_key(
            uow, name=f"export-bench-{now:%H%M%S}", role=Role.SUPPORT, merchant_ids=[], now=now
        )
        await uow.commit()
    await db.dispose()
    print(
        f"{args.database}: {sum(m.n for m in merchants):,} payments in {len(merchants)} merchants"
    )
    server = serve(url, services.redis_url, args.port)
    results: list[Result] = []
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{args.port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(60.0, read=600.0),
        ) as http:
            for _ in range(150):
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
            for fmt in args.formats.split(","):
                for merchant_id, count in merchants:
                    gid = encode_id("Merchant", merchant_id)
                    result = await export_once(http, server.pid, gid, fmt, f"{fmt} {count:,}")
                    results.append(result)
                    print(f"  done: {result.label}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)

    header = (
        f"{'export':<18}{'rows':>10}{'MB':>8}{'s':>8}{'rows/s':>9}"
        f"{'RSS before':>12}{'peak':>8}{'25%':>8}{'50%':>8}{'75%':>8}{'100%':>8}"
    )
    print("\nserver RSS in MiB; columns 25%..100%: peak RSS once that share of the body arrived")
    print(header)
    for r in results:
        print(
            f"{r.label:<18}{r.rows:>10,}{r.bytes / 1e6:>8.1f}{r.seconds:>8.1f}"
            f"{r.rows / r.seconds:>9,.0f}{r.rss_before:>12.0f}{r.rss_peak:>8.0f}"
            + "".join(f"{q:>8.0f}" for q in r.quarters)
        )


if __name__ == "__main__":
    asyncio.run(main())
