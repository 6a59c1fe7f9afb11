"""Tenancy matrix: every root field, for merchant, partner and support keys (and none)."""

import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from arq.constants import default_queue_name, job_key_prefix
from sqlalchemy import update
from sqlmodel import col, select

from app.clock import FixedClock
from app.crypto import CredentialBox
from app.db import Database
from app.embedded import Services
from app.enums import (
    ApiKeyScope,
    EndAction,
    EndActionStatus,
    ModelStatus,
    Role,
    WebhookDeliveryStatus,
)
from app.models.audit import AuditLog
from app.models.end_action import EndActionRun
from app.models.ingestion import ProcessorConnection
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.models.retry import OutboxEvent
from app.models.webhook_endpoint import WebhookDelivery, WebhookEndpoint
from app.services.webhook_endpoint import create_endpoint
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, Scope, system_principal
from resolvers.ids import encode_id
from tests.support.billing import sandbox_world, stripe_account
from tests.support.factories import key_id, make_connection, make_key, make_merchant, make_payments
from tests.support.graphql import codes, run, schema_for
from tests.support.model_rows import Choice, make_model, pair, store, verdict
from tests.support.queue import discard_bulk_actions, discard_polls, job_queue


@dataclass
class World:
    db: Database
    settings: Settings
    clock: FixedClock
    merchants: dict[str, Merchant]
    payments: dict[str, Payment]
    tokens: dict[str, str]
    visible: dict[str, set[str]]
    connections: dict[str, ProcessorConnection]
    key_ids: dict[str, uuid.UUID]
    queue: Any


@pytest.fixture
async def world(
    db: Database, settings: Settings, clock: FixedClock, services: Services
) -> AsyncIterator[World]:
    now = clock.now()
    merchants = {n: await make_merchant(db, f"Tenant {n}", now=now) for n in "ABC"}
    payments = {n: (await make_payments(db, m, 1, now=now))[0] for n, m in merchants.items()}
    connections = {
        n: await make_connection(db, m, now=now, settings=settings) for n, m in merchants.items()
    }
    tokens = {
        "merchant": await make_key(db, Role.MERCHANT, [merchants["A"]], now=now),
        "partner": await make_key(db, Role.PARTNER, [merchants["A"], merchants["B"]], now=now),
        "support": await make_key(db, Role.SUPPORT, [], now=now),
        # Seen by support only: another tenant's key.
        "merchant_c": await make_key(db, Role.MERCHANT, [merchants["C"]], now=now),
    }
    key_ids = {name: await key_id(db, token) for name, token in tokens.items()}
    visible = {"merchant": {"A"}, "partner": {"A", "B"}, "support": {"A", "B", "C"}}
    async with job_queue(services) as queue:
        try:
            yield World(
                db,
                settings,
                clock,
                merchants,
                payments,
                tokens,
                visible,
                connections,
                key_ids,
                queue,
            )
        finally:
            await discard_polls(queue, [c.id for c in connections.values()])


ROLES = ("merchant", "partner", "support")


