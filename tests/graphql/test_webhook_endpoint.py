"""Webhook endpoints: create with a one-time secret, refuse inward URLs, rotate with a grace
period, enable, recent deliveries."""

import hashlib
import hmac
import json
import logging
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select

from app.clock import FixedClock
from app.crypto import CredentialBox
from app.db import Database
from app.embedded import Services
from app.enums import Role
from app.models.merchant import Merchant
from app.models.webhook_endpoint import WebhookEndpoint
from app.services.webhook_endpoint import create_endpoint
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, system_principal
from app.workflows.webhook_delivery import (
    SIGNATURE_HEADER,
    deliver_due,
    sign,
    verify,
)
from resolvers.ids import decode_id, encode_id
from tests.support.audit import audit_entries
from tests.support.factories import make_key, make_merchant
from tests.support.graphql import codes, run, run_counted, run_data
from tests.support.http import portal_http
from tests.support.webhooks import PUBLIC, queue_delivery, table_resolver

CREATE = """mutation($input: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $input) {
  webhookEndpoint { id url enabled createdAt } secret errors { code message field } } }"""

ROTATE = """mutation($input: RotateWebhookSecretInput!) { rotateWebhookSecret(input: $input) {
  webhookEndpoint { id url previousSecretExpiresAt } secret errors { code message field } } }"""

SET_ENABLED = """mutation($input: SetWebhookEndpointEnabledInput!) {
  setWebhookEndpointEnabled(input: $input) {
    webhookEndpoint { id enabled } errors { code message field } } }"""

LIST = """query($id: ID!, $first: Int) { merchant(id: $id) { webhookEndpoints {
  id url enabled createdAt recentDeliveries(first: $first) { eventType status attempts
    lastStatusCode lastError createdAt deliveredAt nextAttemptAt } } } }"""

URL = "https://merchant.test/hooks"


async def _setup(db: Database, clock: FixedClock) -> tuple[Merchant, str]:
    merchant = await make_merchant(db, "Hooked", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now(), name="dashboard")
    return merchant, token


def _box(settings: Settings) -> CredentialBox:
    return CredentialBox(settings.secret_key.get_secret_value())


