"""The soak's world and load: set-up, the webhook receiver, a steady mixed GraphQL load.

Merchants, connections and keys of every role are written as an operator's tools would; the
merchants' webhook endpoint is the harness; the load comes from merchant, partner and support
keys over every API process in turn, as a load balancer without health checks spreads it.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from app.crypto import CredentialBox
from app.db import Database
from app.enums import Processor, Role
from app.services.api_key import create_api_key
from app.settings import normalize_database_url
from app.tenancy import SYSTEM_SCOPE, system_principal
from app.workflows.webhook_delivery import DELIVERY_HEADER
from portal.demo import SandboxAccount, connect_sandbox_merchant
from resolvers.ids import encode_id
from tests.support.factories import SANDBOX_URLS
from tests.support.soak.report import (
    MAX_IN_FLIGHT,
    REQUEST_TIMEOUT,
    Sample,
    SoakConfig,
    Tenant,
    Tenants,
)
from tests.support.stack import Stack


async def set_up_tenants(stack: Stack, config: SoakConfig) -> Tenants:
    """Merchants with connections to sandbox accounts and API keys of every role, written as an
    operator's tools would (the services, as the system principal)."""
    db = Database.from_url(normalize_database_url(stack.postgres.url))
    box = CredentialBox(stack.secret_key)
    principal = system_principal("soak")
    now = stack.time.now()
    made: list[tuple[Tenant, dict[str, Any]]] = []
    try:
        async with db.uow(SYSTEM_SCOPE) as uow:
            for index, kind in enumerate(config.processors):
                name = f"Soak {kind.value}"
                account_id = f"soak_{kind.value}_{index}"
                api_key = f"key_{uuid.uuid4().hex}"
                hmac_key = uuid.uuid4().hex * 2
                merchant, connection = await connect_sandbox_merchant(
                    uow,
                    SandboxAccount(stack.sandbox_url, kind, account_id, api_key, hmac_key),
                    name=name,
                    principal=principal,
                    policy=SANDBOX_URLS,
                    box=box,
                    now=now,
                )
                _, token = await create_api_key(
                    uow, name=f"{name} key", role=Role.MERCHANT, merchant_ids=[merchant.id], now=now
                )
                body: dict[str, Any] = {
                    "processor": kind.value,
                    "account_id": account_id,
                    "merchant_seed": config.seed + index,
                    "api_key": api_key,
                    "history_days": config.history_days,
                    "customers": config.customers,
                }
                if kind is Processor.ADYEN:
                    # Pushed to the first API process, as a load balancer would route them.
                    body["webhook_url"] = f"{stack.api_url(0)}/webhooks/adyen/{connection.id}"
                    body["hmac_key_hex"] = hmac_key
                tenant = Tenant(
                    name,
                    kind,
                    merchant.id,
                    encode_id("Merchant", merchant.id),
                    connection.id,
                    account_id,
                    token,
                )
                made.append((tenant, body))
            ids = [t.merchant_id for t, _ in made]
            _, partner = await create_api_key(
                uow, name="soak partner", role=Role.PARTNER, merchant_ids=ids[:2], now=now
            )
            _, support = await create_api_key(
                uow, name="soak support", role=Role.SUPPORT, merchant_ids=[], now=now
            )
            await uow.commit()
    finally:
        await db.dispose()
    # Accounts only once the connections are committed: Adyen starts pushing at once.
    async with httpx.AsyncClient(base_url=stack.sandbox_url, timeout=60, trust_env=False) as admin:
        for _, body in made:
            (await admin.post("/_sandbox/accounts", json=body)).raise_for_status()
    tenants = [t for t, _ in made]
    return Tenants(tenants, partner, [t.merchant_gid for t in tenants[:2]], support)


WEBHOOK = """mutation Hook($input: CreateWebhookEndpointInput!) { createWebhookEndpoint(
  input: $input) { webhookEndpoint { id } errors { code message } } }"""


