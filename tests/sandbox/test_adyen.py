"""Adyen over HTTP: signed AUTHORISATION pushes re-sent until "[accepted]"; /payments retries."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.responses import PlainTextResponse

from tests.support.adyen_push import KEY_HEX, Receiver, push_all, serve_receiver, signature_ok
from tests.support.sandbox import AccountFactory, set_faults


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serve_receiver() as found:
        yield found


async def _stripe_count(http: httpx.AsyncClient, make_account: AccountFactory) -> int:
    twin = await make_account("stripe", history_days=10)
    headers = {"Authorization": f"Bearer {twin['api_key']}"}
    total = 0
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = (await http.get("/stripe/v1/charges", params=params, headers=headers)).json()
        total += len(page["data"])
        if not page["has_more"]:
            return total
        params["starting_after"] = page["data"][-1]["id"]


async def test_push_is_signed_and_resent_until_accepted(
    http: httpx.AsyncClient, make_account: AccountFactory, receiver: Receiver
) -> None:
    receiver.refusals = [PlainTextResponse("boom", 500), PlainTextResponse("[rejected]")]
    account = await make_account(
        "adyen", history_days=10, webhook_url=receiver.url, hmac_key_hex=KEY_HEX
    )
    await push_all(http, account["account_id"])
    assert len(receiver.batches) >= 3
    first = [
        i["NotificationRequestItem"]["pspReference"]
        for i in receiver.batches[0]["notificationItems"]
    ]
    resent = [
        b
        for b in receiver.batches
        if [i["NotificationRequestItem"]["pspReference"] for i in b["notificationItems"]] == first
    ]
    assert len(resent) >= 3
    items = receiver.items()
    accepted = {i["pspReference"] for i in items}
    assert len(accepted) == await _stripe_count(http, make_account)
    assert all(b["live"] == "false" for b in receiver.batches)
    assert all(len(b["notificationItems"]) <= 50 for b in receiver.batches)
    for item in items:
        assert signature_ok(item, KEY_HEX)
        assert item["eventCode"] == "AUTHORISATION"
        assert item["success"] in {"true", "false"}
        assert item["merchantAccountCode"] == account["account_id"]
        assert item["paymentMethod"] in {"visa", "mc", "amex", "discover"}
        assert isinstance(item["amount"]["value"], int)
        month, year = item["additionalData"]["expiryDate"].split("/")
        assert 1 <= int(month) <= 12
        assert not month.startswith("0")
        assert len(year) == 4
    failed = [i for i in items if i["success"] == "false"]
    assert failed
    assert all(
        " : " in i["additionalData"]["refusalReasonRaw"]
        or "DECLINED" in i["additionalData"]["refusalReasonRaw"]
        for i in failed
    )
    assert any(i["reason"] == "Refused" for i in failed)


async def test_retry_payment_is_pushed_too(
    http: httpx.AsyncClient, make_account: AccountFactory, receiver: Receiver
) -> None:
    account = await make_account(
        "adyen", history_days=10, webhook_url=receiver.url, hmac_key_hex=KEY_HEX
    )
    await push_all(http, account["account_id"])
    failed = next(i for i in receiver.items() if i["success"] == "false")
    request = {
        "amount": failed["amount"],
        "reference": failed["merchantReference"],
        "shopperReference": failed["additionalData"]["shopperReference"],
        "merchantAccount": account["account_id"],
        "recurringProcessingModel": "Subscription",
        "shopperInteraction": "ContAuth",
        "metadata": {"retry_of": failed["pspReference"]},
    }
    headers = {"X-API-Key": account["api_key"], "Idempotency-Key": "adyen-1"}
    response = await http.post("/adyen/v71/payments", json=request, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["resultCode"] in {"Authorised", "Refused"}
    if body["resultCode"] == "Refused":
        assert body["refusalReason"]
        assert body["refusalReasonCode"]
    replayed = await http.post("/adyen/v71/payments", json=request, headers=headers)
    assert replayed.content == response.content
    assert replayed.headers["Idempotent-Replayed"] == "true"
    conflict = await http.post(
        "/adyen/v71/payments", json={**request, "reference": "other"}, headers=headers
    )
    assert conflict.status_code == 422
    await push_all(http, account["account_id"])
    pushed = [i for i in receiver.items() if i["pspReference"] == body["pspReference"]]
    assert len(pushed) == 1
    assert pushed[0]["additionalData"]["metadata.retry_of"] == failed["pspReference"]
    assert pushed[0]["success"] == ("true" if body["resultCode"] == "Authorised" else "false")
    assert signature_ok(pushed[0], KEY_HEX)


async def test_background_push_needs_no_nudge(
    http: httpx.AsyncClient, make_account: AccountFactory, receiver: Receiver
) -> None:
    account = await make_account(
        "adyen", history_days=3, webhook_url=receiver.url, hmac_key_hex=KEY_HEX
    )
    for _ in range(100):
        if receiver.batches:
            break
        await asyncio.sleep(0.05)
    assert receiver.batches
    assert receiver.items()[0]["merchantAccountCode"] == account["account_id"]


async def test_payments_auth_and_faults(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("adyen", history_days=3)
    wrong = await http.post("/adyen/v71/payments", json={}, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401
    assert wrong.json()["errorType"] == "security"
    await set_faults(http, account["account_id"], rate_limit=1)
    limited = await http.post(
        "/adyen/v71/payments", json={}, headers={"X-API-Key": account["api_key"]}
    )
    assert limited.status_code == 429
    invalid = await http.post(
        "/adyen/v71/payments",
        json={"merchantAccount": account["account_id"]},
        headers={"X-API-Key": account["api_key"]},
    )
    assert invalid.status_code == 422
    assert invalid.json()["errorType"] == "validation"


async def test_push_faults_corrupt_and_repeat_items(
    http: httpx.AsyncClient, make_account: AccountFactory, receiver: Receiver
) -> None:
    account = await make_account(
        "adyen", history_days=3, webhook_url=receiver.url, hmac_key_hex=KEY_HEX
    )
    await set_faults(http, account["account_id"], malformed=1, duplicates=True)
    await push_all(http, account["account_id"])
    items = receiver.items()
    broken = [i for i in items if not isinstance(i["amount"]["value"], int)]
    assert len(broken) == 1
    # The sender is authentic even when its record is broken: the signature still verifies.
    assert "currency" not in broken[0]["amount"]
    psps = [i["pspReference"] for i in items]
    assert len(psps) > len(set(psps))


async def test_bad_signature_fault_is_resent_correctly(
    http: httpx.AsyncClient, make_account: AccountFactory, receiver: Receiver
) -> None:
    # Closed until the fault is set, so no delivery can be accepted before it.
    receiver.closed = True
    receiver.verify_with = KEY_HEX
    account = await make_account(
        "adyen", history_days=2, webhook_url=receiver.url, hmac_key_hex=KEY_HEX
    )
    await set_faults(http, account["account_id"], bad_signature=1)
    receiver.closed = False
    await push_all(http, account["account_id"])
    valid = [
        all(signature_ok(i["NotificationRequestItem"], KEY_HEX) for i in b["notificationItems"])
        for b in receiver.batches
    ]
    assert valid.count(False) == 1
    assert valid[-1] is True
