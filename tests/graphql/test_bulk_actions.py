"""cancelPaymentRecoveries and pauseMerchantsRecovery: dry runs, the job (run by an arq worker
on real Redis), one audit entry, per-payment transitions, idempotency, refusals, visibility."""

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from sqlalchemy import delete, func, update
from sqlmodel import col, select

from app.clock import FixedClock
from app.db import Database
from app.embedded import Services
from app.enums import MerchantStatus, PaymentState, Role
from app.models.bulk_action import BulkAction, BulkActionPayment
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.services import bulk_action
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from jobs.worker import FUNCTIONS, build_worker
from resolvers.ids import encode_id
from tests.support.audit import audit_entries
from tests.support.factories import make_key, make_merchant, make_payments
from tests.support.graphql import run
from tests.support.retry import outbox, reload, timeline


@dataclass
class Desk:
    db: Database
    settings: Settings
    clock: FixedClock
    services: Services
    queue: ArqRedis
    merchants: dict[str, Merchant]
    payments: dict[str, list[Payment]]
    tokens: dict[str, str]

    async def call(self, role: str, query: str, **variables: Any) -> dict[str, Any]:
        result = await run(
            self.db,
            self.settings,
            self.clock,
            query,
            token=self.tokens[role],
            variables=variables,
            redis=self.queue,
        )
        assert result.errors is None, result.errors
        assert result.data is not None
        return result.data

    async def queued(self) -> int:
        return int(await self.queue.zcard(self.queue.default_queue_name))

    async def work(self) -> None:
        """Run the queued jobs with the portal's own job functions, until the queue is empty."""
        worker = build_worker(
            self.services.redis_url,
            {"settings": self.settings, "db": self.db, "clock": self.clock},
            functions=[f for f in FUNCTIONS if f.name == "run_bulk_action"],
            cron_jobs=(),
            queue_name=self.queue.default_queue_name,
            burst=True,
            poll_delay=0.05,
        )
        try:
            await worker.main()
        finally:
            await worker.close()


@pytest.fixture
async def desk(
    db: Database, settings: Settings, clock: FixedClock, services: Services
) -> AsyncIterator[Desk]:
    now = clock.now()
    merchants = {n: await make_merchant(db, f"Bulk {n}", now=now) for n in "ABC"}
    payments = {n: await make_payments(db, m, 3, now=now) for n, m in merchants.items()}
    payments["A"] += await make_payments(db, merchants["A"], 2, now=now, state=PaymentState.PENDING)
    payments["A"] += await make_payments(
        db, merchants["A"], 1, now=now, state=PaymentState.RECOVERED
    )
    tokens = {
        "merchant": await make_key(db, Role.MERCHANT, [merchants["A"]], now=now),
        "partner": await make_key(db, Role.PARTNER, [merchants["A"], merchants["B"]], now=now),
        "support": await make_key(db, Role.SUPPORT, [], now=now, name="desk"),
    }
    # A queue of its own on the real Redis: only this test's worker takes these jobs.
    name = f"test:bulk:{uuid.uuid4().hex[:8]}"
    queue = await create_pool(RedisSettings.from_dsn(services.redis_url), default_queue_name=name)
    try:
        yield Desk(db, settings, clock, services, queue, merchants, payments, tokens)
    finally:
        keys = [k async for k in queue.scan_iter(match="arq:*bulk_action*")]
        await queue.delete(name, *keys)
        await queue.aclose()


CANCEL = """mutation($filter: PaymentFilter!, $merchantIds: [ID!], $reason: String!,
  $dryRun: Boolean! = false, $cid: String) {
  cancelPaymentRecoveries(filter: $filter, merchantIds: $merchantIds, reason: $reason,
      dryRun: $dryRun, clientMutationId: $cid) {
    count dryRun clientMutationId errors { code field message }
    bulkAction { id kind status expectedCount succeededCount skippedCount requestedBy
      clientMutationId reason startedAt finishedAt error } } }"""
PAUSE = """mutation($ids: [ID!]!, $reason: String!, $dryRun: Boolean! = false, $cid: String) {
  pauseMerchantsRecovery(merchantIds: $ids, reason: $reason, dryRun: $dryRun,
      clientMutationId: $cid) {
    count dryRun clientMutationId errors { code field }
    bulkAction { id kind status expectedCount succeededCount skippedCount } } }"""