async def _query(w: World, role: str | None, query: str, **variables: object) -> dict[str, object]:
    result = await run(
        w.db,
        w.settings,
        w.clock,
        query,
        token=None if role is None else w.tokens[role],
        variables=variables,
        redis=w.queue,
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
        retryPolicy { version } payments(first: 100) { edges { node { id } } }
        processorConnections { id } auditLog(first: 100) { edges { node { action } } } } }"""
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
                connection_id = encode_id("ProcessorConnection", w.connections[name].id)
                assert found["processorConnections"] == [{"id": connection_id}]
                actions = [e["node"]["action"] for e in found["auditLog"]["edges"]]
                assert sorted(actions) == ["merchant.create", "processor_connection.create"]
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
                "ProcessorConnection": encode_id("ProcessorConnection", w.connections[name].id),
            }
            for type_name, global_id in ids.items():
                data = await _query(w, role, query, id=global_id)
                if name in w.visible[role]:
                    assert data["node"] == {"id": global_id, "__typename": type_name}
                else:
                    assert data["node"] is None, (role, name, type_name)
    endpoints = await _webhook_endpoints(w)
    for role in ROLES:
        for name in "ABC":
            global_id = encode_id("WebhookEndpoint", endpoints[name].id)
            data = await _query(w, role, query, id=global_id)
            if name in w.visible[role]:
                assert data["node"] == {"id": global_id, "__typename": "WebhookEndpoint"}
            else:
                assert data["node"] is None, (role, name, "WebhookEndpoint")
    # API keys: visible when every merchant they grant is (support: all).
    for role in ROLES:
        for key_name, key in w.key_ids.items():
            global_id = encode_id("ApiKey", key)
            data = await _query(w, role, query, id=global_id)
            if key_name in VISIBLE_KEYS[role]:
                assert data["node"] == {"id": global_id, "__typename": "ApiKey"}
            else:
                assert data["node"] is None, (role, key_name)


# Which of the world's keys each role's key may see.
VISIBLE_KEYS = {
    "merchant": {"merchant"},
    "partner": {"merchant", "partner"},
    "support": {"merchant", "partner", "support", "merchant_c"},
}


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


PREVIEW = """mutation($id: ID!) { previewRetryPolicy(merchantId: $id, input: {maxAttempts: 5}) {
  preview { basedOnVersion redecidedPayments } errors { code field } } }"""


async def case_preview_retry_policy(w: World) -> None:
    """As updateRetryPolicy: own merchant or support; nothing is written either way."""

    def mid(name: str) -> str:
        return encode_id("Merchant", w.merchants[name].id)

    not_found = [{"code": "NOT_FOUND", "field": "merchantId"}]
    # Each merchant has one scheduled payment: its own only is counted.
    ok = {"preview": {"basedOnVersion": 1, "redecidedPayments": 1}, "errors": []}
    data = await _query(w, "merchant", PREVIEW, id=mid("B"))
    assert _errors(data, "previewRetryPolicy") == not_found
    data = await _query(w, "merchant", PREVIEW, id=mid("A"))
    assert data["previewRetryPolicy"] == ok
    await _forbidden(w, "partner", PREVIEW, id=mid("B"))
    data = await _query(w, "partner", PREVIEW, id=mid("C"))
    assert _errors(data, "previewRetryPolicy") == not_found
    for name in "ABC":
        data = await _query(w, "support", PREVIEW, id=mid(name))
        assert data["previewRetryPolicy"] == ok


async def case_api_keys(w: World) -> None:
    query = "{ apiKeys(first: 100) { edges { node { id merchants { id } } } } }"
    names = {encode_id("ApiKey", k): n for n, k in w.key_ids.items()}
    for role in ROLES:
        data = await _query(w, role, query)
        edges = data["apiKeys"]["edges"]  # type: ignore[index]
        assert {names[e["node"]["id"]] for e in edges} == VISIBLE_KEYS[role]
        for edge in edges:
            granted = _names(w, [m["id"] for m in edge["node"]["merchants"]])
            assert granted <= w.visible[role]


def _errors(data: dict[str, object], field: str) -> object:
    payload = data[field]
    assert isinstance(payload, dict)
    return payload["errors"]


async def _forbidden(w: World, role: str, query: str, **variables: object) -> None:
    result = await run(
        w.db,
        w.settings,
        w.clock,
        query,
        token=w.tokens[role],
        variables=variables,
        redis=w.queue,
    )
    assert codes(result) == ["FORBIDDEN"], result


CONNECT = """mutation($input: ConnectProcessorInput!) { connectProcessor(input: $input) {
  processorConnection { id kind } errors { code field } } }"""


async def case_connect_processor(w: World) -> None:
    def payload(name: str) -> dict[str, object]:
        return {
            "merchantId": encode_id("Merchant", w.merchants[name].id),
            "kind": "STRIPE",
            "credentials": {"api_key": "sk_test_tenancy"},
            "baseUrl": "http://stripe.test",
        }

    not_found = [{"code": "NOT_FOUND", "field": "merchantId"}]
    data = await _query(w, "merchant", CONNECT, input=payload("B"))
    assert _errors(data, "connectProcessor") == not_found
    data = await _query(w, "merchant", CONNECT, input=payload("A"))
    assert data["connectProcessor"]["processorConnection"]["kind"] == "STRIPE"  # type: ignore[index]
    data = await _query(w, "partner", CONNECT, input=payload("B"))
    assert _errors(data, "connectProcessor") == []
    data = await _query(w, "partner", CONNECT, input=payload("C"))
    assert _errors(data, "connectProcessor") == not_found
    data = await _query(w, "support", CONNECT, input=payload("C"))
    assert _errors(data, "connectProcessor") == []


async def _connection_matrix(
    w: World, field: str, query: str, ok: Callable[[dict[str, Any]], None], **extra: object
) -> None:
    """Merchant: own connection yes, another's not found; partner: granted merchant's yes,
    hidden not found; support: any."""

    def cid(name: str) -> str:
        return encode_id("ProcessorConnection", w.connections[name].id)

    not_found = [{"code": "NOT_FOUND", "field": "id"}]
    data = await _query(w, "merchant", query, id=cid("B"), **extra)
    assert _errors(data, field) == not_found
    data = await _query(w, "merchant", query, id=cid("A"), **extra)
    ok(data[field])  # type: ignore[arg-type]
    data = await _query(w, "partner", query, id=cid("B"), **extra)
    ok(data[field])  # type: ignore[arg-type]
    data = await _query(w, "partner", query, id=cid("C"), **extra)
    assert _errors(data, field) == not_found
    data = await _query(w, "support", query, id=cid("C"), **extra)
    ok(data[field])  # type: ignore[arg-type]


async def case_sync_processor_connection(w: World) -> None:
    query = """mutation($id: ID!) { syncProcessorConnection(id: $id) {
      processorConnection { id } queued errors { code field } } }"""

    def ok(payload: dict[str, Any]) -> None:
        assert payload["errors"] == []
        assert payload["queued"] is True

    await _connection_matrix(w, "syncProcessorConnection", query, ok)


async def case_pause_processor_connection(w: World) -> None:
    query = """mutation($id: ID!, $reason: String!) { pauseProcessorConnection(id: $id,
      reason: $reason) { processorConnection { status } errors { code field } } }"""

    def ok(payload: dict[str, Any]) -> None:
        assert payload == {"processorConnection": {"status": "PAUSED"}, "errors": []}

    await _connection_matrix(w, "pauseProcessorConnection", query, ok, reason="tenancy")


async def case_resume_processor_connection(w: World) -> None:
    query = """mutation($id: ID!, $reason: String!) { resumeProcessorConnection(id: $id,
      reason: $reason) { processorConnection { status } errors { code field } } }"""

    def ok(payload: dict[str, Any]) -> None:
        assert payload == {"processorConnection": {"status": "ACTIVE"}, "errors": []}

    await _connection_matrix(w, "resumeProcessorConnection", query, ok, reason="tenancy")


CREATE_KEY = """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
  apiKey { role } token errors { code field } } }"""


async def case_create_api_key(w: World) -> None:
    def payload(role: str, *names: str) -> dict[str, object]:
        ids = [encode_id("Merchant", w.merchants[n].id) for n in names]
        return {"role": role, "merchantIds": ids, "name": "tenancy"}

    data = await _query(w, "merchant", CREATE_KEY, input=payload("MERCHANT", "B"))
    assert data["createApiKey"] == {
        "apiKey": None,
        "token": None,
        "errors": [{"code": "NOT_FOUND", "field": "merchantIds"}],
    }
    data = await _query(w, "merchant", CREATE_KEY, input=payload("MERCHANT", "A"))
    assert data["createApiKey"]["apiKey"] == {"role": "MERCHANT"}  # type: ignore[index]
    await _forbidden(w, "merchant", CREATE_KEY, input=payload("PARTNER", "A"))
    await _forbidden(w, "partner", CREATE_KEY, input=payload("MERCHANT", "A"))
    await _forbidden(w, "partner", CREATE_KEY, input=payload("MERCHANT", "C"))
    data = await _query(w, "support", CREATE_KEY, input=payload("PARTNER", "B", "C"))
    assert data["createApiKey"]["apiKey"] == {"role": "PARTNER"}  # type: ignore[index]


async def case_revoke_api_key(w: World) -> None:
    query = """mutation($id: ID!) { revokeApiKey(id: $id, reason: "tenancy") {
      apiKey { revokedAt } errors { code field } } }"""
    now = w.clock.now()
    keys = {
        n: encode_id(
            "ApiKey",
            await key_id(w.db, await make_key(w.db, Role.MERCHANT, [w.merchants[n]], now=now)),
        )
        for n in "ABC"
    }
    not_found = [{"code": "NOT_FOUND", "field": "id"}]
    data = await _query(w, "merchant", query, id=keys["B"])
    assert _errors(data, "revokeApiKey") == not_found
    data = await _query(w, "merchant", query, id=keys["A"])
    assert data["revokeApiKey"]["apiKey"]["revokedAt"] is not None  # type: ignore[index]
    await _forbidden(w, "partner", query, id=keys["B"])
    data = await _query(w, "partner", query, id=keys["C"])
    assert _errors(data, "revokeApiKey") == not_found
    data = await _query(w, "support", query, id=keys["C"])
    assert _errors(data, "revokeApiKey") == []


async def case_create_merchant(w: World) -> None:
    query = """mutation { createMerchant(input: {name: "New"}) {
      merchant { name } errors { code } } }"""

    async def count() -> int:
        async with w.db.session(Scope(merchant_ids=None)) as s:
            return len((await s.execute(select(Merchant))).scalars().all())

    before = await count()
    await _forbidden(w, "merchant", query)
    assert await count() == before
    data = await _query(w, "support", query)
    assert data["createMerchant"] == {"merchant": {"name": "New"}, "errors": []}
    # A partner onboards a merchant: granted to it, to no other key.
    data = await _query(w, "partner", query)
    assert data["createMerchant"] == {"merchant": {"name": "New"}, "errors": []}
    assert await count() == before + 2
    listed = "{ merchants(first: 100) { edges { node { name } } } }"
    for role, sees_new in (("merchant", 0), ("partner", 1), ("support", 2)):
        data = await _query(w, role, listed)
        names = [e["node"]["name"] for e in data["merchants"]["edges"]]  # type: ignore[index]
        assert names.count("New") == sees_new, role


async def _recovery_matrix(w: World, field: str, status: str) -> None:
    query = f"""mutation($id: ID!) {{ {field}(merchantId: $id, reason: "tenancy") {{
      merchant {{ status }} errors {{ code field }} }} }}"""

    def mid(name: str) -> str:
        return encode_id("Merchant", w.merchants[name].id)

    not_found = [{"code": "NOT_FOUND", "field": "merchantId"}]
    await _forbidden(w, "merchant", query, id=mid("A"))
    data = await _query(w, "merchant", query, id=mid("B"))
    assert _errors(data, field) == not_found
    await _forbidden(w, "partner", query, id=mid("B"))
    data = await _query(w, "partner", query, id=mid("C"))
    assert _errors(data, field) == not_found
    data = await _query(w, "support", query, id=mid("C"))
    assert data[field] == {"merchant": {"status": status}, "errors": []}


async def case_pause_merchant_recovery(w: World) -> None:
    await _recovery_matrix(w, "pauseMerchantRecovery", "PAUSED")


async def case_resume_merchant_recovery(w: World) -> None:
    await _recovery_matrix(w, "resumeMerchantRecovery", "ACTIVE")


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


async def case_models(w: World) -> None:
    """Models serve every merchant: only support sees them, others are refused outright. A
    shadow's comparison spans every merchant's payments: support sees all of them, and a key
    that may see some merchants gets no part of it."""
    row = await make_model(w.db, now=w.clock.now())
    for role in ("merchant", "partner"):
        await _forbidden(w, role, "{ models { id } }")
    data = await _query(w, "support", "{ models { id status } }")
    assert data["models"] == [{"id": encode_id("Model", row.id), "status": "CHALLENGER"}]
    champion = await make_model(w.db, now=w.clock.now(), status=ModelStatus.CHAMPION)
    shadow = await make_model(w.db, now=w.clock.now(), status=ModelStatus.SHADOW)
    records = []
    for payment in w.payments.values():
        records += pair(
            payment,
            shadow=shadow.id,
            champion=champion.id,
            at=w.clock.now(),
            shadow_choice=Choice(60, 0.3),
            champion_choice=Choice(60, 0.2),
        )
    await store(w.db, records)
    query = "{ models { id comparison { pairedDecisions realized { agreement { payments } } } } }"
    for role in ("merchant", "partner"):
        await _forbidden(w, role, query)
    data = await _query(w, "support", query)
    compared = {m["id"]: m["comparison"] for m in data["models"]}  # type: ignore[attr-defined]
    assert compared[encode_id("Model", shadow.id)] == {
        "pairedDecisions": 3,
        "realized": {"agreement": {"payments": 3}},
    }


async def case_promote_model(w: World) -> None:
    row = await make_model(w.db, now=w.clock.now(), gate=verdict(True, None))
    query = """mutation($id: ID!) { promoteModel(id: $id, reason: "tenancy") {
      model { status } errors { code field } } }"""
    model_id = encode_id("Model", row.id)
    for role in ("merchant", "partner"):
        await _forbidden(w, role, query, id=model_id)
    data = await _query(w, "support", query, id=model_id)
    assert data["promoteModel"] == {"model": {"status": "CHAMPION"}, "errors": []}


async def _webhook_endpoints(w: World) -> dict[str, WebhookEndpoint]:
    """One webhook endpoint per merchant, added by the portal itself."""
    box = CredentialBox(w.settings.secret_key.get_secret_value())
    found: dict[str, WebhookEndpoint] = {}
    async with w.db.uow(SYSTEM_SCOPE) as uow:
        for name, merchant in w.merchants.items():
            found[name] = await create_endpoint(
                uow,
                principal=system_principal(),
                merchant_id=merchant.id,
                url=f"https://{name.lower()}.test/hooks",
                secret="tenancy-secret-" + "x" * 16,
                box=box,
                policy=w.settings.url_policy,
                now=w.clock.now(),
            )
        await uow.commit()
    return found


CREATE_ENDPOINT = """mutation($input: CreateWebhookEndpointInput!) {
  createWebhookEndpoint(input: $input) { webhookEndpoint { url } secret errors { code field } } }"""


async def case_create_webhook_endpoint(w: World) -> None:
    def payload(name: str) -> dict[str, object]:
        return {
            "merchantId": encode_id("Merchant", w.merchants[name].id),
            "url": "https://tenancy.test/hooks",
        }

    def ok(data: dict[str, object]) -> None:
        created = data["createWebhookEndpoint"]
        assert isinstance(created, dict)
        assert created["errors"] == []
        assert created["webhookEndpoint"] == {"url": "https://tenancy.test/hooks"}
        assert created["secret"]

    not_found = [{"code": "NOT_FOUND", "field": "merchantId"}]
    data = await _query(w, "merchant", CREATE_ENDPOINT, input=payload("B"))
    assert _errors(data, "createWebhookEndpoint") == not_found
    ok(await _query(w, "merchant", CREATE_ENDPOINT, input=payload("A")))
    ok(await _query(w, "partner", CREATE_ENDPOINT, input=payload("B")))
    data = await _query(w, "partner", CREATE_ENDPOINT, input=payload("C"))
    assert _errors(data, "createWebhookEndpoint") == not_found
    ok(await _query(w, "support", CREATE_ENDPOINT, input=payload("C")))


async def _endpoint_matrix(
    w: World, field: str, query: str, ok: Callable[[dict[str, Any]], None], **extra: object
) -> None:
    """Merchant: own endpoint yes, another's not found; partner: granted merchant's yes,
    hidden not found; support: any."""
    endpoints = await _webhook_endpoints(w)

    def payload(name: str) -> dict[str, object]:
        return {"endpointId": encode_id("WebhookEndpoint", endpoints[name].id), **extra}

    not_found = [{"code": "NOT_FOUND", "field": "endpointId"}]
    data = await _query(w, "merchant", query, input=payload("B"))
    assert _errors(data, field) == not_found
    data = await _query(w, "merchant", query, input=payload("A"))
    ok(data[field])  # type: ignore[arg-type]
    data = await _query(w, "partner", query, input=payload("B"))
    ok(data[field])  # type: ignore[arg-type]
    data = await _query(w, "partner", query, input=payload("C"))
    assert _errors(data, field) == not_found
    data = await _query(w, "support", query, input=payload("C"))
    ok(data[field])  # type: ignore[arg-type]


async def case_rotate_webhook_secret(w: World) -> None:
    query = """mutation($input: RotateWebhookSecretInput!) { rotateWebhookSecret(input: $input) {
      webhookEndpoint { id } secret errors { code field } } }"""

    def ok(payload: dict[str, Any]) -> None:
        assert payload["errors"] == []
        assert payload["secret"]

    await _endpoint_matrix(w, "rotateWebhookSecret", query, ok, reason="tenancy")


async def case_set_webhook_endpoint_enabled(w: World) -> None:
    query = """mutation($input: SetWebhookEndpointEnabledInput!) {
      setWebhookEndpointEnabled(input: $input) {
        webhookEndpoint { enabled } errors { code field } } }"""

    def ok(payload: dict[str, Any]) -> None:
        assert payload == {"webhookEndpoint": {"enabled": False}, "errors": []}

    await _endpoint_matrix(
        w, "setWebhookEndpointEnabled", query, ok, enabled=False, reason="tenancy"
    )


BULK_CANCEL = """mutation($ids: [ID!], $dryRun: Boolean!) { cancelPaymentRecoveries(
  filter: {}, merchantIds: $ids, reason: "tenancy", dryRun: $dryRun) {
  count bulkAction { status } errors { code } } }"""
BULK_PAUSE = """mutation($ids: [ID!]!, $dryRun: Boolean!) { pauseMerchantsRecovery(
  merchantIds: $ids, reason: "tenancy", dryRun: $dryRun) {
  count bulkAction { status } errors { code } } }"""


async def _bulk_matrix(w: World, field: str, query: str) -> None:
    """Support only: merchant and partner keys get a typed FORBIDDEN for their own merchants
    as for others', and nothing is counted or queued; support counts and submits for any."""
    for role in ("merchant", "partner"):
        for name in "AC":
            ids = [encode_id("Merchant", w.merchants[name].id)]
            for dry_run in (True, False):
                data = await _query(w, role, query, ids=ids, dryRun=dry_run)
                assert data[field] == {
                    "count": None,
                    "bulkAction": None,
                    "errors": [{"code": "FORBIDDEN"}],
                }
    ids = [encode_id("Merchant", w.merchants["C"].id)]
    data = await _query(w, "support", query, ids=ids, dryRun=True)
    assert data[field] == {"count": 1, "bulkAction": None, "errors": []}
    data = await _query(w, "support", query, ids=ids, dryRun=False)
    assert data[field] == {"count": 1, "bulkAction": {"status": "QUEUED"}, "errors": []}
    await discard_bulk_actions(w.queue)


