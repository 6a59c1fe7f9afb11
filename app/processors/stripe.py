"""Stripe: charges listed newest first, paged with starting_after, watermark on `created`."""

from collections.abc import Mapping
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
# Charges can appear slightly out of order around a watermark; re-reading a few minutes is
# cheap because landing deduplicates by content.
OVERLAP_SECONDS = 300


class StripeAdapter:
    """Reads `/v1/charges` and retries with `POST /v1/charges` and an Idempotency-Key."""

    def __init__(self, info: ConnectionInfo, client: httpx.AsyncClient) -> None:
        self._base = info.base_url.rstrip("/")
        self._client = client
        self._headers = {"Authorization": f"Bearer {info.credentials['api_key']}"}

    async def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        response = await call(
            self._client,
            "GET",
            f"{self._base}{path}",
            processor=Processor.STRIPE,
            params=params,
            headers=self._headers,
        )
        return response_json(response)

    async def list_page(self, cursor: Mapping[str, Any]) -> ListPage:
        """Newest first: a pass walks down from the newest charge to the watermark, storing
        `starting_after` after each page so an interrupted pass resumes where it stopped."""
        watermark = int(cursor.get("watermark", 0))
        params: dict[str, Any] = {
            "limit": PAGE_SIZE,
            "created[gte]": max(0, watermark - OVERLAP_SECONDS),
        }
        if cursor.get("starting_after"):
            params["starting_after"] = cursor["starting_after"]
        page = await self._get("/v1/charges", params)
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            raise PermanentProcessorError("stripe: list response is not a list object")
        items = [
            RawItem.from_json(c, c.get("id") if isinstance(c.get("id"), str) else None)
            for c in page["data"]
            if isinstance(c, dict)
        ]
        created = [
            c["created"]
            for c in page["data"]
            if isinstance(c, dict) and isinstance(c.get("created"), int)
        ]
        pass_top = max([int(cursor.get("pass_top", 0)), *created])
        if page.get("has_more") and items:
            next_cursor = {
                "watermark": watermark,
                "starting_after": items[-1].external_id,
                "pass_top": pass_top,
            }
            return ListPage(items=items, cursor=next_cursor, more=True)
        return ListPage(items=items, cursor={"watermark": max(watermark, pass_top)}, more=False)

    async def fetch(self, processor_payment_id: str) -> RawItem:
        charge = await self._get(f"/v1/charges/{processor_payment_id}")
        return RawItem.from_json(charge, processor_payment_id)

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
            f"{self._base}/v1/charges",
            processor=Processor.STRIPE,
            headers={**self._headers, "Idempotency-Key": idempotency_key},
            data={
                "amount": str(amount_minor),
                "currency": currency.lower(),
                "customer": customer_ref,
                "metadata[retry_of]": retry_of,
            },
        )
        body = response.json()
        if response.status_code == 402:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            charge_id = error.get("charge") if isinstance(error, dict) else None
            if not isinstance(charge_id, str):
                raise PermanentProcessorError("stripe: decline without a charge id")
            return ChargeResult(charge_id, False, RawItem.from_json(body, charge_id))
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise PermanentProcessorError("stripe: charge response has no id")
        return ChargeResult(
            body["id"], body.get("status") == "succeeded", RawItem.from_json(body, body["id"])
        )
