"""Merchant.auditLog: every change with actor, before/after and reason, newest first, by page."""

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import select

from app.clock import FixedClock
from app.db import Database
from app.enums import Role
from app.models.audit import AuditLog
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, Scope, system_principal
from resolvers.ids import encode_id
from tests.support.factories import make_key, make_merchant
from tests.support.graphql import codes, run, run_counted

LOG = """query($id: ID!, $first: Int, $after: String) { merchant(id: $id) {
  auditLog(first: $first, after: $after) {
    edges { cursor node { id actor action entityType entityId before after reason createdAt } }
    pageInfo { hasNextPage endCursor } } } }"""

UPDATE = """mutation($input: UpdateRetryPolicyInput!) { updateRetryPolicy(input: $input) {
  errors { code } } }"""


async def _log(
    db: Database, settings: Settings, clock: FixedClock, token: str, **variables: Any
) -> dict[str, Any]:
    result = await run(db, settings, clock, LOG, token=token, variables=variables)
    assert result.errors is None, result.errors
    assert result.data is not None
    log: dict[str, Any] = result.data["merchant"]["auditLog"]
    return log


async def test_changes_are_listed_newest_first_with_before_after_and_reason(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Audited", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now(), name="dashboard")
    merchant_id = encode_id("Merchant", merchant.id)
    for version in (1, 2):
        clock.set(clock.now() + timedelta(minutes=5))
        result = await run(
            db,
            settings,
            clock,
            UPDATE,
            token=token,
            variables={
                "input": {
                    "merchantId": merchant_id,
                    "expectedVersion": version,
                    "reason": f"change {version}",
                    "maxAttempts": 4 + version,
                }
            },
        )
        assert result.data == {"updateRetryPolicy": {"errors": []}}
    log = await _log(db, settings, clock, token, id=merchant_id)
    nodes = [e["node"] for e in log["edges"]]
    assert [n["action"] for n in nodes] == [
        "retry_policy.update",
        "retry_policy.update",
        "merchant.create",
    ]
    newest = nodes[0]
    assert newest["actor"] == "api_key:dashboard"
    assert newest["reason"] == "change 2"
    assert newest["entityType"] == "retry_policy"
    assert newest["before"]["max_attempts"] == 5
    assert newest["after"]["max_attempts"] == 6
    assert newest["createdAt"] > nodes[1]["createdAt"] > nodes[2]["createdAt"]
    assert nodes[2]["before"] is None
    assert nodes[2]["actor"] == "system"
    assert log["pageInfo"]["hasNextPage"] is False


async def test_pages_follow_the_keyset_even_within_one_instant(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Busy", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    # Five entries at the creation instant, five later: ties are broken by id.
    async with db.uow(SYSTEM_SCOPE) as uow:
        for i in range(9):
            uow.session.add(
                AuditLog(
                    merchant_id=merchant.id,
                    actor=system_principal().actor_label,
                    action=f"test.{i}",
                    entity_type="test",
                    entity_id=str(i),
                    created_at=clock.now() + timedelta(minutes=1 if i >= 4 else 0),
                )
            )
        await uow.commit()
    async with db.session(SYSTEM_SCOPE) as s:
        rows = (await s.execute(select(AuditLog))).scalars().all()
    expected = [str(r.id) for r in sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)]
    seen: list[str] = []
    after = None
    while True:
        log = await _log(
            db, settings, clock, token, id=encode_id("Merchant", merchant.id), first=3, after=after
        )
        seen += [e["node"]["id"] for e in log["edges"]]
        if not log["pageInfo"]["hasNextPage"]:
            break
        after = log["pageInfo"]["endCursor"]
    assert seen == expected
    assert len(seen) == 10


async def test_page_arguments_are_checked(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Args", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    merchant_id = encode_id("Merchant", merchant.id)
    for variables, code in (
        ({"first": 0}, "INVALID_ARGUMENT"),
        ({"first": 101}, "INVALID_ARGUMENT"),
        ({"after": "junk"}, "INVALID_CURSOR"),
    ):
        result = await run(
            db, settings, clock, LOG, token=token, variables={"id": merchant_id, **variables}
        )
        assert codes(result) == [code]


async def test_entries_without_a_merchant_are_invisible_to_scoped_sessions(
    db: Database, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Scoped", now=clock.now())
    async with db.uow(SYSTEM_SCOPE) as uow:
        uow.session.add(
            AuditLog(
                merchant_id=None,
                actor="system",
                action="api_key.create",
                entity_type="api_key",
                entity_id="k",
                created_at=clock.now(),
            )
        )
        await uow.commit()
    async with db.session(SYSTEM_SCOPE) as s:
        every = (await s.execute(select(AuditLog))).scalars().all()
    assert {e.merchant_id for e in every} == {None, merchant.id}
    async with db.session(Scope(merchant_ids=frozenset({merchant.id}))) as s:
        scoped = (await s.execute(select(AuditLog))).scalars().all()
    assert [e.merchant_id for e in scoped] == [merchant.id]


async def test_audit_log_statement_count_is_constant(
    connection: AsyncConnection, db: Database, settings: Settings, clock: FixedClock
) -> None:
    """The audit pages of 1 merchant or of 20 merchants cost one query together."""
    query = """{ merchants(first: 100) { edges { node {
      auditLog(first: 50) { edges { node { action before after } } } } } } }"""
    counts: dict[int, int] = {}
    for size in (1, 20):
        merchants = [await make_merchant(db, f"M{i}", now=clock.now()) for i in range(size)]
        token = await make_key(db, Role.PARTNER, merchants, now=clock.now())
        await run(db, settings, clock, "{ viewer { role } }", token=token)
        data, statements = await run_counted(connection, db, settings, clock, query, token=token)
        edges = data["merchants"]["edges"]
        assert len(edges) == size
        assert all(len(e["node"]["auditLog"]["edges"]) == 1 for e in edges)
        counts[size] = len(statements)
    # key lookup + grants + merchants page + one windowed query for every audit page
    assert counts[1] == counts[20] == 4


async def test_one_query_pages_each_merchant_separately(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    quiet = await make_merchant(db, "Quiet", now=clock.now())
    busy = await make_merchant(db, "Busy", now=clock.now())
    async with db.uow(SYSTEM_SCOPE) as uow:
        for i in range(4):
            uow.session.add(
                AuditLog(
                    merchant_id=busy.id,
                    actor="system",
                    action=f"test.{i}",
                    entity_type="test",
                    entity_id=str(i),
                    created_at=clock.now() + timedelta(minutes=i + 1),
                )
            )
        await uow.commit()
    token = await make_key(db, Role.PARTNER, [quiet, busy], now=clock.now())
    query = """{ merchants(first: 10) { edges { node { name auditLog(first: 2) {
      edges { node { action } } pageInfo { hasNextPage } } } } } }"""
    result = await run(db, settings, clock, query, token=token)
    assert result.errors is None
    assert result.data is not None
    pages = {e["node"]["name"]: e["node"]["auditLog"] for e in result.data["merchants"]["edges"]}
    assert [e["node"]["action"] for e in pages["Busy"]["edges"]] == ["test.3", "test.2"]
    assert pages["Busy"]["pageInfo"]["hasNextPage"] is True
    assert [e["node"]["action"] for e in pages["Quiet"]["edges"]] == ["merchant.create"]
    assert pages["Quiet"]["pageInfo"]["hasNextPage"] is False
