"""The sandbox app: admin API, clocks, determinism, events and the loopback-only runner."""

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from sandbox.app import create_app, run
from sandbox.server import is_loopback
from tests.support.sandbox import NOW, AccountFactory, SettableClock

STRIPE = {
    "processor": "stripe",
    "account_id": "acct_1",
    "merchant_seed": 5,
    "api_key": "sk_test_1",
    "history_days": 40,
    "customers": 200,
}
AUTH = {"Authorization": "Bearer sk_test_1"}


def _client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox")


@pytest.fixture
async def local() -> AsyncIterator[httpx.AsyncClient]:
    async with _client(create_app(lambda: NOW)) as client:
        yield client


async def _everything(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = (await client.get("/stripe/v1/charges", params=params, headers=AUTH)).json()
        out.extend(page["data"])
        if not page["has_more"]:
            return out
        params["starting_after"] = page["data"][-1]["id"]


async def _first_failed(client: httpx.AsyncClient) -> dict[str, Any]:
    return next(c for c in await _everything(client) if c["status"] == "failed")


async def _retry(client: httpx.AsyncClient, charge: dict[str, Any], key: str) -> httpx.Response:
    form = {
        "amount": str(charge["amount"]),
        "currency": charge["currency"],
        "metadata[retry_of]": charge["id"],
    }
    return await client.post(
        "/stripe/v1/charges", data=form, headers={**AUTH, "Idempotency-Key": key}
    )


async def test_same_seed_gives_same_charges_and_outcomes() -> None:
    runs = []
    for seed in (5, 5, 6):
        async with _client(create_app(lambda: NOW)) as client:
            created = await client.post(
                "/_sandbox/accounts", json={**STRIPE, "merchant_seed": seed}
            )
            assert created.status_code == 201
            charges = await _everything(client)
            failed = [c for c in charges if c["status"] == "failed"][:10]
            outcomes = [(await _retry(client, c, f"k{n}")).content for n, c in enumerate(failed)]
            runs.append((charges, outcomes))
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]


async def test_account_validation(local: httpx.AsyncClient) -> None:
    assert (await local.post("/_sandbox/accounts", json=STRIPE)).status_code == 201
    assert (await local.post("/_sandbox/accounts", json=STRIPE)).status_code == 200
    taken = {**STRIPE, "merchant_seed": 9}
    assert (await local.post("/_sandbox/accounts", json=taken)).status_code == 409
    same_key = {**STRIPE, "account_id": "acct_2"}
    assert (await local.post("/_sandbox/accounts", json=same_key)).status_code == 409
    for bad in (
        {**STRIPE, "account_id": "a2", "processor": "paypal"},
        {**STRIPE, "account_id": "a3", "history_days": -1},
        {**STRIPE, "account_id": "a 4"},
        {**STRIPE, "account_id": "a5", "webhook_url": "http://127.0.0.1:1/x"},
        {
            **STRIPE,
            "account_id": "a6",
            "processor": "adyen",
            "webhook_url": "http://192.0.2.10/hook",
        },
        {**STRIPE, "account_id": "a7", "processor": "adyen", "hmac_key_hex": "zz"},
    ):
        response = await local.post("/_sandbox/accounts", json=bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]
    missing = await local.post("/_sandbox/accounts/nobody/faults", json={})
    assert missing.status_code == 404
    unknown = await local.post("/_sandbox/accounts/acct_1/faults", json={"explode": 1})
    assert unknown.status_code == 400


async def test_accelerated_clock_reveals_new_charges(local: httpx.AsyncClient) -> None:
    await local.post("/_sandbox/accounts", json=STRIPE)
    before = len(await _everything(local))
    # One simulated week per real second, starting where the injected clock stands.
    speed = 7 * 86400
    set_clock = await local.post("/_sandbox/clock", json={"start": NOW.isoformat(), "speed": speed})
    assert set_clock.status_code == 200
    await asyncio.sleep(0.3)
    now = datetime.fromisoformat((await local.get("/_sandbox/clock")).json()["now"])
    assert now - NOW >= timedelta(days=2)
    assert now - NOW < timedelta(days=7)
    assert len(await _everything(local)) > before


async def test_frozen_clock_and_bad_speed(local: httpx.AsyncClient) -> None:
    start = NOW + timedelta(days=1)
    frozen = await local.post("/_sandbox/clock", json={"start": start.isoformat(), "speed": 0})
    assert frozen.status_code == 200
    await asyncio.sleep(0.02)
    now = (await local.get("/_sandbox/clock")).json()["now"]
    assert datetime.fromisoformat(now) == start
    bad = await local.post("/_sandbox/clock", json={"start": start.isoformat(), "speed": -1})
    assert bad.status_code == 400


async def test_injected_clock_moves_the_sandbox() -> None:
    clock = SettableClock(NOW)
    async with _client(create_app(clock)) as client:
        await client.post("/_sandbox/accounts", json=STRIPE)
        before = await _everything(client)
        clock.now = NOW + timedelta(days=3)
        after = await _everything(client)
    assert len(after) > len(before)
    assert after[len(after) - len(before) :] == before


