"""The worker under supervision: outages waited out, crashes restarted, liveness, clean stops.

arq's `Worker.main()` ends at the first Redis error of its poll loop; a process built on it
exits, and a worker task inside the web app just stops. `Supervisor.run()` returns only when
asked to stop. When the poll loop ends on an outage (`app.outages.outage_of`) it logs one line,
probes with capped exponential backoff until the dependency answers, logs one line with the
outage's length and starts the loop again on the same `PortalWorker`: the same Redis pool,
the same job context (database engine, HTTP client), the jobs still running. Any other ending
is a bug: logged with its traceback and restarted, with the same backoff when it repeats.

Liveness: while the poll loop turns and PostgreSQL answers, the worker writes a heartbeat into
Redis (`jobs.telemetry`), which /readyz and /metrics read. A stop (SIGTERM, SIGINT or `stop()`)
takes no new jobs, gives running ones the grace period, cancels the rest (arq queues them
again) and closes everything. A SIGKILL leaves the jobs' in-progress keys to expire and the
attempts to the reconciliation.
"""

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid

import structlog

from app.outages import Dependency, outage_of
from app.settings import Settings
from jobs.outages import PROBE_TIMEOUT_SECONDS, OutageTracker, probe
from jobs.telemetry import remove_heartbeat, write_heartbeat
from jobs.worker import PortalWorker, settle

logger = structlog.stdlib.get_logger("portal.worker")

# A poll loop that ran this long before crashing is not crash-looping: its backoff starts over.
STABLE_AFTER_SECONDS = 60.0