NODE = """query($id: ID!) { node(id: $id) { __typename ... on BulkAction {
  status succeededCount skippedCount expectedCount error finishedAt } } }"""


def _mid(desk: Desk, *names: str) -> list[str]:
    return [encode_id("Merchant", desk.merchants[n].id) for n in names]


async def _states(desk: Desk, name: str) -> list[PaymentState]:
    return [(await reload(desk.db, p.id)).state for p in desk.payments[name]]


async def _actions(desk: Desk) -> int:
    async with desk.db.session(SYSTEM_SCOPE) as s:
        return int((await s.execute(select(func.count()).select_from(BulkAction))).scalar_one())


async def test_a_dry_run_counts_and_changes_nothing(desk: Desk) -> None:
    before = {n: await _states(desk, n) for n in "ABC"}
    data = await desk.call(
        "support",
        CANCEL,
        filter={"states": ["SCHEDULED"]},
        merchantIds=_mid(desk, "A"),
        reason="incident 42",
        dryRun=True,
        cid="dry-1",
    )
    assert data["cancelPaymentRecoveries"] == {
        "count": 3,
        "dryRun": True,
        "clientMutationId": "dry-1",
        "errors": [],
        "bulkAction": None,
    }
    # Every merchant: A's 5 open payments (the recovered one is not counted), B's and C's 3.
    data = await desk.call("support", CANCEL, filter={}, reason="incident 42", dryRun=True)
    assert data["cancelPaymentRecoveries"]["count"] == 11
    data = await desk.call(
        "support", PAUSE, ids=_mid(desk, "A", "B"), reason="incident", dryRun=True
    )
    assert data["pauseMerchantsRecovery"]["count"] == 2
    assert {n: await _states(desk, n) for n in "ABC"} == before
    assert await _actions(desk) == 0
    assert await desk.queued() == 0
    assert await audit_entries(desk.db, action_prefix="bulk.") == []


async def test_cancel_runs_as_one_job_through_the_state_machine(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk_action, "BATCH_SIZE", 2)
    # One of A's payments has a charge in flight: it is left alone, as the single cancel would.
    in_flight = desk.payments["A"][0]
    async with desk.db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            update(Payment)
            .where(col(Payment.id) == in_flight.id)
            .values(state=PaymentState.RETRYING, retrying_since=desk.clock.now())
        )
        await uow.commit()
    outbox_before = {p.id: await outbox(desk.db, p.id) for p in desk.payments["A"]}
    data = await desk.call(
        "support",
        CANCEL,
        filter={"declineCategories": ["INSUFFICIENT_FUNDS"]},
        merchantIds=_mid(desk, "A"),
        reason="merchant closed its billing",
        cid="cancel-A",
    )
    payload = data["cancelPaymentRecoveries"]
    assert payload["errors"] == []
    assert payload["count"] == 4
    action = payload["bulkAction"]
    assert action["kind"] == "CANCEL_PAYMENT_RECOVERIES"
    assert action["status"] == "QUEUED"
    assert action["requestedBy"] == "api_key:desk"
    assert action["clientMutationId"] == "cancel-A"
    assert await desk.queued() == 1
    # Nothing changed before the job runs.
    assert PaymentState.CANCELED not in await _states(desk, "A")

    await desk.work()

    data = await desk.call("support", NODE, id=action["id"])
    assert data["node"]["__typename"] == "BulkAction"
    assert data["node"]["status"] == "SUCCEEDED"
    assert data["node"]["succeededCount"] == 4
    assert data["node"]["skippedCount"] == 0
    assert data["node"]["finishedAt"] is not None
    states = await _states(desk, "A")
    assert states.count(PaymentState.CANCELED) == 4
    assert (await reload(desk.db, in_flight.id)).state is PaymentState.RETRYING
    assert (await reload(desk.db, desk.payments["A"][-1].id)).state is PaymentState.RECOVERED
    assert set(await _states(desk, "B")) == {PaymentState.SCHEDULED}
    # Each payment: the single cancel's transition (requested by the key) and outbox event.
    single = desk.payments["B"][0]
    data = await desk.call(
        "support",
        'mutation($id: ID!) { cancelPaymentRecovery(paymentId: $id, reason: "one") '
        "{ errors { code } } }",
        id=encode_id("Payment", single.id),
    )
    assert data["cancelPaymentRecovery"]["errors"] == []
    [single_transition] = (await timeline(desk.db, single.id))[-1:]
    [single_event] = (await outbox(desk.db, single.id))[-1:]
    for payment in desk.payments["A"][1:5]:
        [last] = (await timeline(desk.db, payment.id))[-1:]
        assert (last.event, last.to_state) == (single_transition.event, PaymentState.CANCELED)
        # Each in the words of its request.
        assert single_transition.reason == "recovery canceled: one"
        assert last.reason == "recovery canceled: merchant closed its billing"
        assert last.actor == "api_key:desk"
        assert outbox_before[payment.id] + [single_event] == await outbox(desk.db, payment.id)
    # One audit entry for the whole action, with the count; none per payment.
    [entry] = await audit_entries(desk.db, action_prefix="bulk.")
    assert entry.action == "bulk.cancel_payment_recoveries"
    assert entry.entity_type == "bulk_action"
    assert encode_id("BulkAction", uuid.UUID(entry.entity_id)) == action["id"]
    assert entry.merchant_id is None
    assert entry.after is not None
    assert entry.after["count"] == 4
    assert entry.after["status"] == "succeeded"
    assert entry.reason == "merchant closed its billing"
    assert entry.actor == "api_key:desk"
    assert len(await audit_entries(desk.db, action="payment.cancel_recovery")) == 1  # B's