async def case_cancel_payment_recoveries(w: World) -> None:
    await _bulk_matrix(w, "cancelPaymentRecoveries", BULK_CANCEL)


async def case_pause_merchants_recovery(w: World) -> None:
    await _bulk_matrix(w, "pauseMerchantsRecovery", BULK_PAUSE)


# --- Support's view of ingestion and its requested jobs --------------------------------------

REPLAY = """mutation($id: ID!) { replayConnection(id: $id, reason: "tenancy") {
  job { id state } queued errors { code field } } }"""
RETRAIN = """mutation { retrainModel(reason: "tenancy") { job { id } queued errors { code } } }"""
FOLLOW = "query($id: ID!) { backgroundJob(id: $id) { id state } }"


async def _drop_job(w: World, job_id: str) -> None:
    """Take a queued job off the shared queue, so that no worker runs it."""
    await w.queue.zrem(default_queue_name, job_id)
    await w.queue.delete(job_key_prefix + job_id)


async def case_replay_connection(w: World) -> None:
    def cid(name: str) -> str:
        return encode_id("ProcessorConnection", w.connections[name].id)

    not_found = [{"code": "NOT_FOUND", "field": "id"}]
    data = await _query(w, "merchant", REPLAY, id=cid("B"))
    assert _errors(data, "replayConnection") == not_found
    await _forbidden(w, "merchant", REPLAY, id=cid("A"))
    await _forbidden(w, "partner", REPLAY, id=cid("B"))
    data = await _query(w, "partner", REPLAY, id=cid("C"))
    assert _errors(data, "replayConnection") == not_found
    data = await _query(w, "support", REPLAY, id=cid("C"))
    payload = data["replayConnection"]
    assert payload["errors"] == []  # type: ignore[index]
    assert payload["queued"] is True  # type: ignore[index]
    await _drop_job(w, payload["job"]["id"])  # type: ignore[index]


