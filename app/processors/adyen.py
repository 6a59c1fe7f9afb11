"""Adyen: no list API; AUTHORISATION webhooks (HMAC-signed) and `/payments` for retries."""

import base64
import binascii
import hashlib
import hmac
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
)

SIGNED_FIELDS = (
    "pspReference",
    "originalReference",
    "merchantAccountCode",
    "merchantReference",
)


def _text(value: object) -> str:
    return "" if value is None else str(value)


def signing_string(item: Mapping[str, Any]) -> str:
    """The colon-joined fields Adyen signs for a notification item."""
    amount = item.get("amount")
    amount = amount if isinstance(amount, Mapping) else {}
    parts = [_text(item.get(f)) for f in SIGNED_FIELDS]
    parts += [
        _text(amount.get("value")),
        _text(amount.get("currency")),
        _text(item.get("eventCode")),
        _text(item.get("success")),
    ]
    return ":".join(parts)


def sign(item: Mapping[str, Any], key_hex: str) -> str:
    key = binascii.unhexlify(key_hex)
    digest = hmac.new(key, signing_string(item).encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify(item: Mapping[str, Any], key_hex: str) -> bool:
    """Whether the item's `additionalData.hmacSignature` matches; constant-time comparison."""
    additional = item.get("additionalData")
    signature = additional.get("hmacSignature") if isinstance(additional, Mapping) else None
    if not isinstance(signature, str) or not signature:
        return False
    try:
        expected = sign(item, key_hex)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(expected.encode(), signature.encode())


def notification_items(body: object) -> list[dict[str, Any]]:
    """The NotificationRequestItem objects of a webhook batch; raises ValueError when malformed."""
    if not isinstance(body, Mapping) or not isinstance(body.get("notificationItems"), list):
        raise ValueError("not an Adyen notification batch: no notificationItems array")
    items: list[dict[str, Any]] = []
    for wrapper in body["notificationItems"]:
        item = wrapper.get("NotificationRequestItem") if isinstance(wrapper, Mapping) else None
        if not isinstance(item, Mapping):
            raise ValueError("a notificationItems entry has no NotificationRequestItem")
        items.append(dict(item))
    return items


class AdyenAdapter:
    """Adyen pushes what happened; the portal only calls it to charge."""

    def __init__(self, info: ConnectionInfo, client: httpx.AsyncClient) -> None:
        self._base = info.base_url.rstrip("/")
        self._client = client
        self._headers = {"X-API-Key": str(info.credentials["api_key"])}
        self._merchant_account = info.account_ref or ""

    async def list_page(self, cursor: Mapping[str, Any]) -> ListPage:
        return ListPage([], dict(cursor), False)

    async def fetch(self, processor_payment_id: str) -> RawItem:
        raise PermanentProcessorError("adyen has no API to fetch a payment; it sends webhooks")

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
            f"{self._base}/v71/payments",
            processor=Processor.ADYEN,
            headers={**self._headers, "Idempotency-Key": idempotency_key[:64]},
            json={
                "amount": {"value": amount_minor, "currency": currency.upper()},
                "reference": f"retry-{retry_of}",
                "shopperReference": customer_ref,
                "merchantAccount": self._merchant_account,
                "recurringProcessingModel": "Subscription",
                "shopperInteraction": "ContAuth",
                "metadata": {"retry_of": retry_of},
            },
        )
        body = response.json()
        if not isinstance(body, dict) or not isinstance(body.get("pspReference"), str):
            raise PermanentProcessorError("adyen: payment response has no pspReference")
        psp = body["pspReference"]
        return ChargeResult(
            psp, body.get("resultCode") == "Authorised", RawItem.from_json(body, psp)
        )