async def test_the_job_reaches_no_further_than_the_submitted_count(desk: Desk) -> None:
    # At submission one of A's payments has a charge in flight: the count leaves it out.
    in_flight = desk.payments["A"][0]
    async with desk.db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            update(Payment)
            .where(col(Payment.id) == in_flight.id)
            .values(state=PaymentState.RETRYING, retrying_since=desk.clock.now())
        )
        await uow.commit()
    data = await desk.call(
        "support",
        CANCEL,
        filter={"declineCategories": ["INSUFFICIENT_FUNDS"]},
        merchantIds=_mid(desk, "A"),
        reason="merchant closed its billing",
    )
    action = data["cancelPaymentRecoveries"]["bulkAction"]
    assert data["cancelPaymentRecoveries"]["count"] == 4
    # Before the job runs, that charge is declined again and rescheduled, and a new failure
    # arrives: five payments match now, one of them new.
    async with desk.db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            update(Payment)
            .where(col(Payment.id) == in_flight.id)
            .values(state=PaymentState.SCHEDULED, retrying_since=None)
        )
        await uow.commit()
    desk.clock.set(desk.clock.now() + timedelta(minutes=5))
    [arrived] = await make_payments(desk.db, desk.merchants["A"], 1, now=desk.clock.now())

    await desk.work()

    data = await desk.call("support", NODE, id=action["id"])
    assert data["node"]["status"] == "SUCCEEDED"
    assert data["node"]["succeededCount"] == 4
    states = await _states(desk, "A")
    assert states.count(PaymentState.CANCELED) == 4
    # The four counted are canceled: the one in flight at submission is not, nor the new one.
    assert (await reload(desk.db, in_flight.id)).state is PaymentState.SCHEDULED
    assert (await reload(desk.db, arrived.id)).state is PaymentState.SCHEDULED


async def test_an_action_submitted_without_recorded_payments_keeps_the_creation_time_bound(
    desk: Desk,
) -> None:
    """An action submitted before cancels recorded their payments (its rows gone here) reaches
    the payments created by the time it was submitted, no more of them than it counted."""
    data = await desk.call(
        "support", CANCEL, filter={}, merchantIds=_mid(desk, "B"), reason="before 0035"
    )
    action = data["cancelPaymentRecoveries"]["bulkAction"]
    assert action["expectedCount"] == 3
    async with desk.db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(delete(BulkActionPayment))
        await uow.commit()
    desk.clock.set(desk.clock.now() + timedelta(minutes=5))
    [arrived] = await make_payments(desk.db, desk.merchants["B"], 1, now=desk.clock.now())

    await desk.work()

    node = (await desk.call("support", NODE, id=action["id"]))["node"]
    assert (node["status"], node["succeededCount"]) == ("SUCCEEDED", 3)
    assert set(await _states(desk, "B")) == {PaymentState.CANCELED}
    assert (await reload(desk.db, arrived.id)).state is PaymentState.SCHEDULED
    async with desk.db.session(SYSTEM_SCOPE) as s:
        left = await s.scalar(select(func.count()).select_from(BulkActionPayment))
    assert left == 0


