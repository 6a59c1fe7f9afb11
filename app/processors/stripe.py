"""Stripe: charges listed newest first, paged with starting_after, watermark on `created`."""

from collections.abc import Mapping
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
    Stop,
    StoredMethod,
    UnsupportedByProcessor,
    call,
    response_json,
    response_page,
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

    async def _request(self, path: str, params: Mapping[str, Any] | None) -> httpx.Response:
        return await call(
            self._client,
            "GET",
            f"{self._base}{path}",
            processor=Processor.STRIPE,
            params=params,
            headers=self._headers,
        )

    async def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return response_json(await self._request(path, params))

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
        page, floats = response_page(await self._request("/v1/charges", params))
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            raise PermanentProcessorError("stripe: list response is not a list object")
        items = [
            RawItem.from_parsed(
                c, c.get("id") if isinstance(c.get("id"), str) else None, floats=floats
            )
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
        payment_method_ref: str | None = None,
    ) -> ChargeResult:
        data = {
            "amount": str(amount_minor),
            "currency": currency.lower(),
            "customer": customer_ref,
            "metadata[retry_of]": retry_of,
        }
        if payment_method_ref is not None:
            # The Charges API takes a card PaymentMethod (or a legacy card) as `source`.
            data["source"] = payment_method_ref
        response = await call(
            self._client,
            "POST",
            f"{self._base}/v1/charges",
            processor=Processor.STRIPE,
            headers={**self._headers, "Idempotency-Key": idempotency_key},
            data=data,
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

    async def _read(self, path: str, *expand: str) -> dict[str, Any] | None:
        """A pre-flight read (short timeout, two tries): the object, or None when Stripe
        knows no such object (404)."""
        response = await call(
            self._client,
            "GET",
            f"{self._base}{path}",
            processor=Processor.STRIPE,
            params=[("expand[]", e) for e in expand],
            headers=self._headers,
            max_attempts=PREFLIGHT_TRIES,
            timeout=PREFLIGHT_TIMEOUT,
            answers=frozenset({404}),
        )
        if response.status_code == 404:
            return None
        body = response_json(response)
        if not isinstance(body, dict):
            raise PermanentProcessorError(f"stripe: {path.split('/')[2]} answer is not an object")
        return body

    async def billing_state(self, refs: BillingRefs) -> BillingState:
        """The invoice (paid, void or uncollectible), the customer (deleted), the invoice's
        subscription (canceled, or ended at its scheduled end) and the default payment method:
        the subscription's, else the customer's invoice default, else its default source.
        The customer comes before the subscription: deleting a customer cancels its
        subscriptions, and the deletion is what happened.

        A charge that names no invoice (a one-off charge, or an API version that leaves it
        out) can be checked for its customer only."""
        checked: set[str] = set()
        subscription_ref = refs.subscription_ref
        if refs.invoice_ref:
            invoice = await self._read(f"/v1/invoices/{quote(refs.invoice_ref, safe='')}")
            if invoice is not None:
                checked.add("invoice")
                status = invoice.get("status")
                if status == "paid":
                    return _stop("invoice_paid", f"invoice {refs.invoice_ref} is paid", checked)
                if status in ("void", "uncollectible"):
                    detail = f"invoice {refs.invoice_ref} is {status}"
                    return _stop("invoice_voided", detail, checked)
                subscription_ref = subscription_ref or invoice_subscription(invoice)
        customer = await self._read(
            f"/v1/customers/{quote(refs.customer_ref, safe='')}",
            "invoice_settings.default_payment_method",
            "default_source",
        )
        # Stripe keeps a deleted customer readable, marked `deleted`; a 404 is an id this
        # account never had, which tells nothing about the customer.
        method: StoredMethod | None = None
        if customer is not None:
            if customer.get("deleted") is True:
                detail = f"customer {refs.customer_ref} is deleted"
                return _stop("customer_deleted", detail, checked)
            checked.add("customer")
            settings = customer.get("invoice_settings")
            default = settings.get("default_payment_method") if isinstance(settings, dict) else None
            method = stored_method(default) or stored_method(customer.get("default_source"))
        if subscription_ref:
            path = f"/v1/subscriptions/{quote(subscription_ref, safe='')}"
            subscription = await self._read(path, "default_payment_method")
            if subscription is not None:
                checked.add("subscription")
                stop = _subscription_stop(subscription, subscription_ref)
                if stop is not None:
                    return _stop(stop[0], stop[1], checked)
                method = stored_method(subscription.get("default_payment_method")) or method
        if method is not None:
            checked.add("payment_method")
        return BillingState(method=method, checked=frozenset(checked))

    async def cancel_subscription(self, refs: BillingRefs, *, idempotency_key: str) -> CancelResult:
        """`DELETE /v1/subscriptions/{id}` with an Idempotency-Key: an immediate cancellation.
        The subscription is the payment's own, else its invoice's. One Stripe answers as
        missing or invalid because it is canceled already counts as done."""
        subscription_ref = refs.subscription_ref
        if not subscription_ref and refs.invoice_ref:
            invoice = await self._read(f"/v1/invoices/{quote(refs.invoice_ref, safe='')}")
            subscription_ref = invoice_subscription(invoice) if invoice is not None else None
        if not subscription_ref:
            raise UnsupportedByProcessor(
                "stripe: the payment's charge names no invoice with a subscription"
            )
        path = f"/v1/subscriptions/{quote(subscription_ref, safe='')}"
        response = await call(
            self._client,
            "DELETE",
            f"{self._base}{path}",
            processor=Processor.STRIPE,
            headers={**self._headers, "Idempotency-Key": idempotency_key},
            answers=frozenset({400, 404}),
        )
        if response.status_code < 400:
            body = response_json(response)
            status = body.get("status") if isinstance(body, dict) else None
            return CancelResult(subscription_ref, str(status or "canceled"))
        current = await self._read(path)
        if current is not None and current.get("status") == "canceled":
            return CancelResult(subscription_ref, "canceled", already=True)
        raise PermanentProcessorError(
            f"stripe: cancel refused: HTTP {response.status_code}: {response.text[:200]}",
            status=response.status_code,
        )


def _stop(stop: Stop, detail: str, checked: set[str]) -> BillingState:
    return BillingState(stop=stop, detail=detail, checked=frozenset(checked))


def invoice_subscription(invoice: Mapping[str, Any]) -> str | None:
    """The subscription an invoice bills: top-level `subscription` before the 2025-03-31 API
    version, `parent.subscription_details.subscription` since (an id or an expanded object)."""
    found: object = invoice.get("subscription")
    parent = invoice.get("parent")
    if found is None and isinstance(parent, dict):
        details = parent.get("subscription_details")
        found = details.get("subscription") if isinstance(details, dict) else None
    if isinstance(found, dict):
        found = found.get("id")
    return found if isinstance(found, str) and found else None


def _subscription_stop(subscription: Mapping[str, Any], ref: str) -> tuple[Stop, str] | None:
    """Canceled, or past its end: a `cancel_at` reached ends it as scheduled."""
    status = subscription.get("status")
    if status not in ("canceled", "incomplete_expired"):
        return None
    cancel_at, ended_at = subscription.get("cancel_at"), subscription.get("ended_at")
    if isinstance(cancel_at, int) and isinstance(ended_at, int) and ended_at >= cancel_at:
        return "subscription_ended", f"subscription {ref} ended at its scheduled end"
    return "subscription_canceled", f"subscription {ref} is {status}"


def stored_method(value: object) -> StoredMethod | None:
    """A PaymentMethod or a legacy card source, expanded; None for an id alone or nothing."""
    if not isinstance(value, dict) or not isinstance(value.get("id"), str):
        return None
    card = value.get("card") if value.get("object") == "payment_method" else value
    if not isinstance(card, dict):
        return None
    month, year = card.get("exp_month"), card.get("exp_year")
    return StoredMethod(
        ref=value["id"],
        brand=card.get("brand") if isinstance(card.get("brand"), str) else None,
        last4=card.get("last4") if isinstance(card.get("last4"), str) else None,
        exp_month=month if isinstance(month, int) else None,
        exp_year=year if isinstance(year, int) else None,
        fingerprint=card.get("fingerprint") if isinstance(card.get("fingerprint"), str) else None,
    )
