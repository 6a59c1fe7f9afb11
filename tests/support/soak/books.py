"""The soak's books and invariants: the sandbox's charges against the portal's records.

The drain stops the simulated world and new retries, then waits (bounded) until ingestion has
caught up and nothing is in flight, so both sides' books can be compared exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from app.db import Database
from app.enums import MerchantStatus, Processor
from app.services.merchant import set_recovery_status
from app.settings import normalize_database_url
from app.tenancy import SYSTEM_SCOPE, system_principal
from tests.support.soak.load import set_sandbox_clock
from tests.support.soak.report import (
    RESUME_BOUND_SECONDS,
    Invariant,
    SoakReport,
    Tenants,
    seconds_text,
)
from tests.support.stack import Stack


@dataclass
class Ledgers:
    """What the sandbox did and what the portal recorded, read at one moment."""

    failed_ids: dict[uuid.UUID, list[str]]
    counts: dict[str, dict[str, int]]
    retries: list[dict[str, Any]]
    keys: list[dict[str, Any]]
    keyless: int
    portal_ids: dict[uuid.UUID, set[str]]
    portal_attempts: list[str]
    retrying: int
    states: dict[str, int]
    # The portal's attempts written before their charge whose outcome is still unknown.
    in_flight: int

    def missing(self) -> list[str]:
        """Failed charges of the sandbox that the portal has not ingested."""
        return [
            charge
            for merchant, ids in self.failed_ids.items()
            for charge in ids
            if charge not in self.portal_ids.get(merchant, set())
        ]

    def settled(self) -> bool:
        """Ingestion caught up, nothing in flight, and every charge recorded once."""
        return (
            not self.missing()
            and self.retrying == 0
            and self.in_flight == 0
            and sorted(r["id"] for r in self.retries) == sorted(self.portal_attempts)
        )


async def read_ledgers(stack: Stack, tenants: Tenants) -> Ledgers:
    """Both sides' books: the sandbox's admin API and the portal's database."""
    failed: dict[uuid.UUID, list[str]] = {}
    counts: dict[str, dict[str, int]] = {}
    retries: list[dict[str, Any]] = []
    keys: list[dict[str, Any]] = []
    keyless = 0
    async with httpx.AsyncClient(base_url=stack.sandbox_url, timeout=60, trust_env=False) as admin:
        for t in tenants.merchants:
            base = f"/_sandbox/accounts/{t.account_id}"
            history = (await admin.get(f"{base}/history")).json()
            failed[t.merchant_id] = history["failed"]
            for kind, by_status in history["counts"].items():
                into = counts.setdefault(kind, {})
                for status, n in by_status.items():
                    into[status] = into.get(status, 0) + n
            retries += (await admin.get(f"{base}/charges")).json()["data"]
            ledger = (await admin.get(f"{base}/idempotency")).json()
            keys += ledger["keys"]
            keyless += ledger["keyless"]
    conn = await asyncpg.connect(stack.postgres.url, timeout=10)
    try:
        portal_ids: dict[uuid.UUID, set[str]] = {}
        rows = await conn.fetch(
            """SELECT merchant_id, processor_payment_id AS id FROM payment
               UNION ALL
               SELECT merchant_id, processor_attempt_id FROM payment_attempt
               WHERE processor_attempt_id IS NOT NULL"""
        )
        for row in rows:
            portal_ids.setdefault(row["merchant_id"], set()).add(row["id"])
        attempts = [
            r["processor_attempt_id"]
            for r in await conn.fetch(
                "SELECT processor_attempt_id FROM payment_attempt "
                "WHERE actor = 'portal' AND processor_attempt_id IS NOT NULL"
            )
        ]
        states = {
            str(r["state"]): int(r["n"])
            for r in await conn.fetch("SELECT state, count(*) AS n FROM payment GROUP BY state")
        }
        in_flight = await conn.fetchval(
            "SELECT count(*) FROM payment_attempt WHERE outcome = 'in_flight'"
        )
    finally:
        await conn.close()
    return Ledgers(
        failed,
        counts,
        retries,
        keys,
        keyless,
        portal_ids,
        attempts,
        states.get("RETRYING", 0),
        states,
        int(in_flight),
    )


async def set_recovery(stack: Stack, tenants: Tenants, status: MerchantStatus, why: str) -> None:
    """Pause or resume every merchant's recovery, as support does: one merchant at a time,
    each in a transaction of its own."""
    db = Database.from_url(normalize_database_url(stack.postgres.url))
    try:
        for t in tenants.merchants:
            async with db.uow(SYSTEM_SCOPE) as uow:
                await set_recovery_status(
                    uow,
                    principal=system_principal("harness"),
                    merchant_id=t.merchant_id,
                    status=status,
                    reason=why,
                    now=stack.time.now(),
                )
                await uow.commit()
    finally:
        await db.dispose()


