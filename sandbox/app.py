"""The sandbox processor server: app factory, admin API and a loopback-only runner."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from ml.simulator.config import SimulatorConfig, load_config
from sandbox import adyen, billing_api, braintree, checkout, stripe
from sandbox.common import iso, json_response, parse_time, sandbox_of
from sandbox.server import is_loopback, require_loopback
from sandbox.state import (
    MAX_ACCOUNTS,
    MAX_CUSTOMERS,
    MAX_HISTORY_DAYS,
    PAYERS,
    PROCESSORS,
    Account,
    Faults,
    RetryRefused,
    Sandbox,
    SandboxClock,
)

DEFAULT_PORT = 12111
_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_log = logging.getLogger(__name__)


class BadRequest(Exception):
    """An admin request the sandbox cannot honour; becomes a 400 with the message."""


class UnknownAccount(Exception):
    """An admin request names an account the sandbox does not have; becomes a 404."""


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _int(body: dict[str, Any], name: str, default: int | None, lo: int, hi: int) -> int:
    value = body.get(name, default)
    if value is None and default is None:
        raise BadRequest(f"{name} is required")
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"{name} must be an integer in [{lo}, {hi}]")
    return value


def _account(request: Request) -> Account:
    account = sandbox_of(request).accounts.get(request.path_params["account_id"])
    if account is None:
        raise UnknownAccount(request.path_params["account_id"])
    return account


async def set_clock(request: Request) -> Response:
    """POST /_sandbox/clock {"start": ISO, "speed": float}: an accelerated simulated clock."""
    body = await _json(request)
    try:
        start = parse_time(str(body["start"]))
    except (KeyError, ValueError) as exc:
        raise BadRequest("start must be an ISO-8601 time") from exc
    speed = body.get("speed", 1.0)
    # Speed 0 freezes simulated time at start: a demo can step it by posting new starts.
    if not isinstance(speed, int | float) or isinstance(speed, bool) or not 0 <= speed <= 1e7:
        raise BadRequest("speed must be a number in [0, 1e7]")
    clock = sandbox_of(request).clock
    clock.accelerate(start, float(speed))
    return json_response({"now": iso(clock.now()), "speed": float(speed)})


async def get_clock(request: Request) -> Response:
    """GET /_sandbox/clock: the sandbox's current time."""
    return json_response({"now": iso(sandbox_of(request).clock.now())})


def _describe(account: Account, customers: int) -> dict[str, Any]:
    return {
        "account_id": account.account_id,
        "processor": account.processor,
        "merchant_seed": account.merchant_seed,
        "history_start": iso(account.history_start),
        "customers": customers,
        "base_path": f"/{account.processor}",
        "webhook_url": account.webhook_url,
    }


async def create_account(request: Request) -> Response:
    """POST /_sandbox/accounts: a merchant account with a generated charge history."""
    body = await _json(request)
    sandbox = sandbox_of(request)
    processor = body.get("processor")
    if processor not in PROCESSORS:
        raise BadRequest(f"processor must be one of {', '.join(PROCESSORS)}")
    account_id = body.get("account_id")
    if not isinstance(account_id, str) or not _ACCOUNT_ID.match(account_id):
        raise BadRequest("account_id must be 1-64 letters, digits, '_' or '-'")
    api_key = body.get("api_key")
    if not isinstance(api_key, str) or not api_key or len(api_key) > 255:
        raise BadRequest("api_key must be a non-empty string")
    seed = _int(body, "merchant_seed", None, 0, 2**31 - 1)
    history_days = _int(body, "history_days", 30, 0, MAX_HISTORY_DAYS)
    default_customers = sandbox.config.stream.customers_per_merchant
    customers = _int(body, "customers", default_customers, 1, MAX_CUSTOMERS)
    webhook_url = body.get("webhook_url")
    hmac_key_hex = body.get("hmac_key_hex")
    if webhook_url is not None:
        if processor != "adyen" or not isinstance(webhook_url, str):
            raise BadRequest("webhook_url applies to adyen accounts only")
        parts = urlsplit(webhook_url)
        if parts.scheme not in {"http", "https"} or not is_loopback(parts.hostname or ""):
            raise BadRequest("webhook_url must be an http(s) URL on loopback")
    if hmac_key_hex is not None:
        try:
            if not isinstance(hmac_key_hex, str) or not bytes.fromhex(hmac_key_hex):
                raise ValueError(hmac_key_hex)
        except ValueError as exc:
            raise BadRequest("hmac_key_hex must be a non-empty hex string") from exc
    existing = sandbox.accounts.get(account_id)
    if existing is not None:
        same = (
            existing.processor == processor
            and existing.merchant_seed == seed
            and existing.api_key == api_key
            and existing.webhook_url == webhook_url
        )
        if not same:
            return json_response({"error": f"account {account_id} exists"}, 409)
        customers = existing.config.stream.customers_per_merchant
        return json_response(_describe(existing, customers))
    if len(sandbox.accounts) >= MAX_ACCOUNTS:
        raise BadRequest(f"the sandbox holds at most {MAX_ACCOUNTS} accounts")
    owner = sandbox.by_key(processor, api_key)
    if owner is not None:
        return json_response({"error": "api_key is taken by another account"}, 409)
    config = sandbox.config
    if customers != config.stream.customers_per_merchant:
        stream = dataclasses.replace(config.stream, customers_per_merchant=customers)
        config = dataclasses.replace(config, stream=stream)
    account = Account(
        processor=processor,
        account_id=account_id,
        merchant_seed=seed,
        api_key=api_key,
        history_start=sandbox.clock.now() - timedelta(days=history_days),
        config=config,
        webhook_url=webhook_url,
        hmac_key_hex=hmac_key_hex,
    )
    sandbox.add(account)
    return json_response(_describe(account, customers), 201)