def new_worker_id() -> str:
    """Unique per process and start: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Supervisor:
    """Runs a `PortalWorker` until asked to stop (see the module's docstring)."""

    def __init__(
        self, worker: PortalWorker, settings: Settings, *, worker_id: str | None = None
    ) -> None:
        self.worker = worker
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.outages: OutageTracker = worker.outages
        self.backoff = worker.backoff
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self._done = asyncio.Event()
        self._beaten = False
        # Longer than any healthy turn of the poll loop (poll_delay, plus a few Redis calls).
        self._tick_window = max(2 * settings.worker_heartbeat_seconds, 10 * worker.poll_delay_s)

    def request_stop(self) -> None:
        """Begin a graceful stop; asked again, running jobs are cancelled without waiting."""
        if self._stop.is_set():
            if not self._hurry.is_set():
                logger.warning("asked to stop again: cancelling running jobs now")
            self._hurry.set()
            return
        self._begin_stop()

    async def stop(self) -> None:
        """Stop gracefully and wait until everything is closed."""
        self._begin_stop()
        await self._done.wait()

    def _begin_stop(self) -> None:
        # From this moment no job is taken, even by a poll already under way.
        self.worker.allow_pick_jobs = False
        self._stop.set()

    def handle_signals(self) -> None:
        """SIGTERM and SIGINT stop gracefully; a second one cancels running jobs at once."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        logger.info("signal received", signal=sig.name)
        self.request_stop()

    async def run(self) -> None:
        """Run the worker until `stop()` or a signal (or, in burst mode, until the queue is
        empty); then drain and close. Never returns on an outage or a crash."""
        logger.info(
            "worker starting",
            worker_id=self.worker_id,
            queue=self.worker.queue_name,
            concurrency=self.worker.concurrency,
            charge_concurrency=self.worker.charge_concurrency,
        )
        monitor = asyncio.create_task(self._monitor(), name="worker-heartbeat")
        try:
            await self._supervise()
            await self._drain()
        finally:
            monitor.cancel()
            await settle([monitor])
            await self._close()
            self._done.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short by a stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _supervise(self) -> None:
        crashes = 0
        while not self._stop.is_set():
            started = time.monotonic()
            main = asyncio.create_task(self.worker.main(), name="arq-main")
            self.worker.main_task = main
            stop = asyncio.create_task(self._stop.wait())
            try:
                await asyncio.wait({main, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if not main.done() or self._stop.is_set():
                # The loop keeps polling (taking no new jobs) while running ones finish.
                return
            if main.cancelled():
                error: BaseException = RuntimeError("arq's poll loop was cancelled")
            else:
                found = main.exception()
                if found is None:
                    if self.worker.burst:
                        return
                    found = RuntimeError("arq's poll loop returned")
                error = found
            try:
                dependency = outage_of(error)
                if dependency is not None:
                    crashes = 0
                    await self._wait_out(dependency, error)
                else:
                    if time.monotonic() - started > STABLE_AFTER_SECONDS:
                        crashes = 0
                    delay = self.backoff.delay(crashes)
                    crashes += 1
                    logger.error(
                        "worker loop crashed; restarting", restart_in=delay, exc_info=error
                    )
                    await self._pause(delay)
                self._resume_crons()
            except Exception:
                logger.exception("worker supervision failed; trying again")
                await self._pause(self.backoff.cap)

    async def _wait_out(self, dependency: Dependency, error: BaseException) -> None:
        """Probe `dependency` with backoff until it answers (or a stop is requested)."""
        self.outages.begin(dependency, error)
        attempt = 0
        while not self._stop.is_set():
            await self._pause(self.backoff.delay(attempt))
            attempt += 1
            if self._stop.is_set():
                return
            if await self._probe(dependency) is None:
                self.outages.end(dependency)
                if self.worker.redis is not None:
                    await self.outages.flush(self.worker.redis)
                return

    async def _probe(self, dependency: Dependency) -> Exception | None:
        if dependency is Dependency.REDIS:
            try:
                # A Redis that hangs instead of refusing must not stall the probe.
                async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                    await self.worker.connect()
            except Exception as exc:
                return exc
            return None
        db = self.worker.ctx.get("db")
        if db is None or self.worker.redis is None:
            # Nothing to probe PostgreSQL with before the first start: let the loop try.
            return None
        return await probe(dependency, db=db, redis=self.worker.redis)

    def _resume_crons(self) -> None:
        # Ticks missed while the loop was down are not made up one by one (after an outage of
        # hours that would be thousands of runs): each cron job resumes at its next tick.
        for cron_job in self.worker.cron_jobs:
            cron_job.next_run = None

    async def _monitor(self) -> None:
        interval = self.settings.worker_heartbeat_seconds
        failures = 0
        while True:
            try:
                await self._beat()
            except Exception:
                logger.exception("worker heartbeat failed")
            if self.outages.active(Dependency.DATABASE):
                # PostgreSQL is probed here only: back off from its first failure, so the
                # outage's end (and its recorded length) is seen soon after it comes back.
                delay = min(interval, self.backoff.delay(failures))
                failures += 1
            else:
                failures = 0
                # Until the first heartbeat is written, look often: readiness waits for it.
                delay = interval if self._beaten else min(interval, 0.2)
            await asyncio.sleep(delay)

    async def _beat(self) -> None:
        """Write the heartbeat if the poll loop turns and PostgreSQL answers; note outages."""
        db = self.worker.ctx.get("db")
        pool = self.worker.redis
        if db is None or pool is None:
            return
        failure = await probe(Dependency.DATABASE, db=db, redis=pool)
        if failure is not None:
            self.outages.begin(Dependency.DATABASE, failure)
            return
        self.outages.end(Dependency.DATABASE)
        tick = self.worker.last_tick
        if tick is None or time.monotonic() - tick > self._tick_window:
            return
        try:
            await write_heartbeat(
                pool,
                self.worker_id,
                ttl=self.settings.worker_heartbeat_ttl_seconds,
                queue=self.worker.queue_name,
            )
        except Exception as exc:
            if outage_of(exc) is None:
                raise
            self.outages.begin(Dependency.REDIS, exc)
            return
        self._beaten = True
        self.outages.end(Dependency.REDIS)
        await self.outages.flush(pool)

    async def _drain(self) -> None:
        worker = self.worker
        worker.allow_pick_jobs = False
        grace = self.settings.worker_shutdown_grace_seconds
        running = [t for t in worker.tasks.values() if not t.done()]
        logger.info("worker stopping: no new jobs", running=len(running), grace_seconds=grace)
        deadline = time.monotonic() + grace
        hurry = asyncio.create_task(self._hurry.wait())
        try:
            while not self._hurry.is_set():
                # Read again each time: a job whose start was under way when the stop came
                # is among them too.
                running = [t for t in worker.tasks.values() if not t.done()]
                remaining = deadline - time.monotonic()
                if not running or remaining <= 0:
                    break
                await asyncio.wait(
                    [*running, hurry], timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            hurry.cancel()
        left = sum(not t.done() for t in worker.tasks.values())
        if left:
            logger.warning("cancelling running jobs; they will run again", jobs=left)

    async def _close(self) -> None:
        # An outage whose end no probe has seen yet (a burst run ends quickly) is closed now
        # if the dependency answers, so its length is recorded.
        for dependency in Dependency:
            if not self.outages.active(dependency):
                continue
            # Briefly: a stop must not wait long for a dependency that is still away.
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(self._probe(dependency), 1.0) is None:
                    self.outages.end(dependency)
        pool = self.worker.redis
        if pool is not None:
            with contextlib.suppress(Exception):
                await remove_heartbeat(pool, self.worker_id, queue=self.worker.queue_name)
            await self.outages.flush(pool)
        await self.worker.close()
        logger.info(
            "worker stopped",
            worker_id=self.worker_id,
            complete=self.worker.jobs_complete,
            failed=self.worker.jobs_failed,
            retried=self.worker.jobs_retried,
        )