async def case_retrain_model(w: World) -> None:
    await _forbidden(w, "merchant", RETRAIN)
    await _forbidden(w, "partner", RETRAIN)
    data = await _query(w, "support", RETRAIN)
    payload = data["retrainModel"]
    assert payload["queued"] is True  # type: ignore[index]
    await _drop_job(w, payload["job"]["id"])  # type: ignore[index]


async def case_background_job(w: World) -> None:
    data = await _query(w, "support", RETRAIN)
    job_id = data["retrainModel"]["job"]["id"]  # type: ignore[index]
    try:
        await _forbidden(w, "merchant", FOLLOW, id=job_id)
        await _forbidden(w, "partner", FOLLOW, id=job_id)
        data = await _query(w, "support", FOLLOW, id=job_id)
        assert data["backgroundJob"] == {"id": job_id, "state": "QUEUED"}
    finally:
        await _drop_job(w, job_id)


INGESTION = """query($id: ID!) { node(id: $id) { ... on ProcessorConnection {
  rawRecords(first: 5) { edges { node { id } } } deadLetters(first: 5) { edges { node { id } } }
} } }"""


async def test_raw_records_and_dead_letters_follow_the_key_scope(world: World) -> None:
    """Support reads any connection's; a merchant key its own; a partner key none (FORBIDDEN
    where it sees the connection, null where it does not)."""
    readable = {"merchant": {"A"}, "partner": set(), "support": {"A", "B", "C"}}
    for role in ROLES:
        for name in "ABC":
            variables = {"id": encode_id("ProcessorConnection", world.connections[name].id)}
            result = await run(
                world.db,
                world.settings,
                world.clock,
                INGESTION,
                token=world.tokens[role],
                variables=variables,
            )
            if name in readable[role]:
                assert result.errors is None, (role, name, result.errors)
                assert result.data == {
                    "node": {"rawRecords": {"edges": []}, "deadLetters": {"edges": []}}
                }
            elif name in world.visible[role]:
                assert set(codes(result)) == {"FORBIDDEN"}, (role, name)
            else:
                assert result.errors is None
                assert result.data == {"node": None}, (role, name)


