"""Checkout.com over HTTP: skip paging, stable while payments arrive; retries; faults."""

from typing import Any

import httpx
import pytest

from tests.support.sandbox import AccountFactory, set_faults


def _auth(account: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {account['api_key']}"}


async def _page(http: httpx.AsyncClient, account: dict[str, Any], **params: Any) -> dict[str, Any]:
    response = await http.get("/checkout/payments", params=params, headers=_auth(account))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _retry(
    http: httpx.AsyncClient, account: dict[str, Any], payment: dict[str, Any], key: str
) -> httpx.Response:
    body = {
        "amount": payment["amount"],
        "currency": payment["currency"],
        "customer": {"id": payment["customer"]["id"]},
        "reference": payment["reference"],
        "merchant_initiated": True,
        "payment_type": "Recurring",
        "metadata": {"retry_of": payment["id"]},
    }
    headers = {**_auth(account), "Cko-Idempotency-Key": key}
    return await http.post("/checkout/payments", json=body, headers=headers)


async def test_skip_paging_is_stable_while_payments_arrive(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("checkout")
    first = await _page(http, account, limit=100)
    total = first["total_count"]
    assert total > 200
    assert first["limit"] == 100
    assert first["skip"] == 0
    seen = list(first["data"])
    declined = next(p for p in seen if p["status"] == "Declined")
    retried = await _retry(http, account, declined, "cko-1")
    assert retried.status_code == 201
    skip = 100
    while True:
        page = await _page(http, account, limit=100, skip=skip)
        if not page["data"]:
            break
        seen.extend(page["data"])
        skip += 100
    assert page["total_count"] == total + 1
    ids = [p["id"] for p in seen]
    assert len(ids) == len(set(ids)) == total + 1
    assert ids[-1] == retried.json()["id"]
    requested = [p["requested_on"] for p in seen]
    assert requested == sorted(requested)
    since = await _page(http, account, limit=100, **{"from": requested[-50]})
    assert [p["id"] for p in since["data"]] == ids[-50:]


async def test_payment_shapes(http: httpx.AsyncClient, make_account: AccountFactory) -> None:
    account = await make_account("checkout")
    data = (await _page(http, account, limit=100))["data"]
    sources = [p["source"] for p in data]
    assert {s["scheme"] for s in sources} & {"VISA", "Visa"}
    assert any("last4" in s for s in sources)
    assert any("last_4" in s for s in sources)
    assert {s.get("card_type") for s in sources} <= {"CREDIT", "DEBIT", "PREPAID", None}
    declined = [p for p in data if p["status"] == "Declined"]
    assert declined
    assert all(not p["approved"] and p["response_code"][0] in "234" for p in declined)
    approved = [p for p in data if p["approved"]]
    assert all(p["response_code"] == "10000" for p in approved)
    assert {p["status"] for p in approved} <= {"Authorized", "Captured"}
    assert all(p["id"].startswith("pay_") and p["customer"]["id"] for p in data)
    one = await http.get(f"/checkout/payments/{data[0]['id']}", headers=_auth(account))
    assert one.json() == data[0]
    missing = await http.get("/checkout/payments/pay_missing", headers=_auth(account))
    assert missing.status_code == 404


async def test_retry_idempotency(http: httpx.AsyncClient, make_account: AccountFactory) -> None:
    account = await make_account("checkout")
    data = (await _page(http, account, limit=100))["data"]
    declined = next(p for p in data if p["status"] == "Declined")
    first = await _retry(http, account, declined, "cko-2")
    body = first.json()
    assert body["metadata"] == {"retry_of": declined["id"]}
    assert body["status"] in {"Authorized", "Declined"}
    assert body["approved"] is (body["status"] == "Authorized")
    again = await _retry(http, account, declined, "cko-2")
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    other = next(p for p in data if p["id"] != declined["id"])
    conflict = await _retry(http, account, other, "cko-2")
    assert conflict.status_code == 409


async def test_auth_limits_and_faults(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("checkout")
    unauthorized = await http.get("/checkout/payments", headers={"Authorization": "Bearer no"})
    assert unauthorized.status_code == 401
    bad = await http.get("/checkout/payments", params={"limit": 101}, headers=_auth(account))
    assert bad.status_code == 422
    assert bad.json()["error_codes"] == ["limit_invalid"]
    await set_faults(http, account["account_id"], rate_limit=1, server_error=1)
    limited = await http.get("/checkout/payments", headers=_auth(account))
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert (await http.get("/checkout/payments", headers=_auth(account))).status_code >= 500
    assert (await http.get("/checkout/payments", headers=_auth(account))).status_code == 200


async def test_duplicates_repeat_across_pages(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("checkout")
    clean = (await _page(http, account, limit=20, skip=20))["data"]
    await set_faults(http, account["account_id"], duplicates=True)
    previous = (await _page(http, account, limit=20, skip=0))["data"]
    dirty = (await _page(http, account, limit=20, skip=20))["data"]
    assert dirty[0] == previous[-1]
    assert dirty[1:] == clean


@pytest.mark.parametrize("limit", [1, 7, 100])
async def test_any_page_size_sees_each_payment_once(
    http: httpx.AsyncClient, make_account: AccountFactory, limit: int
) -> None:
    account = await make_account("checkout", history_days=4, merchant_seed=22)
    seen: list[str] = []
    skip = 0
    while True:
        page = await _page(http, account, limit=limit, skip=skip)
        if not page["data"]:
            break
        seen.extend(p["id"] for p in page["data"])
        skip += limit
    assert len(seen) == len(set(seen)) == page["total_count"] > 0
