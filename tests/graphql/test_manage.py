"""Managing what was created: webhook endpoints (update, delete, test, redeliver), processor
connections (credential rotation, disconnection), API key scopes and expiry, and partners
onboarding merchants."""

import json
import logging
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col, select

from app.clock import FixedClock
from app.crypto import CredentialBox
from app.db import Database
from app.embedded import Services
from app.enums import (
    ApiKeyScope,
    ConnectionStatus,
    PaymentState,
    Processor,
    Role,
    WebhookDeliveryStatus,
)
from app.errors import NotFound
from app.models.api_key import ApiKeyMerchant
from app.models.ingestion import ProcessorConnection
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.models.retry import OutboxEvent, PaymentTransition
from app.models.webhook_endpoint import WebhookDelivery, WebhookEndpoint
from app.services.connection import active_connection_ids, create_connection
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, system_principal
from app.webhook_events import NAMES as WEBHOOK_EVENT_TYPES
from app.workflows.authentication import PrincipalCache, authenticate
from app.workflows.processor_webhook import receive_adyen
from app.workflows.webhook_delivery import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    deliver_due,
    dispatch_outbox,
    verify,
)
from resolvers.ids import decode_id, encode_id
from sandbox.common import connection_credentials
from tests.support.audit import audit_entries
from tests.support.billing import sandbox_world, stripe_account
from tests.support.factories import (
    SANDBOX_URLS,
    key_id,
    make_connection,
    make_key,
    make_merchant,
    make_payments,
)
from tests.support.graphql import codes, run, run_data
from tests.support.http import portal_http
from tests.support.sandbox import create_account
from tests.support.webhooks import PUBLIC, queue_delivery, table_resolver

URL = "https://merchant.test/hooks"

CREATE = """mutation($input: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $input) {
  webhookEndpoint { id eventTypes } secret errors { code message field } } }"""

UPDATE = """mutation($input: UpdateWebhookEndpointInput!) { updateWebhookEndpoint(input: $input) {
  webhookEndpoint { id url enabled eventTypes } errors { code message field } } }"""

DELETE = """mutation($input: DeleteWebhookEndpointInput!) { deleteWebhookEndpoint(input: $input) {
  deletedWebhookEndpointId errors { code message field } } }"""

TEST = """mutation($id: ID!) { sendTestWebhook(endpointId: $id) {
  webhookEndpoint { id } delivery { id eventType status attempts redeliveryOf }
  errors { code message field } } }"""

REDELIVER = """mutation($id: ID!, $reason: String!) { redeliverWebhook(deliveryId: $id,
  reason: $reason) { webhookEndpoint { id } delivery { id eventType status redeliveryOf }
  errors { code message field } } }"""

RECENT = """query($id: ID!) { node(id: $id) { ... on WebhookEndpoint {
  recentDeliveries(first: 10) { id eventType status redeliveryOf } } } }"""

CREDENTIALS = """mutation($id: ID!, $credentials: JSON!, $reason: String!) {
  updateProcessorCredentials(input: {id: $id, credentials: $credentials, reason: $reason}) {
    processorConnection { id status lastError } errors { code message field } } }"""

DISCONNECT = """mutation($id: ID!, $reason: String!) { disconnectProcessor(id: $id,
  reason: $reason) { processorConnection { id status } recoveriesCanceled
  errors { code message field } } }"""

PAUSE = """mutation($id: ID!) { pauseProcessorConnection(id: $id, reason: "r") {
  processorConnection { status } errors { code field } } }"""

CREATE_KEY = """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
  apiKey { id scopes expiresAt } token errors { code message field } } }"""


def _box(settings: Settings) -> CredentialBox:
    return CredentialBox(settings.secret_key.get_secret_value())


@pytest.fixture
def sandbox_settings() -> Settings:
    """The sandbox processors listen on loopback: the credential checks' tests allow it (one
    test checks the default policy's refusal)."""
    return Settings(environment="test", allow_loopback_urls=True)


async def _setup(db: Database, clock: FixedClock) -> tuple[Merchant, str]:
    merchant = await make_merchant(db, "Managed", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now(), name="dashboard")
    return merchant, token


async def _endpoint(
    db: Database, settings: Settings, clock: FixedClock, merchant: Merchant, token: str
) -> tuple[str, str]:
    data = await run_data(
        db,
        settings,
        clock,
        CREATE,
        token,
        input={"merchantId": encode_id("Merchant", merchant.id), "url": URL},
    )
    payload = data["createWebhookEndpoint"]
    assert payload["errors"] == []
    assert payload["webhookEndpoint"]["eventTypes"] is None
    return payload["webhookEndpoint"]["id"], payload["secret"]


def _raw(global_id: str, type_name: str) -> uuid.UUID:
    return decode_id(global_id, expected=type_name)[1]


def _errors(payload: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(e["code"], e["field"]) for e in payload["errors"]]


async def _deliver(
    db: Database, settings: Settings, clock: FixedClock, status: int = 204
) -> list[httpx.Request]:
    """Run the delivery cron once against a receiver answering `status`; what it received."""
    sent: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(status)

    async with httpx.AsyncClient(transport=httpx.MockTransport(receive)) as http:
        await deliver_due(
            db,
            http=http,
            box=_box(settings),
            clock=clock,
            policy=settings.url_policy,
            resolve=table_resolver({"merchant.test": [PUBLIC]}),
        )
    return sent


