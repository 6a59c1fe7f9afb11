"""Who paid, in each processor's wire format over HTTP, read by the portal's normalizers
(docs/actors.md): the billing system's retry, the customer's own payment, the processor's retry
and the portal's retry; and the billing addresses and issuer countries customers carry."""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from defusedxml import ElementTree as SafeTree

from app.enums import Actor, Processor
from app.processors.normalize.dispatch import normalize_payload
from app.processors.normalize.records import CanonicalRecord
from tests.support.adyen_push import KEY_HEX, Receiver, push_all, serve_receiver
from tests.support.sandbox import AccountFactory

SINCE = '<search><created-at><min type="datetime">2026-01-01T00:00:00Z</min></created-at></search>'


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serve_receiver() as found:
        yield found


def _record(processor: Processor, body: bytes) -> CanonicalRecord:
    [record] = normalize_payload(processor, body)
    assert isinstance(record, CanonicalRecord), record
    return record


@dataclass
class Client:
    """One sandbox account, read and retried through its processor's own API."""

    http: httpx.AsyncClient
    processor: Processor
    account: dict[str, Any]
    receiver: Receiver | None = None

    @property
    def _bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.account['api_key']}"}

    @property
    def _basic(self) -> httpx.BasicAuth:
        return httpx.BasicAuth(self.account["account_id"], self.account["api_key"])

    @property
    def _transactions(self) -> str:
        return f"/braintree/merchants/{self.account['account_id']}/transactions"

    async def bodies(self) -> dict[str, bytes]:
        """Every charge visible now, by id, as the normalizer reads it."""
        if self.processor is Processor.STRIPE:
            page = await self.http.get(
                "/stripe/v1/charges", params={"limit": 100}, headers=self._bearer
            )
            return {c["id"]: json.dumps(c).encode() for c in page.json()["data"]}
        if self.processor is Processor.CHECKOUT:
            page = await self.http.get(
                "/checkout/payments", params={"limit": 100}, headers=self._bearer
            )
            return {p["id"]: json.dumps(p).encode() for p in page.json()["data"]}
        if self.processor is Processor.BRAINTREE:
            return await self._braintree_bodies()
        assert self.receiver is not None
        await push_all(self.http, self.account["account_id"])
        return {
            i["pspReference"]: json.dumps({"NotificationRequestItem": i}).encode()
            for i in self.receiver.items()
        }

    async def _braintree_bodies(self) -> dict[str, bytes]:
        found = await self.http.post(
            f"{self._transactions}/advanced_search_ids", content=SINCE, auth=self._basic
        )
        ids = [i.text or "" for i in SafeTree.fromstring(found.content).findall("ids/item")]
        items = "".join(f"<item>{i}</item>" for i in ids[-50:])
        fetched = await self.http.post(
            f"{self._transactions}/advanced_search",
            content=f'<search><ids type="array">{items}</ids></search>',
            auth=self._basic,
        )
        root = SafeTree.fromstring(fetched.content)
        return {
            t.findtext("id") or "": SafeTree.tostring(t, encoding="utf-8")
            for t in root.findall("transaction")
        }

    async def body(self, charge_id: str) -> bytes:
        """One charge as the processor reports it (Adyen: as it pushes it)."""
        if self.processor is Processor.STRIPE:
            response = await self.http.get(f"/stripe/v1/charges/{charge_id}", headers=self._bearer)
        elif self.processor is Processor.CHECKOUT:
            response = await self.http.get(f"/checkout/payments/{charge_id}", headers=self._bearer)
        elif self.processor is Processor.BRAINTREE:
            response = await self.http.get(f"{self._transactions}/{charge_id}", auth=self._basic)
        else:
            return (await self.bodies())[charge_id]
        assert response.status_code == 200, response.text
        return response.content

    async def failures(self) -> list[CanonicalRecord]:
        """Failed charges that name their invoice (Stripe's newest API versions do not)."""
        records = [_record(self.processor, b) for b in (await self.bodies()).values()]
        return [r for r in records if r.status == "failed" and r.invoice_ref]

    async def retry(self, failed: CanonicalRecord) -> str:
        """The portal's retry of a failure, through the processor's API; the new charge's id."""
        charge, currency = failed.processor_payment_id, failed.currency
        minor = failed.amount_minor
        if self.processor is Processor.STRIPE:
            form = {"amount": str(minor), "currency": currency.lower()}
            form["metadata[retry_of]"] = charge
            response = await self.http.post("/stripe/v1/charges", data=form, headers=self._bearer)
            body = response.json()
            return str(body["error"]["charge"] if response.status_code == 402 else body["id"])
        if self.processor is Processor.CHECKOUT:
            payment = {"amount": minor, "currency": currency, "metadata": {"retry_of": charge}}
            response = await self.http.post(
                "/checkout/payments", json=payment, headers=self._bearer
            )
            return str(response.json()["id"])
        if self.processor is Processor.BRAINTREE:
            return await self._braintree_retry(failed)
        payment = {
            "amount": {"value": minor, "currency": currency},
            "reference": failed.invoice_ref,
            "merchantAccount": self.account["account_id"],
            "metadata": {"retry_of": charge},
        }
        headers = {"X-API-Key": self.account["api_key"]}
        response = await self.http.post("/adyen/v71/payments", json=payment, headers=headers)
        return str(response.json()["pspReference"])

    async def _braintree_retry(self, failed: CanonicalRecord) -> str:
        amount = f"{failed.amount_minor // 100}.{failed.amount_minor % 100:02d}"
        sale = (
            f"<transaction><type>sale</type><amount>{amount}</amount><custom-fields>"
            f"<retry-of>{failed.processor_payment_id}</retry-of></custom-fields></transaction>"
        )
        response = await self.http.post(self._transactions, content=sale, auth=self._basic)
        root = SafeTree.fromstring(response.content)
        tx = root if root.tag == "transaction" else root.find("transaction")
        assert tx is not None, response.text
        return tx.findtext("id") or ""

    async def paid_elsewhere(self, charge_id: str, by: str | None) -> str:
        body: dict[str, Any] = {"kind": "paid_elsewhere", "charge_id": charge_id}
        if by is not None:
            body["by"] = by
        url = f"/_sandbox/accounts/{self.account['account_id']}/events"
        response = await self.http.post(url, json=body)
        assert response.status_code == 200, response.text
        assert response.json()["by"] == by
        return str(response.json()["charge_id"])


