"""Ingestion throughput: sandbox pages -> raw landing -> normalize -> upsert, against a raw COPY
of the same records into a scratch table, measured side by side in one run.

    .venv/bin/python bench/ingest.py --payments 1000000 [--processes 2] [--parallel 8]

Pollers run in processes of their own (`--processes`, each polling its connections `--parallel`
at a time, as worker processes share a cron tick's poll jobs), the sandbox in another.
Uses DATABASE_URL (or the local/embedded default); creates and drops its own database.
"""

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import resource
import secrets
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from app.clock import FixedClock
from app.crypto import CredentialBox
from app.db import Database
from app.embedded import create_scratch_database, drop_database, resolve_services
from app.enums import Processor
from app.services.connection import create_connection
from app.services.merchant import create_merchant
from app.settings import get_settings
from app.tenancy import SYSTEM_SCOPE, system_principal
from app.urls import UrlPolicy
from app.workflows.polling import poll_connection
from jobs.context import tune_garbage_collector
from portal.migrate import upgrade_database
from procstat import backend_cpu_seconds, cpu_seconds, postgres_cpu_seconds
from sandbox.common import connection_credentials
from sandbox.server import in_subprocess

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
# Charges per customer per month in the simulator are about one; 30 days of history.
HISTORY_DAYS = 30
CUSTOMERS_PER_ACCOUNT = 200_000

# The sandbox listens on loopback over plain HTTP.
SANDBOX_URLS = UrlPolicy(require_https=False, allow_loopback=True)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def poller(url: str, ids: list[uuid.UUID], parallel: int) -> dict[str, Any]:
    """One poller process (a worker's poll jobs): polls its connections until caught up,
    `parallel` at a time, and says what it did, its CPU time and its memory."""
    return asyncio.run(_poll(url, ids, parallel))


