"""A billing-day burst through the whole production path: N failed payments due at one moment.

    .venv/bin/python bench/burst.py --payments 20000 --workers 2

The stack of the soak (tests/support/stack.py) as separate processes: a private PostgreSQL and
Redis, the sandbox processors, `portal worker` processes (no API process: nothing here calls
the API). The path measured is production's: ingestion polls the sandbox, the `decide_pending`
cron decides, the `claim_due` cron claims due payments and queues one `attempt_payment` job per
attempt, the workers charge the sandbox and record the outcomes.

How the burst is made, with the sandbox's and the portal's own means only:
- Sandbox Stripe accounts whose customers' first charges all fail (the simulator's
  `first_failure_rate = 1.0`), with `HISTORY_DAYS` of history; the customer count is sized
  from --payments (`FAILED_PER_CUSTOMER_DAY`), so the burst is about --payments, not exactly.
- The merchants' retry policy is the fixed schedule without quiet hours (quiet hours would
  spread the burst over the mornings of the customers' time zones), and their recovery is
  paused (as support pauses it) while ingestion reads the whole history: the decide cron holds
  the new payments undecided.
- Recovery is resumed: that instant is the burst. The decide cron decides every held payment
  on its next tick, and the fixed schedule's first retry (a day after the failure) has passed
  for every payment that failed more than a day ago, so all of those are due at once. The
  failures of the last day are scheduled for later and are not part of the burst; neither is
  the trickle of charges the sandbox's world keeps generating (a few a minute).

Simulated clock: --speed 1 by default. Nothing in the burst needs simulated time to pass (the
history is already a day old when recovery resumes), and at speed 1 the portal's time-based
rules run as in production while the backlog is worked off: an attempt is reconciled as stuck
after 10 minutes in flight, which at a speed of 60 would be 10 wall seconds of queueing.

Printed: time from the resume to every held payment decided, to every due payment claimed and
to every attempt recorded (read from PostgreSQL each second); attempts recorded and the arq
queue's depth (jobs ready to start) per 10 s; how late cron runs started against their tick,
and how long they waited in the queue (it is first in, first out: a cron run waits behind the
charge jobs queued before it; a run queued after its tick was queued late by a busy worker's
cron loop); then a drain (as the soak's) and the books: the sandbox's charges against the portal's
attempts, no idempotency key charged twice, nothing left in flight. Exits 1 when an invariant
fails or the burst did not finish within --timeout.

--slow SECONDS makes the sandbox answer every request that much later from the resume on (its
`slow` fault, retries included), as a processor's latency. --env PORTAL_X=VALUE sets a portal
setting on the worker processes (repeatable), e.g. PORTAL_CLAIM_QUEUE_LIMIT. `--keep DIR`
leaves data and logs.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx
from redis.asyncio import Redis

# tests/support is the project's harness, not an installed package: import it from the root.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from arq.constants import in_progress_key_prefix  # noqa: E402

from app.db import Database  # noqa: E402
from app.enums import MerchantStatus, Processor, RetryStrategy  # noqa: E402
from app.services.retry_policy import (  # noqa: E402
    PolicyChanges,
    current_policies,
    update_retry_policy,
)
from app.settings import DEFAULT_QUEUE_NAME, normalize_database_url  # noqa: E402
from app.tenancy import SYSTEM_SCOPE, system_principal  # noqa: E402
from tests.support.soak.books import (  # noqa: E402
    book_invariants,
    drain,
    explain_in_flight,
    set_recovery,
)
from tests.support.soak.load import set_sandbox_clock, set_up_tenants  # noqa: E402
from tests.support.soak.report import Invariant, SoakConfig, Tenants  # noqa: E402
from tests.support.stack import Stack, stack_folder  # noqa: E402

HISTORY_DAYS = 10
# Failed first charges per sandbox customer and day of history with `first_failure_rate = 1.0`
# (about 44% of first charges fail: the simulator's failure mix keeps some customers healthy),
# counting only those the fixed schedule retries (hard declines are not): measured.
FAILED_PER_CUSTOMER_DAY = 0.0159
CUSTOMERS_PER_ACCOUNT = 200_000  # the sandbox's limit per account
SAMPLE_SECONDS = 1.0
BUCKET_SECONDS = 10.0


@dataclass
class Sample:
    """The portal's books and the queue at one instant (`at`: wall seconds since the resume)."""

    at: float
    pending: int
    due: int
    retrying: int
    claimed: int
    recorded: int
    ready_jobs: int


