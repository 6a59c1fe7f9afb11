"""Support's merchant administration: createMerchant, pause and resume recovery."""

import uuid

import pytest
from sqlmodel import select

from app.clock import FixedClock
from app.db import Database
from app.enums import MerchantStatus, Role
from app.models.merchant import Merchant
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from resolvers.ids import encode_id
from tests.support.audit import audit_entries
from tests.support.factories import make_key, make_merchant
from tests.support.graphql import codes, run, run_data

CREATE = """mutation($name: String!) { createMerchant(input: {name: $name}) {
  merchant { id name status retryPolicy { version } } errors { code message field } } }"""

PAUSE = """mutation($id: ID!, $reason: String!) { pauseMerchantRecovery(merchantId: $id,
  reason: $reason) { merchant { id status } errors { code message field } } }"""

RESUME = """mutation($id: ID!, $reason: String!) { resumeMerchantRecovery(merchantId: $id,
  reason: $reason) { merchant { id status } errors { code message field } } }"""


async def _merchants(db: Database) -> list[Merchant]:
    async with db.session(SYSTEM_SCOPE) as s:
        return list((await s.execute(select(Merchant))).scalars())


async def test_support_creates_a_merchant_with_a_policy_and_an_audit_entry(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    support = await make_key(db, Role.SUPPORT, [], now=clock.now(), name="ops")
    data = await run_data(db, settings, clock, CREATE, support, name="  Globex  ")
    payload = data["createMerchant"]
    assert payload["errors"] == []
    created = payload["merchant"]
    assert created["name"] == "Globex"
    assert created["status"] == "ACTIVE"
    assert created["retryPolicy"] == {"version": 1}
    [row] = await _merchants(db)
    assert encode_id("Merchant", row.id) == created["id"]
    [entry] = await audit_entries(db, merchant_id=row.id)
    assert (entry.action, entry.actor, entry.before) == ("merchant.create", "api_key:ops", None)
    assert entry.after is not None
    assert entry.after["name"] == "Globex"


@pytest.mark.parametrize("name", ["", "   ", "n" * 201])
async def test_invalid_names_are_refused(
    db: Database, settings: Settings, clock: FixedClock, name: str
) -> None:
    support = await make_key(db, Role.SUPPORT, [], now=clock.now())
    data = await run_data(db, settings, clock, CREATE, support, name=name)
    assert data["createMerchant"]["merchant"] is None
    assert [(e["code"], e["field"]) for e in data["createMerchant"]["errors"]] == [
        ("INVALID", "name")
    ]
    assert await _merchants(db) == []


async def test_merchant_keys_do_not_create_merchants(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    """Support creates merchants, and a partner onboards one (tests/graphql/test_manage.py);
    a merchant key may not."""
    merchant = await make_merchant(db, "Existing", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    result = await run(db, settings, clock, CREATE, token=token, variables={"name": "New"})
    assert codes(result) == ["FORBIDDEN"]
    assert [m.name for m in await _merchants(db)] == ["Existing"]


async def test_pause_and_resume_recovery_are_audited_and_idempotent(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Pausable", now=clock.now())
    support = await make_key(db, Role.SUPPORT, [], now=clock.now(), name="ops")
    global_id = encode_id("Merchant", merchant.id)
    for query, field, status, reason in (
        (PAUSE, "pauseMerchantRecovery", "PAUSED", "chargeback spike"),
        (PAUSE, "pauseMerchantRecovery", "PAUSED", "still"),
        (RESUME, "resumeMerchantRecovery", "ACTIVE", "resolved"),
        (RESUME, "resumeMerchantRecovery", "ACTIVE", "still"),
    ):
        data = await run_data(db, settings, clock, query, support, id=global_id, reason=reason)
        assert data[field] == {"merchant": {"id": global_id, "status": status}, "errors": []}
    [row] = await _merchants(db)
    assert row.status is MerchantStatus.ACTIVE
    entries = [
        e for e in await audit_entries(db, merchant_id=merchant.id) if e.action != "merchant.create"
    ]
    assert [(e.action, e.before, e.after, e.reason, e.actor) for e in entries] == [
        (
            "merchant.pause",
            {"status": "active"},
            {"status": "paused"},
            "chargeback spike",
            "api_key:ops",
        ),
        ("merchant.resume", {"status": "paused"}, {"status": "active"}, "resolved", "api_key:ops"),
    ]


async def test_pause_refusals(db: Database, settings: Settings, clock: FixedClock) -> None:
    merchant = await make_merchant(db, "Guarded", now=clock.now())
    support = await make_key(db, Role.SUPPORT, [], now=clock.now())
    own = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    global_id = encode_id("Merchant", merchant.id)
    data = await run_data(db, settings, clock, PAUSE, support, id=global_id, reason=" ")
    assert [(e["code"], e["field"]) for e in data["pauseMerchantRecovery"]["errors"]] == [
        ("INVALID", "reason")
    ]
    for bad in ("junk", encode_id("Payment", merchant.id), encode_id("Merchant", uuid.uuid4())):
        data = await run_data(db, settings, clock, PAUSE, support, id=bad, reason="r")
        assert [(e["code"], e["field"]) for e in data["pauseMerchantRecovery"]["errors"]] == [
            ("NOT_FOUND", "merchantId")
        ]
    # A merchant may not pause its own recovery: that is support's call.
    result = await run(
        db, settings, clock, PAUSE, token=own, variables={"id": global_id, "reason": "r"}
    )
    assert codes(result) == ["FORBIDDEN"]
    [row] = await _merchants(db)
    assert row.status is MerchantStatus.ACTIVE
    assert [e.action for e in await audit_entries(db, merchant_id=merchant.id)] == [
        "merchant.create"
    ]