# --- Managing what was created -------------------------------------------------------------


async def case_update_webhook_endpoint(w: World) -> None:
    query = """mutation($input: UpdateWebhookEndpointInput!) {
      updateWebhookEndpoint(input: $input) {
        webhookEndpoint { eventTypes } errors { code field } } }"""

    def ok(payload: dict[str, Any]) -> None:
        assert payload == {
            "webhookEndpoint": {"eventTypes": ["payment.recovered"]},
            "errors": [],
        }

    await _endpoint_matrix(
        w, "updateWebhookEndpoint", query, ok, eventTypes=["payment.recovered"], reason="t"
    )


async def case_delete_webhook_endpoint(w: World) -> None:
    query = """mutation($input: DeleteWebhookEndpointInput!) {
      deleteWebhookEndpoint(input: $input) { deletedWebhookEndpointId errors { code field } } }"""

    def ok(payload: dict[str, Any]) -> None:
        assert payload["errors"] == []
        assert payload["deletedWebhookEndpointId"]

    await _endpoint_matrix(w, "deleteWebhookEndpoint", query, ok, reason="tenancy")


async def case_send_test_webhook(w: World) -> None:
    query = """mutation($id: ID!) { sendTestWebhook(endpointId: $id) {
      delivery { eventType status } errors { code field } } }"""
    endpoints = await _webhook_endpoints(w)

    def eid(name: str) -> str:
        return encode_id("WebhookEndpoint", endpoints[name].id)

    sent = {"delivery": {"eventType": "ping", "status": "PENDING"}, "errors": []}
    not_found = [{"code": "NOT_FOUND", "field": "endpointId"}]
    for role, name, ok in (
        ("merchant", "B", False),
        ("merchant", "A", True),
        ("partner", "B", True),
        ("partner", "C", False),
        ("support", "C", True),
    ):
        data = await _query(w, role, query, id=eid(name))
        if ok:
            assert data["sendTestWebhook"] == sent, (role, name)
        else:
            assert _errors(data, "sendTestWebhook") == not_found, (role, name)


async def _finished_deliveries(w: World) -> dict[str, uuid.UUID]:
    """One delivered event per merchant's endpoint: its delivery's id."""
    endpoints = await _webhook_endpoints(w)
    now = w.clock.now()
    found: dict[str, uuid.UUID] = {}
    async with w.db.uow(SYSTEM_SCOPE) as uow:
        for name, endpoint in endpoints.items():
            event = OutboxEvent(
                merchant_id=endpoint.merchant_id,
                event_type="payment.recovered",
                payload={"type": "payment.recovered"},
                created_at=now,
                dispatched_at=now,
            )
            uow.session.add(event)
            await uow.session.flush()
            delivery = WebhookDelivery(
                merchant_id=endpoint.merchant_id,
                event_id=event.id,
                event_created_at=event.created_at,
                endpoint_id=endpoint.id,
                status=WebhookDeliveryStatus.DELIVERED,
                attempts=1,
                next_attempt_at=now,
                created_at=now,
                delivered_at=now,
            )
            uow.session.add(delivery)
            await uow.session.flush()
            found[name] = delivery.id
        await uow.commit()
    return found


async def case_redeliver_webhook(w: World) -> None:
    query = """mutation($id: ID!) { redeliverWebhook(deliveryId: $id, reason: "tenancy") {
      delivery { eventType status redeliveryOf } errors { code field } } }"""
    deliveries = await _finished_deliveries(w)
    not_found = [{"code": "NOT_FOUND", "field": "deliveryId"}]
    for role, name, ok in (
        ("merchant", "B", False),
        ("merchant", "A", True),
        ("partner", "B", True),
        ("partner", "C", False),
        ("support", "C", True),
    ):
        did = encode_id("WebhookDelivery", deliveries[name])
        data = await _query(w, role, query, id=did)
        if ok:
            assert data["redeliverWebhook"] == {
                "delivery": {
                    "eventType": "payment.recovered",
                    "status": "PENDING",
                    "redeliveryOf": did,
                },
                "errors": [],
            }, (role, name)
        else:
            assert _errors(data, "redeliverWebhook") == not_found, (role, name)