@dataclass
class CronWait:
    """One cron run seen in the queue: its tick, when it was queued (its score: the tick, or
    later when the worker's cron loop queued it late) and when it was first seen started (ms)."""

    name: str
    tick_ms: int
    queued_ms: int
    started_ms: int | None = None


@dataclass
class Watch:
    """What the sampler collected."""

    samples: list[Sample] = field(default_factory=list)
    crons: dict[str, CronWait] = field(default_factory=dict)


def say(began: float, line: str) -> None:
    print(f"[{time.monotonic() - began:6.0f} s] {line}", flush=True)


async def count_books(conn: asyncpg.Connection, now: datetime) -> tuple[int, int, int, int, int]:
    """Payments held or waiting for a decision, due and unclaimed, RETRYING; portal attempts
    made, and recorded (outcome known)."""
    row = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE state = 'PENDING') AS pending,
                  count(*) FILTER (WHERE state = 'SCHEDULED' AND next_retry_at <= $1) AS due,
                  count(*) FILTER (WHERE state = 'RETRYING') AS retrying
           FROM payment""",
        now,
    )
    attempts = await conn.fetchrow(
        """SELECT count(*) AS claimed, count(*) FILTER (WHERE outcome <> 'in_flight') AS recorded
           FROM payment_attempt WHERE actor = 'portal'"""
    )
    assert row is not None
    assert attempts is not None
    return (
        row["pending"],
        row["due"],
        row["retrying"],
        attempts["claimed"],
        attempts["recorded"],
    )


async def watch_queue(redis: Redis, watch: Watch) -> int:
    """Jobs ready to start now; and each ready cron run's tick and whether it has started.

    A cron job's id is `cron:<name>:<tick in ms>` (arq's unique crons) and it stays in the
    queue until it finishes; `arq:in-progress:<id>` exists from its start."""
    seconds, micros = await redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    ready = await redis.zrangebyscore(DEFAULT_QUEUE_NAME, "-inf", now_ms, withscores=True)
    crons = {m.decode(): int(score) for m, score in ready if m.startswith(b"cron:")}
    open_ids = [c for c in crons if c not in watch.crons or watch.crons[c].started_ms is None]
    if open_ids:
        started = await redis.mget([in_progress_key_prefix + c for c in open_ids])
        for job_id, flag in zip(open_ids, started, strict=True):
            _, name, tick = job_id.rsplit(":", 2)
            wait = watch.crons.setdefault(job_id, CronWait(name, int(tick), crons[job_id]))
            if flag is not None:
                wait.started_ms = now_ms
    # Runs seen waiting that left the queue between two samples started by now at the latest.
    for job_id, wait in watch.crons.items():
        if wait.started_ms is None and job_id not in crons:
            wait.started_ms = now_ms
    return len(ready)


async def sample(stack: Stack, redis: Redis, watch: Watch, t0: float, stop: asyncio.Event) -> None:
    """Every `SAMPLE_SECONDS` until stopped: the books (PostgreSQL) and the queue (Redis)."""
    conn = await asyncpg.connect(stack.postgres.url, timeout=10)
    try:
        while not stop.is_set():
            tick = time.monotonic()
            books = await count_books(conn, stack.time.now())
            ready = await watch_queue(redis, watch)
            watch.samples.append(Sample(tick - t0, *books, ready))
            await asyncio.sleep(max(0.0, SAMPLE_SECONDS - (time.monotonic() - tick)))
    finally:
        await conn.close()


async def prepare_merchants(stack: Stack, tenants: Tenants) -> None:
    """Every merchant on the fixed schedule without quiet hours (else the burst would spread
    over the mornings of the customers' time zones), and its recovery paused."""
    db = Database.from_url(normalize_database_url(stack.postgres.url))
    principal = system_principal("burst")
    try:
        async with db.uow(SYSTEM_SCOPE) as uow:
            ids = [t.merchant_id for t in tenants.merchants]
            policies = await current_policies(uow.session, ids)
            for merchant_id in ids:
                await update_retry_policy(
                    uow,
                    principal=principal,
                    merchant_id=merchant_id,
                    expected_version=policies[merchant_id].version,
                    changes=PolicyChanges(strategy=RetryStrategy.FIXED_SCHEDULE, quiet_hours=None),
                    reason="burst: every retry due on its fixed-schedule day",
                    now=stack.time.now(),
                )
            await uow.commit()
    finally:
        await db.dispose()
    await set_recovery(stack, tenants, MerchantStatus.PAUSED, "burst: hold until ingested")


async def slow_sandbox(stack: Stack, tenants: Tenants, delay: float) -> None:
    """The sandbox answers every request (retries included) `delay` seconds late: its `slow`
    fault, counted over the next million requests."""
    async with httpx.AsyncClient(base_url=stack.sandbox_url, timeout=30, trust_env=False) as admin:
        for t in tenants.merchants:
            body = {"slow": 1_000_000, "slow_seconds": delay, "writes": True}
            faults = f"/_sandbox/accounts/{t.account_id}/faults"
            (await admin.post(faults, json=body)).raise_for_status()


async def wait_ingested(stack: Stack, tenants: Tenants, began: float, within: float) -> int:
    """Wait until the portal holds every failed charge of the sandbox's history as a payment,
    each seen by the decide cron (held, since recovery is paused). Returns the count."""
    deadline = time.monotonic() + within
    conn = await asyncpg.connect(stack.postgres.url, timeout=10)
    try:
        async with httpx.AsyncClient(
            base_url=stack.sandbox_url, timeout=60, trust_env=False
        ) as admin:
            generated = 0
            for t in tenants.merchants:
                history = (await admin.get(f"/_sandbox/accounts/{t.account_id}/history")).json()
                generated += len(history["failed"])
        say(began, f"sandbox history holds {generated:,} failed charges; ingesting")
        last = -1
        while time.monotonic() < deadline:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, count(*) FILTER (WHERE needs_decision) AS undecided "
                "FROM payment"
            )
            assert row is not None
            if row["n"] >= generated and row["undecided"] == 0:
                return int(row["n"])
            if row["n"] // 5000 != last // 5000:
                say(began, f"  {row['n']:,} payments ingested")
            last = row["n"]
            await asyncio.sleep(2)
    finally:
        await conn.close()
    raise TimeoutError(f"ingestion did not catch up within {within:.0f} s")


