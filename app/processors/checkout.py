"""Checkout.com: payments listed oldest first from a watermark, paged with skip."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx

from app.enums import Processor
from app.processors.base import (
    ChargeResult,
    ConnectionInfo,
    ListPage,
    PermanentProcessorError,
    RawItem,
    call,
    response_json,
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
        page = response_json(response)
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            raise PermanentProcessorError("checkout: list response has no data array")
        records = [p for p in page["data"] if isinstance(p, dict)]
        items = [
            RawItem.from_json(p, p["id"] if isinstance(p.get("id"), str) else None) for p in records
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
    ) -> ChargeResult:
        response = await call(
            self._client,
            "POST",
            f"{self._base}/payments",
            processor=Processor.CHECKOUT,
            headers={**self._headers, "Cko-Idempotency-Key": idempotency_key},
            json={
                "amount": amount_minor,
                "currency": currency.upper(),
                "customer": {"id": customer_ref},
                "payment_type": "Recurring",
                "merchant_initiated": True,
                "metadata": {"retry_of": retry_of},
            },
        )
        body = response.json()
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise PermanentProcessorError("checkout: payment response has no id")
        return ChargeResult(
            body["id"], bool(body.get("approved")), RawItem.from_json(body, body["id"])
        )


def _is_timestamp(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True
