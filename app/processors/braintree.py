"""Braintree: search transaction ids from a watermark, then fetch them 50 at a time, in XML."""

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote
from xml.etree.ElementTree import Element, tostring
from xml.sax.saxutils import escape

import httpx
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from app.enums import Processor
from app.processors.base import (
    PREFLIGHT_TIMEOUT,
    PREFLIGHT_TRIES,
    BillingRefs,
    BillingState,
    CancelResult,
    ChargeResult,
    ConnectionInfo,
    ListPage,
    PermanentProcessorError,
    RawItem,
    Stop,
    StoredMethod,
    UnsupportedByProcessor,
    call,
)
from app.processors.normalize.records import CURRENCY_EXPONENTS

FETCH_BATCH = 50
# Ids kept in the cursor between searches; bounds both the cursor's size and search cost.
MAX_PENDING = 1000
XML_HEADERS = {"Content-Type": "application/xml", "Accept": "application/xml"}
# Braintree's validation error for cancelling a subscription that is canceled already.
ALREADY_CANCELED = "81905"


def _parse(body: bytes) -> Element:
    try:
        return fromstring(body)
    except (DefusedXmlException, SyntaxError) as exc:
        raise PermanentProcessorError(f"braintree: unreadable XML ({type(exc).__name__})") from exc