async def scheduled_untried(stack: Stack) -> int:
    """Payments scheduled that the portal has not retried yet: those whose first retry was not
    due at the resume (they failed within the last day)."""
    conn = await asyncpg.connect(stack.postgres.url, timeout=10)
    try:
        found = await conn.fetchval(
            """SELECT count(*) FROM payment p WHERE state = 'SCHEDULED' AND NOT EXISTS
                 (SELECT 1 FROM payment_attempt a
                  WHERE a.payment_id = p.id AND a.actor = 'portal')"""
        )
    finally:
        await conn.close()
    return int(found)


def first(
    samples: list[Sample], test: Callable[[Sample], bool], after: float = 0.0
) -> float | None:
    """When `test` first held (seconds since the resume), from `after` on."""
    for s in samples:
        if s.at >= after and test(s):
            return s.at
    return None


def seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f} s"


def report(watch: Watch, burst: int, later: int) -> list[str]:
    """The figures, as printed."""
    samples = watch.samples
    decided = first(samples, lambda s: s.pending == 0)
    claimed = first(samples, lambda s: s.pending == 0 and s.due == 0, decided or 0.0)
    recorded = first(
        samples, lambda s: s.retrying == 0 and s.claimed == s.recorded, claimed or math.inf
    )
    lines = [
        f"burst: {burst:,} payments charged (due at the resume); {later:,} others were "
        "scheduled for later (failed within the last day)",
        f"from the resume to every held payment decided: {seconds(decided)}",
        f"                  to every due payment claimed: {seconds(claimed)}",
        f"                  to every attempt recorded:    {seconds(recorded)}",
    ]
    # A payment or two may wait for another of its customer's to finish: the shares show
    # when the bulk was done.
    for share in (0.5, 0.9, 0.99):
        need = share * burst
        at_claimed = next((s.at for s in samples if s.claimed >= need), None)
        at_recorded = next((s.at for s in samples if s.recorded >= need), None)
        lines.append(
            f"  {share:4.0%} of the burst claimed at {seconds(at_claimed)}, "
            f"recorded at {seconds(at_recorded)}"
        )
    if recorded and decided is not None:
        span = max(recorded - decided, 1.0)
        lines.append(
            f"charges/s: {burst / recorded:.0f} from the resume, {burst / span:.0f} from "
            "the decisions on"
        )
    lines += ["", "   from s   recorded   charges/s   claimed   in flight   ready jobs (max)"]
    buckets: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        buckets[int(s.at // BUCKET_SECONDS)].append(s)
    before = 0
    end = recorded if recorded is not None else samples[-1].at if samples else 0.0
    for index in sorted(buckets):
        group = buckets[index]
        if index * BUCKET_SECONDS > end + BUCKET_SECONDS:
            break
        last = group[-1]
        made = last.recorded - before
        before = last.recorded
        lines.append(
            f"   {index * BUCKET_SECONDS:6.0f}   {last.recorded:8,}   {made / BUCKET_SECONDS:9.0f}"
            f"   {last.claimed:7,}   {last.retrying:9,}   {max(s.ready_jobs for s in group):10,}"
        )
    lines += [
        "",
        "cron runs seen waiting: start after the tick (cron loop lateness + queue wait) and",
        "after being queued (queue wait alone), latest and median, sampled each second",
    ]
    by_name: dict[str, list[CronWait]] = defaultdict(list)
    for wait in watch.crons.values():
        if wait.started_ms is not None:
            by_name[wait.name].append(wait)
    for name in sorted(by_name):
        runs = by_name[name]
        late = sorted((w.started_ms or 0) - w.tick_ms for w in runs)
        queued = sorted((w.started_ms or 0) - w.queued_ms for w in runs)
        lines.append(
            f"  {name:22} {len(runs):4} runs; after tick {late[-1] / 1000:5.1f} s "
            f"(median {late[len(late) // 2] / 1000:5.1f}), after queued "
            f"{queued[-1] / 1000:5.1f} s (median {queued[len(queued) // 2] / 1000:5.1f})"
        )
    if not by_name:
        lines.append("  no cron run was seen waiting in the queue")
    return lines


async def run(args: argparse.Namespace) -> bool:
    began = time.monotonic()
    customers = math.ceil(args.payments / (FAILED_PER_CUSTOMER_DAY * (HISTORY_DAYS - 1)))
    accounts = math.ceil(customers / CUSTOMERS_PER_ACCOUNT)
    config = SoakConfig(
        minutes=1.0,
        faults=(),
        speed=args.speed,
        processors=(Processor.STRIPE,) * accounts,
        customers=math.ceil(customers / accounts),
        history_days=HISTORY_DAYS,
    )
    with stack_folder(args.keep) as folder:
        stack = Stack(folder, apis=0, workers=args.workers, speed=args.speed)
        # The simulator's first charges all fail: the sandbox's own server, with that config.
        simulator = folder / "simulator.toml"
        simulator.write_text("[stream]\nfirst_failure_rate = 1.0\n")
        stack.sandbox.argv = [
            sys.executable,
            "-c",
            "import sys; from sandbox.app import run; "
            "run(port=int(sys.argv[1]), config_path=sys.argv[2], log_level='warning')",
            str(stack.sandbox_port),
            str(simulator),
        ]
        extra = dict(item.split("=", 1) for item in args.env)
        for worker in stack.workers:
            worker.env = {**worker.env, **extra}
        redis: Redis | None = None
        try:
            say(began, f"stack in {folder}")
            await asyncio.to_thread(stack.start_infrastructure)
            await asyncio.to_thread(stack.migrate)
            await asyncio.to_thread(stack.sandbox.start)
            await set_sandbox_clock(stack)
            say(
                began,
                f"{accounts} sandbox account(s) of {config.customers:,} customers, "
                f"{HISTORY_DAYS} days of history",
            )
            tenants = await set_up_tenants(stack, config)
            await prepare_merchants(stack, tenants)
            for worker in stack.workers:
                await asyncio.to_thread(worker.start)
            say(began, f"{len(stack.workers)} workers up; recovery paused")
            ingested = await wait_ingested(stack, tenants, began, args.timeout)
            say(began, f"{ingested:,} payments ingested and held; resuming recovery")
            if args.slow:
                await slow_sandbox(stack, tenants, args.slow)
            redis = Redis.from_url(stack.redis.url)
            watch = Watch()
            stop = asyncio.Event()
            t0 = time.monotonic()
            sampler = asyncio.create_task(sample(stack, redis, watch, t0, stop))
            await set_recovery(stack, tenants, MerchantStatus.ACTIVE, "burst: resume")
            finished = await wait_finished(watch, sampler, args.timeout, began)
            stop.set()
            await sampler
            usage = await asyncio.to_thread(stack.usage)
            say(began, "burst over; draining (sandbox clock frozen, recovery paused)")
            ledgers, drained = await drain(stack, tenants, 120)
            later = await scheduled_untried(stack)
            print("\n".join(["", *report(watch, len(ledgers.portal_attempts), later), ""]))
            print("CPU seconds over the run: " + ", ".join(
                f"{name} {u.cpu:.0f}" for name, u in usage.items()
            ))  # fmt: skip
            invariants = [
                *book_invariants(ledgers),
                Invariant(
                    "nothing left in flight",
                    drained is not None and ledgers.in_flight == 0 and ledgers.retrying == 0,
                    f"portal attempts in flight {ledgers.in_flight}, payments RETRYING "
                    f"{ledgers.retrying}",
                ),
                Invariant("burst finished", finished, f"within --timeout {args.timeout:.0f} s"),
            ]
            print("\ninvariants:")
            for inv in invariants:
                print(f"  [{'ok' if inv.ok else 'FAILED'}] {inv.name}: {inv.detail}")
            if ledgers.in_flight:
                print("\n".join(await explain_in_flight(stack)))
            return all(inv.ok for inv in invariants)
        finally:
            if redis is not None:
                await redis.aclose()
            stack.shutdown()


async def wait_finished(
    watch: Watch, sampler: asyncio.Task[None], within: float, began: float
) -> bool:
    """Wait until every held payment was decided, nothing due is unclaimed and every attempt
    is recorded (three samples in a row), or `within` seconds."""
    deadline = time.monotonic() + within
    shown = 0.0
    while time.monotonic() < deadline:
        await asyncio.sleep(SAMPLE_SECONDS)
        if sampler.done():
            sampler.result()  # raises what stopped it
            return False
        last = watch.samples[-3:]
        if last and time.monotonic() - shown > 15:
            shown = time.monotonic()
            s = last[-1]
            say(
                began,
                f"  pending {s.pending:,}, due {s.due:,}, in flight {s.retrying:,}, "
                f"recorded {s.recorded:,}, ready jobs {s.ready_jobs:,}",
            )
        if len(last) == 3 and all(
            s.pending == 0 and s.due == 0 and s.retrying == 0 and s.claimed == s.recorded > 0
            for s in last
        ):
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--payments", type=int, default=20_000, help="burst size (about)")
    parser.add_argument("--workers", type=int, default=2, help="portal worker processes")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    parser.add_argument("--slow", type=float, default=0.0, help="sandbox seconds per charge")
    parser.add_argument("--timeout", type=float, default=900.0, help="most seconds per phase")
    parser.add_argument("--env", action="append", default=[], help="PORTAL_X=VALUE on workers")
    parser.add_argument("--keep", type=Path, help="keep data and logs in this folder")
    args = parser.parse_args()
    if not 100 <= args.payments <= 500_000 or not 1 <= args.workers <= 16:
        parser.error("--payments must be in [100, 500000] and --workers in [1, 16]")
    if not 0 <= args.slow <= 30 or not 0 < args.speed <= 3600:
        parser.error("--slow must be in [0, 30] seconds and --speed in (0, 3600]")
    if any(not item.startswith("PORTAL_") or "=" not in item for item in args.env):
        parser.error("--env takes PORTAL_NAME=VALUE")
    sys.exit(0 if asyncio.run(run(args)) else 1)


if __name__ == "__main__":
    main()
