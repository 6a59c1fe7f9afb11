"""Braintree over HTTP: id search then batched XML fetch (at most 50), auth, sale, faults."""

from typing import Any
from xml.etree.ElementTree import Element

import httpx
from defusedxml import ElementTree as SafeTree

from tests.support.sandbox import NOW, AccountFactory, set_faults

SINCE = '<search><created-at><min type="datetime">{}</min></created-at></search>'


def _auth(account: dict[str, Any]) -> httpx.BasicAuth:
    return httpx.BasicAuth(account["account_id"], account["api_key"])


def _base(account: dict[str, Any]) -> str:
    return f"/braintree/merchants/{account['account_id']}/transactions"


async def _ids(http: httpx.AsyncClient, account: dict[str, Any], since: str) -> list[str]:
    response = await http.post(
        f"{_base(account)}/advanced_search_ids",
        content=SINCE.format(since),
        headers={"Content-Type": "application/xml"},
        auth=_auth(account),
    )
    assert response.status_code == 200, response.text
    root: Element = SafeTree.fromstring(response.content)
    assert root.tag == "search-results"
    assert root.findtext("page-size") == "50"
    return [item.text or "" for item in root.findall("ids/item")]


def _fetch_body(ids: list[str]) -> str:
    items = "".join(f"<item>{i}</item>" for i in ids)
    return f'<search><ids type="array">{items}</ids></search>'


async def _fetch(http: httpx.AsyncClient, account: dict[str, Any], ids: list[str]) -> Element:
    response = await http.post(
        f"{_base(account)}/advanced_search", content=_fetch_body(ids), auth=_auth(account)
    )
    assert response.status_code == 200, response.text
    root: Element = SafeTree.fromstring(response.content)
    return root


