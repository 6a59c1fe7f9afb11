"""The soak: the stack under API load through scheduled faults, then a drain and the invariants.

Invariants: no double charge, charges equal attempts, everything generated was ingested, no API
error outside an outage, only outage answers inside one, no process crash, processing resumes
after every fault, the books settle. `run_soak(SoakConfig(...))` returns a `SoakReport`;
bench/soak.py prints it, the fault test asserts on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from sandbox.server import serving
from tests.support.soak.books import (
    check,
    drain,
    explain_in_flight,
    explain_unrecorded,
    read_ledgers,
)
from tests.support.soak.faults import Faults, Monitor, Supervisor, schedule
from tests.support.soak.load import (
    Load,
    WebhookReceiver,
    register_webhooks,
    set_sandbox_clock,
    set_up_tenants,
)
from tests.support.soak.report import FaultRecord, SoakConfig, SoakReport, Tenants
from tests.support.stack import Stack, stack_folder


@contextlib.asynccontextmanager
async def _background(
    *jobs: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
) -> AsyncIterator[list[str]]:
    """Run `jobs` until the block ends; yields a list that then names each job that died.

    A job that dies early (the monitor, the process supervisor) would leave its figures
    silently incomplete, and every later fault would seem never to have resumed.
    """
    stop = asyncio.Event()
    tasks = [asyncio.create_task(job(stop), name=job.__qualname__) for job in jobs]
    died: list[str] = []
    try:
        yield died
    finally:
        stop.set()
        await asyncio.wait(tasks, timeout=30)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                died.append(f"{task.get_name()} died: {task.exception()!r}")
            task.cancel()


async def run_soak(config: SoakConfig) -> SoakReport:
    """Start the stack, load it while the faults happen, drain, check; always stops everything."""
    report = SoakReport(config)
    say = config.progress
    with stack_folder(config.keep) as folder:
        stack = Stack(folder, speed=config.speed)
        receiver = WebhookReceiver()
        try:
            say(f"stack in {folder}: PostgreSQL :{stack.postgres.port}, Redis :{stack.redis.port}")
            await asyncio.to_thread(stack.start_infrastructure)
            await asyncio.to_thread(stack.migrate)
            await asyncio.to_thread(stack.sandbox.start)
            await set_sandbox_clock(stack)
            async with serving(receiver.app) as receiver_base:
                tenants = await set_up_tenants(stack, config)
                for service in [*stack.apis, *stack.workers]:
                    await asyncio.to_thread(service.start)
                await register_webhooks(stack, tenants, f"{receiver_base}/hook")
                say(
                    f"{len(stack.apis)} API and {len(stack.workers)} worker processes up; "
                    f"simulated time x{config.speed:g} from {stack.time.now():%Y-%m-%d %H:%M}"
                )
                await _run_phases(stack, tenants, config, report)
                report.webhook_deliveries = sum(receiver.seen.values())
                report.webhook_duplicates = sum(n - 1 for n in receiver.seen.values())
        finally:
            # Synchronous on purpose: it must run even when the run was cancelled (Ctrl-C).
            stack.shutdown()
    return report


async def _run_phases(
    stack: Stack, tenants: Tenants, config: SoakConfig, report: SoakReport
) -> None:
    seconds = config.minutes * 60
    load = Load(stack, tenants, config.rate, config.seed)
    monitor = Monitor(stack)
    supervisor = Supervisor(stack)
    faults = Faults(stack, tenants, config, supervisor)
    async with _background(monitor.run, supervisor.run) as died:
        started = time.monotonic()
        config.progress(f"load {config.rate:g}/s for {seconds:.0f} s, {len(config.faults)} faults")
        await asyncio.gather(
            load.run(seconds),
            schedule(faults, config, started, seconds),
            _measure_memory(stack, report, min(10.0, seconds / 6)),
        )
        report.load_seconds = time.monotonic() - started
        report.usage_end = await asyncio.to_thread(stack.usage)
        report.states_at_load_end = (await read_ledgers(stack, tenants)).states
        config.progress(f"load done ({len(load.samples):,} requests); draining")
        ledgers, report.drain_seconds = await drain(stack, tenants, config.drain_seconds)
    report.samples = load.samples
    report.shed = load.shed
    # Reported as the harness's own failures: the resume figures cannot be trusted then.
    now = time.monotonic()
    faults.records += [FaultRecord("background", "harness", now, now, why) for why in died]
    report.faults = faults.records
    report.monitor_failures = {read: dict(errors) for read, errors in monitor.failures.items()}
    report.exits = supervisor.exits
    report.resumes = [monitor.resume(f) for f in faults.records if f.target != "harness"]
    report.generated_failed = sum(len(v) for v in ledgers.failed_ids.values())
    report.ingested_failed = report.generated_failed - len(ledgers.missing())
    report.sandbox_charges = len(ledgers.retries)
    report.portal_attempts = len(ledgers.portal_attempts)
    report.sandbox_counts = ledgers.counts
    report.keys = len(ledgers.keys)
    report.replays = sum(k["replays"] for k in ledgers.keys)
    report.retrying_left = ledgers.retrying
    report.in_flight_left = ledgers.in_flight
    report.payment_states = ledgers.states
    report.invariants = check(report, ledgers)
    report.evidence = await explain_unrecorded(stack, ledgers)
    if ledgers.in_flight:
        report.in_flight_evidence = await explain_in_flight(stack)


async def _measure_memory(stack: Stack, report: SoakReport, after: float) -> None:
    # Not at spawn time: a process is still importing then, and its figure would mean nothing.
    # In a thread: reading every PostgreSQL process's memory takes a few tenths of a second on
    # a busy machine, which would stall the load's requests meanwhile.
    await asyncio.sleep(after)
    report.usage_start = await asyncio.to_thread(stack.usage)


def default_faults() -> tuple[tuple[float, str], ...]:
    """The soak's schedule: every fault kind, the worker kill twice, spread over the run."""
    return (
        (0.08, "processor_429"),
        (0.18, "worker_kill"),
        (0.28, "postgres_restart"),
        (0.40, "api_restart"),
        (0.52, "processor_5xx"),
        (0.62, "worker_kill"),
        (0.74, "redis_restart"),
    )