async def drain(stack: Stack, tenants: Tenants, seconds: float) -> tuple[Ledgers, float | None]:
    """Stop the world's clock and the portal's new retries, then wait (bounded) until ingestion
    has caught up and every attempt in flight has finished. Returns the books and how long it
    took (None when it did not settle in time)."""
    await set_sandbox_clock(stack, frozen=True)
    await set_recovery(
        stack,
        tenants,
        MerchantStatus.PAUSED,
        "soak drain: no new retries while the books are compared",
    )
    start = time.monotonic()
    pushed = 0.0
    ledgers = await read_ledgers(stack, tenants)
    while time.monotonic() - start < seconds:
        if ledgers.settled():
            # Twice in a row, so an attempt between two reads cannot fool the comparison.
            await asyncio.sleep(2)
            again = await read_ledgers(stack, tenants)
            if again.settled():
                return again, time.monotonic() - start
            ledgers = again
            continue
        if ledgers.missing() and time.monotonic() - pushed > 5:
            # Adyen re-sends refused batches with backoff up to 30 s: push what is due now.
            pushed = time.monotonic()
            async with httpx.AsyncClient(
                base_url=stack.sandbox_url, timeout=60, trust_env=False
            ) as admin:
                for t in tenants.merchants:
                    if t.processor is Processor.ADYEN:
                        await admin.post(f"/_sandbox/accounts/{t.account_id}/push")
        await asyncio.sleep(2)
        ledgers = await read_ledgers(stack, tenants)
    return ledgers, None


def unrecorded(ledgers: Ledgers) -> list[str]:
    """Charges the sandbox made that the portal holds no portal attempt for."""
    made = Counter(r["id"] for r in ledgers.retries)
    return sorted((made - Counter(ledgers.portal_attempts)).elements())


async def explain_unrecorded(stack: Stack, ledgers: Ledgers, limit: int = 3) -> list[str]:
    """What the portal holds about charges it made but did not record as its attempts: rows
    naming the charge or its key, the payment, and the payment's last transitions."""
    by_id = {r["id"]: r for r in ledgers.retries}
    lines: list[str] = []
    conn = await asyncpg.connect(stack.postgres.url, timeout=10)
    try:
        for charge in unrecorded(ledgers)[:limit]:
            made = by_id[charge]
            key = made["idempotency_key"] or ""
            lines.append(
                f"charge {charge} ({made['outcome']}, key {key}, created {made['created']}, "
                f"retry of {made['retry_of']})"
            )
            rows = await conn.fetch(
                "SELECT payment_id, number, portal_number, actor, outcome, processor_attempt_id,"
                " idempotency_key, sent_at FROM payment_attempt"
                " WHERE processor_attempt_id = $1 OR idempotency_key = $2",
                charge,
                key,
            )
            for r in rows:
                lines.append(f"  attempt row: {dict(r)}")
            # Keys are "retry-<payment id>-<attempt number>".
            with contextlib.suppress(ValueError, IndexError):
                payment_id = uuid.UUID(key.split("-", 1)[1].rsplit("-", 1)[0])
                payment = await conn.fetchrow(
                    "SELECT state, recovered_by, attempt_count FROM payment WHERE id = $1",
                    payment_id,
                )
                lines.append(f"  payment {payment_id}: {dict(payment) if payment else None}")
                for t in await conn.fetch(
                    "SELECT at, from_state, to_state, event, actor, reason FROM payment_transition"
                    " WHERE payment_id = $1 ORDER BY at DESC, seq DESC LIMIT 6",
                    payment_id,
                ):
                    lines.append(f"  transition: {dict(t)}")
    finally:
        await conn.close()
    return lines


async def explain_in_flight(stack: Stack, limit: int = 3) -> list[str]:
    """What the portal holds about its attempts still in flight: the attempt, its payment, the
    payment's other attempts and its last transitions."""
    lines: list[str] = []
    conn = await asyncpg.connect(stack.postgres.url, timeout=10)
    try:
        flying = await conn.fetch(
            "SELECT payment_id, portal_number, attempted_at, sent_at, idempotency_key"
            " FROM payment_attempt WHERE outcome = 'in_flight' ORDER BY attempted_at LIMIT $1",
            limit,
        )
        for attempt in flying:
            payment_id = attempt["payment_id"]
            lines.append(f"attempt in flight: {dict(attempt)}")
            payment = await conn.fetchrow(
                "SELECT state, recovered_by, attempt_count FROM payment WHERE id = $1", payment_id
            )
            lines.append(f"  payment: {dict(payment) if payment else None}")
            for other in await conn.fetch(
                "SELECT number, portal_number, actor, outcome, processor_attempt_id, sent_at"
                " FROM payment_attempt WHERE payment_id = $1 ORDER BY number",
                payment_id,
            ):
                lines.append(f"  attempt row: {dict(other)}")
            for t in await conn.fetch(
                "SELECT at, from_state, to_state, event, actor, reason FROM payment_transition"
                " WHERE payment_id = $1 ORDER BY at DESC, seq DESC LIMIT 4",
                payment_id,
            ):
                lines.append(f"  transition: {dict(t)}")
    finally:
        await conn.close()
    return lines


