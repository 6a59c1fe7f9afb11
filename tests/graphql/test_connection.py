"""Processor connections: connect, list with ingestion counts, sync, pause, resume."""

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select
from strawberry.types import ExecutionResult

from app.clock import FixedClock
from app.crypto import CredentialBox
from app.db import Database
from app.embedded import Services
from app.enums import ApiKeyScope, Processor, Role
from app.models.audit import AuditLog
from app.models.ingestion import ProcessorConnection
from app.models.merchant import Merchant
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from jobs.enqueue import poll_job_id
from resolvers.ids import encode_id
from tests.support.audit import audit_entries
from tests.support.factories import make_connection, make_key, make_merchant, make_payments
from tests.support.graphql import codes, run, run_counted, run_data
from tests.support.http import portal_http
from tests.support.queue import discard_polls, job_queue

SECRET = "sk_live_9f2b7c1e4d8a0b3c6e5f"

CONNECT = """mutation($input: ConnectProcessorInput!) { connectProcessor(input: $input) {
  processorConnection { id kind name status baseUrl lastPolledAt lastError cursorAt
    paymentsIngested }
  errors { code message field } } }"""

LIST = """query($id: ID!) { merchant(id: $id) { processorConnections {
  id kind name status baseUrl lastPolledAt lastError cursorAt paymentsIngested } } }"""

SYNC = """mutation($id: ID!) { syncProcessorConnection(id: $id) {
  processorConnection { id } queued errors { code message field } } }"""

PAUSE = """mutation($id: ID!, $reason: String!) { pauseProcessorConnection(id: $id,
  reason: $reason) { processorConnection { id status } errors { code message field } } }"""

RESUME = """mutation($id: ID!, $reason: String!) { resumeProcessorConnection(id: $id,
  reason: $reason) { processorConnection { id status } errors { code message field } } }"""


@pytest.fixture
async def queue(services: Services) -> AsyncIterator[ArqRedis]:
    async with job_queue(services) as pool:
        yield pool


async def _setup(db: Database, clock: FixedClock) -> tuple[Merchant, str]:
    merchant = await make_merchant(db, "Connected", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now(), name="dashboard")
    return merchant, token


def _input(merchant: Merchant, **fields: Any) -> dict[str, Any]:
    return {
        "merchantId": encode_id("Merchant", merchant.id),
        "kind": "STRIPE",
        "credentials": {"api_key": SECRET},
        "baseUrl": "https://api.stripe.test/",
        **fields,
    }


async def _connections(db: Database) -> list[ProcessorConnection]:
    async with db.session(SYSTEM_SCOPE) as s:
        return list((await s.execute(select(ProcessorConnection))).scalars().all())