async def _client(
    http: httpx.AsyncClient, make_account: AccountFactory, processor: Processor, receiver: Receiver
) -> Client:
    if processor is Processor.ADYEN:
        account = await make_account(
            "adyen", history_days=10, webhook_url=receiver.url, hmac_key_hex=KEY_HEX
        )
        return Client(http, processor, account, receiver)
    return Client(http, processor, await make_account(processor.value, history_days=10))


# Who each `by` says paid, per processor (None: rendered like the original, a recurring charge
# of the subscription; on Stripe, whether it names the invoice depends on its API version).
KINDS: list[tuple[Processor, str, Actor]] = [
    (Processor.STRIPE, "billing_system", Actor.BILLING_SYSTEM),
    (Processor.STRIPE, "customer", Actor.CUSTOMER),
    (Processor.BRAINTREE, "billing_system", Actor.BILLING_SYSTEM),
    (Processor.BRAINTREE, "customer", Actor.CUSTOMER),
    (Processor.BRAINTREE, "processor", Actor.PROCESSOR),
    (Processor.ADYEN, "billing_system", Actor.BILLING_SYSTEM),
    (Processor.ADYEN, "customer", Actor.CUSTOMER),
    (Processor.ADYEN, "processor", Actor.PROCESSOR),
    (Processor.CHECKOUT, "billing_system", Actor.BILLING_SYSTEM),
    (Processor.CHECKOUT, "customer", Actor.CUSTOMER),
]