async def register_webhooks(stack: Stack, tenants: Tenants, url: str) -> None:
    """Each merchant's webhook endpoint, added over the API with the support key as a user
    would (the URL checks of the API apply)."""
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        for tenant in tenants.merchants:
            response = await http.post(
                f"{stack.api_url(0)}/graphql",
                json={
                    "query": WEBHOOK,
                    "variables": {"input": {"merchantId": tenant.merchant_gid, "url": url}},
                },
                headers={"Authorization": f"Bearer {tenants.support_token}"},
            )
            payload = response.json()["data"]["createWebhookEndpoint"]
            if payload["errors"] or payload["webhookEndpoint"] is None:
                raise RuntimeError(f"webhook endpoint refused: {payload['errors']}")


async def set_sandbox_clock(stack: Stack, *, frozen: bool = False) -> None:
    """Give the sandbox the portal's simulated time (or stop it there, for the drain)."""
    async with httpx.AsyncClient(base_url=stack.sandbox_url, timeout=30, trust_env=False) as admin:
        body = {"start": stack.time.now().isoformat(), "speed": 0 if frozen else stack.time.speed}
        (await admin.post("/_sandbox/clock", json=body)).raise_for_status()


class WebhookReceiver:
    """The merchants' webhook endpoint: acknowledges and counts deliveries by delivery id."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.app = Starlette(routes=[Route("/hook", self._receive, methods=["POST"])])

    async def _receive(self, request: Request) -> Response:
        await request.body()
        self.seen[request.headers.get(DELIVERY_HEADER, "")] += 1
        return PlainTextResponse("ok")


# --- load -----------------------------------------------------------------------------------

PAYMENTS = """query Payments($m: ID!) { merchant(id: $m) { payments(first: 20) { edges { node {
  id state processor failedAt nextRetryAt attemptCount amount { amountMinor currency }
  decline { category retryable advice } card { brand last4 } } }
  pageInfo { hasNextPage endCursor } } } }"""
DETAIL = """query Payment($id: ID!) { node(id: $id) { ... on Payment { state
  amount { amountMinor currency } failedAt recoveredAt recoveredBy
  attempts { number attemptedAt outcome actor } timeline { at fromState toState event } } } }"""
STATS = """query Stats($m: ID!, $from: DateTime!, $to: DateTime!) { merchant(id: $m) {
  recoveryStats(from: $from, to: $to, granularity: DAY) { currencies { currency
  summary { failedCount recoveredCount recoveredAmount inRecoveryAmount } } } } }"""
VIEWER = "query Viewer { viewer { role name } }"
POLICY = "query Policy($m: ID!) { merchant(id: $m) { retryPolicy { version maxAttempts } } }"
UPDATE = """mutation Update($input: UpdateRetryPolicyInput!) { updateRetryPolicy(input: $input) {
  retryPolicy { version maxAttempts } errors { code message } } }"""


def classify(response: httpx.Response) -> tuple[str, Any]:
    """The outcome code of a GraphQL answer (OK, a payload error code, or the top-level error's
    code) and its data."""
    try:
        body = response.json()
    except ValueError:
        return "NON_JSON", None
    if not isinstance(body, dict):
        return "NON_JSON", None
    errors = body.get("errors")
    if errors:
        extensions = errors[0].get("extensions") or {}
        return str(extensions.get("code") or "UNCODED"), body.get("data")
    if response.status_code != 200:
        return "UNCODED", None
    data = body.get("data") or {}
    payload = data.get("updateRetryPolicy")
    if isinstance(payload, dict) and payload.get("errors"):
        return str(payload["errors"][0].get("code")), data
    return "OK", data


class Load:
    """A steady mixed GraphQL load over every API process, from every kind of key."""

    def __init__(self, stack: Stack, tenants: Tenants, rate: float, seed: int) -> None:
        self.stack = stack
        self.tenants = tenants
        self.rate = rate
        self.rng = random.Random(seed)
        self.samples: list[Sample] = []
        self.shed = 0
        self.payment_ids: dict[str, list[str]] = {t.merchant_gid: [] for t in tenants.merchants}
        self._apis = itertools.cycle(range(len(stack.apis)))

    def _caller(self) -> tuple[str, str]:
        """A key and a merchant it may see: merchant 50%, partner 20%, support 30%."""
        draw = self.rng.random()
        if draw < 0.5:
            tenant = self.rng.choice(self.tenants.merchants)
            return tenant.token, tenant.merchant_gid
        if draw < 0.7:
            return self.tenants.partner_token, self.rng.choice(self.tenants.partner_merchants)
        return self.tenants.support_token, self.rng.choice(self.tenants.merchants).merchant_gid

    async def _post(
        self, http: httpx.AsyncClient, op: str, token: str, query: str, variables: dict[str, Any]
    ) -> tuple[str, Any]:
        api = next(self._apis)
        start = time.monotonic()
        status: int | None = None
        retry_after = False
        data: Any = None
        try:
            response = await http.post(
                f"{self.stack.api_url(api)}/graphql",
                json={"query": query, "variables": variables},
                headers={
                    "Authorization": f"Bearer {token}",
                    "Accept": "application/graphql-response+json",
                },
            )
            status = response.status_code
            retry_after = "retry-after" in response.headers
            code, data = classify(response)
        except httpx.ConnectError:
            code = "CONNECTION_REFUSED"
        except httpx.TimeoutException:
            code = "TIMEOUT"
        except httpx.TransportError as exc:
            code = type(exc).__name__
        self.samples.append(Sample(op, api, start, time.monotonic(), status, code, retry_after))
        return code, data

    async def one(self, http: httpx.AsyncClient) -> None:
        """One operation, drawn by weight: payments page, detail, stats, viewer, policy edit."""
        token, merchant = self._caller()
        draw = self.rng.random()
        if draw < 0.30:
            code, data = await self._post(http, "payments", token, PAYMENTS, {"m": merchant})
            if code == "OK" and data and data.get("merchant"):
                ids = [e["node"]["id"] for e in data["merchant"]["payments"]["edges"]]
                known = self.payment_ids[merchant]
                known.extend(i for i in ids if i not in known)
                del known[:-500]
        elif draw < 0.55:
            known = self.payment_ids[merchant]
            if known:
                await self._post(http, "detail", token, DETAIL, {"id": self.rng.choice(known)})
            else:
                await self._post(http, "viewer", token, VIEWER, {})
        elif draw < 0.70:
            now = self.stack.time.now()
            day = now.replace(hour=0, minute=0, second=0, microsecond=0)
            variables = {
                "m": merchant,
                "from": (day - timedelta(days=30)).isoformat(),
                "to": (day + timedelta(days=2)).isoformat(),
            }
            await self._post(http, "stats", token, STATS, variables)
        elif draw < 0.92:
            await self._post(http, "viewer", token, VIEWER, {})
        else:
            await self._edit_policy(http)

    async def _edit_policy(self, http: httpx.AsyncClient) -> None:
        """Read the policy's version, then change it with expectedVersion (merchant or support)."""
        tenant = self.rng.choice(self.tenants.merchants)
        token = tenant.token if self.rng.random() < 0.5 else self.tenants.support_token
        code, data = await self._post(http, "policy", token, POLICY, {"m": tenant.merchant_gid})
        if code != "OK" or not data or not data.get("merchant"):
            return
        policy = data["merchant"]["retryPolicy"]
        change = {
            "merchantId": tenant.merchant_gid,
            "expectedVersion": policy["version"],
            "maxAttempts": 5 if policy["maxAttempts"] != 5 else 6,
            "reason": "soak: steady configuration changes",
        }
        await self._post(http, "update", token, UPDATE, {"input": change})

    async def run(self, seconds: float) -> None:
        """Issue requests at `rate` per second for `seconds`; never more than the in-flight cap."""
        interval = 1.0 / self.rate
        # Idle connections are dropped well before the server's keep-alive timeout
        # (PORTAL_KEEP_ALIVE_SECONDS, 75 s): a request sent on a connection the server is
        # closing at that instant ends in a ReadError that no server fault caused. With
        # uvicorn's 5 s the 2 s here left 3 s, which a stalled harness (a second or two on a
        # busy machine, before it reads an answer and again before it sends) can use up.
        limits = httpx.Limits(
            max_connections=MAX_IN_FLIGHT * 2,
            max_keepalive_connections=MAX_IN_FLIGHT,
            keepalive_expiry=2.0,
        )
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(
            timeout=REQUEST_TIMEOUT, limits=limits, trust_env=False
        ) as http:
            start = time.monotonic()
            for tick in range(int(seconds * self.rate)):
                delay = start + tick * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(tasks) >= MAX_IN_FLIGHT:
                    self.shed += 1
                    continue
                task = asyncio.create_task(self.one(http))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT * 3)