async def test_search_ids_then_fetch_in_batches(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("braintree")
    ids = await _ids(http, account, "2026-01-01T00:00:00Z")
    assert len(ids) > 200
    assert len(set(ids)) == len(ids)
    created: list[str] = []
    statuses: set[str] = set()
    for start in range(0, len(ids), 50):
        root = await _fetch(http, account, ids[start : start + 50])
        assert root.tag == "credit-card-transactions"
        assert root.get("type") == "collection"
        txs = root.findall("transaction")
        assert [t.findtext("id") for t in txs] == ids[start : start + 50]
        for tx in txs:
            created.append(tx.findtext("created-at") or "")
            statuses.add(tx.findtext("status") or "")
            assert tx.findtext("type") == "sale"
            amount = tx.findtext("amount") or ""
            assert amount.count(".") == 1
            assert len(amount.split(".")[1]) == 2
            card = tx.find("credit-card")
            assert card is not None
            assert card.findtext("card-type") in {
                "Visa",
                "MasterCard",
                "American Express",
                "Discover",
            }
            country = card.findtext("country-of-issuance") or ""
            assert country == "Unknown" or len(country) == 3
            assert card.findtext("debit") in {"Yes", "No", "Unknown"}
            response_type = tx.findtext("processor-response-type")
            if tx.findtext("status") == "processor_declined":
                assert response_type in {"soft_declined", "hard_declined"}
                assert tx.findtext("processor-response-code", "").startswith(("2", "3"))
                assert " : " in (tx.findtext("additional-processor-response") or "")
    assert created == sorted(created)
    assert "processor_declined" in statuses
    assert statuses & {"settled", "submitted_for_settlement"}
    later = await _ids(http, account, created[len(created) // 2])
    assert set(later) < set(ids)
    assert ids[-len(later) :] == later


async def test_more_than_fifty_ids_is_refused(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("braintree")
    ids = await _ids(http, account, "2026-01-01T00:00:00Z")
    response = await http.post(
        f"{_base(account)}/advanced_search", content=_fetch_body(ids[:51]), auth=_auth(account)
    )
    assert response.status_code == 400
    assert b"api-error-response" in response.content


async def test_fetch_by_id_and_auth(http: httpx.AsyncClient, make_account: AccountFactory) -> None:
    account = await make_account("braintree")
    other = await make_account("braintree")
    tx_id = (await _ids(http, account, "2026-01-01T00:00:00Z"))[0]
    one = await http.get(f"{_base(account)}/{tx_id}", auth=_auth(account))
    assert one.status_code == 200
    assert SafeTree.fromstring(one.content).findtext("id") == tx_id
    missing = await http.get(f"{_base(account)}/zzzzzzzz", auth=_auth(account))
    assert missing.status_code == 404
    wrong_key = httpx.BasicAuth(account["account_id"], "nope")
    assert (await http.get(f"{_base(account)}/{tx_id}", auth=wrong_key)).status_code == 401
    # Valid credentials of another merchant do not open this merchant's path.
    assert (await http.get(f"{_base(account)}/{tx_id}", auth=_auth(other))).status_code == 401
    assert (await http.get(f"{_base(account)}/{tx_id}")).status_code == 401


async def test_sale_retry_is_idempotent(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("braintree")
    ids = await _ids(http, account, "2026-01-01T00:00:00Z")
    root = await _fetch(http, account, ids[:50])
    declined = next(
        t for t in root.findall("transaction") if t.findtext("status") == "processor_declined"
    )
    sale = (
        "<transaction><type>sale</type><amount>{}</amount>"
        "<customer-id>{}</customer-id>"
        "<custom-fields><retry-of>{}</retry-of></custom-fields></transaction>"
    )
    body = sale.format(
        declined.findtext("amount"), declined.findtext("customer/id"), declined.findtext("id")
    )
    headers = {"Idempotency-Key": "bt-1", "Content-Type": "application/xml"}
    first = await http.post(_base(account), content=body, headers=headers, auth=_auth(account))
    assert first.status_code in {201, 422}
    tx = SafeTree.fromstring(first.content)
    if first.status_code == 422:
        assert tx.tag == "api-error-response"
        inner = tx.find("transaction")
        assert inner is not None
        tx = inner
    assert tx.findtext("custom-fields/retry-of") == declined.findtext("id")
    replayed = await http.post(_base(account), content=body, headers=headers, auth=_auth(account))
    assert replayed.content == first.content
    assert replayed.headers["Idempotent-Replayed"] == "true"
    changed = body.replace("<type>sale</type>", "<type>sale</type><order-id>x</order-id>")
    conflict = await http.post(
        _base(account), content=changed, headers=headers, auth=_auth(account)
    )
    assert conflict.status_code == 409
    listed = await _ids(http, account, "2026-01-01T00:00:00Z")
    assert listed[-1] == tx.findtext("id")
    assert tx.findtext("created-at") == NOW.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_rate_limit_and_unavailable_faults(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("braintree")
    await set_faults(http, account["account_id"], rate_limit=1, server_error=1)
    url = f"{_base(account)}/advanced_search_ids"
    body = SINCE.format("2026-01-01T00:00:00Z")
    limited = await http.post(url, content=body, auth=_auth(account))
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert (await http.post(url, content=body, auth=_auth(account))).status_code == 503
    assert (await http.post(url, content=body, auth=_auth(account))).status_code == 200


async def test_corrupted_and_duplicated_batches(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("braintree")
    ids = await _ids(http, account, "2026-01-01T00:00:00Z")
    await set_faults(http, account["account_id"], malformed=1, truncated=1, duplicates=True)
    root = await _fetch(http, account, ids[:50])
    txs = root.findall("transaction")
    assert len(txs) == 51
    assert txs[0].findtext("amount") == "12,34"
    assert txs[0].find("currency-iso-code") is None
    assert [c.tag for c in txs[1]] == ["id", "status"]
    overlapping = await _ids(http, account, "2026-01-01T00:00:00Z")
    assert overlapping[50] == overlapping[49]
    assert set(overlapping) == set(ids)