async def case_update_processor_credentials(w: World) -> None:
    """Checked at a sandbox Stripe account every connection is pointed at (on loopback, which
    the URL policy is told to allow here)."""
    w = dataclasses.replace(w, settings=Settings(environment="test", allow_loopback_urls=True))
    query = """mutation($id: ID!, $credentials: JSON!) { updateProcessorCredentials(
      input: {id: $id, credentials: $credentials, reason: "tenancy"}) {
      processorConnection { status } errors { code field } } }"""
    async with sandbox_world(w.clock.now()) as sandbox:
        key = await stripe_account(sandbox)
        async with w.db.uow(SYSTEM_SCOPE) as uow:
            await uow.session.execute(
                update(ProcessorConnection).values(base_url=f"{sandbox.url}/stripe")
            )
            await uow.commit()

        def ok(payload: dict[str, Any]) -> None:
            assert payload == {"processorConnection": {"status": "ACTIVE"}, "errors": []}

        await _connection_matrix(
            w, "updateProcessorCredentials", query, ok, credentials={"api_key": key}
        )


async def case_disconnect_processor(w: World) -> None:
    query = """mutation($id: ID!) { disconnectProcessor(id: $id, reason: "tenancy") {
      processorConnection { status } recoveriesCanceled errors { code field } } }"""

    def ok(payload: dict[str, Any]) -> None:
        assert payload == {
            "processorConnection": {"status": "DISCONNECTED"},
            "recoveriesCanceled": 0,
            "errors": [],
        }

    await _connection_matrix(w, "disconnectProcessor", query, ok)


# --- The event feed, its types and its subscription ------------------------------------------


async def case_webhook_event_types(w: World) -> None:
    """The same published types for every role: they describe no merchant's data."""
    query = "{ webhookEventTypes { type version } }"
    answers = [await _query(w, role, query) for role in ROLES]
    assert answers[0]["webhookEventTypes"]
    assert all(a == answers[0] for a in answers)


async def case_server_time(w: World) -> None:
    """The same clock for every role: it describes no merchant's data."""
    answers = [await _query(w, role, "{ serverTime }") for role in ROLES]
    assert all(a == {"serverTime": w.clock.now().isoformat()} for a in answers)


async def case_payment_events(w: World) -> None:
    """Merchant.events and the paymentEvents subscription: a merchant's events to the keys
    that may see it; another's merchant is null (query) or NOT_FOUND (subscription)."""
    from app.event_notices import EventNotices, listener_client
    from resolvers.ids import encode_event_cursor
    from tests.support.events import emit_events, first_results, sequence

    for payment in w.payments.values():
        await emit_events(w.db, payment, ["payment.scheduled"], now=w.clock.now())
    await sequence(w.db)
    feed = """query($id: ID!) { merchant(id: $id) { events { edges { node { payload } } } } }"""
    subscribe = """subscription($id: ID!, $after: String) {
      paymentEvents(merchantId: $id, after: $after) { payload } }"""
    start = encode_event_cursor(0, w.clock.now())
    notices = EventNotices(listener_client(w.queue))
    try:
        for role in ROLES:
            for name, merchant in w.merchants.items():
                global_id = encode_id("Merchant", merchant.id)
                data = await _query(w, role, feed, id=global_id)
                [result] = await first_results(
                    w.db,
                    w.settings,
                    w.clock,
                    subscribe,
                    token=w.tokens[role],
                    notices=notices,
                    count=1,
                    variables={"id": global_id, "after": start},
                )
                if name in w.visible[role]:
                    payment_id = str(w.payments[name].id)
                    [edge] = data["merchant"]["events"]["edges"]  # type: ignore[index]
                    assert edge["node"]["payload"]["payment_id"] == payment_id
                    assert result.errors is None
                    assert result.data == {"paymentEvents": {"payload": edge["node"]["payload"]}}
                else:
                    assert data["merchant"] is None
                    assert codes(result) == ["NOT_FOUND"], (role, name)
    finally:
        await notices.close()


TENANCY_CASES: dict[str, Callable[[World], Awaitable[None]]] = {
    "viewer": case_viewer,
    "merchants": case_merchants,
    "merchant": case_merchant,
    "node": case_node,
    "updateRetryPolicy": case_update_retry_policy,
    "previewRetryPolicy": case_preview_retry_policy,
    "cancelPaymentRecovery": case_cancel_payment_recovery,
    "retryPaymentNow": case_retry_payment_now,
    "apiKeys": case_api_keys,
    "connectProcessor": case_connect_processor,
    "syncProcessorConnection": case_sync_processor_connection,
    "pauseProcessorConnection": case_pause_processor_connection,
    "resumeProcessorConnection": case_resume_processor_connection,
    "createApiKey": case_create_api_key,
    "revokeApiKey": case_revoke_api_key,
    "createMerchant": case_create_merchant,
    "pauseMerchantRecovery": case_pause_merchant_recovery,
    "resumeMerchantRecovery": case_resume_merchant_recovery,
    "models": case_models,
    "promoteModel": case_promote_model,
    "createWebhookEndpoint": case_create_webhook_endpoint,
    "rotateWebhookSecret": case_rotate_webhook_secret,
    "setWebhookEndpointEnabled": case_set_webhook_endpoint_enabled,
    "cancelPaymentRecoveries": case_cancel_payment_recoveries,
    "pauseMerchantsRecovery": case_pause_merchants_recovery,
    "replayConnection": case_replay_connection,
    "retrainModel": case_retrain_model,
    "backgroundJob": case_background_job,
    "updateWebhookEndpoint": case_update_webhook_endpoint,
    "deleteWebhookEndpoint": case_delete_webhook_endpoint,
    "sendTestWebhook": case_send_test_webhook,
    "redeliverWebhook": case_redeliver_webhook,
    "updateProcessorCredentials": case_update_processor_credentials,
    "disconnectProcessor": case_disconnect_processor,
    "webhookEventTypes": case_webhook_event_types,
    "serverTime": case_server_time,
    "paymentEvents": case_payment_events,
}


@pytest.mark.parametrize("field", sorted(TENANCY_CASES))
async def test_tenancy(world: World, field: str) -> None:
    await TENANCY_CASES[field](world)