async def test_connect_seals_credentials_and_lists_the_connection(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    data = await run_data(db, settings, clock, CONNECT, token, input=_input(merchant, name="Main"))
    payload = data["connectProcessor"]
    assert payload["errors"] == []
    created = payload["processorConnection"]
    assert created["kind"] == "STRIPE"
    assert created["name"] == "Main"
    assert created["status"] == "ACTIVE"
    assert created["baseUrl"] == "https://api.stripe.test"
    assert created["lastPolledAt"] is None
    assert created["paymentsIngested"] == 0

    listed = await run_data(db, settings, clock, LIST, token, id=encode_id("Merchant", merchant.id))
    assert listed["merchant"]["processorConnections"] == [created]

    [row] = await _connections(db)
    assert SECRET.encode() not in row.credentials_encrypted
    box = CredentialBox(settings.secret_key.get_secret_value())
    assert box.open(row.credentials_encrypted) == {"api_key": SECRET}
    [entry] = await audit_entries(db, action="processor_connection.create")
    assert entry.actor == "api_key:dashboard"
    assert entry.merchant_id == merchant.id
    assert SECRET not in json.dumps([entry.before, entry.after])


def _formatted(result: ExecutionResult) -> dict[str, Any]:
    return {"data": result.data, "errors": [e.formatted for e in result.errors or []]}


async def test_credentials_appear_in_no_response_and_no_log_line(
    db: Database,
    settings: Settings,
    clock: FixedClock,
    services: Services,
    caplog: pytest.LogCaptureFixture,
) -> None:
    merchant, token = await _setup(db, clock)
    merchant_id = encode_id("Merchant", merchant.id)
    audit_query = """query($id: ID!) { merchant(id: $id) {
      auditLog { edges { node { before after } } } } }"""
    caplog.set_level(logging.DEBUG)
    responses: list[Any] = []
    for variables in (
        _input(merchant),
        # Refused inputs: the secret must not be echoed in an error either.
        _input(merchant, baseUrl="ftp://nowhere"),
        _input(merchant, kind="BRAINTREE", credentials={"private_key": SECRET}),
        _input(merchant, credentials=[SECRET]),
        _input(merchant, credentials=SECRET),
    ):
        result = await run(
            db, settings, clock, CONNECT, token=token, variables={"input": variables}
        )
        responses.append(_formatted(result))
    for query in (audit_query, LIST):
        result = await run(db, settings, clock, query, token=token, variables={"id": merchant_id})
        responses.append(_formatted(result))
    async with portal_http(db, services.redis_url, settings, clock) as http:
        for variables in (_input(merchant, name="over http"), _input(merchant, kind="NOPE")):
            response = await http.post(
                "/graphql",
                json={"query": CONNECT, "variables": {"input": variables}},
                headers={"authorization": f"Bearer {token}"},
            )
            responses.append(response.text)
    assert responses[0]["data"]["connectProcessor"]["errors"] == []
    assert '"name": "over http"' in json.dumps(json.loads(responses[-2]))
    assert len(await _connections(db)) == 2
    assert caplog.records, "nothing was logged, so the log assertion would prove nothing"
    for r in responses:
        assert SECRET not in json.dumps(r), r
    assert SECRET not in caplog.text
    assert all(SECRET not in str(r.args) + r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"baseUrl": "not a url"}, "baseUrl"),
        ({"baseUrl": "https://" + "a" * 500 + ".test"}, "baseUrl"),
        ({"credentials": {}}, "credentials"),
        ({"credentials": {"api_key": ""}}, "credentials"),
        ({"credentials": ["api_key"]}, "credentials"),
        (
            {"kind": "BRAINTREE", "credentials": {"public_key": "a", "private_key": "b"}},
            "accountRef",
        ),
        ({"name": "n" * 201}, "name"),
    ],
)
async def test_invalid_connections_are_refused_and_write_nothing(
    db: Database, settings: Settings, clock: FixedClock, fields: dict[str, Any], field: str
) -> None:
    merchant, token = await _setup(db, clock)
    data = await run_data(db, settings, clock, CONNECT, token, input=_input(merchant, **fields))
    payload = data["connectProcessor"]
    assert payload["processorConnection"] is None
    assert {e["code"] for e in payload["errors"]} == {"INVALID"}
    assert field in {e["field"] for e in payload["errors"]}
    assert await _connections(db) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest",  # cloud metadata
        "http://127.0.0.1:8100/stripe",  # loopback, not allowed by these settings
        "http://10.0.0.7/stripe",
        "http://localhost/stripe",
        "http://2130706433/stripe",  # 127.0.0.1 spelt as a number
        "http://[::ffff:192.168.0.1]/stripe",
    ],
)
async def test_processor_urls_pointing_inward_are_not_allowed(
    db: Database, settings: Settings, clock: FixedClock, url: str
) -> None:
    """The portal polls and charges through the base URL with the merchant's credentials: a
    key must not be able to aim it at the portal's own network."""
    merchant, token = await _setup(db, clock)
    data = await run_data(db, settings, clock, CONNECT, token, input=_input(merchant, baseUrl=url))
    payload = data["connectProcessor"]
    assert payload["processorConnection"] is None
    [error] = payload["errors"]
    assert (error["code"], error["field"]) == ("URL_NOT_ALLOWED", "baseUrl")
    assert await _connections(db) == []