async def _poll(url: str, ids: list[uuid.UUID], parallel: int) -> dict[str, Any]:
    db = Database.from_url(url)
    box = CredentialBox("bench")
    rss_samples: list[int] = []
    counts = {"landed": 0, "normalized": 0, "created": 0}
    async with httpx.AsyncClient(timeout=60) as http:

        async def poll_until_caught_up(connection_id: uuid.UUID) -> None:
            while True:
                result = await poll_connection(
                    db,
                    connection_id,
                    client=http,
                    box=box,
                    clock=FixedClock(NOW),
                    max_pages=100,
                )
                counts["landed"] += result.stats.landed
                counts["normalized"] += result.stats.normalized
                counts["created"] += result.stats.payments_created
                if not result.more:
                    return

        async def sample_memory() -> None:
            while True:
                rss_samples.append(round(rss_mib()))
                await asyncio.sleep(0.5)

        tune_garbage_collector()  # as a worker does at start-up
        started, cpu_started = time.time(), time.process_time()
        sampling = asyncio.create_task(sample_memory())
        pending = list(ids)
        while pending:
            wave, pending = pending[:parallel], pending[parallel:]
            await asyncio.gather(*(poll_until_caught_up(cid) for cid in wave))
        ended, cpu = time.time(), time.process_time() - cpu_started
        sampling.cancel()
    await db.dispose()
    return {
        **counts,
        "started": started,
        "ended": ended,
        "cpu": cpu,
        # The resident size every twentieth of the run: flat, or growing with the records.
        "rss_mib_each_twentieth": rss_samples[:: max(1, len(rss_samples) // 20)],
        "peak_rss_mib": peak_rss_mib(),
    }


async def main(payments: int, processor: Processor, parallel: int = 8, processes: int = 1) -> None:
    settings = get_settings()
    services = await resolve_services(settings)
    url = await create_scratch_database(services, "portal_bench")
    try:
        await asyncio.to_thread(upgrade_database, url)
        plain_url = url.replace("postgresql+asyncpg://", "postgresql://")
        db = Database.from_url(url)
        box = CredentialBox("bench")
        # A customer is charged a little less than once a month: ask for enough of them that
        # the history holds at least `payments` charges.
        wanted = math.ceil(payments / 0.95)
        accounts = max(1, math.ceil(wanted / CUSTOMERS_PER_ACCOUNT))
        customers = max(100, math.ceil(wanted / accounts))
        with in_subprocess(NOW) as (base, sandbox_pid):
            async with httpx.AsyncClient(timeout=60) as http:
                connections = []
                async with db.uow(SYSTEM_SCOPE) as uow:
                    merchant = await create_merchant(
                        uow, name="Bench", principal=system_principal(), now=NOW
                    )
                    for i in range(accounts):
                        key = secrets.token_hex(8)
                        account_id = f"bench_{i}_{secrets.token_hex(3)}"
                        response = await http.post(
                            f"{base}/_sandbox/accounts",
                            json={
                                "processor": processor.value,
                                "account_id": account_id,
                                "merchant_seed": 1000 + i,
                                "api_key": key,
                                "history_days": HISTORY_DAYS,
                                "customers": customers,
                            },
                        )
                        response.raise_for_status()
                        creds = connection_credentials(processor.value, account_id, key)
                        connection = await create_connection(
                            uow,
                            principal=system_principal(),
                            merchant_id=merchant.id,
                            kind=processor,
                            base_url=f"{base}/{processor.value}",
                            policy=SANDBOX_URLS,
                            credentials=creds,
                            box=box,
                            account_ref=account_id,
                            now=NOW,
                        )
                        connections.append((connection.id, account_id))
                    await uow.commit()
                # Let the sandbox generate its history before timing (it is the outside world);
                # 200,000 customers' history takes minutes on a busy machine.
                total = 0
                for _, account_id in connections:
                    info = (
                        await http.get(f"{base}/_sandbox/accounts/{account_id}", timeout=900)
                    ).json()
                    total += int(info["charges"])
                print(f"sandbox: {accounts} {processor.value} account(s), {total:,} charges")

                # This database's backends, read every fifth of a second: a poller's connections
                # close when it ends, and what a backend that is gone spent cannot be read.
                monitor = await asyncpg.connect(plain_url)
                backends = (
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                own_started = backend_cpu_seconds([r["pid"] for r in await monitor.fetch(backends)])
                own = dict(own_started)
                polled = asyncio.Event()

                async def sample_backends() -> None:
                    while True:
                        own.update(
                            backend_cpu_seconds([r["pid"] for r in await monitor.fetch(backends)])
                        )
                        if polled.is_set():
                            return
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(polled.wait(), 0.2)

                sampling = asyncio.create_task(sample_backends())
                sandbox_cpu_started = cpu_seconds(sandbox_pid)
                postgres_cpu_started = postgres_cpu_seconds()
                # Each poller process takes every `processes`-th connection, as workers share
                # the poll jobs of a cron tick.
                ids = [cid for cid, _ in connections]
                shares = [ids[i::processes] for i in range(min(processes, len(ids)))]
                context = multiprocessing.get_context("spawn")
                loop = asyncio.get_running_loop()
                with ProcessPoolExecutor(len(shares), mp_context=context) as pool:
                    results = await asyncio.gather(
                        *(
                            loop.run_in_executor(pool, poller, url, share, parallel)
                            for share in shares
                        )
                    )
                started = min(r["started"] for r in results)
                portal_seconds = max(r["ended"] for r in results) - started
                landed = sum(r["landed"] for r in results)
                normalized = sum(r["normalized"] for r in results)
                created = sum(r["created"] for r in results)
                rss_samples = [r["rss_mib_each_twentieth"] for r in results]
                polled.set()
                await sampling
                await monitor.close()
                cpu = {
                    "portal": sum(r["cpu"] for r in results),
                    "sandbox": cpu_seconds(sandbox_pid) - sandbox_cpu_started,
                    # This database's backends (what ingestion itself costs the server) …
                    "postgres": sum(t - own_started.get(pid, 0.0) for pid, t in own.items()),
                    # … and every PostgreSQL process (WAL writer, checkpointer, and whatever
                    # else shares the server: on a busy machine this counts other work too).
                    "postgres_all_processes": postgres_cpu_seconds() - postgres_cpu_started,
                }
                rss_after_portal = max(r["peak_rss_mib"] for r in results)

        # The same records, as stored, copied raw into scratch tables: an unlogged one (the
        # fastest write PostgreSQL has) and a logged one (as durable as raw_record).
        conn = await asyncpg.connect(plain_url)
        copy_seconds: dict[str, float] = {}
        try:
            rows = await conn.fetch(
                "SELECT id, connection_id, content_hash, payload::text AS payload FROM raw_record"
            )
            records = [
                (uuid.uuid4(), r["connection_id"], r["content_hash"], r["payload"]) for r in rows
            ]
            del rows
            for kind in ("unlogged", "logged"):
                table = f"copy_scratch_{kind}"
                await conn.execute(
                    f"CREATE {'UNLOGGED' if kind == 'unlogged' else ''} TABLE {table} "
                    "(id uuid, connection_id uuid, content_hash text, payload jsonb)"
                )
                started = time.perf_counter()
                await conn.copy_records_to_table(
                    table,
                    records=records,
                    columns=["id", "connection_id", "content_hash", "payload"],
                )
                copy_seconds[kind] = time.perf_counter() - started
        finally:
            await conn.close()
        await db.dispose()
        portal_rate = landed / portal_seconds
        copy_rate = {kind: len(records) / seconds for kind, seconds in copy_seconds.items()}
        print(
            json.dumps(
                {
                    "records": landed,
                    "normalized": normalized,
                    "payments_created": created,
                    "connections": len(connections),
                    "processes": len(shares),
                    "parallel_per_process": parallel,
                    "portal_seconds": round(portal_seconds, 1),
                    "portal_rows_per_s": round(portal_rate),
                    "copy_rows_per_s": {k: round(v) for k, v in copy_rate.items()},
                    "portal_vs_copy": {k: round(portal_rate / v, 3) for k, v in copy_rate.items()},
                    "cpu_us_per_record": {k: round(v / landed * 1e6) for k, v in cpu.items()},
                    "portal_rss_mib_each_twentieth_per_process": rss_samples,
                    "portal_peak_rss_mib_per_process": round(rss_after_portal),
                },
                indent=2,
            )
        )
    finally:
        await drop_database(services, url)
        services.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payments", type=int, default=1_000_000)
    parser.add_argument("--processor", type=Processor, default=Processor.STRIPE)
    parser.add_argument(
        "--parallel",
        type=int,
        default=8,
        help="connections polled at once (a sandbox account holds at most 200,000 customers)",
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="poller processes sharing the connections"
    )
    args = parser.parse_args()
    asyncio.run(main(args.payments, args.processor, args.parallel, args.processes))