@pytest.mark.parametrize(
    ("processor", "by", "actor"), KINDS, ids=[f"{p.value}-{by}" for p, by, _ in KINDS]
)
async def test_each_payer_in_the_processors_own_format(
    http: httpx.AsyncClient,
    make_account: AccountFactory,
    receiver: Receiver,
    processor: Processor,
    by: str,
    actor: Actor,
) -> None:
    client = await _client(http, make_account, processor, receiver)
    failed = (await client.failures())[0]
    paid_id = await client.paid_elsewhere(failed.processor_payment_id, by)
    record = _record(processor, await client.body(paid_id))
    assert record.status == "succeeded"
    assert record.actor is actor
    # It pays the failed charge's invoice: linked by the same reference.
    assert record.invoice_ref == failed.invoice_ref
    assert record.amount_minor == failed.amount_minor
    if by == "customer" and failed.card is not None and failed.card.country is not None:
        # Paying by themselves, the customer gives a billing address.
        assert record.billing_country == failed.card.country


@pytest.mark.parametrize("processor", list(Processor), ids=[p.value for p in Processor])
async def test_the_portals_retry_is_the_portals(
    http: httpx.AsyncClient, make_account: AccountFactory, receiver: Receiver, processor: Processor
) -> None:
    client = await _client(http, make_account, processor, receiver)
    failed = (await client.failures())[0]
    retry_id = await client.retry(failed)
    record = _record(processor, await client.body(retry_id))
    assert record.actor is Actor.PORTAL


@pytest.mark.parametrize("processor", list(Processor), ids=[p.value for p in Processor])
async def test_paid_elsewhere_without_by_is_rendered_as_before(
    http: httpx.AsyncClient, make_account: AccountFactory, receiver: Receiver, processor: Processor
) -> None:
    client = await _client(http, make_account, processor, receiver)
    failed = (await client.failures())[0]
    paid_id = await client.paid_elsewhere(failed.processor_payment_id, None)
    body = await client.body(paid_id)
    # The metadata as before (Braintree transactions render no metadata).
    assert (b"paid_invoice_of" in body) is (processor is not Processor.BRAINTREE)
    record = _record(processor, body)
    assert record.status == "succeeded"
    # A recurring charge of the subscription, as its original: the billing system's (Stripe
    # says so only in API versions that still name the invoice on a charge).
    expected = {Actor.BILLING_SYSTEM} | (
        {Actor.PROCESSOR} if processor is Processor.STRIPE else set()
    )
    assert record.actor in expected


async def test_by_is_checked_against_the_processor(
    http: httpx.AsyncClient, make_account: AccountFactory
) -> None:
    account = await make_account("stripe", history_days=5)
    url = f"/_sandbox/accounts/{account['account_id']}/events"
    charge = "ch_any"
    refused = await http.post(
        url, json={"kind": "paid_elsewhere", "charge_id": charge, "by": "processor"}
    )
    assert refused.status_code == 400
    assert "billing_system, customer" in refused.json()["error"]
    wrong_kind = await http.post(
        url, json={"kind": "card_updated", "charge_id": charge, "by": "customer"}
    )
    assert wrong_kind.status_code == 400


@pytest.mark.parametrize("processor", list(Processor), ids=[p.value for p in Processor])
async def test_customers_carry_billing_addresses_or_only_an_issuer_country(
    http: httpx.AsyncClient, make_account: AccountFactory, receiver: Receiver, processor: Processor
) -> None:
    client = await _client(http, make_account, processor, receiver)
    records = [_record(processor, b) for b in (await client.bodies()).values()]
    billed = [r for r in records if r.billing_country is not None]
    issuer_only = [r for r in records if r.billing_country is None and r.card and r.card.country]
    assert billed
    assert issuer_only
    # The simulated customers bank where they live; in a country of several clocks their
    # address names the state or province.
    assert all(r.card is None or r.billing_country == r.card.country for r in billed)
    several = [r for r in billed if r.billing_country in {"US", "CA", "AU", "BR"}]
    assert several
    assert all(r.billing_region for r in several)
    by_customer: dict[str | None, set[str | None]] = {}
    for r in records:
        by_customer.setdefault(r.customer_id, set()).add(r.billing_country)
    # Whether a customer's payloads carry an address is the customer's, not the charge's.
    assert all(len(countries) == 1 for countries in by_customer.values())