async def _endpoint_row(db: Database, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    async with db.session(SYSTEM_SCOPE) as s:
        found = await s.execute(
            select(WebhookEndpoint).where(col(WebhookEndpoint.id) == endpoint_id)
        )
        return found.scalar_one()


async def _endpoints(db: Database) -> list[WebhookEndpoint]:
    async with db.session(SYSTEM_SCOPE) as s:
        return list((await s.execute(select(WebhookEndpoint))).scalars().all())


async def _create(
    db: Database, settings: Settings, clock: FixedClock, merchant: Merchant, token: str
) -> tuple[str, str]:
    """A new endpoint's global id and its secret."""
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
    return payload["webhookEndpoint"]["id"], payload["secret"]


def _raw_id(global_id: str) -> uuid.UUID:
    return decode_id(global_id, expected="WebhookEndpoint")[1]


async def test_create_returns_the_secret_once_and_never_again(
    db: Database,
    settings: Settings,
    clock: FixedClock,
    services: Services,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    merchant, token = await _setup(db, clock)
    headers = {"authorization": f"Bearer {token}"}
    create = {"input": {"merchantId": encode_id("Merchant", merchant.id), "url": URL}}
    # Over HTTP, so the request and response pass the view's logging.
    async with portal_http(db, services.redis_url, settings, clock) as http:
        response = await http.post(
            "/graphql", json={"query": CREATE, "variables": create}, headers=headers
        )
        assert response.status_code == 200
        payload = response.json()["data"]["createWebhookEndpoint"]
        listed = await http.post(
            "/graphql",
            json={"query": LIST, "variables": {"id": encode_id("Merchant", merchant.id)}},
            headers=headers,
        )
    assert payload["errors"] == []
    created = payload["webhookEndpoint"]
    assert created["url"] == URL
    assert created["enabled"] is True
    secret = payload["secret"]
    assert isinstance(secret, str)
    assert len(secret) >= 40
    assert secret not in listed.text
    assert listed.json()["data"]["merchant"]["webhookEndpoints"][0]["id"] == created["id"]

    row = await _endpoint_row(db, _raw_id(created["id"]))
    assert secret.encode() not in row.secret_encrypted
    assert _box(settings).open(row.secret_encrypted) == {"secret": secret}

    merchant_id = encode_id("Merchant", merchant.id)
    later: list[Any] = []
    for query, variables in (
        (LIST, {"id": merchant_id}),
        (
            "query($id: ID!) { node(id: $id) { id ... on WebhookEndpoint { url enabled } } }",
            {"id": created["id"]},
        ),
        (
            """query($id: ID!) { merchant(id: $id) { auditLog { edges { node {
            action before after reason } } } } }""",
            {"id": merchant_id},
        ),
        (SET_ENABLED, {"input": {"endpointId": created["id"], "enabled": False, "reason": "x"}}),
        (ROTATE, {"input": {"endpointId": created["id"], "reason": "  "}}),
    ):
        result = await run(db, settings, clock, query, token=token, variables=variables)
        assert result.errors is None, result.errors
        later.append(result.data)
    assert later[0]["merchant"]["webhookEndpoints"][0]["id"] == created["id"]
    assert later[1]["node"] == {"id": created["id"], "url": URL, "enabled": True}
    assert later[3]["setWebhookEndpointEnabled"]["errors"] == []
    assert [e["code"] for e in later[4]["rotateWebhookSecret"]["errors"]] == ["INVALID"]
    for response in later:
        assert secret not in json.dumps(response)
    [entry] = await audit_entries(db, action="webhook_endpoint.create")
    assert entry.actor == "api_key:dashboard"
    assert entry.after == {"url": URL}
    assert caplog.records, "nothing was logged, so the log assertion would prove nothing"
    assert secret not in caplog.text
    assert all(secret not in str(r.args) + r.getMessage() for r in caplog.records)


async def _deliver_one(
    db: Database, settings: Settings, clock: FixedClock, merchant: Merchant, endpoint_id: uuid.UUID
) -> httpx.Request:
    """Queue one event for the endpoint, run the delivery job's sender, return what it sent."""
    await queue_delivery(db, merchant, endpoint_id, clock, event_type="payment.recovered")
    sent: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(receive)) as http:
        counts = await deliver_due(
            db,
            http=http,
            box=_box(settings),
            clock=clock,
            policy=settings.url_policy,
            resolve=table_resolver({"merchant.test": [PUBLIC]}),
        )
    assert counts["delivered"] == 1
    [request] = sent
    return request


def _v1_count(request: httpx.Request) -> int:
    return sum(p.startswith("v1=") for p in request.headers[SIGNATURE_HEADER].split(","))


async def test_rotating_a_leaked_secret_ends_it_at_once(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    global_id, old = await _create(db, settings, clock, merchant, token)
    endpoint_id = _raw_id(global_id)
    data = await run_data(
        db,
        settings,
        clock,
        ROTATE,
        token,
        input={"endpointId": global_id, "reason": "leaked", "previousSecretValidHours": 0},
    )
    payload = data["rotateWebhookSecret"]
    assert payload["errors"] == []
    assert payload["webhookEndpoint"] == {
        "id": global_id,
        "url": URL,
        "previousSecretExpiresAt": None,
    }
    new = payload["secret"]
    assert isinstance(new, str)
    assert new != old
    row = await _endpoint_row(db, endpoint_id)
    assert _box(settings).open(row.secret_encrypted) == {"secret": new}
    assert (row.previous_secret_encrypted, row.previous_secret_expires_at) == (None, None)

    # The delivery job itself now signs with the new secret only.
    request = await _deliver_one(db, settings, clock, merchant, endpoint_id)
    now = int(clock.now().timestamp())
    assert _v1_count(request) == 1
    assert verify(new, request.headers[SIGNATURE_HEADER], request.content, now=now)
    assert not verify(old, request.headers[SIGNATURE_HEADER], request.content, now=now)

    [entry] = await audit_entries(db, action="webhook_endpoint.rotate_secret")
    assert (entry.actor, entry.reason, entry.entity_id) == (
        "api_key:dashboard",
        "leaked",
        str(endpoint_id),
    )
    assert entry.after is not None
    assert entry.after["previous_secret_expires_at"] is None
    logged = json.dumps([entry.before, entry.after])
    assert old not in logged
    assert new not in logged


async def test_a_rotated_secret_keeps_signing_until_its_grace_period_ends(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    global_id, first = await _create(db, settings, clock, merchant, token)
    endpoint_id = _raw_id(global_id)
    data = await run_data(
        db, settings, clock, ROTATE, token, input={"endpointId": global_id, "reason": "yearly"}
    )
    payload = data["rotateWebhookSecret"]
    second = payload["secret"]
    expires = clock.now() + timedelta(hours=24)
    assert payload["webhookEndpoint"]["previousSecretExpiresAt"] == expires.isoformat()
    row = await _endpoint_row(db, endpoint_id)
    # The old secret is kept sealed like the current one, never in clear.
    assert row.previous_secret_encrypted is not None
    assert first.encode() not in row.previous_secret_encrypted
    assert _box(settings).open(row.previous_secret_encrypted) == {"secret": first}
    assert row.previous_secret_expires_at == expires

    # During the grace period: two signatures, the new secret's first; either verifies.
    request = await _deliver_one(db, settings, clock, merchant, endpoint_id)
    header = request.headers[SIGNATURE_HEADER]
    now = int(clock.now().timestamp())
    assert _v1_count(request) == 2
    assert header.split(",")[1] == sign([second], now, request.content).split(",")[1]
    for secret in (first, second):
        assert verify(secret, header, request.content, now=now)
    assert not verify("s" * 43, header, request.content, now=now)

    # Up to the last second before expiry both sign; at expiry only the new one does.
    clock.set(expires - timedelta(seconds=1))
    assert _v1_count(await _deliver_one(db, settings, clock, merchant, endpoint_id)) == 2
    clock.set(expires)
    request = await _deliver_one(db, settings, clock, merchant, endpoint_id)
    now = int(clock.now().timestamp())
    assert _v1_count(request) == 1
    assert verify(second, request.headers[SIGNATURE_HEADER], request.content, now=now)
    assert not verify(first, request.headers[SIGNATURE_HEADER], request.content, now=now)

    # A second rotation keeps only the secret it replaces, for the grace period asked.
    data = await run_data(
        db,
        settings,
        clock,
        ROTATE,
        token,
        input={"endpointId": global_id, "reason": "again", "previousSecretValidHours": 2},
    )
    third = data["rotateWebhookSecret"]["secret"]
    request = await _deliver_one(db, settings, clock, merchant, endpoint_id)
    now = int(clock.now().timestamp())
    header = request.headers[SIGNATURE_HEADER]
    assert [verify(s, header, request.content, now=now) for s in (first, second, third)] == [
        False,
        True,
        True,
    ]
    assert (await _endpoint_row(db, endpoint_id)).previous_secret_expires_at == (
        clock.now() + timedelta(hours=2)
    )


async def test_rotation_over_http_logs_neither_secret(
    db: Database,
    settings: Settings,
    clock: FixedClock,
    services: Services,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    merchant, token = await _setup(db, clock)
    global_id, old = await _create(db, settings, clock, merchant, token)
    rotate = {"input": {"endpointId": global_id, "reason": "yearly"}}
    async with portal_http(db, services.redis_url, settings, clock) as http:
        response = await http.post(
            "/graphql",
            json={"query": ROTATE, "variables": rotate},
            headers={"authorization": f"Bearer {token}"},
        )
    payload = response.json()["data"]["rotateWebhookSecret"]
    assert payload["errors"] == []
    new = payload["secret"]
    assert caplog.records, "nothing was logged, so the log assertion would prove nothing"
    for secret in (old, new):
        assert secret not in caplog.text
        assert all(secret not in str(r.args) + r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("hours", [-1, 169])
async def test_grace_periods_out_of_range_are_refused(
    db: Database, settings: Settings, clock: FixedClock, hours: int
) -> None:
    merchant, token = await _setup(db, clock)
    global_id, secret = await _create(db, settings, clock, merchant, token)
    data = await run_data(
        db,
        settings,
        clock,
        ROTATE,
        token,
        input={"endpointId": global_id, "reason": "r", "previousSecretValidHours": hours},
    )
    payload = data["rotateWebhookSecret"]
    assert payload["secret"] is None
    assert [(e["code"], e["field"]) for e in payload["errors"]] == [
        ("INVALID", "previousSecretValidHours")
    ]
    row = await _endpoint_row(db, _raw_id(global_id))
    assert _box(settings).open(row.secret_encrypted) == {"secret": secret}


def test_signatures_carry_their_timestamp_and_expire() -> None:
    body = b'{"id":"evt"}'
    header = sign(["k" * 40], 1_700_000_000, body)
    mac = hmac.new(b"k" * 40, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={mac}"
    assert verify("k" * 40, header, body, now=1_700_000_000 + 300)
    assert verify("k" * 40, header, body, now=1_700_000_000 - 300)
    # A replay outside the tolerance fails, and so does a timestamp changed to look fresh.
    assert not verify("k" * 40, header, body, now=1_700_000_000 + 301)
    forged = header.replace("t=1700000000", "t=1700000301")
    assert not verify("k" * 40, forged, body, now=1_700_000_301)
    assert not verify("k" * 40, header, body + b" ", now=1_700_000_000)
    for broken in ("", "v1=" + mac, f"t=x,v1={mac}", f"t=1700000000,t=1700000000,v1={mac}"):
        assert not verify("k" * 40, broken, body, now=1_700_000_000)


async def test_enable_and_disable_are_audited_and_idempotent(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    global_id, _ = await _create(db, settings, clock, merchant, token)
    for enabled, reason in ((False, "receiver down"), (False, "again"), (True, "receiver back")):
        data = await run_data(
            db,
            settings,
            clock,
            SET_ENABLED,
            token,
            input={"endpointId": global_id, "enabled": enabled, "reason": reason},
        )
        assert data["setWebhookEndpointEnabled"] == {
            "webhookEndpoint": {"id": global_id, "enabled": enabled},
            "errors": [],
        }
        assert (await _endpoint_row(db, _raw_id(global_id))).enabled is enabled
    entries = [
        e
        for e in await audit_entries(db, action_prefix="webhook_endpoint.")
        if e.action != "webhook_endpoint.create"
    ]
    assert [(e.action, e.before, e.after, e.reason) for e in entries] == [
        ("webhook_endpoint.disable", {"enabled": True}, {"enabled": False}, "receiver down"),
        ("webhook_endpoint.enable", {"enabled": False}, {"enabled": True}, "receiver back"),
    ]


@pytest.mark.parametrize(
    "url", ["not a url", "ftp://merchant.test/hooks", "https://" + "a" * 500 + ".test"]
)
async def test_invalid_urls_are_refused_and_write_nothing(
    db: Database, settings: Settings, clock: FixedClock, url: str
) -> None:
    merchant, token = await _setup(db, clock)
    data = await run_data(
        db,
        settings,
        clock,
        CREATE,
        token,
        input={"merchantId": encode_id("Merchant", merchant.id), "url": url},
    )
    payload = data["createWebhookEndpoint"]
    assert payload["webhookEndpoint"] is None
    assert payload["secret"] is None
    assert [(e["code"], e["field"]) for e in payload["errors"]] == [("INVALID", "url")]
    assert await _endpoints(db) == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/hooks", "127.0.0.1 is loopback"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is link-local"),
        ("http://10.0.0.7/hooks", "10.0.0.7 is private"),
        ("http://2130706433/", "127.0.0.1 is loopback"),
        ("http://0x7f.1/", "127.0.0.1 is loopback"),
        ("http://[::ffff:127.0.0.1]/", "IPv4-mapped"),
        ("http://[fd00::1]/", "private"),
        ("http://localhost./hooks", "loopback name"),
        ("https://metadata.google.internal/", "special-use"),
        ("https://user:pw@merchant.test/hooks", "credentials"),
    ],
)
async def test_inward_urls_are_refused_as_not_allowed_and_write_nothing(
    db: Database, settings: Settings, clock: FixedClock, url: str, reason: str
) -> None:
    merchant, token = await _setup(db, clock)
    data = await run_data(
        db,
        settings,
        clock,
        CREATE,
        token,
        input={"merchantId": encode_id("Merchant", merchant.id), "url": url},
    )
    payload = data["createWebhookEndpoint"]
    assert (payload["webhookEndpoint"], payload["secret"]) == (None, None)
    [error] = payload["errors"]
    assert (error["code"], error["field"]) == ("URL_NOT_ALLOWED", "url")
    assert reason in error["message"]
    assert await _endpoints(db) == []
    assert await audit_entries(db, action_prefix="webhook_endpoint.") == []


async def test_production_takes_https_urls_only(db: Database, clock: FixedClock) -> None:
    production = Settings(environment="production", secret_key="p" * 40, metrics_token="m" * 32)
    merchant, token = await _setup(db, clock)
    merchant_id = encode_id("Merchant", merchant.id)
    data = await run_data(
        db,
        production,
        clock,
        CREATE,
        token,
        input={"merchantId": merchant_id, "url": "http://merchant.test/hooks"},
    )
    assert [(e["code"], e["message"]) for e in data["createWebhookEndpoint"]["errors"]] == [
        ("URL_NOT_ALLOWED", "the URL is not allowed: must use https")
    ]
    data = await run_data(
        db, production, clock, CREATE, token, input={"merchantId": merchant_id, "url": URL}
    )
    assert data["createWebhookEndpoint"]["errors"] == []


async def test_an_endpoint_stored_before_its_url_was_refused_is_not_enabled_again(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    async with db.uow(SYSTEM_SCOPE) as uow:
        # As written before URLs were checked: loopback, then switched off.
        stored = WebhookEndpoint(
            merchant_id=merchant.id,
            url="http://127.0.0.1:9000/hooks",
            secret_encrypted=_box(settings).seal({"secret": "s" * 32}),
            enabled=False,
            created_at=clock.now(),
        )
        uow.session.add(stored)
        await uow.commit()
    global_id = encode_id("WebhookEndpoint", stored.id)
    enable = {"input": {"endpointId": global_id, "enabled": True, "reason": "back"}}
    data = await run_data(db, settings, clock, SET_ENABLED, token, **enable)
    assert data["setWebhookEndpointEnabled"]["webhookEndpoint"] is None
    assert [(e["code"], e["field"]) for e in data["setWebhookEndpointEnabled"]["errors"]] == [
        ("URL_NOT_ALLOWED", "url")
    ]
    assert (await _endpoint_row(db, stored.id)).enabled is False
    # Where loopback is allowed (the demo), the same endpoint may be switched on.
    loopback = Settings(environment="test", allow_loopback_urls=True)
    data = await run_data(db, loopback, clock, SET_ENABLED, token, **enable)
    assert data["setWebhookEndpointEnabled"]["errors"] == []
    assert (await _endpoint_row(db, stored.id)).enabled is True


async def test_unknown_ids_and_blank_reasons_are_typed_errors(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    global_id, _ = await _create(db, settings, clock, merchant, token)
    for bad in ("garbage", global_id, encode_id("Merchant", uuid.uuid4())):
        data = await run_data(
            db, settings, clock, CREATE, token, input={"merchantId": bad, "url": URL}
        )
        assert [(e["code"], e["field"]) for e in data["createWebhookEndpoint"]["errors"]] == [
            ("NOT_FOUND", "merchantId")
        ]
    for bad in (
        "garbage",
        encode_id("Merchant", merchant.id),
        encode_id("WebhookEndpoint", merchant.id),
    ):
        for query, field, extra in (
            (ROTATE, "rotateWebhookSecret", {}),
            (SET_ENABLED, "setWebhookEndpointEnabled", {"enabled": False}),
        ):
            data = await run_data(
                db, settings, clock, query, token, input={"endpointId": bad, "reason": "r", **extra}
            )
            assert [(e["code"], e["field"]) for e in data[field]["errors"]] == [
                ("NOT_FOUND", "endpointId")
            ]
    for query, field, extra in (
        (ROTATE, "rotateWebhookSecret", {}),
        (SET_ENABLED, "setWebhookEndpointEnabled", {"enabled": False}),
    ):
        for reason in ("  ", "x" * 1001):
            data = await run_data(
                db,
                settings,
                clock,
                query,
                token,
                input={"endpointId": global_id, "reason": reason, **extra},
            )
            assert data[field]["webhookEndpoint"] is None
            assert [(e["code"], e["field"]) for e in data[field]["errors"]] == [
                ("INVALID", "reason")
            ]
    row = await _endpoint_row(db, _raw_id(global_id))
    assert row.enabled is True
    assert [e.action for e in await audit_entries(db, action_prefix="webhook_endpoint.")] == [
        "webhook_endpoint.create"
    ]


async def _make_endpoint(
    db: Database, settings: Settings, merchant: Merchant, clock: FixedClock
) -> uuid.UUID:
    async with db.uow(SYSTEM_SCOPE) as uow:
        endpoint = await create_endpoint(
            uow,
            principal=system_principal(),
            merchant_id=merchant.id,
            url=URL,
            secret="s" * 32,
            box=_box(settings),
            policy=settings.url_policy,
            now=clock.now(),
        )
        await uow.commit()
    return endpoint.id


async def test_recent_deliveries_are_listed_newest_first(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    endpoint_id = await _make_endpoint(db, settings, merchant, clock)
    other = await _make_endpoint(db, settings, merchant, clock)
    now = clock.now()
    await queue_delivery(
        db,
        merchant,
        endpoint_id,
        clock,
        event_type="payment.scheduled",
        age=timedelta(hours=3),
        status="delivered",
        attempts=2,
        last_status_code=204,
        delivered_at=now - timedelta(hours=2),
    )
    await queue_delivery(
        db,
        merchant,
        endpoint_id,
        clock,
        event_type="payment.failed",
        age=timedelta(hours=2),
        status="failed",
        attempts=12,
        last_status_code=500,
        last_error="HTTP 500",
    )
    await queue_delivery(
        db,
        merchant,
        endpoint_id,
        clock,
        event_type="payment.recovered",
        age=timedelta(hours=1),
        attempts=1,
        last_error="ConnectTimeout",
    )
    await queue_delivery(db, merchant, other, clock, event_type="payment.canceled")
    data = await run_data(db, settings, clock, LIST, token, id=encode_id("Merchant", merchant.id))
    # Both endpoints were created at the same instant: pick each by id, not by position.
    by_id = {e["id"]: e for e in data["merchant"]["webhookEndpoints"]}
    first = by_id[encode_id("WebhookEndpoint", endpoint_id)]
    second = by_id[encode_id("WebhookEndpoint", other)]
    assert [d["eventType"] for d in second["recentDeliveries"]] == ["payment.canceled"]
    assert first["recentDeliveries"] == [
        {
            "eventType": "payment.recovered",
            "status": "PENDING",
            "attempts": 1,
            "lastStatusCode": None,
            "lastError": "ConnectTimeout",
            "createdAt": (now - timedelta(hours=1)).isoformat(),
            "deliveredAt": None,
            "nextAttemptAt": (now - timedelta(hours=1)).isoformat(),
        },
        {
            "eventType": "payment.failed",
            "status": "FAILED",
            "attempts": 12,
            "lastStatusCode": 500,
            "lastError": "HTTP 500",
            "createdAt": (now - timedelta(hours=2)).isoformat(),
            "deliveredAt": None,
            "nextAttemptAt": None,
        },
        {
            "eventType": "payment.scheduled",
            "status": "DELIVERED",
            "attempts": 2,
            "lastStatusCode": 204,
            "lastError": None,
            "createdAt": (now - timedelta(hours=3)).isoformat(),
            "deliveredAt": (now - timedelta(hours=2)).isoformat(),
            "nextAttemptAt": None,
        },
    ]
    data = await run_data(
        db, settings, clock, LIST, token, id=encode_id("Merchant", merchant.id), first=2
    )
    limited = {e["id"]: e for e in data["merchant"]["webhookEndpoints"]}[
        encode_id("WebhookEndpoint", endpoint_id)
    ]["recentDeliveries"]
    assert [d["eventType"] for d in limited] == ["payment.recovered", "payment.failed"]
    for bad in (0, 101):
        result = await run(
            db,
            settings,
            clock,
            LIST,
            token=token,
            variables={"id": encode_id("Merchant", merchant.id), "first": bad},
        )
        assert codes(result) == ["INVALID_ARGUMENT"]


async def test_endpoint_list_statement_count_is_constant(
    connection: AsyncConnection, db: Database, settings: Settings, clock: FixedClock
) -> None:
    """Endpoints and their deliveries cost the same for 1 merchant with 1 endpoint as for 10
    merchants with 3 endpoints each."""
    query = """{ merchants(first: 100) { edges { node { webhookEndpoints {
      id recentDeliveries { eventType } } } } } }"""
    counts: dict[int, int] = {}
    for merchants, per_merchant in ((1, 1), (10, 3)):
        rows = [await make_merchant(db, f"W{i}", now=clock.now()) for i in range(merchants)]
        for merchant in rows:
            for _ in range(per_merchant):
                endpoint_id = await _make_endpoint(db, settings, merchant, clock)
                await queue_delivery(
                    db, merchant, endpoint_id, clock, event_type="payment.recovered"
                )
        token = await make_key(db, Role.PARTNER, rows, now=clock.now())
        await run(db, settings, clock, "{ viewer { role } }", token=token)
        data, statements = await run_counted(connection, db, settings, clock, query, token=token)
        endpoints = [e for m in data["merchants"]["edges"] for e in m["node"]["webhookEndpoints"]]
        assert len(endpoints) == merchants * per_merchant
        assert all(len(e["recentDeliveries"]) == 1 for e in endpoints)
        counts[merchants] = len(statements)
    # key lookup + grants + merchants page + endpoints + deliveries
    assert counts[1] == counts[10] == 5