def test_every_root_field_has_a_tenancy_case(settings: Settings) -> None:
    schema = schema_for(settings)._schema
    roots = set(schema.query_type.fields)
    if schema.mutation_type is not None:
        roots |= set(schema.mutation_type.fields)
    if schema.subscription_type is not None:
        roots |= set(schema.subscription_type.fields)
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
    "apiKeys": "{ apiKeys { edges { cursor } } }",
    "connectProcessor": 'mutation { connectProcessor(input: {merchantId: "x", kind: STRIPE, '
    'credentials: {api_key: "k"}, baseUrl: "http://p.test"}) { errors { code } } }',
    "syncProcessorConnection": 'mutation { syncProcessorConnection(id: "x") { queued } }',
    "pauseProcessorConnection": 'mutation { pauseProcessorConnection(id: "x", reason: "r") '
    "{ errors { code } } }",
    "resumeProcessorConnection": 'mutation { resumeProcessorConnection(id: "x", reason: "r") '
    "{ errors { code } } }",
    "createApiKey": 'mutation { createApiKey(input: {role: MERCHANT, merchantIds: ["x"], '
    'name: "n"}) { token } }',
    "revokeApiKey": 'mutation { revokeApiKey(id: "x", reason: "r") { errors { code } } }',
    "createMerchant": 'mutation { createMerchant(input: {name: "n"}) { errors { code } } }',
    "pauseMerchantRecovery": 'mutation { pauseMerchantRecovery(merchantId: "x", reason: "r") '
    "{ errors { code } } }",
    "resumeMerchantRecovery": 'mutation { resumeMerchantRecovery(merchantId: "x", reason: "r") '
    "{ errors { code } } }",
    "models": "{ models { id } }",
    "promoteModel": 'mutation { promoteModel(id: "x", reason: "r") { errors { code } } }',
    "createWebhookEndpoint": 'mutation { createWebhookEndpoint(input: {merchantId: "x", '
    'url: "https://h.test"}) { secret } }',
    "rotateWebhookSecret": 'mutation { rotateWebhookSecret(input: {endpointId: "x", '
    'reason: "r"}) { secret } }',
    "setWebhookEndpointEnabled": 'mutation { setWebhookEndpointEnabled(input: {endpointId: "x", '
    'enabled: false, reason: "r"}) { errors { code } } }',
    "cancelPaymentRecoveries": 'mutation { cancelPaymentRecoveries(filter: {}, reason: "r", '
    "dryRun: true) { count } }",
    "pauseMerchantsRecovery": 'mutation { pauseMerchantsRecovery(merchantIds: ["x"], '
    'reason: "r", dryRun: true) { count } }',
    # Managing what was created.
    "updateWebhookEndpoint": 'mutation { updateWebhookEndpoint(input: {endpointId: "x", '
    'reason: "r", enabled: false}) { errors { code } } }',
    "deleteWebhookEndpoint": 'mutation { deleteWebhookEndpoint(input: {endpointId: "x", '
    'reason: "r"}) { errors { code } } }',
    "sendTestWebhook": 'mutation { sendTestWebhook(endpointId: "x") { errors { code } } }',
    "redeliverWebhook": 'mutation { redeliverWebhook(deliveryId: "x", reason: "r") '
    "{ errors { code } } }",
    "updateProcessorCredentials": 'mutation { updateProcessorCredentials(input: {id: "x", '
    'credentials: {api_key: "k"}, reason: "r"}) { errors { code } } }',
    "disconnectProcessor": 'mutation { disconnectProcessor(id: "x", reason: "r") '
    "{ errors { code } } }",
    # Support's requests, and the policy preview (declared as a change it never commits).
    "replayConnection": 'mutation { replayConnection(id: "x", reason: "r") { errors { code } } }',
    "retrainModel": 'mutation { retrainModel(reason: "r") { errors { code } } }',
    "previewRetryPolicy": 'mutation { previewRetryPolicy(merchantId: "x", '
    "input: {maxAttempts: 5}) { errors { code } } }",
    "webhookEventTypes": "{ webhookEventTypes { type } }",
    "serverTime": "{ serverTime }",
}


@pytest.mark.parametrize("field", sorted(UNAUTHENTICATED_QUERIES))
@pytest.mark.parametrize("token", [None, "rp_not-a-real-token", "garbage"])
async def test_no_valid_key_is_unauthenticated(world: World, field: str, token: str | None) -> None:
    result = await run(
        world.db, world.settings, world.clock, UNAUTHENTICATED_QUERIES[field], token=token
    )
    assert codes(result) == ["UNAUTHENTICATED"]


def _mutations(settings: Settings) -> list[str]:
    mutation_type = schema_for(settings)._schema.mutation_type
    return sorted(mutation_type.fields) if mutation_type is not None else []


def test_every_mutation_has_a_query_above(settings: Settings) -> None:
    missing = set(_mutations(settings)) - set(UNAUTHENTICATED_QUERIES)
    assert not missing, "add each new mutation to UNAUTHENTICATED_QUERIES"


@pytest.mark.parametrize("role", ROLES)
async def test_read_only_keys_are_forbidden_every_mutation(world: World, role: str) -> None:
    """A key with the READ scope alone: FORBIDDEN on each mutation before it runs (the same
    operation by a WRITE key of the role is not refused so), while its queries answer."""
    now = world.clock.now()
    granted = {"merchant": ["A"], "partner": ["A", "B"], "support": []}[role]
    reader = await make_key(
        world.db,
        Role(role),
        [world.merchants[n] for n in granted],
        now=now,
        scopes=frozenset({ApiKeyScope.READ}),
    )
    for field in _mutations(world.settings):
        query = UNAUTHENTICATED_QUERIES[field]
        result = await run(world.db, world.settings, world.clock, query, token=reader)
        assert codes(result) == ["FORBIDDEN"], field
        assert result.data is None, field
        assert "WRITE scope" in str(result.errors), field
    data = await _query_with(world, reader, "{ viewer { role } }")
    assert data == {"viewer": {"role": role.upper()}}


async def test_write_keys_are_not_refused_for_their_scope(world: World) -> None:
    """The same operations by a support key (READ and WRITE) are never refused for scope."""
    for field in _mutations(world.settings):
        result = await run(
            world.db,
            world.settings,
            world.clock,
            UNAUTHENTICATED_QUERIES[field],
            token=world.tokens["support"],
            redis=world.queue,
        )
        assert "WRITE scope" not in str(result.errors), field