async def test_the_recorded_payments_are_let_go_when_the_action_ends(desk: Desk) -> None:
    data = await desk.call("support", CANCEL, filter={}, merchantIds=_mid(desk, "C"), reason="r")
    assert data["cancelPaymentRecoveries"]["count"] == 3

    async def recorded() -> int:
        async with desk.db.session(SYSTEM_SCOPE) as s:
            found = await s.scalar(select(func.count()).select_from(BulkActionPayment))
        return int(found or 0)

    assert await recorded() == 3
    await desk.work()
    assert await recorded() == 0


async def test_resubmitting_the_same_client_mutation_id_does_nothing_twice(desk: Desk) -> None:
    variables: dict[str, Any] = {
        "filter": {"states": ["SCHEDULED"]},
        "merchantIds": _mid(desk, "B"),
        "reason": "duplicate charges at B",
        "cid": "b-once",
    }
    first = (await desk.call("support", CANCEL, **variables))["cancelPaymentRecoveries"]
    again = (await desk.call("support", CANCEL, **variables))["cancelPaymentRecoveries"]
    assert again["bulkAction"]["id"] == first["bulkAction"]["id"]
    assert await desk.queued() == 1  # the job id deduplicated the second enqueue
    await desk.work()
    done = (await desk.call("support", CANCEL, **variables))["cancelPaymentRecoveries"]
    assert done["bulkAction"]["id"] == first["bulkAction"]["id"]
    assert done["bulkAction"]["status"] == "SUCCEEDED"
    assert done["bulkAction"]["succeededCount"] == 3
    assert done["count"] == 3
    assert await desk.queued() == 0  # finished: nothing queued again
    await desk.work()
    assert await _actions(desk) == 1
    assert len(await audit_entries(desk.db, action_prefix="bulk.")) == 1
    # The same id for another request is refused; another id is another action.
    other = await desk.call("support", CANCEL, **{**variables, "reason": "something else"})
    assert other["cancelPaymentRecoveries"]["errors"] == [
        {
            "code": "INVALID",
            "field": "clientMutationId",
            "message": "this clientMutationId was used for a different request",
        }
    ]
    fresh = await desk.call("support", CANCEL, **{**variables, "cid": "b-twice"})
    assert fresh["cancelPaymentRecoveries"]["count"] == 0  # B's payments are canceled already
    assert await _actions(desk) == 2


async def test_pause_merchants_runs_as_one_job(desk: Desk) -> None:
    async with desk.db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            update(Merchant)
            .where(col(Merchant.id) == desk.merchants["C"].id)
            .values(status=MerchantStatus.PAUSED)
        )
        await uow.commit()
    data = await desk.call(
        "support", PAUSE, ids=_mid(desk, "A", "B", "C"), reason="processor outage", cid="p-1"
    )
    payload = data["pauseMerchantsRecovery"]
    assert payload["count"] == 2
    assert payload["bulkAction"]["status"] == "QUEUED"
    await desk.work()
    data = await desk.call("support", NODE, id=payload["bulkAction"]["id"])
    assert data["node"]["status"] == "SUCCEEDED"
    assert (data["node"]["succeededCount"], data["node"]["skippedCount"]) == (2, 1)
    async with desk.db.session(SYSTEM_SCOPE) as s:
        statuses = (await s.execute(select(col(Merchant.status)))).scalars().all()
    assert set(statuses) == {MerchantStatus.PAUSED}
    [entry] = await audit_entries(desk.db, action_prefix="bulk.")
    assert entry.action == "bulk.pause_merchants_recovery"
    assert entry.after is not None
    assert entry.after["count"] == 2
    # Each merchant paused has its own entry, as a single pause writes it, with the reason.
    paused = await audit_entries(desk.db, action="merchant.pause")
    assert {e.merchant_id for e in paused} == {desk.merchants["A"].id, desk.merchants["B"].id}
    assert {e.reason for e in paused} == {"processor outage"}