async def test_write_faults_only_when_asked(local: httpx.AsyncClient) -> None:
    await local.post("/_sandbox/accounts", json=STRIPE)
    failed = await _first_failed(local)
    faults = {"rate_limit": 1}
    await local.post("/_sandbox/accounts/acct_1/faults", json=faults)
    assert (await _retry(local, failed, "w1")).status_code in {200, 402}
    await local.post("/_sandbox/accounts/acct_1/faults", json={**faults, "writes": True})
    assert (await _retry(local, failed, "w2")).status_code == 429
    assert (await _retry(local, failed, "w2")).status_code in {200, 402}


async def test_events_paid_elsewhere_and_card_updated(local: httpx.AsyncClient) -> None:
    await local.post("/_sandbox/accounts", json=STRIPE)
    failures = [c for c in await _everything(local) if c["status"] == "failed"]
    paid = await local.post(
        "/_sandbox/accounts/acct_1/events",
        json={"kind": "paid_elsewhere", "charge_id": failures[0]["id"]},
    )
    assert paid.status_code == 200
    new = await local.get(f"/stripe/v1/charges/{paid.json()['charge_id']}", headers=AUTH)
    assert new.json()["status"] == "succeeded"
    assert new.json()["customer"] == failures[0]["customer"]
    assert new.json()["metadata"] == {"paid_invoice_of": failures[0]["id"]}
    target = failures[1]
    updated = await local.post(
        "/_sandbox/accounts/acct_1/events", json={"kind": "card_updated", "charge_id": target["id"]}
    )
    assert updated.status_code == 200
    retried = await _retry(local, target, "after-update")
    assert retried.status_code == 200
    card = retried.json().get("payment_method_details", {}).get("card") or retried.json()["source"]
    assert card["last4"] == updated.json()["last4"]
    unknown = await local.post(
        "/_sandbox/accounts/acct_1/events", json={"kind": "card_updated", "charge_id": "ch_x"}
    )
    assert unknown.status_code == 404


async def test_admin_charge_ledger_lists_every_retry(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("stripe")
    headers = {"Authorization": f"Bearer {account['api_key']}"}
    page = (await http.get("/stripe/v1/charges", params={"limit": 100}, headers=headers)).json()
    failed = [c for c in page["data"] if c["status"] == "failed"][:3]
    for n, charge in enumerate(failed):
        form = {"amount": str(charge["amount"]), "currency": charge["currency"]}
        form["metadata[retry_of]"] = charge["id"]
        await http.post(
            "/stripe/v1/charges", data=form, headers={**headers, "Idempotency-Key": f"L{n}"}
        )
    ledger = (await http.get(f"/_sandbox/accounts/{account['account_id']}/charges")).json()
    assert [e["retry_of"] for e in ledger["data"]] == [c["id"] for c in failed]
    assert [e["idempotency_key"] for e in ledger["data"]] == ["L0", "L1", "L2"]
    assert {e["outcome"] for e in ledger["data"]} <= {"succeeded", "failed"}
    assert all(e["created"] == NOW.isoformat().replace("+00:00", "Z") for e in ledger["data"])


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "example.com", "::"])  # noqa: S104
def test_run_refuses_non_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        run(host=host, port=1)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("1.1.1.1", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


async def test_voided_invoice_refuses_retries(local: httpx.AsyncClient) -> None:
    await local.post("/_sandbox/accounts", json=STRIPE)
    failed = await _first_failed(local)
    voided = await local.post(
        "/_sandbox/accounts/acct_1/events",
        json={"kind": "invoice_voided", "charge_id": failed["id"]},
    )
    assert voided.status_code == 200
    refused = await _retry(local, failed, "after-void")
    assert refused.status_code == 400
    assert "void" in refused.json()["error"]["message"]
    described = (await local.get("/_sandbox/accounts/acct_1")).json()
    assert described["processor"] == "stripe"
    assert described["retries"] == 0
    assert described["charges"] > 0
    assert described["faults"]["rate_limit"] == 0


async def test_history_and_idempotency_ledgers(local: httpx.AsyncClient) -> None:
    assert (await local.post("/_sandbox/accounts", json=STRIPE)).status_code == 201
    everything = await _everything(local)
    failed = [c for c in everything if c["status"] == "failed"]
    history = (await local.get("/_sandbox/accounts/acct_1/history")).json()
    assert history["failed"] == sorted(
        (c["id"] for c in failed), key=[c["id"] for c in reversed(everything)].index
    )
    assert history["counts"]["stream"] == {
        "failed": len(failed),
        "succeeded": len(everything) - len(failed),
    }
    # One key sent twice: one charge and one replay; a second key: a charge of its own.
    for key in ("K1", "K1", "K2"):
        await _retry(local, failed[0], key)
    ledger = (await local.get("/_sandbox/accounts/acct_1/idempotency")).json()
    assert sorted(ledger["keys"], key=lambda k: k["key"]) == [
        {"key": "K1", "charges": 1, "replays": 1},
        {"key": "K2", "charges": 1, "replays": 0},
    ]
    assert ledger["keyless"] == 0
    history = (await local.get("/_sandbox/accounts/acct_1/history")).json()
    assert sum(history["counts"]["retry"].values()) == 2
    assert (await local.get("/_sandbox/accounts/nope/idempotency")).status_code == 404
