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
        payment_method_ref: str | None = None,
    ) -> ChargeResult:
        request: dict[str, Any] = {
            "amount": {"value": amount_minor, "currency": currency.upper()},
            "reference": f"retry-{retry_of}",
            "shopperReference": customer_ref,
            "merchantAccount": self._merchant_account,
            "recurringProcessingModel": "Subscription",
            "shopperInteraction": "ContAuth",
            "metadata": {"retry_of": retry_of},
        }
        if payment_method_ref is not None:
            request["paymentMethod"] = {
                "type": "scheme",
                "storedPaymentMethodId": payment_method_ref,
            }
        response = await call(
            self._client,
            "POST",
            f"{self._base}/v71/payments",
            processor=Processor.ADYEN,
            headers={**self._headers, "Idempotency-Key": idempotency_key[:64]},
            json=request,
        )
        body = response.json()
        if not isinstance(body, dict) or not isinstance(body.get("pspReference"), str):
            raise PermanentProcessorError("adyen: payment response has no pspReference")
        psp = body["pspReference"]
        return ChargeResult(
            psp, body.get("resultCode") == "Authorised", RawItem.from_json(body, psp)
        )

    async def billing_state(self, refs: BillingRefs) -> BillingState:
        """The shopper's stored cards (`GET /v71/storedPaymentMethods`). Adyen keeps no
        invoice, subscription or customer object, so whether the invoice is settled, the
        subscription ended or the customer gone cannot be asked, and it names no default among
        stored cards: the retry workflow moves to another card only when the failed one is no
        longer stored and exactly one card is."""
        response = await call(
            self._client,
            "GET",
            f"{self._base}/v71/storedPaymentMethods",
            processor=Processor.ADYEN,
            params={
                "merchantAccount": self._merchant_account,
                "shopperReference": refs.customer_ref,
            },
            headers=self._headers,
            max_attempts=PREFLIGHT_TRIES,
            timeout=PREFLIGHT_TIMEOUT,
        )
        body = response_json(response)
        stored = body.get("storedPaymentMethods") if isinstance(body, dict) else None
        if stored is None:
            stored = []
        if not isinstance(stored, list):
            raise PermanentProcessorError("adyen: storedPaymentMethods is not a list")
        methods = tuple(m for m in (_stored(s) for s in stored) if m is not None)
        return BillingState(methods=methods, checked=frozenset({"payment_method"}))

    async def cancel_subscription(self, refs: BillingRefs, *, idempotency_key: str) -> CancelResult:
        raise UnsupportedByProcessor(
            "adyen keeps no subscription objects: the merchant's billing system owns the "
            "subscription and must cancel it"
        )


def _stored(method: object) -> StoredMethod | None:
    """A stored card; other stored methods (bank accounts, wallets) are not cards to retry."""
    if not isinstance(method, dict) or method.get("type") != "scheme":
        return None
    ref = method.get("id")
    if not isinstance(ref, str) or not ref:
        return None
    month, year = str(method.get("expiryMonth") or ""), str(method.get("expiryYear") or "")
    return StoredMethod(
        ref=ref,
        brand=method.get("brand") if isinstance(method.get("brand"), str) else None,
        last4=method.get("lastFour") if isinstance(method.get("lastFour"), str) else None,
        exp_month=int(month) if month.isdigit() else None,
        # Adyen gives the year's last two digits.
        exp_year=(2000 + int(year) if len(year) == 2 else int(year)) if year.isdigit() else None,
    )