@pytest.mark.parametrize("role", ["merchant", "partner"])
async def test_other_keys_get_a_typed_permission_error(desk: Desk, role: str) -> None:
    data = await desk.call(
        role, CANCEL, filter={}, merchantIds=_mid(desk, "A"), reason="r", dryRun=True
    )
    assert data["cancelPaymentRecoveries"]["count"] is None
    [error] = data["cancelPaymentRecoveries"]["errors"]
    assert error["code"] == "FORBIDDEN"
    data = await desk.call(role, PAUSE, ids=_mid(desk, "A"), reason="r")
    assert [e["code"] for e in data["pauseMerchantsRecovery"]["errors"]] == ["FORBIDDEN"]
    assert await _actions(desk) == 0
    assert await desk.queued() == 0


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"merchantIds": ["not-an-id"]}, ("NOT_FOUND", "merchantIds")),
        ({"merchantIds": [encode_id("Merchant", uuid.uuid4())]}, ("NOT_FOUND", "merchantIds")),
        ({"merchantIds": []}, ("INVALID", "merchantIds")),
        ({"filter": {"amountMin": 5}}, ("INVALID", "filter.amountMin")),
        ({"filter": {"failedAfter": "2026-11-01T00:00:00"}}, ("INVALID", "filter.failedAfter")),
        ({"reason": "  "}, ("INVALID", "reason")),
        ({"cid": ""}, ("INVALID", "clientMutationId")),
    ],
)
async def test_bad_requests_are_refused_with_the_field(
    desk: Desk, variables: dict[str, Any], expected: tuple[str, str]
) -> None:
    data = await desk.call("support", CANCEL, **{"filter": {}, "reason": "bulk test", **variables})
    errors = data["cancelPaymentRecoveries"]["errors"]
    assert [(e["code"], e["field"]) for e in errors] == [expected]
    assert await _actions(desk) == 0


async def test_only_support_sees_a_bulk_action(desk: Desk) -> None:
    data = await desk.call("support", PAUSE, ids=_mid(desk, "A"), reason="visibility")
    global_id = data["pauseMerchantsRecovery"]["bulkAction"]["id"]
    for role in ("merchant", "partner"):
        assert (await desk.call(role, NODE, id=global_id))["node"] is None
    assert (await desk.call("support", NODE, id=global_id))["node"]["status"] == "QUEUED"


async def test_a_job_run_again_after_the_action_ended_does_nothing(desk: Desk) -> None:
    data = await desk.call("support", CANCEL, filter={}, merchantIds=_mid(desk, "C"), reason="r")
    global_id = data["cancelPaymentRecoveries"]["bulkAction"]["id"]
    await desk.work()
    assert await bulk_action.run(desk.db, uuid.UUID(int=0), clock=desk.clock) is None
    async with desk.db.session(SYSTEM_SCOPE) as s:
        [row] = (await s.execute(select(BulkAction))).scalars().all()
    assert encode_id("BulkAction", row.id) == global_id
    assert await bulk_action.run(desk.db, row.id, clock=desk.clock) is None
    assert len(await audit_entries(desk.db, action_prefix="bulk.")) == 1


async def test_a_long_action_goes_on_over_several_runs(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run past its time budget queues itself again and the next one resumes: each run does
    at least one batch, the counts add up, and the audit entry is written once, at the end."""
    from jobs import bulk as bulk_job

    monkeypatch.setattr(bulk_job, "BUDGET_SECONDS", 0.0)
    monkeypatch.setattr(bulk_action, "BATCH_SIZE", 2)
    data = await desk.call("support", CANCEL, filter={}, merchantIds=_mid(desk, "A"), reason="r")
    global_id = data["cancelPaymentRecoveries"]["bulkAction"]["id"]
    await desk.work()
    node = (await desk.call("support", NODE, id=global_id))["node"]
    assert (node["status"], node["succeededCount"], node["skippedCount"]) == ("SUCCEEDED", 5, 0)
    assert len(await audit_entries(desk.db, action_prefix="bulk.")) == 1


async def test_a_failing_action_ends_failed_with_what_it_did(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("state machine bug")

    monkeypatch.setattr(bulk_action, "run_event", broken)
    data = await desk.call("support", CANCEL, filter={}, merchantIds=_mid(desk, "B"), reason="r")
    global_id = data["cancelPaymentRecoveries"]["bulkAction"]["id"]
    await desk.work()
    node = (await desk.call("support", NODE, id=global_id))["node"]
    assert node["status"] == "FAILED"
    assert node["error"] == "failed: RuntimeError"
    assert node["succeededCount"] == 0
    assert set(await _states(desk, "B")) == {PaymentState.SCHEDULED}
    [entry] = await audit_entries(desk.db, action_prefix="bulk.")
    assert entry.after is not None
    assert (entry.after["status"], entry.after["count"]) == ("failed", 0)
