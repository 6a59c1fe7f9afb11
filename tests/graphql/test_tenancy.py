"""Tenancy matrix: every root field, for merchant, partner and support keys (and none)."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from app.clock import FixedClock
from app.db import Database
from app.enums import Role
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.settings import Settings
from app.tenancy import Scope
from resolvers.ids import encode_id
from tests.support.factories import make_key, make_merchant, make_payments
from tests.support.graphql import codes, run, schema_for


@dataclass
class World:
    db: Database
    settings: Settings
    clock: FixedClock
    merchants: dict[str, Merchant]
    payments: dict[str, Payment]
    tokens: dict[str, str]
    visible: dict[str, set[str]]


@pytest.fixture
async def world(db: Database, settings: Settings, clock: FixedClock) -> World:
    now = clock.now()
    merchants = {n: await make_merchant(db, f"Tenant {n}", now=now) for n in "ABC"}
    payments = {n: (await make_payments(db, m, 1, now=now))[0] for n, m in merchants.items()}
    tokens = {
        "merchant": await make_key(db, Role.MERCHANT, [merchants["A"]], now=now),
        "partner": await make_key(db, Role.PARTNER, [merchants["A"], merchants["B"]], now=now),
        "support": await make_key(db, Role.SUPPORT, [], now=now),
    }
    visible = {"merchant": {"A"}, "partner": {"A", "B"}, "support": {"A", "B", "C"}}
    return World(db, settings, clock, merchants, payments, tokens, visible)


ROLES = ("merchant", "partner", "support")


async def _query(w: World, role: str | None, query: str, **variables: object) -> dict[str, object]:
    result = await run(
        w.db,
        w.settings,
        w.clock,
        query,
        token=None if role is None else w.tokens[role],
        variables=variables,
    )
    assert result.errors is None, result.errors
    assert result.data is not None
    return result.data


def _names(w: World, ids: list[str]) -> set[str]:
    by_id = {encode_id("Merchant", m.id): n for n, m in w.merchants.items()}
    return {by_id[i] for i in ids if i in by_id}


async def case_viewer(w: World) -> None:
    for role in ROLES:
        data = await _query(
            w, role, "{ viewer { role merchants(first: 100) { edges { node { id } } } } }"
        )
        viewer = data["viewer"]
        assert isinstance(viewer, dict)
        assert viewer["role"] == role.upper()
        ids = [e["node"]["id"] for e in viewer["merchants"]["edges"]]
        assert _names(w, ids) == w.visible[role]
        if role != "support":
            assert len(ids) == len(w.visible[role])


async def case_merchants(w: World) -> None:
    for role in ROLES:
        data = await _query(w, role, "{ merchants(first: 100) { edges { node { id name } } } }")
        merchants = data["merchants"]
        assert isinstance(merchants, dict)
        ids = [e["node"]["id"] for e in merchants["edges"]]
        assert _names(w, ids) == w.visible[role]
        if role != "support":
            assert len(ids) == len(w.visible[role])


async def case_merchant(w: World) -> None:
    query = """query($id: ID!) { merchant(id: $id) { id name
        retryPolicy { version } payments(first: 100) { edges { node { id } } } } }"""
    for role in ROLES:
        for name, merchant in w.merchants.items():
            data = await _query(w, role, query, id=encode_id("Merchant", merchant.id))
            found = data["merchant"]
            if name in w.visible[role]:
                assert isinstance(found, dict)
                assert found["name"] == f"Tenant {name}"
                ids = [e["node"]["id"] for e in found["payments"]["edges"]]
                assert ids == [encode_id("Payment", w.payments[name].id)]
                assert found["retryPolicy"] == {"version": 1}
            else:
                assert found is None


async def case_node(w: World) -> None:
    query = "query($id: ID!) { node(id: $id) { id __typename } }"
    for role in ROLES:
        for name in "ABC":
            payment = w.payments[name]
            ids = {
                "Merchant": encode_id("Merchant", w.merchants[name].id),
                "Payment": encode_id("Payment", payment.id),
                "Customer": encode_id("Customer", payment.customer_id),
                "Card": encode_id("Card", payment.card_id),  # type: ignore[arg-type]
            }
            for type_name, global_id in ids.items():
                data = await _query(w, role, query, id=global_id)
                if name in w.visible[role]:
                    assert data["node"] == {"id": global_id, "__typename": type_name}
                else:
                    assert data["node"] is None, (role, name, type_name)


UPDATE = """mutation($input: UpdateRetryPolicyInput!) { updateRetryPolicy(input: $input) {
  retryPolicy { version maxAttempts } errors { code field } } }"""


async def case_update_retry_policy(w: World) -> None:
    def payload(name: str) -> dict[str, object]:
        return {
            "merchantId": encode_id("Merchant", w.merchants[name].id),
            "expectedVersion": 1,
            "reason": "tenancy test",
            "maxAttempts": 5,
        }

    # A merchant key changes its own policy; another merchant's id answers NOT_FOUND.
    data = await _query(w, "merchant", UPDATE, input=payload("B"))
    assert data["updateRetryPolicy"] == {
        "retryPolicy": None,
        "errors": [{"code": "NOT_FOUND", "field": "merchantId"}],
    }
    data = await _query(w, "merchant", UPDATE, input=payload("A"))
    assert data["updateRetryPolicy"] == {
        "retryPolicy": {"version": 2, "maxAttempts": 5},
        "errors": [],
    }
    # A partner sees B but may not configure it; C does not exist for it.
    result = await run(
        w.db,
        w.settings,
        w.clock,
        UPDATE,
        token=w.tokens["partner"],
        variables={"input": payload("B")},
    )
    assert codes(result) == ["FORBIDDEN"]
    data = await _query(w, "partner", UPDATE, input=payload("C"))
    assert data["updateRetryPolicy"]["errors"] == [{"code": "NOT_FOUND", "field": "merchantId"}]  # type: ignore[index]
    # Support may change any merchant; B and C are still at version 1, so nothing leaked.
    for name in "BC":
        data = await _query(w, "support", UPDATE, input=payload(name))
        assert data["updateRetryPolicy"] == {
            "retryPolicy": {"version": 2, "maxAttempts": 5},
            "errors": [],
        }


CANCEL = """mutation($id: ID!, $reason: String!) {
  cancelPaymentRecovery(paymentId: $id, reason: $reason) {
    payment { state timeline { event actor } } errors { code field } } }"""
RETRY_NOW = """mutation($id: ID!, $reason: String!) {
  retryPaymentNow(paymentId: $id, reason: $reason) {
    payment { state nextRetryAt } errors { code field } } }"""


async def _payment_action(w: World, name: str, query: str, state: str) -> None:
    """Merchant: own payment yes, another's not found; partner: visible forbidden, hidden not
    found; support: any."""

    def pid(n: str) -> str:
        return encode_id("Payment", w.payments[n].id)

    not_found = {"payment": None, "errors": [{"code": "NOT_FOUND", "field": "paymentId"}]}
    data = await _query(w, "merchant", query, id=pid("B"), reason="tenancy test")
    assert data[name] == not_found
    data = await _query(w, "merchant", query, id=pid("A"), reason="tenancy test")
    assert data[name]["errors"] == []  # type: ignore[index]
    assert data[name]["payment"]["state"] == state  # type: ignore[index]
    result = await run(
        w.db,
        w.settings,
        w.clock,
        query,
        token=w.tokens["partner"],
        variables={"id": pid("B"), "reason": "tenancy test"},
    )
    assert codes(result) == ["FORBIDDEN"]
    data = await _query(w, "partner", query, id=pid("C"), reason="tenancy test")
    assert data[name] == not_found
    for n in "BC":
        data = await _query(w, "support", query, id=pid(n), reason="tenancy test")
        assert data[name]["payment"]["state"] == state  # type: ignore[index]


async def case_cancel_payment_recovery(w: World) -> None:
    await _payment_action(w, "cancelPaymentRecovery", CANCEL, "CANCELED")


async def case_retry_payment_now(w: World) -> None:
    await _payment_action(w, "retryPaymentNow", RETRY_NOW, "SCHEDULED")


TENANCY_CASES: dict[str, Callable[[World], Awaitable[None]]] = {
    "viewer": case_viewer,
    "merchants": case_merchants,
    "merchant": case_merchant,
    "node": case_node,
    "updateRetryPolicy": case_update_retry_policy,
    "cancelPaymentRecovery": case_cancel_payment_recovery,
    "retryPaymentNow": case_retry_payment_now,
}


@pytest.mark.parametrize("field", sorted(TENANCY_CASES))
async def test_tenancy(world: World, field: str) -> None:
    await TENANCY_CASES[field](world)


def test_every_root_field_has_a_tenancy_case(settings: Settings) -> None:
    schema = schema_for(settings)._schema
    roots = set(schema.query_type.fields)
    if schema.mutation_type is not None:
        roots |= set(schema.mutation_type.fields)
    assert roots == set(TENANCY_CASES), "add a tenancy case for each new root field"


UNAUTHENTICATED_QUERIES = {
    "cancelPaymentRecovery": 'mutation { cancelPaymentRecovery(paymentId: "x", reason: "r") '
    "{ errors { code } } }",
    "retryPaymentNow": 'mutation { retryPaymentNow(paymentId: "x", reason: "r") '
    "{ errors { code } } }",
    "viewer": "{ viewer { role } }",
    "merchants": "{ merchants { edges { cursor } } }",
    "merchant": '{ merchant(id: "x") { id } }',
    "node": '{ node(id: "x") { id } }',
    "updateRetryPolicy": 'mutation { updateRetryPolicy(input: {merchantId: "x", '
    'expectedVersion: 1, reason: "r", maxAttempts: 3}) { errors { code } } }',
}


@pytest.mark.parametrize("field", sorted(UNAUTHENTICATED_QUERIES))
@pytest.mark.parametrize("token", [None, "rp_not-a-real-token", "garbage"])
async def test_no_valid_key_is_unauthenticated(world: World, field: str, token: str | None) -> None:
    result = await run(
        world.db, world.settings, world.clock, UNAUTHENTICATED_QUERIES[field], token=token
    )
    assert codes(result) == ["UNAUTHENTICATED"]


async def test_revoked_key_is_unauthenticated(world: World) -> None:
    from app.models.api_key import ApiKey
    from app.services.api_key import hash_token
    from app.tenancy import SYSTEM_SCOPE

    async with world.db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            update(ApiKey)
            .where(col(ApiKey.token_hash) == hash_token(world.tokens["merchant"]))
            .values(revoked_at=world.clock.now())
        )
        await uow.commit()
    result = await run(
        world.db, world.settings, world.clock, "{ viewer { role } }", token=world.tokens["merchant"]
    )
    assert codes(result) == ["UNAUTHENTICATED"]


async def test_scoped_session_hides_other_tenants_rows(world: World) -> None:
    """The enforcement point itself: even a hand-written query cannot cross tenants."""
    scope = Scope(merchant_ids=frozenset({world.merchants["A"].id}))
    other = world.payments["B"]
    async with world.db.uow(scope) as uow:
        found = (
            await uow.session.execute(select(Payment).where(col(Payment.id) == other.id))
        ).scalar_one_or_none()
        assert found is None
        changed = await uow.session.execute(
            update(Payment).where(col(Payment.id) == other.id).values(amount_minor=1)
        )
        assert changed.rowcount == 0  # type: ignore[attr-defined]
        merchants = (await uow.session.execute(select(Merchant))).scalars().all()
        assert {m.id for m in merchants} == {world.merchants["A"].id}
