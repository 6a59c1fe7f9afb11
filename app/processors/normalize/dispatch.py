"""Entry point: parse a processor's raw body and normalize every payment record in it."""

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from app.declines import Decline
from app.enums import Processor
from app.processors.normalize import adyen, braintree, checkout, stripe
from app.processors.normalize.records import (
    CanonicalCard,
    CanonicalRecord,
    NormalizedItem,
    NormalizeError,
    RejectedRecord,
    dead_item,
    may_hold_card_number,
    scrub_raw,
)

JSON_NORMALIZERS: Mapping[Processor, Callable[[object], list[NormalizedItem]]] = {
    Processor.STRIPE: stripe.normalize_document,
    Processor.ADYEN: adyen.normalize_document,
    Processor.CHECKOUT: checkout.normalize_document,
}


def normalize_payload(processor: Processor, body: bytes) -> list[CanonicalRecord | RejectedRecord]:
    """One result per payment record in `body`, in payload order.

    A record that cannot be read becomes a RejectedRecord and the rest go on; a body that is not
    JSON (Stripe, Adyen, Checkout.com) or XML (Braintree) at all raises NormalizeError.
    """
    return [item.result for item in normalize_items(processor, body)]


def normalize_items(processor: Processor, body: bytes) -> list[NormalizedItem]:
    """Like `normalize_payload`, with each record's own raw payload to store beside it."""
    try:
        if processor is Processor.BRAINTREE:
            return _normalize_braintree(body)
        parsed = _parse_json(processor, body)
        return JSON_NORMALIZERS[processor](
            scrub_raw(parsed) if may_hold_card_number(body) else parsed
        )
    except RecursionError:
        raise NormalizeError(f"{processor.value} body is nested too deeply") from None


def normalize_stored(
    processor: Processor, raw: object, *, scrubbed: bool = False
) -> list[CanonicalRecord | RejectedRecord]:
    """Replay one stored `NormalizedItem.raw`, e.g. after NORMALIZER_VERSION went up.
    `scrubbed=True` says the payload was scrubbed when it was stored (the raw table's rows)."""
    try:
        if processor is Processor.BRAINTREE:
            xml = raw.get("xml") if isinstance(raw, Mapping) else None
            if not isinstance(xml, str):
                raise NormalizeError('a raw braintree record is {"xml": "<transaction>..."}')
            items = braintree.normalize_document(_parse_xml(xml.encode("utf-8", "replace")))
        else:
            items = JSON_NORMALIZERS[processor](raw if scrubbed else scrub_raw(raw))
    except RecursionError:
        raise NormalizeError(f"{processor.value} raw record is nested too deeply") from None
    return [item.result for item in items]


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(processor: Processor, body: bytes) -> object:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise NormalizeError(
            f"{processor.value} body is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise NormalizeError(f"{processor.value} body is not valid JSON: {exc}") from None


def _parse_xml(body: bytes) -> Element:
    try:
        return fromstring(body, forbid_dtd=True)
    except ParseError as exc:
        raise NormalizeError(f"braintree body is not valid XML: {exc}") from None
    except DefusedXmlException as exc:
        raise NormalizeError(f"braintree body uses a forbidden XML construct: {exc}") from None


def _normalize_braintree(body: bytes) -> list[NormalizedItem]:
    if body.lstrip()[:1] in (b"{", b"["):
        doc = _parse_json(Processor.BRAINTREE, body)
        return [
            dead_item("braintree payloads are XML; a JSON body is not supported", scrub_raw(doc))
        ]
    return braintree.normalize_document(_parse_xml(body))


# --- JSON rendering (the `portal normalize` output format) ----------------------------------


def _iso_utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _card_json(card: CanonicalCard | None) -> dict[str, object] | None:
    if card is None:
        return None
    return {
        "brand": card.brand,
        "funding": card.funding.value,
        "country": card.country,
        "last4": card.last4,
        "exp_month": card.exp_month,
        "exp_year": card.exp_year,
    }


def _decline_json(decline: Decline | None) -> dict[str, object] | None:
    if decline is None:
        return None
    return {
        "category": decline.category.value,
        "retryable": decline.retryable,
        "advice": decline.advice.value,
        "not_before": _iso_utc(decline.not_before) if decline.not_before else None,
        "raw_code": decline.raw_code,
        "network_decline_code": decline.network_decline_code,
        "network_advice_code": decline.network_advice_code,
    }


def record_to_json(record: CanonicalRecord) -> dict[str, object]:
    """The record as plain JSON types, with timestamps in ISO-8601 UTC ending in "Z"."""
    return {
        "processor": record.processor.value,
        "processor_payment_id": record.processor_payment_id,
        "status": record.status,
        "amount_minor": record.amount_minor,
        "currency": record.currency,
        "customer_id": record.customer_id,
        "card": _card_json(record.card),
        "decline": _decline_json(record.decline),
        "attempted_at": _iso_utc(record.attempted_at),
        "actor": record.actor.value,
        "billing": {"country": record.billing_country, "region": record.billing_region}
        if record.billing_country is not None
        else None,
    }


def dead_letter_to_json(letter: RejectedRecord) -> dict[str, object]:
    """A dead letter as plain JSON types, for the same output stream as records."""
    return {"dead_letter": True, "reason": letter.reason, "payload_excerpt": letter.payload_excerpt}
