"""Braintree: search transaction ids from a watermark, then fetch them 50 at a time, in XML."""

from collections.abc import Mapping
from typing import Any
from xml.etree.ElementTree import Element, tostring
from xml.sax.saxutils import escape

import httpx
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from app.enums import Processor
from app.processors.base import (
    ChargeResult,
    ConnectionInfo,
    ListPage,
    PermanentProcessorError,
    RawItem,
    call,
)
from app.processors.normalize.records import CURRENCY_EXPONENTS

FETCH_BATCH = 50
# Ids kept in the cursor between searches; bounds both the cursor's size and search cost.
MAX_PENDING = 1000
XML_HEADERS = {"Content-Type": "application/xml", "Accept": "application/xml"}


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
    ) -> ChargeResult:
        amount = _major_units(amount_minor, currency)
        xml = (
            "<transaction><type>sale</type>"
            f"<amount>{amount}</amount><customer-id>{escape(customer_ref)}</customer-id>"
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


def _major_units(amount_minor: int, currency: str) -> str:
    """Braintree takes decimal strings in major units ("33.30")."""
    digits = CURRENCY_EXPONENTS.get(currency.upper(), 2)
    if digits == 0:
        return str(amount_minor)
    whole, frac = divmod(amount_minor, 10**digits)
    return f"{whole}.{frac:0{digits}d}"