async def test_processor_urls_need_https_in_production(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    production = settings.model_copy(update={"environment": "production"})
    merchant, token = await _setup(db, clock)
    plain = _input(merchant, baseUrl="http://api.stripe.test")
    data = await run_data(db, production, clock, CONNECT, token, input=plain)
    assert [e["code"] for e in data["connectProcessor"]["errors"]] == ["URL_NOT_ALLOWED"]
    secure = _input(merchant, baseUrl="https://api.stripe.test")
    data = await run_data(db, production, clock, CONNECT, token, input=secure)
    assert data["connectProcessor"]["errors"] == []


async def test_malformed_merchant_id_is_not_found(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    data = await run_data(
        db, settings, clock, CONNECT, token, input=_input(merchant, merchantId="bogus")
    )
    assert [e["code"] for e in data["connectProcessor"]["errors"]] == ["NOT_FOUND"]


async def test_payments_ingested_counts_per_connection(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    now = clock.now()
    first = await make_connection(db, merchant, now=now, settings=settings)
    second = await make_connection(
        db, merchant, now=now, settings=settings, kind=Processor.CHECKOUT
    )
    await make_payments(db, merchant, 3, now=now, connection=first)
    await make_payments(db, merchant, 2, now=now, connection=second)
    await make_payments(db, merchant, 1, now=now)
    data = await run_data(db, settings, clock, LIST, token, id=encode_id("Merchant", merchant.id))
    counts = {c["kind"]: c["paymentsIngested"] for c in data["merchant"]["processorConnections"]}
    assert counts == {"STRIPE": 3, "CHECKOUT": 2}


async def test_connection_list_statement_count_is_constant(
    connection: AsyncConnection, db: Database, settings: Settings, clock: FixedClock
) -> None:
    """Connections and their payment counts cost the same for 1 merchant and connection as
    for 10 merchants with 5 connections each."""
    now = clock.now()
    query = """{ merchants(first: 100) { edges { node { processorConnections {
      id paymentsIngested } } } } }"""
    counts: dict[int, int] = {}
    for merchants, per_merchant in ((1, 1), (10, 5)):
        rows = [await make_merchant(db, f"M{i}", now=now) for i in range(merchants)]
        for merchant in rows:
            for _ in range(per_merchant):
                conn = await make_connection(db, merchant, now=now, settings=settings)
                await make_payments(db, merchant, 1, now=now, connection=conn, attempts_each=1)
        token = await make_key(db, Role.PARTNER, rows, now=now)
        await run(db, settings, clock, "{ viewer { role } }", token=token)
        data, statements = await run_counted(connection, db, settings, clock, query, token=token)
        edges = data["merchants"]["edges"]
        assert (
            sum(len(e["node"]["processorConnections"]) for e in edges) == merchants * per_merchant
        )
        assert all(
            c["paymentsIngested"] == 1 for e in edges for c in e["node"]["processorConnections"]
        )
        counts[merchants] = len(statements)
    # key lookup + grants + merchants page + connections + payment counts
    assert counts[1] == counts[10] == 5


async def test_sync_queues_one_poll_on_the_real_queue(
    db: Database, settings: Settings, clock: FixedClock, queue: ArqRedis
) -> None:
    merchant, token = await _setup(db, clock)
    conn = await make_connection(db, merchant, now=clock.now(), settings=settings)
    global_id = encode_id("ProcessorConnection", conn.id)
    try:
        first = await run_data(db, settings, clock, SYNC, token, redis=queue, id=global_id)
        assert first["syncProcessorConnection"] == {
            "processorConnection": {"id": global_id},
            "queued": True,
            "errors": [],
        }
        assert await Job(poll_job_id(conn.id), queue).status() is JobStatus.queued
        # The same job id: a second request while one is queued adds nothing.
        again = await run_data(db, settings, clock, SYNC, token, redis=queue, id=global_id)
        assert again["syncProcessorConnection"]["queued"] is False
    finally:
        await discard_polls(queue, [conn.id])


async def test_sync_over_http_reaches_the_arq_queue(
    db: Database, settings: Settings, clock: FixedClock, services: Services, queue: ArqRedis
) -> None:
    """The HTTP view hands the context a plain Redis client; polls still reach arq's queue."""
    merchant, token = await _setup(db, clock)
    conn = await make_connection(db, merchant, now=clock.now(), settings=settings)
    try:
        async with portal_http(db, services.redis_url, settings, clock) as http:
            response = await http.post(
                "/graphql",
                json={
                    "query": SYNC,
                    "variables": {"id": encode_id("ProcessorConnection", conn.id)},
                },
                headers={"authorization": f"Bearer {token}"},
            )
        assert response.status_code == 200
        assert response.json()["data"]["syncProcessorConnection"]["queued"] is True
        assert await Job(poll_job_id(conn.id), queue).status() is JobStatus.queued
    finally:
        await discard_polls(queue, [conn.id])


async def test_sync_refuses_paused_and_webhook_connections(
    db: Database, settings: Settings, clock: FixedClock, queue: ArqRedis
) -> None:
    merchant, token = await _setup(db, clock)
    now = clock.now()
    paused = await make_connection(db, merchant, now=now, settings=settings)
    adyen = await make_connection(db, merchant, now=now, settings=settings, kind=Processor.ADYEN)
    paused_id = encode_id("ProcessorConnection", paused.id)
    data = await run_data(db, settings, clock, PAUSE, token, id=paused_id, reason="maintenance")
    assert data["pauseProcessorConnection"]["errors"] == []
    try:
        for conn in (paused, adyen):
            data = await run_data(
                db,
                settings,
                clock,
                SYNC,
                token,
                redis=queue,
                id=encode_id("ProcessorConnection", conn.id),
            )
            payload = data["syncProcessorConnection"]
            assert payload["queued"] is False
            assert [(e["code"], e["field"]) for e in payload["errors"]] == [("INVALID", "id")]
            assert await Job(poll_job_id(conn.id), queue).status() is JobStatus.not_found
    finally:
        await discard_polls(queue, [paused.id, adyen.id])


async def test_unknown_connection_is_not_found(
    db: Database, settings: Settings, clock: FixedClock, queue: ArqRedis
) -> None:
    merchant, token = await _setup(db, clock)
    for query, extra in ((SYNC, {}), (PAUSE, {"reason": "r"}), (RESUME, {"reason": "r"})):
        for bad in (
            "garbage",
            encode_id("Merchant", merchant.id),
            encode_id("ProcessorConnection", merchant.id),
        ):
            result = await run(
                db, settings, clock, query, token=token, variables={"id": bad, **extra}, redis=queue
            )
            assert result.errors is None
            assert result.data is not None
            [payload] = result.data.values()
            assert [(e["code"], e["field"]) for e in payload["errors"]] == [("NOT_FOUND", "id")]


# A connection's changes after its creation.
_AFTER_CREATION = col(AuditLog.action) != "processor_connection.create"


async def test_pause_and_resume_are_audited_and_idempotent(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    conn = await make_connection(db, merchant, now=clock.now(), settings=settings)
    global_id = encode_id("ProcessorConnection", conn.id)
    for query, field, status, reason in (
        (PAUSE, "pauseProcessorConnection", "PAUSED", "processor outage"),
        (PAUSE, "pauseProcessorConnection", "PAUSED", "again"),
        (RESUME, "resumeProcessorConnection", "ACTIVE", "outage over"),
    ):
        data = await run_data(db, settings, clock, query, token, id=global_id, reason=reason)
        assert data[field] == {
            "processorConnection": {"id": global_id, "status": status},
            "errors": [],
        }
    entries = await audit_entries(db, _AFTER_CREATION, entity_id=str(conn.id))
    assert [(e.action, e.before, e.after, e.reason, e.actor) for e in entries] == [
        (
            "processor_connection.pause",
            {"status": "active"},
            {"status": "paused"},
            "processor outage",
            "api_key:dashboard",
        ),
        (
            "processor_connection.resume",
            {"status": "paused"},
            {"status": "active"},
            "outage over",
            "api_key:dashboard",
        ),
    ]


async def test_pause_needs_a_reason(db: Database, settings: Settings, clock: FixedClock) -> None:
    merchant, token = await _setup(db, clock)
    conn = await make_connection(db, merchant, now=clock.now(), settings=settings)
    for reason in ("  ", "x" * 1001):
        data = await run_data(
            db,
            settings,
            clock,
            PAUSE,
            token,
            id=encode_id("ProcessorConnection", conn.id),
            reason=reason,
        )
        payload = data["pauseProcessorConnection"]
        assert payload["processorConnection"] is None
        assert [(e["code"], e["field"]) for e in payload["errors"]] == [("INVALID", "reason")]
    [row] = await _connections(db)
    assert row.status.value == "active"
    assert await audit_entries(db, _AFTER_CREATION, entity_id=str(conn.id)) == []


async def test_partner_changes_connections_with_the_write_scope_only(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    """A partner key manages its merchants' connections; one with READ alone only reads."""
    merchant, _ = await _setup(db, clock)
    conn = await make_connection(db, merchant, now=clock.now(), settings=settings)
    variables = {"id": encode_id("ProcessorConnection", conn.id), "reason": "r"}
    reader = await make_key(
        db, Role.PARTNER, [merchant], now=clock.now(), scopes=frozenset({ApiKeyScope.READ})
    )
    data = await run_data(db, settings, clock, LIST, reader, id=encode_id("Merchant", merchant.id))
    assert len(data["merchant"]["processorConnections"]) == 1
    result = await run(db, settings, clock, PAUSE, token=reader, variables=variables)
    assert codes(result) == ["FORBIDDEN"]
    assert result.data is None or result.data.get("pauseProcessorConnection") is None
    [row] = await _connections(db)
    assert row.status.value == "active"
    writer = await make_key(db, Role.PARTNER, [merchant], now=clock.now())
    data = await run_data(db, settings, clock, PAUSE, writer, **variables)
    assert data["pauseProcessorConnection"]["processorConnection"]["status"] == "PAUSED"
