"""Stripe over HTTP: list paging and shapes, fetch, auth, retries with idempotency, faults."""

from typing import Any

import httpx
import pytest

from tests.support.sandbox import NOW, AccountFactory, set_faults


def _auth(account: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {account['api_key']}"}


async def _all_charges(http: httpx.AsyncClient, account: dict[str, Any]) -> list[dict[str, Any]]:
    charges: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        response = await http.get("/stripe/v1/charges", params=params, headers=_auth(account))
        assert response.status_code == 200
        page = response.json()
        charges.extend(page["data"])
        if not page["has_more"]:
            return charges
        params["starting_after"] = page["data"][-1]["id"]


async def _first_failed(http: httpx.AsyncClient, account: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in await _all_charges(http, account) if c["status"] == "failed")


async def test_list_pages_newest_first_without_gaps(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("stripe")
    charges = await _all_charges(http, account)
    created = [c["created"] for c in charges]
    assert len(charges) > 200
    assert created == sorted(created, reverse=True)
    assert len({c["id"] for c in charges}) == len(charges)
    assert max(created) <= NOW.timestamp()
    assert min(created) >= NOW.timestamp() - 45 * 86400
    small = await http.get("/stripe/v1/charges", params={"limit": 7}, headers=_auth(account))
    body = small.json()
    assert body["object"] == "list"
    assert body["url"] == "/v1/charges"
    assert body["has_more"] is True
    assert [c["id"] for c in body["data"]] == [c["id"] for c in charges[:7]]


async def test_created_gte_filters(http: httpx.AsyncClient, make_account: AccountFactory) -> None:
    account = await make_account("stripe")
    since = int(NOW.timestamp()) - 5 * 86400
    response = await http.get(
        "/stripe/v1/charges", params={"limit": 100, "created[gte]": since}, headers=_auth(account)
    )
    data = response.json()["data"]
    assert data
    assert all(c["created"] >= since for c in data)
    everything = await _all_charges(http, account)
    assert len([c for c in everything if c["created"] >= since]) == len(data)


async def test_charge_shapes_mix_api_versions(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    charges = await _all_charges(http, await make_account("stripe"))
    modern = [c for c in charges if "payment_method_details" in c]
    legacy = [c for c in charges if "source" in c]
    assert modern
    assert legacy
    assert len(modern) + len(legacy) == len(charges)
    assert {c["payment_method_details"]["card"]["brand"] for c in modern} <= {
        "visa",
        "mastercard",
        "amex",
        "discover",
    }
    assert {c["source"]["brand"] for c in legacy} <= {
        "Visa",
        "MasterCard",
        "American Express",
        "Discover",
    }
    assert all(c["source"]["object"] == "card" for c in legacy)
    failed = [c for c in charges if c["status"] == "failed"]
    assert failed
    assert all(c["paid"] is False and c["failure_code"] for c in failed)
    assert any("advice_code" in c["outcome"] for c in failed)
    assert any("advice_code" not in c["outcome"] for c in failed)
    assert {c["outcome"]["type"] for c in failed} <= {"issuer_declined", "blocked"}
    assert any(c["failure_code"] == "card_declined" and c["outcome"]["reason"] for c in failed)
    succeeded = [c for c in charges if c["status"] == "succeeded"]
    assert all(c["outcome"]["type"] == "authorized" and c["paid"] for c in succeeded)
    assert all(c["currency"] == c["currency"].lower() for c in charges)
    assert all(c["customer"].startswith("cus_") for c in charges)
    assert any("invoice" in c for c in charges)
    assert any("invoice" not in c for c in charges)


async def test_fetch_one_and_missing(http: httpx.AsyncClient, make_account: AccountFactory) -> None:
    account = await make_account("stripe")
    listed = await _first_failed(http, account)
    one = await http.get(f"/stripe/v1/charges/{listed['id']}", headers=_auth(account))
    assert one.status_code == 200
    assert one.json() == listed
    missing = await http.get("/stripe/v1/charges/ch_nope", headers=_auth(account))
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "resource_missing"


async def test_wrong_key_is_stripe_401(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    await make_account("stripe")
    for headers in ({"Authorization": "Bearer sk_test_wrong_key_1234"}, {}):
        response = await http.get("/stripe/v1/charges", headers=headers)
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["message"].startswith("Invalid API Key provided")


async def test_limit_out_of_range(http: httpx.AsyncClient, make_account: AccountFactory) -> None:
    account = await make_account("stripe")
    for limit in (0, 101):
        response = await http.get(
            "/stripe/v1/charges", params={"limit": limit}, headers=_auth(account)
        )
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "limit"


async def _retry(
    http: httpx.AsyncClient,
    account: dict[str, Any],
    charge: dict[str, Any],
    key: str,
    amount: int | None = None,
) -> httpx.Response:
    form = {
        "amount": str(amount if amount is not None else charge["amount"]),
        "currency": charge["currency"],
        "customer": charge["customer"],
        "metadata[retry_of]": charge["id"],
    }
    return await http.post(
        "/stripe/v1/charges", data=form, headers={**_auth(account), "Idempotency-Key": key}
    )


async def test_retry_idempotency_replay_and_conflict(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("stripe")
    failed = await _first_failed(http, account)
    first = await _retry(http, account, failed, "key-1")
    assert first.status_code in {200, 402}
    if first.status_code == 402:
        error = first.json()["error"]
        assert error["type"] == "card_error"
        assert error["charge"].startswith("ch_")
        assert error["decline_code"]
    else:
        assert first.json()["metadata"] == {"retry_of": failed["id"]}
    assert "Idempotent-Replayed" not in first.headers
    again = await _retry(http, account, failed, "key-1")
    assert again.status_code == first.status_code
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    conflict = await _retry(http, account, failed, "key-1", amount=failed["amount"] + 1)
    assert conflict.status_code == 400
    assert conflict.json()["error"]["type"] == "idempotency_error"
    ledger = (await http.get(f"/_sandbox/accounts/{account['account_id']}/charges")).json()
    assert len(ledger["data"]) == 1
    entry = ledger["data"][0]
    assert entry["retry_of"] == failed["id"]
    assert entry["idempotency_key"] == "key-1"
    assert entry["replays"] == 1
    assert entry["outcome"] == ("succeeded" if first.status_code == 200 else "failed")


async def test_retries_appear_in_list_and_declines_carry_charge(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("stripe")
    failures = [c for c in await _all_charges(http, account) if c["status"] == "failed"][:15]
    ids = []
    for n, charge in enumerate(failures):
        response = await _retry(http, account, charge, f"k-{n}")
        ids.append(
            response.json()["id"]
            if response.status_code == 200
            else response.json()["error"]["charge"]
        )
    listed = {c["id"]: c for c in await _all_charges(http, account)}
    for charge_id, original in zip(ids, failures, strict=True):
        assert listed[charge_id]["metadata"] == {"retry_of": original["id"]}
        assert listed[charge_id]["created"] == int(NOW.timestamp())


async def test_retry_of_unknown_charge_is_refused(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("stripe")
    fake = {"id": "ch_missing", "amount": 100, "currency": "usd", "customer": "cus_x"}
    response = await _retry(http, account, fake, "k")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "resource_missing"


async def test_rate_limit_and_server_error_faults(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("stripe")
    await set_faults(http, account["account_id"], rate_limit=1, server_error=1)
    limited = await http.get("/stripe/v1/charges", headers=_auth(account))
    assert limited.status_code == 429
    assert limited.headers["Stripe-Should-Retry"] == "true"
    assert limited.headers["Stripe-Rate-Limited-Reason"]
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limit"
    broken = await http.get("/stripe/v1/charges", headers=_auth(account))
    assert broken.status_code == 500
    assert broken.json()["error"]["type"] == "api_error"
    assert (await http.get("/stripe/v1/charges", headers=_auth(account))).status_code == 200


async def test_slow_fault_outlasts_client_timeout(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("stripe")
    await set_faults(http, account["account_id"], slow=1, slow_seconds=0.6)
    with pytest.raises(httpx.ReadTimeout):
        await http.get("/stripe/v1/charges", headers=_auth(account), timeout=0.2)
    fast = await http.get("/stripe/v1/charges", headers=_auth(account), timeout=0.5)
    assert fast.status_code == 200


async def test_malformed_and_truncated_records(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("stripe")
    clean = (await http.get("/stripe/v1/charges", headers=_auth(account))).json()["data"]
    await set_faults(http, account["account_id"], malformed=1, truncated=1)
    dirty = (await http.get("/stripe/v1/charges", headers=_auth(account))).json()["data"]
    assert not isinstance(dirty[0]["amount"], int)
    assert "currency" not in dirty[0]
    assert dirty[0]["id"] == clean[0]["id"]
    assert list(dirty[1]) == ["id", "object", "amount"]
    assert dirty[2:] == clean[2:]
    again = (await http.get("/stripe/v1/charges", headers=_auth(account))).json()["data"]
    assert again == clean


async def test_duplicates_and_out_of_order(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("stripe")
    clean = await _all_charges(http, account)
    await set_faults(http, account["account_id"], duplicates=True, out_of_order=True)
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 50}
    orders_differ = False
    while True:
        page = (await http.get("/stripe/v1/charges", params=params, headers=_auth(account))).json()
        ids = [c["id"] for c in page["data"]]
        ordered = sorted(page["data"], key=lambda c: (c["created"], c["id"]), reverse=True)
        orders_differ |= ids != [c["id"] for c in ordered]
        seen.extend(ids)
        if not page["has_more"]:
            break
        # A careful client pages from the oldest record it got, whatever the page order.
        params["starting_after"] = min(page["data"], key=lambda c: c["created"])["id"]
    assert orders_differ
    assert len(seen) > len(set(seen))
    assert set(seen) == {c["id"] for c in clean}


async def test_ending_before_pages_towards_newer(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("stripe")
    charges = await _all_charges(http, account)
    anchor = charges[30]
    response = await http.get(
        "/stripe/v1/charges",
        params={"limit": 10, "ending_before": anchor["id"]},
        headers=_auth(account),
    )
    page = response.json()
    assert [c["id"] for c in page["data"]] == [c["id"] for c in charges[20:30]]
    assert page["has_more"] is True
    both = await http.get(
        "/stripe/v1/charges",
        params={"ending_before": anchor["id"], "starting_after": anchor["id"]},
        headers=_auth(account),
    )
    assert both.status_code == 400


@pytest.mark.parametrize("limit", [1, 3, 17, 100])
async def test_any_page_size_sees_each_charge_once(
    http: httpx.AsyncClient, make_account: AccountFactory, limit: int
) -> None:
    account = await make_account("stripe", history_days=6, merchant_seed=21)
    reference = [c["id"] for c in await _all_charges(http, account)]
    since = int(NOW.timestamp()) - 3 * 86400
    seen: list[str] = []
    params: dict[str, Any] = {"limit": limit, "created[gte]": since}
    while True:
        page = (await http.get("/stripe/v1/charges", params=params, headers=_auth(account))).json()
        assert len(page["data"]) <= limit
        seen.extend(c["id"] for c in page["data"])
        if not page["has_more"]:
            break
        params["starting_after"] = page["data"][-1]["id"]
    assert seen == reference[: len(seen)]
    assert 0 < len(seen) < len(reference)
