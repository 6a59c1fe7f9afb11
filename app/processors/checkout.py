"""Checkout.com: payments listed oldest first from a watermark, paged with skip."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

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
    StoredMethod,
    UnsupportedByProcessor,
    call,
    response_json,
    response_page,
)

PAGE_SIZE = 100


class CheckoutAdapter:
    """Reads `GET /payments?from=&skip=&limit=` and retries with `POST /payments`."""

    def __init__(self, info: ConnectionInfo, client: httpx.AsyncClient) -> None:
        self._base = info.base_url.rstrip("/")
        self._client = client
        self._headers = {"Authorization": f"Bearer {info.credentials['api_key']}"}

    async def list_page(self, cursor: Mapping[str, Any]) -> ListPage:
        """`from` stays fixed during a pass and `skip` grows; when a pass ends the watermark
        moves to the newest payment seen (inclusive: equal timestamps are re-read, deduped)."""
        start = cursor.get("from")
        skip = int(cursor.get("skip", 0))
        params: dict[str, Any] = {"limit": PAGE_SIZE, "skip": skip}
        if start:
            params["from"] = start
        response = await call(
            self._client,
            "GET",
            f"{self._base}/payments",
            processor=Processor.CHECKOUT,
            params=params,
            headers=self._headers,
        )
        page, floats = response_page(response)
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            raise PermanentProcessorError("checkout: list response has no data array")
        records = [p for p in page["data"] if isinstance(p, dict)]
        items = [
            RawItem.from_parsed(p, p["id"] if isinstance(p.get("id"), str) else None, floats=floats)
            for p in records
        ]
        newest = max(
            [str(cursor.get("pass_top") or start or "")]
            + [p["requested_on"] for p in records if _is_timestamp(p.get("requested_on"))]
        )
        if len(page["data"]) == PAGE_SIZE:
            return ListPage(
                items, {"from": start, "skip": skip + len(page["data"]), "pass_top": newest}, True
            )
        return ListPage(items, {"from": newest or start, "skip": 0}, False)

    async def fetch(self, processor_payment_id: str) -> RawItem:
        response = await call(
            self._client,
            "GET",
            f"{self._base}/payments/{processor_payment_id}",
            processor=Processor.CHECKOUT,
            headers=self._headers,
        )
        return RawItem.from_json(response.json(), processor_payment_id)

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
        request: dict[str, Any] = {
            "amount": amount_minor,
            "currency": currency.upper(),
            "customer": {"id": customer_ref},
            "payment_type": "Recurring",
            "merchant_initiated": True,
            "metadata": {"retry_of": retry_of},
        }
        if payment_method_ref is not None:
            request["source"] = {"type": "id", "id": payment_method_ref}
        response = await call(
            self._client,
            "POST",
            f"{self._base}/payments",
            processor=Processor.CHECKOUT,
            headers={**self._headers, "Cko-Idempotency-Key": idempotency_key},
            json=request,
        )
        body = response.json()
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise PermanentProcessorError("checkout: payment response has no id")
        return ChargeResult(
            body["id"], bool(body.get("approved")), RawItem.from_json(body, body["id"])
        )

    async def billing_state(self, refs: BillingRefs) -> BillingState:
        """The customer (`GET /customers/{id}`: deleted when Checkout.com answers 404) and its
        default instrument. Checkout.com keeps no invoice or subscription objects: whether the
        invoice is settled or the subscription ended cannot be asked."""
        response = await call(
            self._client,
            "GET",
            f"{self._base}/customers/{quote(refs.customer_ref, safe='')}",
            processor=Processor.CHECKOUT,
            headers=self._headers,
            max_attempts=PREFLIGHT_TRIES,
            timeout=PREFLIGHT_TIMEOUT,
            answers=frozenset({404}),
        )
        if response.status_code == 404:
            return BillingState(
                stop="customer_deleted", detail=f"customer {refs.customer_ref} is deleted"
            )
        body = response_json(response)
        if not isinstance(body, dict):
            raise PermanentProcessorError("checkout: customer answer is not an object")
        default = body.get("default")
        instruments = body.get("instruments")
        found = next(
            (
                i
                for i in (instruments if isinstance(instruments, list) else [])
                if isinstance(i, dict) and i.get("id") == default
            ),
            None,
        )
        method = _instrument(found) if found is not None else None
        checked = {"customer", "payment_method"} if method is not None else {"customer"}
        return BillingState(method=method, checked=frozenset(checked))

    async def cancel_subscription(self, refs: BillingRefs, *, idempotency_key: str) -> CancelResult:
        raise UnsupportedByProcessor(
            "checkout.com keeps no subscription objects: the merchant's billing system owns "
            "the subscription and must cancel it"
        )


def _instrument(instrument: Mapping[str, Any]) -> StoredMethod | None:
    ref = instrument.get("id")
    if not isinstance(ref, str) or instrument.get("type") != "card":
        return None
    month, year = instrument.get("expiry_month"), instrument.get("expiry_year")
    last4 = instrument.get("last4")
    return StoredMethod(
        ref=ref,
        brand=instrument.get("scheme") if isinstance(instrument.get("scheme"), str) else None,
        last4=last4 if isinstance(last4, str) else None,
        exp_month=month if isinstance(month, int) else None,
        exp_year=year if isinstance(year, int) else None,
        fingerprint=instrument.get("fingerprint")
        if isinstance(instrument.get("fingerprint"), str)
        else None,
    )


def _is_timestamp(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True