class BraintreeAdapter:
    """Reads `transactions/advanced_search_ids` + `advanced_search`; charges with a sale."""

    def __init__(self, info: ConnectionInfo, client: httpx.AsyncClient) -> None:
        if not info.account_ref:
            raise PermanentProcessorError("braintree: the connection needs its merchant id")
        self._base = f"{info.base_url.rstrip('/')}/merchants/{info.account_ref}"
        self._client = client
        self._auth = httpx.BasicAuth(
            str(info.credentials["public_key"]), str(info.credentials["private_key"])
        )

    async def _post(
        self,
        path: str,
        xml: str,
        headers: Mapping[str, str] | None = None,
        answers: frozenset[int] = frozenset(),
    ) -> Element:
        response = await call(
            self._client,
            "POST",
            f"{self._base}{path}",
            processor=Processor.BRAINTREE,
            content=xml.encode(),
            headers={**XML_HEADERS, **(headers or {})},
            auth=self._auth,
            answers=answers,
        )
        return _parse(response.content)

    async def list_page(self, cursor: Mapping[str, Any]) -> ListPage:
        watermark = cursor.get("watermark")
        pending = [str(i) for i in cursor.get("pending", [])]
        if not pending:
            criteria = (
                f'<created-at><min type="datetime">{escape(str(watermark))}</min></created-at>'
                if watermark
                else ""
            )
            found = await self._post(
                "/transactions/advanced_search_ids", f"<search>{criteria}</search>"
            )
            pending = [i.text or "" for i in found.iter("item") if i.text][:MAX_PENDING]
            if not pending:
                return ListPage([], {"watermark": watermark}, False)
        batch, rest = pending[:FETCH_BATCH], pending[FETCH_BATCH:]
        ids = "".join(f"<item>{escape(i)}</item>" for i in batch)
        result = await self._post(
            "/transactions/advanced_search", f'<search><ids type="array">{ids}</ids></search>'
        )
        items: list[RawItem] = []
        newest = str(watermark or "")
        for transaction in result.iter("transaction"):
            tid = transaction.findtext("id")
            items.append(RawItem.from_xml(tostring(transaction, encoding="unicode"), tid))
            created = transaction.findtext("created-at") or ""
            newest = max(newest, created)
        return ListPage(items, {"watermark": newest or watermark, "pending": rest}, bool(rest))

    async def fetch(self, processor_payment_id: str) -> RawItem:
        response = await call(
            self._client,
            "GET",
            f"{self._base}/transactions/{processor_payment_id}",
            processor=Processor.BRAINTREE,
            headers=XML_HEADERS,
            auth=self._auth,
        )
        root = _parse(response.content)
        return RawItem.from_xml(tostring(root, encoding="unicode"), processor_payment_id)

    async def charge(
        self,
        *,
        retry_of: str,
        amount_minor: int,
        currency: str,
        customer_ref: str,
        idempotency_key: str,
        payment_method_ref: str | None = None,
    ) -> ChargeResult:
        amount = _major_units(amount_minor, currency)
        # Without a token the sale charges the customer's default payment method.
        token = (
            f"<payment-method-token>{escape(payment_method_ref)}</payment-method-token>"
            if payment_method_ref is not None
            else ""
        )
        xml = (
            "<transaction><type>sale</type>"
            f"<amount>{amount}</amount><customer-id>{escape(customer_ref)}</customer-id>{token}"
            f"<custom-fields><retry-of>{escape(retry_of)}</retry-of></custom-fields>"
            "<transaction-source>recurring</transaction-source></transaction>"
        )
        # A declined sale is a 422 <api-error-response> that carries the transaction.
        root = await self._post(
            "/transactions", xml, {"Idempotency-Key": idempotency_key}, answers=frozenset({422})
        )
        transaction = root if root.tag == "transaction" else root.find("transaction")
        if transaction is None or not transaction.findtext("id"):
            message = root.findtext("message") or "no transaction in the answer"
            raise PermanentProcessorError(f"braintree: sale refused: {message[:200]}")
        tid = transaction.findtext("id") or ""
        approved = transaction.findtext("status") in {
            "authorized",
            "submitted_for_settlement",
            "settled",
        }
        return ChargeResult(
            tid, approved, RawItem.from_xml(tostring(transaction, encoding="unicode"), tid)
        )

    async def _read(self, path: str) -> Element | None:
        """A pre-flight read (short timeout, two tries); None when Braintree answers 404."""
        response = await call(
            self._client,
            "GET",
            f"{self._base}{path}",
            processor=Processor.BRAINTREE,
            headers=XML_HEADERS,
            auth=self._auth,
            max_attempts=PREFLIGHT_TRIES,
            timeout=PREFLIGHT_TIMEOUT,
            answers=frozenset({404}),
        )
        return None if response.status_code == 404 else _parse(response.content)

    async def billing_state(self, refs: BillingRefs) -> BillingState:
        """The customer (deleted: Braintree answers 404; deleting a customer also cancels its
        subscriptions, so it is asked first), the subscription (Canceled, or Expired past its
        last billing cycle) and the payment method a charge now would use: the subscription's
        `payment-method-token`, else the customer's default card.

        Braintree has no invoice object: whether the amount was paid another way is known
        only from the transactions ingestion reads."""
        customer = await self._read(f"/customers/{quote(refs.customer_ref)}")
        if customer is None:
            detail = f"customer {refs.customer_ref} is deleted"
            return _stopped("customer_deleted", detail, set())
        checked = {"customer"}
        token: str | None = None
        if refs.subscription_ref:
            subscription = await self._read(f"/subscriptions/{quote(refs.subscription_ref)}")
            if subscription is not None:
                checked.add("subscription")
                status = subscription.findtext("status")
                name = f"subscription {refs.subscription_ref}"
                if status == "Canceled":
                    return _stopped("subscription_canceled", f"{name} is Canceled", checked)
                if status == "Expired":
                    return _stopped("subscription_ended", f"{name} is Expired", checked)
                token = subscription.findtext("payment-method-token") or None
        cards = customer.findall("credit-cards/credit-card")
        chosen = next((c for c in cards if token and c.findtext("token") == token), None)
        if chosen is None:
            chosen = next((c for c in cards if c.findtext("default") == "true"), None)
        method = _card_method(chosen) if chosen is not None else None
        if method is not None:
            checked.add("payment_method")
        return BillingState(method=method, checked=frozenset(checked))

    async def cancel_subscription(self, refs: BillingRefs, *, idempotency_key: str) -> CancelResult:
        """`PUT subscriptions/{id}/cancel`; cancelling is final, and a second request is
        answered with validation error 81905 (canceled already), which counts as done."""
        if not refs.subscription_ref:
            raise UnsupportedByProcessor("braintree: the transaction names no subscription")
        response = await call(
            self._client,
            "PUT",
            f"{self._base}/subscriptions/{quote(refs.subscription_ref)}/cancel",
            processor=Processor.BRAINTREE,
            headers=XML_HEADERS,
            auth=self._auth,
            answers=frozenset({422}),
        )
        root = _parse(response.content)
        if response.status_code == 422:
            codes = {e.findtext("code") for e in root.iter("error")}
            if ALREADY_CANCELED in codes:
                return CancelResult(refs.subscription_ref, "Canceled", already=True)
            current = await self._read(f"/subscriptions/{quote(refs.subscription_ref)}")
            status = current.findtext("status") if current is not None else None
            if status in ("Canceled", "Expired"):
                # Ended some other way (an Expired subscription cannot be canceled).
                return CancelResult(refs.subscription_ref, status, already=True)
            message = root.findtext("message") or "validation error"
            raise PermanentProcessorError(f"braintree: cancel refused: {message[:200]}", status=422)
        return CancelResult(refs.subscription_ref, root.findtext("status") or "Canceled")


def _stopped(stop: Stop, detail: str, checked: set[str]) -> BillingState:
    return BillingState(stop=stop, detail=detail, checked=frozenset(checked))


def _card_method(card: Element) -> StoredMethod | None:
    token = card.findtext("token")
    if not token:
        return None
    month, year = card.findtext("expiration-month"), card.findtext("expiration-year")
    return StoredMethod(
        ref=token,
        brand=card.findtext("card-type"),
        last4=card.findtext("last-4"),
        exp_month=int(month) if month and month.isdigit() else None,
        exp_year=int(year) if year and year.isdigit() else None,
        fingerprint=card.findtext("unique-number-identifier") or None,
    )


def _major_units(amount_minor: int, currency: str) -> str:
    """Braintree takes decimal strings in major units ("33.30")."""
    digits = CURRENCY_EXPONENTS.get(currency.upper(), 2)
    if digits == 0:
        return str(amount_minor)
    whole, frac = divmod(amount_minor, 10**digits)
    return f"{whole}.{frac:0{digits}d}"