async def _rows(db: Database, model: Any, *where: Any) -> list[Any]:
    async with db.session(SYSTEM_SCOPE) as s:
        return list((await s.execute(select(model).where(*where))).scalars())


# --- updateWebhookEndpoint ------------------------------------------------------------------


async def test_update_sets_event_types_url_and_enabled_and_audits_what_changed(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    endpoint_id, _ = await _endpoint(db, settings, clock, merchant, token)
    wanted = ["payment.recovered", "payment.scheduled", "payment.recovered"]
    data = await run_data(
        db,
        settings,
        clock,
        UPDATE,
        token,
        input={"endpointId": endpoint_id, "reason": "only money", "eventTypes": wanted},
    )
    payload = data["updateWebhookEndpoint"]
    assert payload["errors"] == []
    # Deduplicated, in the registry's order; URL and enabled untouched (left out).
    assert payload["webhookEndpoint"] == {
        "id": endpoint_id,
        "url": URL,
        "enabled": True,
        "eventTypes": ["payment.scheduled", "payment.recovered"],
    }
    new_url = "https://merchant.test/v2/hooks"
    data = await run_data(
        db,
        settings,
        clock,
        UPDATE,
        token,
        input={"endpointId": endpoint_id, "reason": "move", "url": new_url, "enabled": False},
    )
    assert data["updateWebhookEndpoint"]["webhookEndpoint"] == {
        "id": endpoint_id,
        "url": new_url,
        "enabled": False,
        "eventTypes": ["payment.scheduled", "payment.recovered"],
    }
    # Null event types: every type again.
    data = await run_data(
        db,
        settings,
        clock,
        UPDATE,
        token,
        input={"endpointId": endpoint_id, "reason": "all", "eventTypes": None},
    )
    assert data["updateWebhookEndpoint"]["webhookEndpoint"]["eventTypes"] is None
    # The same values again: nothing changes, nothing is logged.
    data = await run_data(
        db,
        settings,
        clock,
        UPDATE,
        token,
        input={"endpointId": endpoint_id, "reason": "noop", "enabled": False},
    )
    assert data["updateWebhookEndpoint"]["errors"] == []
    entries = await audit_entries(db, action="webhook_endpoint.update")
    # One instant on the test's clock: in the order of their reasons.
    assert sorted(((e.reason, e.before, e.after, e.actor) for e in entries), key=str) == [
        (
            "all",
            {"event_types": ["payment.scheduled", "payment.recovered"]},
            {"event_types": None},
            "api_key:dashboard",
        ),
        (
            "move",
            {"url": URL, "enabled": True},
            {"url": new_url, "enabled": False},
            "api_key:dashboard",
        ),
        (
            "only money",
            {"event_types": None},
            {"event_types": ["payment.scheduled", "payment.recovered"]},
            "api_key:dashboard",
        ),
    ]


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"eventTypes": ["payment.recovered", "payment.teleported"]}, ("INVALID", "eventTypes")),
        ({"eventTypes": []}, ("INVALID", "eventTypes")),
        ({"eventTypes": ["ping"]}, ("INVALID", "eventTypes")),
        ({"url": "not a url"}, ("INVALID", "url")),
        ({"url": "", "enabled": False}, ("INVALID", "url")),
        ({"url": "https://merchant.test/" + "x" * 500}, ("INVALID", "url")),
        ({"url": "https://10.0.0.7/hooks", "enabled": False}, ("URL_NOT_ALLOWED", "url")),
        ({"url": "https://10.0.0.7/hooks"}, ("URL_NOT_ALLOWED", "url")),
        ({"enabled": False, "reason": " "}, ("INVALID", "reason")),
    ],
)
async def test_update_refusals_change_nothing(
    db: Database,
    settings: Settings,
    clock: FixedClock,
    change: dict[str, object],
    refusal: tuple[str, str],
) -> None:
    merchant, token = await _setup(db, clock)
    endpoint_id, _ = await _endpoint(db, settings, clock, merchant, token)
    data = await run_data(
        db,
        settings,
        clock,
        UPDATE,
        token,
        input={"endpointId": endpoint_id, "reason": "r", **change},
    )
    payload = data["updateWebhookEndpoint"]
    assert payload["webhookEndpoint"] is None
    assert _errors(payload) == [refusal]
    asked = change.get("eventTypes")
    unknown = [t for t in asked if t not in WEBHOOK_EVENT_TYPES] if isinstance(asked, list) else []
    for name in unknown:
        assert f"unknown event type {name}" in payload["errors"][0]["message"]
    [row] = await _rows(db, WebhookEndpoint)
    assert (row.url, row.enabled, row.event_types) == (URL, True, None)
    assert await audit_entries(db, action="webhook_endpoint.update") == []