async def get_account(request: Request) -> Response:
    """GET /_sandbox/accounts/{id}: settings, faults and counts of an account."""
    account = _account(request)
    body = _describe(account, account.config.stream.customers_per_merchant)
    body["faults"] = account.faults.public()
    body["charges"] = account.visible(sandbox_of(request).clock.now())
    body["retries"] = len(account.retries)
    body["pending_notifications"] = len(account.outbox)
    return json_response(body)


async def set_faults(request: Request) -> Response:
    """POST /_sandbox/accounts/{id}/faults: replace the account's fault settings."""
    account = _account(request)
    body = await _json(request)
    known = {f.name for f in dataclasses.fields(Faults)} - {"pages"}
    unknown = set(body) - known
    if unknown:
        raise BadRequest(f"unknown fault settings: {', '.join(sorted(unknown))}")
    faults = Faults()
    for name in ("rate_limit", "server_error", "slow", "malformed", "truncated", "bad_signature"):
        setattr(faults, name, _int(body, name, 0, 0, 1_000_000))
    for name in ("duplicates", "out_of_order", "writes"):
        value = body.get(name, False)
        if not isinstance(value, bool):
            raise BadRequest(f"{name} must be a boolean")
        setattr(faults, name, value)
    slow_seconds = body.get("slow_seconds", 0.0)
    if not isinstance(slow_seconds, int | float) or not 0 <= slow_seconds <= 600:
        raise BadRequest("slow_seconds must be a number in [0, 600]")
    faults.slow_seconds = float(slow_seconds)
    account.faults = faults
    return json_response(faults.public())


async def list_retries(request: Request) -> Response:
    """GET /_sandbox/accounts/{id}/charges: every retry charge the sandbox accepted."""
    account = _account(request)
    data = [
        {
            "id": c.id,
            "retry_of": c.retry_of,
            "idempotency_key": c.idempotency_key,
            "outcome": c.status,
            "created": iso(c.created),
            "amount_minor": c.amount_minor,
            "currency": c.currency,
            "customer": c.customer,
            # Which of the customer's cards was charged (never more than its last four digits).
            "last4": c.card.last4,
            "card_fingerprint": c.card.fingerprint,
            "replays": account.replays.get(c.idempotency_key, 0) if c.idempotency_key else 0,
        }
        for c in account.retries
    ]
    return json_response({"account_id": account.account_id, "data": data})


async def history(request: Request) -> Response:
    """GET /_sandbox/accounts/{id}/history: what exists at now, counted by kind and status,
    with the ids of the failed first charges (the payments a poller or webhook must deliver)."""
    account = _account(request)
    now = sandbox_of(request).clock.now()
    visible = account.items[: account.visible(now)]
    counts: dict[str, dict[str, int]] = {}
    for charge in visible:
        by_status = counts.setdefault(charge.kind, {})
        by_status[charge.status] = by_status.get(charge.status, 0) + 1
    failed = [c.id for c in visible if c.kind == "stream" and c.status == "failed"]
    return json_response(
        {"account_id": account.account_id, "now": iso(now), "counts": counts, "failed": failed}
    )


async def idempotency(request: Request) -> Response:
    """GET /_sandbox/accounts/{id}/idempotency: per idempotency key, the charges made under it
    (more than one would be a double charge) and the replays served; keyless charges apart."""
    account = _account(request)
    charges: dict[str, int] = {}
    keyless = 0
    for charge in account.retries:
        if charge.idempotency_key is None:
            keyless += 1
        else:
            charges[charge.idempotency_key] = charges.get(charge.idempotency_key, 0) + 1
    keys = [
        {"key": key, "charges": count, "replays": account.replays.get(key, 0)}
        for key, count in charges.items()
    ]
    return json_response({"account_id": account.account_id, "keys": keys, "keyless": keyless})


