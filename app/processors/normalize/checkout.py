"""Checkout.com: payments, list pages and webhook envelopes to canonical records."""

from collections.abc import Mapping
from datetime import datetime

from app.declines import DeclineSignals, classify
from app.enums import Actor, Processor
from app.processors.normalize.records import (
    PORTAL_RETRY_KEY,
    CanonicalCard,
    CanonicalRecord,
    JsonObject,
    NormalizedItem,
    RecordError,
    RecordStatus,
    build_card,
    card_text,
    dead_item,
    from_iso,
    get_id,
    get_obj,
    get_str,
    guarded,
    metadata_text,
    minor_amount,
    normalize_country,
    normalize_currency,
    normalize_region,
    require_str,
    type_name,
)

PAYMENT_STATUSES: Mapping[str, RecordStatus] = {
    "declined": "failed",
    "authorized": "succeeded",
    "captured": "succeeded",
    "partially captured": "succeeded",
    "card verified": "succeeded",
    "paid": "succeeded",
    "refunded": "succeeded",
    "partially refunded": "succeeded",
}
# `payment_type` values by who initiates them (docs/actors.md): a stored-card charge the
# merchant makes, or one the customer makes at checkout or over the phone.
MERCHANT_INITIATED_TYPES = frozenset({"recurring", "unscheduled", "installment"})
CUSTOMER_INITIATED_TYPES = frozenset({"regular", "moto"})
# 3-D Secure answers that show the cardholder took part in the payment.
CARDHOLDER_PRESENT_3DS = frozenset({"Y", "A"})
EVENT_STATUSES: Mapping[str, RecordStatus] = {
    "payment_declined": "failed",
    "payment_approved": "succeeded",
    "payment_captured": "succeeded",
    "payment_paid": "succeeded",
}


def normalize_document(doc: object) -> list[NormalizedItem]:
    """Every payment in one Checkout.com response or webhook body.

    `doc` is already scrubbed of card numbers (`dispatch` does it once per body)."""
    if isinstance(doc, list):
        return [r for item in doc for r in normalize_document(item)]
    if not isinstance(doc, Mapping):
        return [dead_item(f"checkout body is {type_name(doc)}, expected an object", doc)]
    data = doc.get("data")
    if isinstance(data, list):
        return [r for item in data for r in normalize_document(item)]
    event_type = doc.get("type")
    if isinstance(event_type, str) and "data" in doc:
        if not isinstance(data, Mapping):
            return [dead_item(f"checkout event data is {type_name(data)}", doc)]
        return [guarded(lambda: _from_event(doc, event_type, data), doc)]
    return [guarded(lambda: _from_payment(doc, status=None, fallback_time=None), doc)]


def _from_event(event: JsonObject, event_type: str, data: JsonObject) -> CanonicalRecord:
    status = EVENT_STATUSES.get(event_type)
    if status is None:
        raise RecordError(f"checkout event {event_type[:40]!r} is not an attempt outcome")
    created = event.get("created_on")
    fallback = from_iso(created, "event.created_on") if created is not None else None
    return _from_payment(data, status=status, fallback_time=fallback)


def _status(payment: JsonObject) -> RecordStatus:
    raw = get_str(payment, "status", "payment")
    approved = payment.get("approved")
    from_approved: RecordStatus | None = None
    if isinstance(approved, bool):
        from_approved = "succeeded" if approved else "failed"
    if raw is None:
        if from_approved is None:
            raise RecordError("checkout payment has neither status nor approved")
        return from_approved
    status = PAYMENT_STATUSES.get(raw.lower())
    if status is None:
        raise RecordError(f"checkout payment status {raw[:30]!r} is not an attempt outcome")
    if from_approved is not None and from_approved != status:
        raise RecordError(f"checkout status {raw[:30]!r} contradicts approved={approved}")
    return status


def _card(payment: JsonObject) -> CanonicalCard | None:
    source = get_obj(payment, "source", "payment")
    if source is None:
        return None
    return build_card(
        brand=source.get("scheme"),
        funding=source.get("card_type"),
        country=source.get("issuer_country"),
        bin_=source.get("bin"),
        last4=source.get("last4") if source.get("last4") is not None else source.get("last_4"),
        exp_month=source.get("expiry_month"),
        exp_year=source.get("expiry_year"),
        fingerprint=source.get("fingerprint"),
    )


def _actor(payment: JsonObject) -> Actor:
    """Who made a payment: docs/actors.md, Checkout.com."""
    if metadata_text(payment.get("metadata"), PORTAL_RETRY_KEY):
        return Actor.PORTAL
    secure = payment.get("3ds")
    # A value of any other type (a list, an object) is no 3-D Secure answer, not an error.
    if isinstance(secure, Mapping) and (
        card_text(secure.get("authentication_response")) in CARDHOLDER_PRESENT_3DS
    ):
        return Actor.CUSTOMER
    initiated = payment.get("merchant_initiated")
    kind = (card_text(payment.get("payment_type")) or "").lower()
    if initiated is True or (initiated is None and kind in MERCHANT_INITIATED_TYPES):
        return Actor.BILLING_SYSTEM
    if initiated is False or kind in CUSTOMER_INITIATED_TYPES:
        return Actor.CUSTOMER
    return Actor.PROCESSOR


def _billing(payment: JsonObject) -> tuple[str | None, str | None]:
    """(country, region) of the card source's billing address."""
    source = payment.get("source")
    address = source.get("billing_address") if isinstance(source, Mapping) else None
    if not isinstance(address, Mapping):
        return None, None
    country = normalize_country(card_text(address.get("country")))
    return (country, normalize_region(address.get("state"))) if country else (None, None)


def _from_payment(
    payment: JsonObject, status: RecordStatus | None, fallback_time: datetime | None
) -> CanonicalRecord:
    where = "payment"
    payment_id = require_str(payment, "id", where)
    final_status = status or _status(payment)
    stamp = payment.get("processed_on") or payment.get("requested_on")
    if stamp is not None:
        attempted_at = from_iso(stamp, "payment.processed_on")
    elif fallback_time is not None:
        attempted_at = fallback_time
    else:
        raise RecordError("checkout payment has no processed_on or requested_on")
    card = _card(payment)
    decline = None
    if final_status == "failed":
        decline = classify(
            DeclineSignals(
                processor=Processor.CHECKOUT,
                declined_at=attempted_at,
                raw_code=get_str(payment, "response_code", where),
                card_brand=card.brand if card else None,
            )
        )
    country, region = _billing(payment)
    return CanonicalRecord(
        processor=Processor.CHECKOUT,
        processor_payment_id=payment_id,
        status=final_status,
        amount_minor=minor_amount(payment, "amount", where),
        currency=normalize_currency(get_str(payment, "currency", where), where),
        customer_id=get_id(payment, "customer", where),
        card=card,
        decline=decline,
        attempted_at=attempted_at,
        invoice_ref=get_str(payment, "reference", where),
        subscription_ref=None,
        raw_kind="payment" if status is None else "webhook",
        actor=_actor(payment),
        billing_country=country,
        billing_region=region,
    )