async def _query_with(w: World, token: str, query: str) -> dict[str, object]:
    result = await run(w.db, w.settings, w.clock, query, token=token, redis=w.queue)
    assert result.errors is None, result.errors
    assert result.data is not None
    return result.data


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


async def test_scoped_session_never_sees_audit_entries_without_a_merchant(world: World) -> None:
    """A support key's creation is logged under no merchant: only unrestricted sessions see it."""
    data = await _query(
        world,
        "support",
        CREATE_KEY,
        input={"role": "SUPPORT", "merchantIds": [], "name": "second support"},
    )
    assert data["createApiKey"]["errors"] == []  # type: ignore[index]
    query = select(AuditLog).where(col(AuditLog.action) == "api_key.create")
    async with world.db.session(Scope(merchant_ids=None)) as s:
        [entry] = (await s.execute(query)).scalars().all()
    assert entry.merchant_id is None
    everyone = frozenset(m.id for m in world.merchants.values())
    async with world.db.session(Scope(merchant_ids=everyone)) as s:
        assert (await s.execute(query)).scalars().all() == []
        rows = (await s.execute(select(AuditLog))).scalars().all()
    assert rows
    assert all(r.merchant_id in everyone for r in rows)


STATS_RANGE = {"from": "2026-11-01T00:00:00Z", "to": "2026-11-03T00:00:00Z"}


async def test_recovery_stats_follow_the_key_scope(world: World) -> None:
    """viewer.recoveryStats adds up exactly the merchants a key may see; Merchant.recoveryStats
    of another tenant is unreachable (the merchant answers null)."""
    viewer = """query($from: DateTime!, $to: DateTime!) { viewer { recoveryStats(from: $from,
      to: $to) { currencies { currency summary { failedCount failedAmount } } } } }"""
    merchant = """query($id: ID!, $from: DateTime!, $to: DateTime!) { merchant(id: $id) {
      recoveryStats(from: $from, to: $to, granularity: WEEK, timezone: "Europe/Paris") {
      currencies { currency summary { failedCount } } } } }"""
    amounts = {n: p.amount_minor for n, p in world.payments.items()}
    for role in ROLES:
        data = await _query(world, role, viewer, **STATS_RANGE)
        [eur] = data["viewer"]["recoveryStats"]["currencies"]  # type: ignore[index]
        assert eur["currency"] == "EUR"
        assert eur["summary"] == {
            "failedCount": len(world.visible[role]),
            "failedAmount": sum(amounts[n] for n in world.visible[role]),
        }
        for name, row in world.merchants.items():
            data = await _query(
                world, role, merchant, id=encode_id("Merchant", row.id), **STATS_RANGE
            )
            if name in world.visible[role]:
                stats = data["merchant"]["recoveryStats"]  # type: ignore[index]
                assert stats["currencies"] == [{"currency": "EUR", "summary": {"failedCount": 1}}]
            else:
                assert data["merchant"] is None


END_ACTION = """query($id: ID!) { node(id: $id) { ... on Payment {
  endAction { action status detail } } } }"""


async def test_payment_end_actions_follow_the_key_scope(world: World) -> None:
    """Payment.endAction: each key sees the end actions of its merchants' payments only, and
    a scoped session cannot read another tenant's rows by hand."""
    now = world.clock.now()
    async with world.db.uow(SYSTEM_SCOPE) as uow:
        for name, payment in world.payments.items():
            uow.session.add(
                EndActionRun(
                    merchant_id=payment.merchant_id,
                    payment_id=payment.id,
                    action=EndAction.CANCEL_SUBSCRIPTION,
                    status=EndActionStatus.DONE,
                    detail=f"canceled for {name}",
                    created_at=now,
                    updated_at=now,
                    completed_at=now,
                )
            )
        await uow.commit()
    for role in ROLES:
        for name in "ABC":
            data = await _query(
                world, role, END_ACTION, id=encode_id("Payment", world.payments[name].id)
            )
            if name in world.visible[role]:
                assert data["node"] == {
                    "endAction": {
                        "action": "CANCEL_SUBSCRIPTION",
                        "status": "DONE",
                        "detail": f"canceled for {name}",
                    }
                }
            else:
                assert data["node"] is None, (role, name)
    scope = Scope(merchant_ids=frozenset({world.merchants["A"].id}))
    async with world.db.session(scope) as s:
        rows = (await s.execute(select(EndActionRun))).scalars().all()
    assert [r.detail for r in rows] == ["canceled for A"]


VIEWER_PAYMENTS = """query($filter: PaymentFilter) { viewer { payments(first: 100,
  filter: $filter) { totalCount edges { node { id } } } } }"""


async def test_viewer_payments_follow_the_key_scope(world: World) -> None:
    """Viewer.payments: support sees every merchant's payments, a partner its granted
    merchants' and never another's (not even by its charge id), a merchant key its own;
    totalCount counts the same payments."""
    ids = {name: encode_id("Payment", p.id) for name, p in world.payments.items()}
    for role in ROLES:
        data = await _query(world, role, VIEWER_PAYMENTS)
        payments = data["viewer"]["payments"]  # type: ignore[index]
        found = [e["node"]["id"] for e in payments["edges"]]
        assert sorted(found) == sorted(ids[n] for n in world.visible[role]), role
        assert payments["totalCount"] == len(world.visible[role])
        for name, payment in world.payments.items():
            search = {"search": payment.processor_payment_id}
            data = await _query(world, role, VIEWER_PAYMENTS, filter=search)
            payments = data["viewer"]["payments"]  # type: ignore[index]
            found = [e["node"]["id"] for e in payments["edges"]]
            visible = name in world.visible[role]
            assert found == ([ids[name]] if visible else []), (role, name)
            assert payments["totalCount"] == (1 if visible else 0), (role, name)


async def test_connection_counts_follow_the_key_scope(world: World) -> None:
    """totalCount of the merchants and API keys lists counts what the key may see only."""
    query = "{ merchants(first: 1) { totalCount } apiKeys(first: 1) { totalCount } }"
    for role in ROLES:
        data = await _query(world, role, query)
        assert data["merchants"] == {"totalCount": len(world.visible[role])}, role
        assert data["apiKeys"] == {"totalCount": len(VISIBLE_KEYS[role])}, role