def successes_per_original(retries: list[dict[str, Any]]) -> Counter[str]:
    """Successful retries per original charge (a retry may name an earlier retry)."""
    parent = {r["id"]: r["retry_of"] for r in retries}
    wins: Counter[str] = Counter()
    for r in retries:
        if r["outcome"] != "succeeded":
            continue
        root = r["retry_of"]
        for _ in range(len(parent) + 1):
            if root not in parent:
                break
            root = parent[root]
        wins[root] += 1
    return wins


def book_invariants(ledgers: Ledgers) -> list[Invariant]:
    """The invariants of the books alone: no double charge, the sandbox's charges equal the
    portal's attempts, every failed charge generated was ingested."""
    out: list[Invariant] = []
    doubled = [k for k in ledgers.keys if k["charges"] > 1]
    twice_paid = {root: n for root, n in successes_per_original(ledgers.retries).items() if n > 1}
    out.append(
        Invariant(
            "no double charge",
            not doubled and not twice_paid and ledgers.keyless == 0,
            f"{len(ledgers.keys)} keys, {len(doubled)} charged more than once "
            f"{[k['key'] for k in doubled[:5]]}; {ledgers.keyless} charges without a key; "
            f"{len(twice_paid)} original charges paid by more than one retry "
            f"{list(twice_paid)[:5]}",
        )
    )
    sandbox = Counter(r["id"] for r in ledgers.retries)
    portal = Counter(ledgers.portal_attempts)
    only_sandbox = unrecorded(ledgers)
    only_portal = sorted((portal - sandbox).elements())
    out.append(
        Invariant(
            "sandbox charges == portal attempts",
            not only_sandbox and not only_portal,
            f"sandbox {sum(sandbox.values())}, portal {sum(portal.values())}; charged but not "
            f"recorded {len(only_sandbox)} {only_sandbox[:5]}; recorded but not charged "
            f"{len(only_portal)} {only_portal[:5]}",
        )
    )
    missing = ledgers.missing()
    generated = sum(len(v) for v in ledgers.failed_ids.values())
    out.append(
        Invariant(
            "generated == ingested (after drain)",
            not missing,
            f"{generated} failed charges generated, {generated - len(missing)} ingested; "
            f"missing {missing[:5]}",
        )
    )
    return out


def check(report: SoakReport, ledgers: Ledgers) -> list[Invariant]:
    """The invariants, each with the figures behind its verdict."""
    out = book_invariants(ledgers)
    outside = report.errors(inside=False)
    out.append(
        Invariant(
            "no API error outside fault windows",
            not outside,
            ", ".join(f"{k}: {v}" for k, v in outside.most_common()) or "none",
        )
    )
    inside = [s for s in report.samples if not s.ok and report.inside(s)]
    wrong = Counter(s.label for s in inside if not report.outage_answer(s))
    out.append(
        Invariant(
            "inside fault windows only 503 SERVICE_UNAVAILABLE (Retry-After) or no connection",
            not wrong,
            ", ".join(f"{k}: {v}" for k, v in wrong.most_common())
            or f"all {len(inside)} errors were outage answers",
        )
    )
    out.append(
        Invariant(
            "no process exited on its own",
            not report.exits,
            "; ".join(f"{e.name} exited {e.code} ({e.cause})" for e in report.exits) or "none",
        )
    )
    slow = [
        f"{r.fault.kind}/{r.fault.target}: {seconds_text(r.processing)}"
        for r in report.resumes
        if r.processing is None or r.processing > RESUME_BOUND_SECONDS
    ]
    injected = [f for f in report.faults if f.target != "harness"]
    broken = [f"{f.kind}: {f.detail}" for f in report.faults if f.target == "harness"]
    out.append(
        Invariant(
            f"processing resumed within {RESUME_BOUND_SECONDS:.0f} s after every fault",
            not slow and not broken,
            f"{len(injected)} faults injected; "
            + ("; ".join(slow + broken) if slow or broken else "all resumed"),
        )
    )
    out.append(
        Invariant(
            "drained: nothing in flight, books settled",
            report.drain_seconds is not None,
            f"{seconds_text(report.drain_seconds)}; payments RETRYING: {ledgers.retrying}, "
            f"portal attempts still in flight: {ledgers.in_flight}",
        )
    )
    return out