async def post_event(request: Request) -> Response:
    """POST /_sandbox/accounts/{id}/events: something happens outside the portal's retries."""
    account = _account(request)
    body = await _json(request)
    kind = body.get("kind")
    charge_id = body.get("charge_id")
    if not isinstance(charge_id, str):
        raise BadRequest("charge_id is required")
    now = sandbox_of(request).clock.now()
    by = body.get("by")
    if by is not None and (kind != "paid_elsewhere" or by not in PAYERS[account.processor]):
        payers = ", ".join(PAYERS[account.processor])
        raise BadRequest(f"by applies to paid_elsewhere only, one of {payers} on this account")
    try:
        if kind == "paid_elsewhere":
            charge = account.paid_elsewhere(now, charge_id, by)
            return json_response(
                {"kind": kind, "charge_id": charge.id, "created": iso(now), "by": by}
            )
        if kind == "invoice_voided":
            account.invoice_voided(now, charge_id)
            return json_response({"kind": kind, "charge_id": charge_id})
        if kind == "card_updated":
            card = account.card_updated(now, charge_id)
            stored = account.billing.default(account.customer_of(charge_id, now))
            return json_response(
                {
                    "kind": kind,
                    "last4": card.last4,
                    "exp_month": card.exp_month,
                    "exp_year": card.exp_year,
                    "fingerprint": card.fingerprint,
                    "payment_method": stored.id if stored is not None else None,
                }
            )
        if kind in BILLING_EVENTS:
            return json_response(billing_event(account, now, kind, charge_id))
    except RetryRefused as exc:
        return json_response({"error": exc.message}, 404)
    kinds = ", ".join(("paid_elsewhere", "card_updated", "invoice_voided", *BILLING_EVENTS))
    raise BadRequest(f"kind must be one of {kinds}")


BILLING_EVENTS = ("subscription_canceled", "subscription_ended", "customer_deleted")


def billing_event(account: Account, now: datetime, kind: str, charge_id: str) -> dict[str, Any]:
    """The subscription behind a charge is canceled or reaches its end, or its customer is
    deleted (which, as at Stripe and Braintree, cancels the subscription too)."""
    customer = account.customer_of(charge_id, now)
    billing = account.billing
    if kind == "customer_deleted":
        billing.end_subscription(customer, now, scheduled=False)
        billing.delete_customer(customer, now)
        return {"kind": kind, "customer": customer}
    sub = billing.end_subscription(customer, now, scheduled=kind == "subscription_ended")
    return {"kind": kind, "customer": customer, "subscription": sub.id, "status": sub.status}


async def force_push(request: Request) -> Response:
    """POST /_sandbox/accounts/{id}/push: push an Adyen account's due notifications now."""
    account = _account(request)
    if not account.pushes:
        raise BadRequest("only adyen accounts with a webhook_url push notifications")
    pusher: adyen.Pusher = request.app.state.pusher
    return json_response(await pusher.push(account, force=True, max_batches=10_000))


async def _bad_request(request: Request, exc: Exception) -> Response:
    return json_response({"error": str(exc)}, 400)


async def _not_found(request: Request, exc: Exception) -> Response:
    return json_response({"error": f"no such account: {exc}"}, 404)


def create_app(
    clock: Callable[[], datetime] | None = None, config_path: str | None = None
) -> Starlette:
    """The sandbox app; `clock` gives "now" (default: wall clock), `config_path` the simulator's
    parameters (default: the shipped calibration)."""
    config: SimulatorConfig = load_config(config_path)
    sandbox = Sandbox(SandboxClock(clock), config)
    pusher = adyen.Pusher(sandbox)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                try:
                    await pusher.run()
                except Exception:
                    # One failed tick must not stop deliveries for good.
                    _log.exception("webhook push failed")
                    await asyncio.sleep(adyen.TICK_SECONDS)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await pusher.close()

    admin = [
        Route("/clock", set_clock, methods=["POST"]),
        Route("/clock", get_clock, methods=["GET"]),
        Route("/accounts", create_account, methods=["POST"]),
        Route("/accounts/{account_id}", get_account, methods=["GET"]),
        Route("/accounts/{account_id}/faults", set_faults, methods=["POST"]),
        Route("/accounts/{account_id}/charges", list_retries, methods=["GET"]),
        Route("/accounts/{account_id}/history", history, methods=["GET"]),
        Route("/accounts/{account_id}/idempotency", idempotency, methods=["GET"]),
        Route("/accounts/{account_id}/events", post_event, methods=["POST"]),
        Route("/accounts/{account_id}/push", force_push, methods=["POST"]),
    ]
    app = Starlette(
        routes=[
            Mount("/_sandbox", routes=admin),
            Mount("/stripe", routes=[*stripe.routes, *billing_api.stripe_routes]),
            Mount("/braintree", routes=[*braintree.routes, *billing_api.braintree_routes]),
            Mount("/adyen", routes=[*adyen.routes, *billing_api.adyen_routes]),
            Mount("/checkout", routes=[*checkout.routes, *billing_api.checkout_routes]),
        ],
        exception_handlers={BadRequest: _bad_request, UnknownAccount: _not_found},
        lifespan=lifespan,
    )
    app.state.sandbox = sandbox
    app.state.pusher = pusher
    return app


def run(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    clock: Callable[[], datetime] | None = None,
    config_path: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve the sandbox with uvicorn, on loopback only."""
    require_loopback(host)
    uvicorn.run(create_app(clock, config_path), host=host, port=port, log_level=log_level)