async def test_update_unknown_endpoint_is_not_found(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    _, token = await _setup(db, clock)
    data = await run_data(
        db,
        settings,
        clock,
        UPDATE,
        token,
        input={
            "endpointId": encode_id("WebhookEndpoint", uuid.uuid4()),
            "reason": "r",
            "enabled": False,
        },
    )
    assert _errors(data["updateWebhookEndpoint"]) == [("NOT_FOUND", "endpointId")]


async def test_an_endpoint_receives_only_the_event_types_it_asked_for(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    narrow, _ = await _endpoint(db, settings, clock, merchant, token)
    everything, _ = await _endpoint(db, settings, clock, merchant, token)
    await run_data(
        db,
        settings,
        clock,
        UPDATE,
        token,
        input={"endpointId": narrow, "reason": "r", "eventTypes": ["payment.recovered"]},
    )
    now = clock.now()
    async with db.uow(SYSTEM_SCOPE) as uow:
        for event_type in ("payment.scheduled", "payment.recovered", "payment.exhausted"):
            uow.session.add(
                OutboxEvent(
                    merchant_id=merchant.id, event_type=event_type, payload={}, created_at=now
                )
            )
        await uow.session.flush()
        assert await dispatch_outbox(uow, now=now) == 3
        await uow.commit()
    async with db.session(SYSTEM_SCOPE) as s:
        rows = (
            await s.execute(
                select(col(WebhookDelivery.endpoint_id), col(OutboxEvent.event_type)).join(
                    OutboxEvent, col(OutboxEvent.id) == col(WebhookDelivery.event_id)
                )
            )
        ).all()
    received: dict[uuid.UUID, set[str]] = {}
    for endpoint_id, event_type in rows:
        received.setdefault(endpoint_id, set()).add(event_type)
    assert received == {
        _raw(narrow, "WebhookEndpoint"): {"payment.recovered"},
        _raw(everything, "WebhookEndpoint"): {
            "payment.scheduled",
            "payment.recovered",
            "payment.exhausted",
        },
    }


def test_the_event_type_registry_names_every_payment_state() -> None:
    assert "payment.recovered" in WEBHOOK_EVENT_TYPES
    assert "payment.not_retryable" in WEBHOOK_EVENT_TYPES
    assert "payment.rescheduled" in WEBHOOK_EVENT_TYPES
    # The end actions' events too: an endpoint may ask for exactly the types the feed lists.
    assert "payment.end_action" in WEBHOOK_EVENT_TYPES
    assert "payment.end_action_failed" in WEBHOOK_EVENT_TYPES
    assert len(set(WEBHOOK_EVENT_TYPES)) == len(WEBHOOK_EVENT_TYPES)


# --- deleteWebhookEndpoint ------------------------------------------------------------------


async def test_delete_stops_pending_deliveries_and_removes_the_history(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    endpoint_id, _ = await _endpoint(db, settings, clock, merchant, token)
    kept_id, _ = await _endpoint(db, settings, clock, merchant, token)
    raw = _raw(endpoint_id, "WebhookEndpoint")
    await queue_delivery(db, merchant, raw, clock, event_type="payment.scheduled")
    await queue_delivery(
        db,
        merchant,
        raw,
        clock,
        event_type="payment.recovered",
        status=WebhookDeliveryStatus.DELIVERED,
        attempts=1,
    )
    await queue_delivery(
        db, merchant, _raw(kept_id, "WebhookEndpoint"), clock, event_type="payment.exhausted"
    )
    data = await run_data(
        db, settings, clock, DELETE, token, input={"endpointId": endpoint_id, "reason": "gone"}
    )
    assert data["deleteWebhookEndpoint"] == {"deletedWebhookEndpointId": endpoint_id, "errors": []}
    assert [e.id for e in await _rows(db, WebhookEndpoint)] == [_raw(kept_id, "WebhookEndpoint")]
    assert await _rows(db, WebhookDelivery, col(WebhookDelivery.endpoint_id) == raw) == []
    # The other endpoint's pending delivery is the only one sent.
    sent = await _deliver(db, settings, clock)
    assert [r.headers[EVENT_HEADER] for r in sent] == ["payment.exhausted"]
    [entry] = await audit_entries(db, action="webhook_endpoint.delete")
    assert entry.before == {
        "url": URL,
        "enabled": True,
        "event_types": None,
        "deliveries": 2,
        "pending_deliveries": 1,
    }
    assert (entry.after, entry.reason, entry.entity_id) == (None, "gone", str(raw))
    again = await run_data(
        db, settings, clock, DELETE, token, input={"endpointId": endpoint_id, "reason": "gone"}
    )
    assert _errors(again["deleteWebhookEndpoint"]) == [("NOT_FOUND", "endpointId")]


async def test_delete_needs_a_reason(db: Database, settings: Settings, clock: FixedClock) -> None:
    merchant, token = await _setup(db, clock)
    endpoint_id, _ = await _endpoint(db, settings, clock, merchant, token)
    data = await run_data(
        db, settings, clock, DELETE, token, input={"endpointId": endpoint_id, "reason": ""}
    )
    assert _errors(data["deleteWebhookEndpoint"]) == [("INVALID", "reason")]
    assert len(await _rows(db, WebhookEndpoint)) == 1


# --- sendTestWebhook ------------------------------------------------------------------------


async def test_send_test_webhook_queues_a_signed_ping_for_that_endpoint_only(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    endpoint_id, secret = await _endpoint(db, settings, clock, merchant, token)
    await _endpoint(db, settings, clock, merchant, token)
    # Even an endpoint narrowed to other types, and disabled, gets the test.
    await run_data(
        db,
        settings,
        clock,
        UPDATE,
        token,
        input={
            "endpointId": endpoint_id,
            "reason": "r",
            "eventTypes": ["payment.recovered"],
            "enabled": False,
        },
    )
    data = await run_data(db, settings, clock, TEST, token, id=endpoint_id)
    payload = data["sendTestWebhook"]
    assert payload["errors"] == []
    delivery = payload["delivery"]
    assert payload["webhookEndpoint"] == {"id": endpoint_id}
    assert (delivery["eventType"], delivery["status"], delivery["attempts"]) == (
        "ping",
        "PENDING",
        0,
    )
    assert delivery["redeliveryOf"] is None
    listed = await run_data(db, settings, clock, RECENT, token, id=endpoint_id)
    assert listed["node"]["recentDeliveries"] == [
        {"id": delivery["id"], "eventType": "ping", "status": "PENDING", "redeliveryOf": None}
    ]
    # Dispatching the outbox fans nothing out: the ping went out already fanned out.
    async with db.uow(SYSTEM_SCOPE) as uow:
        assert await dispatch_outbox(uow, now=clock.now()) == 0
        await uow.commit()
    [request] = await _deliver(db, settings, clock)
    assert request.headers[EVENT_HEADER] == "ping"
    assert request.headers[DELIVERY_HEADER] == str(_raw(delivery["id"], "WebhookDelivery"))
    now = int(clock.now().timestamp())
    assert verify(secret, request.headers[SIGNATURE_HEADER], request.content, now=now)
    body = json.loads(request.content)
    assert body["type"] == "ping"
    assert body["data"]["endpoint_id"] == str(_raw(endpoint_id, "WebhookEndpoint"))
    listed = await run_data(db, settings, clock, RECENT, token, id=endpoint_id)
    assert listed["node"]["recentDeliveries"][0]["status"] == "DELIVERED"
    [entry] = await audit_entries(db, action="webhook_endpoint.test")
    assert entry.actor == "api_key:dashboard"


async def test_send_test_webhook_refusals(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    endpoint_id, _ = await _endpoint(db, settings, clock, merchant, token)
    # An endpoint stored before its URL became refused is not sent a test.
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(update(WebhookEndpoint).values(url="https://10.1.2.3/hooks"))
        await uow.commit()
    data = await run_data(db, settings, clock, TEST, token, id=endpoint_id)
    assert _errors(data["sendTestWebhook"]) == [("URL_NOT_ALLOWED", "url")]
    data = await run_data(db, settings, clock, TEST, token, id="not-an-id")
    assert _errors(data["sendTestWebhook"]) == [("NOT_FOUND", "endpointId")]
    assert await _rows(db, WebhookDelivery) == []
    assert await audit_entries(db, action="webhook_endpoint.test") == []


# --- redeliverWebhook -----------------------------------------------------------------------


async def test_redeliver_sends_the_same_event_again_signed_anew(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    endpoint_id, secret = await _endpoint(db, settings, clock, merchant, token)
    raw = _raw(endpoint_id, "WebhookEndpoint")
    original = await queue_delivery(db, merchant, raw, clock, event_type="payment.recovered")
    original_id = encode_id("WebhookDelivery", original)
    # While the first delivery is pending, a redelivery is refused.
    data = await run_data(db, settings, clock, REDELIVER, token, id=original_id, reason="again")
    assert _errors(data["redeliverWebhook"]) == [("INVALID_STATE", "deliveryId")]
    [first] = await _deliver(db, settings, clock, status=500)
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            update(WebhookDelivery).values(status=WebhookDeliveryStatus.FAILED)
        )
        await uow.commit()
    clock.set(clock.now() + timedelta(hours=1))
    data = await run_data(db, settings, clock, REDELIVER, token, id=original_id, reason="again")
    payload = data["redeliverWebhook"]
    assert payload["errors"] == []
    delivery = payload["delivery"]
    assert delivery["id"] != original_id
    assert (delivery["eventType"], delivery["status"], delivery["redeliveryOf"]) == (
        "payment.recovered",
        "PENDING",
        original_id,
    )
    [second] = await _deliver(db, settings, clock)
    assert second.content == first.content
    assert second.headers[DELIVERY_HEADER] != first.headers[DELIVERY_HEADER]
    assert second.headers[SIGNATURE_HEADER] != first.headers[SIGNATURE_HEADER]
    now = int(clock.now().timestamp())
    assert verify(secret, second.headers[SIGNATURE_HEADER], second.content, now=now)
    listed = await run_data(db, settings, clock, RECENT, token, id=endpoint_id)
    assert [(d["status"], d["redeliveryOf"]) for d in listed["node"]["recentDeliveries"]] == [
        ("DELIVERED", original_id),
        ("FAILED", None),
    ]
    [entry] = await audit_entries(db, action="webhook_delivery.redeliver")
    assert (entry.reason, entry.after["redelivery_of"]) == ("again", str(original))  # type: ignore[index]
    data = await run_data(
        db,
        settings,
        clock,
        REDELIVER,
        token,
        id=encode_id("WebhookDelivery", uuid.uuid4()),
        reason="again",
    )
    assert _errors(data["redeliverWebhook"]) == [("NOT_FOUND", "deliveryId")]
    data = await run_data(db, settings, clock, REDELIVER, token, id=original_id, reason=" ")
    assert _errors(data["redeliverWebhook"]) == [("INVALID", "reason")]


# --- updateProcessorCredentials -------------------------------------------------------------


async def test_credentials_are_checked_at_the_processor_before_they_are_stored(
    db: Database, sandbox_settings: Settings, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    merchant, token = await _setup(db, clock)
    connection = await make_connection(db, merchant, now=clock.now(), settings=sandbox_settings)
    cid = encode_id("ProcessorConnection", connection.id)
    box = _box(sandbox_settings)

    async def stored() -> dict[str, Any]:
        [row] = await _rows(db, ProcessorConnection)
        return dict(box.open(row.credentials_encrypted))

    async with sandbox_world(clock.now()) as sandbox:
        key = await stripe_account(sandbox)
        async with db.uow(SYSTEM_SCOPE) as uow:
            await uow.session.execute(
                update(ProcessorConnection).values(
                    base_url=f"{sandbox.url}/stripe",
                    status=ConnectionStatus.ERROR,
                    last_error="stripe: HTTP 401, check credentials",
                )
            )
            await uow.commit()
        refused = await run_data(
            db,
            sandbox_settings,
            clock,
            CREDENTIALS,
            token,
            id=cid,
            credentials={"api_key": "sk_wrong_secret_value"},
            reason="rotate",
        )
        payload = refused["updateProcessorCredentials"]
        assert _errors(payload) == [("INVALID", "credentials")]
        assert "refused these credentials (HTTP 401)" in payload["errors"][0]["message"]
        missing = await run_data(
            db, sandbox_settings, clock, CREDENTIALS, token, id=cid, credentials={}, reason="rotate"
        )
        assert _errors(missing["updateProcessorCredentials"]) == [("INVALID", "credentials")]
        assert (await stored())["api_key"] == "sk_test_placeholder"
        data = await run_data(
            db,
            sandbox_settings,
            clock,
            CREDENTIALS,
            token,
            id=cid,
            credentials={"api_key": key},
            reason="rotate",
        )
    assert data["updateProcessorCredentials"] == {
        "processorConnection": {"id": cid, "status": "ACTIVE", "lastError": None},
        "errors": [],
    }
    assert await stored() == {"api_key": key}
    [entry] = await audit_entries(db, action="processor_connection.update_credentials")
    assert entry.before == {"status": "error"}
    assert entry.after is not None
    assert (entry.after["status"], entry.after["credential_names"]) == ("active", ["api_key"])
    assert key not in json.dumps(entry.after)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert key not in logged
    assert "sk_wrong_secret_value" not in logged


async def test_rotated_credentials_reach_no_response_and_no_log_line_over_http(
    db: Database,
    sandbox_settings: Settings,
    clock: FixedClock,
    services: Services,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    merchant, token = await _setup(db, clock)
    connection = await make_connection(db, merchant, now=clock.now(), settings=sandbox_settings)
    cid = encode_id("ProcessorConnection", connection.id)
    responses: list[str] = []
    async with sandbox_world(clock.now()) as sandbox:
        key = await stripe_account(sandbox)
        async with db.uow(SYSTEM_SCOPE) as uow:
            await uow.session.execute(
                update(ProcessorConnection).values(base_url=f"{sandbox.url}/stripe")
            )
            await uow.commit()
        async with portal_http(db, services.redis_url, sandbox_settings, clock) as http:
            for credentials in ({"api_key": "sk_live_leaked_wrong"}, {"api_key": key}):
                response = await http.post(
                    "/graphql",
                    json={
                        "query": CREDENTIALS,
                        "variables": {"id": cid, "credentials": credentials, "reason": "r"},
                    },
                    headers={"authorization": f"Bearer {token}"},
                )
                assert response.status_code == 200
                responses.append(response.text)
    refused, accepted = (json.loads(r)["data"]["updateProcessorCredentials"] for r in responses)
    assert _errors(refused) == [("INVALID", "credentials")]
    assert accepted["errors"] == []
    assert caplog.records, "nothing was logged, so the log assertion would prove nothing"
    for secret in (key, "sk_live_leaked_wrong"):
        assert all(secret not in r for r in responses)
        assert secret not in caplog.text
        assert all(secret not in str(r.args) + r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("processor", list(Processor))
async def test_each_processor_checks_credentials_with_one_read(
    db: Database, sandbox_settings: Settings, clock: FixedClock, processor: Processor
) -> None:
    """Every processor's check: the sandbox account's own credentials are accepted, a wrong
    secret is refused with the processor's 401, and only accepted ones are stored."""
    merchant, token = await _setup(db, clock)
    async with sandbox_world(clock.now()) as sandbox:
        suffix = uuid.uuid4().hex[:8]
        account_id, key = f"{processor.value}_{suffix}", f"key_{suffix}"
        hmac_key = "ab" * 32 if processor is Processor.ADYEN else None
        body = {
            "processor": processor.value,
            "account_id": account_id,
            "merchant_seed": 3,
            "api_key": key,
            "history_days": 1,
            "customers": 5,
        }
        await create_account(sandbox.http, {**body, "hmac_key_hex": hmac_key} if hmac_key else body)
        good = connection_credentials(processor.value, account_id, key, hmac_key)
        async with db.uow(SYSTEM_SCOPE) as uow:
            connection = await create_connection(
                uow,
                principal=system_principal(),
                merchant_id=merchant.id,
                kind=processor,
                base_url=f"{sandbox.url}/{processor.value}",
                policy=SANDBOX_URLS,
                credentials=dict.fromkeys(good, "placeholder") | {"hmac_key_hex": "00"},
                box=_box(sandbox_settings),
                account_ref=account_id,
                now=clock.now(),
            )
            await uow.commit()
        cid = encode_id("ProcessorConnection", connection.id)
        wrong = {
            k: (v if k in ("public_key", "hmac_key_hex") else "wrong") for k, v in good.items()
        }
        for credentials, refusal in ((wrong, [("INVALID", "credentials")]), (good, [])):
            data = await run_data(
                db,
                sandbox_settings,
                clock,
                CREDENTIALS,
                token,
                id=cid,
                credentials=credentials,
                reason="rotate",
            )
            assert _errors(data["updateProcessorCredentials"]) == refusal, credentials
    [row] = await _rows(db, ProcessorConnection)
    assert dict(_box(sandbox_settings).open(row.credentials_encrypted)) == good


async def test_an_adyen_signing_key_must_be_hexadecimal(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    connection = await make_connection(
        db, merchant, now=clock.now(), settings=settings, kind=Processor.ADYEN
    )
    data = await run_data(
        db,
        settings,
        clock,
        CREDENTIALS,
        token,
        id=encode_id("ProcessorConnection", connection.id),
        credentials={"api_key": "k", "hmac_key_hex": "not-hex"},
        reason="rotate",
    )
    payload = data["updateProcessorCredentials"]
    assert _errors(payload) == [("INVALID", "credentials")]
    assert payload["errors"][0]["message"] == "hmac_key_hex must be hexadecimal"


async def _rotate_at_port_9(db: Database, settings: Settings, clock: FixedClock) -> Any:
    """Rotate the credentials of a connection pointed at loopback port 9, where nothing listens;
    the mutation's payload."""
    merchant, token = await _setup(db, clock)
    connection = await make_connection(db, merchant, now=clock.now(), settings=settings)
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            update(ProcessorConnection).values(base_url="http://127.0.0.1:9/stripe")
        )
        await uow.commit()
    data = await run_data(
        db,
        settings,
        clock,
        CREDENTIALS,
        token,
        id=encode_id("ProcessorConnection", connection.id),
        credentials={"api_key": "sk_new"},
        reason="rotate",
    )
    return data["updateProcessorCredentials"]


async def test_credentials_are_not_checked_at_an_address_the_policy_refuses(
    db: Database, clock: FixedClock
) -> None:
    """Checked again when asked, resolved: a connection whose host points inside the network
    now (here loopback, which the default policy refuses) is not asked anything."""
    payload = await _rotate_at_port_9(db, Settings(environment="test"), clock)
    assert _errors(payload) == [("INVALID", "credentials")]
    assert "address is not allowed" in payload["errors"][0]["message"]


async def test_credentials_that_cannot_be_checked_are_not_stored(
    db: Database, sandbox_settings: Settings, clock: FixedClock
) -> None:
    # Loopback allowed, nothing listens there: the check cannot reach the processor.
    payload = await _rotate_at_port_9(db, sandbox_settings, clock)
    assert _errors(payload) == [("INVALID", "credentials")]
    assert "could not be checked" in payload["errors"][0]["message"]
    assert "not allowed" not in payload["errors"][0]["message"]
    [row] = await _rows(db, ProcessorConnection)
    assert (
        _box(sandbox_settings).open(row.credentials_encrypted)["api_key"] == "sk_test_placeholder"
    )
    assert await audit_entries(db, action="processor_connection.update_credentials") == []


# --- disconnectProcessor --------------------------------------------------------------------


async def test_disconnect_stops_the_connection_and_cancels_its_open_recoveries(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    connection = await make_connection(db, merchant, now=clock.now(), settings=settings)
    other = await make_connection(db, merchant, now=clock.now(), settings=settings)
    now = clock.now()
    scheduled = await make_payments(db, merchant, 2, now=now, connection=connection)
    recovered = await make_payments(
        db, merchant, 1, now=now, connection=connection, state=PaymentState.RECOVERED
    )
    elsewhere = await make_payments(db, merchant, 1, now=now, connection=other)
    cid = encode_id("ProcessorConnection", connection.id)
    data = await run_data(db, settings, clock, DISCONNECT, token, id=cid, reason="switching")
    assert data["disconnectProcessor"] == {
        "processorConnection": {"id": cid, "status": "DISCONNECTED"},
        "recoveriesCanceled": 2,
        "errors": [],
    }
    states = {p.id: p.state for p in await _rows(db, Payment)}
    assert [states[p.id] for p in scheduled] == [PaymentState.CANCELED] * 2
    assert states[recovered[0].id] is PaymentState.RECOVERED
    assert states[elsewhere[0].id] is PaymentState.SCHEDULED
    transitions = await _rows(
        db, PaymentTransition, col(PaymentTransition.payment_id) == scheduled[0].id
    )
    assert transitions[-1].event == "connection_disconnected"
    [row] = await _rows(db, ProcessorConnection, col(ProcessorConnection.id) == connection.id)
    assert _box(settings).open(row.credentials_encrypted) == {}
    async with db.uow(SYSTEM_SCOPE) as uow:
        assert connection.id not in await active_connection_ids(uow)
    [entry] = await audit_entries(db, action="processor_connection.disconnect")
    assert (entry.before, entry.after, entry.reason) == (
        {"status": "active"},
        {"status": "disconnected", "recoveries_canceled": 2},
        "switching",
    )
    # Again: nothing changes, nothing is logged.
    data = await run_data(db, settings, clock, DISCONNECT, token, id=cid, reason="again")
    assert data["disconnectProcessor"]["recoveriesCanceled"] == 0
    assert len(await audit_entries(db, action="processor_connection.disconnect")) == 1
    # It cannot be paused, resumed or given credentials any more.
    data = await run_data(db, settings, clock, PAUSE, token, id=cid)
    assert _errors(data["pauseProcessorConnection"]) == [("INVALID_STATE", "id")]
    data = await run_data(
        db,
        settings,
        clock,
        CREDENTIALS,
        token,
        id=cid,
        credentials={"api_key": "k"},
        reason="r",
    )
    assert _errors(data["updateProcessorCredentials"]) == [("INVALID_STATE", "id")]


async def test_a_disconnected_adyen_connection_refuses_its_webhooks(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    connection = await make_connection(
        db, merchant, now=clock.now(), settings=settings, kind=Processor.ADYEN
    )
    cid = encode_id("ProcessorConnection", connection.id)
    await run_data(db, settings, clock, DISCONNECT, token, id=cid, reason="switching")
    with pytest.raises(NotFound, match="disconnected"):
        await receive_adyen(db, connection.id, b"{}", box=_box(settings), now=clock.now())


async def test_disconnect_is_refused_while_a_charge_is_in_flight(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    connection = await make_connection(db, merchant, now=clock.now(), settings=settings)
    await make_payments(
        db, merchant, 1, now=clock.now(), connection=connection, state=PaymentState.RETRYING
    )
    cid = encode_id("ProcessorConnection", connection.id)
    data = await run_data(db, settings, clock, DISCONNECT, token, id=cid, reason="switching")
    assert _errors(data["disconnectProcessor"]) == [("INVALID_STATE", "id")]
    [row] = await _rows(db, ProcessorConnection)
    assert row.status is ConnectionStatus.ACTIVE
    data = await run_data(
        db,
        settings,
        clock,
        DISCONNECT,
        token,
        id=encode_id("ProcessorConnection", uuid.uuid4()),
        reason="x",
    )
    assert _errors(data["disconnectProcessor"]) == [("NOT_FOUND", "id")]


# --- API key scopes and expiry --------------------------------------------------------------


async def test_keys_are_created_with_scopes_and_an_expiry(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    mid = encode_id("Merchant", merchant.id)
    expires = (clock.now() + timedelta(days=30)).isoformat()
    data = await run_data(
        db,
        settings,
        clock,
        CREATE_KEY,
        token,
        input={
            "role": "MERCHANT",
            "merchantIds": [mid],
            "name": "reporting",
            "scopes": ["READ"],
            "expiresAt": expires,
        },
    )
    payload = data["createApiKey"]
    assert payload["errors"] == []
    assert payload["apiKey"]["scopes"] == ["READ"]
    assert payload["apiKey"]["expiresAt"] == expires
    principal = await authenticate(db, payload["token"], now=clock.now())
    assert principal is not None
    assert principal.scopes == frozenset({ApiKeyScope.READ})
    # Both scopes unless told.
    data = await run_data(
        db,
        settings,
        clock,
        CREATE_KEY,
        token,
        input={"role": "MERCHANT", "merchantIds": [mid], "name": "full"},
    )
    assert data["createApiKey"]["apiKey"]["scopes"] == ["READ", "WRITE"]
    assert data["createApiKey"]["apiKey"]["expiresAt"] is None
    for bad, field in (
        ({"scopes": ["WRITE"]}, "scopes"),
        ({"scopes": []}, "scopes"),
        ({"expiresAt": clock.now().isoformat()}, "expiresAt"),
    ):
        data = await run_data(
            db,
            settings,
            clock,
            CREATE_KEY,
            token,
            input={"role": "MERCHANT", "merchantIds": [mid], "name": "bad", **bad},
        )
        assert _errors(data["createApiKey"]) == [("INVALID", field)], bad


async def test_an_expiring_key_creates_only_keys_that_expire_no_later(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Short-lived", now=clock.now())
    mid = encode_id("Merchant", merchant.id)
    expires = clock.now() + timedelta(days=1)
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now(), expires_at=expires)
    for later in (None, (expires + timedelta(seconds=1)).isoformat()):
        data = await run_data(
            db,
            settings,
            clock,
            CREATE_KEY,
            token,
            input={"role": "MERCHANT", "merchantIds": [mid], "name": "n", "expiresAt": later},
        )
        assert _errors(data["createApiKey"]) == [("INVALID", "expiresAt")], later
        assert data["createApiKey"]["token"] is None
    data = await run_data(
        db,
        settings,
        clock,
        CREATE_KEY,
        token,
        input={
            "role": "MERCHANT",
            "merchantIds": [mid],
            "name": "n",
            "expiresAt": expires.isoformat(),
        },
    )
    assert data["createApiKey"]["errors"] == []
    assert data["createApiKey"]["apiKey"]["expiresAt"] == expires.isoformat()


async def test_an_expired_key_authenticates_like_an_unknown_one(
    db: Database, settings: Settings, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    merchant = await make_merchant(db, "Expiring", now=clock.now())
    expires = clock.now() + timedelta(hours=1)
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now(), expires_at=expires)
    result = await run(db, settings, clock, "{ viewer { role } }", token=token)
    assert result.errors is None
    clock.set(clock.now() + timedelta(hours=1))
    assert await authenticate(db, token, now=clock.now()) is None
    result = await run(db, settings, clock, "{ viewer { role } }", token=token)
    assert codes(result) == ["UNAUTHENTICATED"]
    kid = await key_id(db, token)
    messages = [r.getMessage() for r in caplog.records]
    assert any(str(kid) in m and m.endswith("refused: expired") for m in messages)
    assert not any(token in m for m in messages)
    assert await authenticate(db, "rp_unknown", now=clock.now()) is None
    assert not any("rp_unknown" in r.getMessage() for r in caplog.records)


async def test_the_key_cache_does_not_outlive_an_expiry(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Cached", now=clock.now())
    expires = clock.now() + timedelta(seconds=3)
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now(), expires_at=expires)
    cache = PrincipalCache(timedelta(seconds=60))
    principal = await authenticate(db, token, now=clock.now())
    assert principal is not None
    cache.put(token, principal, now=clock.now())
    assert cache.get(token, now=clock.now() + timedelta(seconds=2)) == principal
    # Well within the cache's minute, but past the key's expiry.
    assert cache.get(token, now=expires) is None


async def test_a_lookup_under_way_when_its_key_is_revoked_is_not_cached(
    db: Database, clock: FixedClock
) -> None:
    """A lookup that began before this process revoked the key and ends after it read the key
    as it was: what it found is not put back in the cache."""
    merchant = await make_merchant(db, "Acme", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    cache = PrincipalCache(timedelta(seconds=60))
    began = cache.generation
    principal = await authenticate(db, token, now=clock.now())
    assert principal is not None
    assert principal.key_id is not None
    cache.forget(principal.key_id)  # the revocation, while the lookup was under way
    cache.put(token, principal, now=clock.now(), generation=began)
    assert cache.get(token, now=clock.now()) is None
    cache.put(token, principal, now=clock.now(), generation=cache.generation)
    assert cache.get(token, now=clock.now()) == principal


# --- Partners onboarding merchants ----------------------------------------------------------

ONBOARD = """mutation { createMerchant(input: {name: "Onboarded"}) {
  merchant { id name retryPolicy { version } } errors { code } } }"""


async def test_a_partner_onboards_a_merchant_and_sets_it_up(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    existing = await make_merchant(db, "Existing", now=clock.now())
    partner = await make_key(db, Role.PARTNER, [existing], now=clock.now(), name="integrator")
    data = await run_data(db, settings, clock, ONBOARD, partner)
    created = data["createMerchant"]
    assert created["errors"] == []
    # Seen in the same response: the grant applies to the rest of the request.
    assert created["merchant"]["name"] == "Onboarded"
    assert created["merchant"]["retryPolicy"] == {"version": 1}
    new_id = _raw(created["merchant"]["id"], "Merchant")
    grants = await _rows(db, ApiKeyMerchant, col(ApiKeyMerchant.merchant_id) == new_id)
    assert [g.api_key_id for g in grants] == [await key_id(db, partner)]
    [entry] = await audit_entries(db, action="merchant.create", merchant_id=new_id)
    assert entry.after is not None
    assert entry.after["granted_to_api_key"] == str(await key_id(db, partner))
    # It connects a processor and registers a webhook for it.
    await _endpoint(db, settings, clock, Merchant(id=new_id, name="x"), partner)
    connect = """mutation($input: ConnectProcessorInput!) { connectProcessor(input: $input) {
      processorConnection { kind } errors { code field } } }"""
    data = await run_data(
        db,
        settings,
        clock,
        connect,
        partner,
        input={
            "merchantId": created["merchant"]["id"],
            "kind": "CHECKOUT",
            "credentials": {"api_key": "sk_test"},
            "baseUrl": "https://checkout.test",
        },
    )
    assert data["connectProcessor"] == {"processorConnection": {"kind": "CHECKOUT"}, "errors": []}
    # Configuring the merchant's recovery stays with its own key and support.
    pause = """mutation($id: ID!) { pauseMerchantRecovery(merchantId: $id, reason: "r") {
      errors { code } } }"""
    result = await run(
        db, settings, clock, pause, token=partner, variables={"id": created["merchant"]["id"]}
    )
    assert codes(result) == ["FORBIDDEN"]


async def test_a_read_only_partner_onboards_nothing(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    existing = await make_merchant(db, "Existing", now=clock.now())
    reader = await make_key(
        db, Role.PARTNER, [existing], now=clock.now(), scopes=frozenset({ApiKeyScope.READ})
    )
    result = await run(db, settings, clock, ONBOARD, token=reader)
    assert codes(result) == ["FORBIDDEN"]
    assert [m.name for m in await _rows(db, Merchant)] == ["Existing"]
    assert await _rows(db, ApiKeyMerchant, col(ApiKeyMerchant.merchant_id) != existing.id) == []
