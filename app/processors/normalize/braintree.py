"""Braintree: XML transactions (single, collections, search results) to canonical records."""

from collections.abc import Mapping
from functools import partial
from xml.etree.ElementTree import Element, tostring

from app.declines import DeclineSignals, classify, leading_code
from app.enums import Actor, CardFunding, Processor
from app.processors.normalize.records import (
    PAN_KEYS,
    PORTAL_RETRY_KEY,
    CanonicalCard,
    CanonicalRecord,
    NormalizedItem,
    RecordError,
    RecordStatus,
    build_card,
    dead_item,
    from_iso,
    guarded,
    is_id_key,
    major_to_minor,
    normalize_country,
    normalize_currency,
    normalize_region,
    redact_card_numbers,
    scrub_raw,
)

TRANSACTION_STATUSES: Mapping[str, RecordStatus] = {
    "processor_declined": "failed",
    "gateway_rejected": "failed",
    "failed": "failed",
    "authorized": "succeeded",
    "submitted_for_settlement": "succeeded",
    "settling": "succeeded",
    "settled": "succeeded",
    "settlement_pending": "succeeded",
    "settlement_confirmed": "succeeded",
}
# Containers whose direct <transaction> children (or <transactions> list) are the records.
LIST_ROOTS: frozenset[str] = frozenset(
    {"credit-card-transactions", "transactions", "search-results"}
)
NOTIFICATION_ROOT = "notification"
FLAG_YES = "yes"
FLAG_NO = "no"
# The portal's marker, as Braintree custom fields spell keys (dashes in XML).
PORTAL_RETRY_FIELD = PORTAL_RETRY_KEY.replace("_", "-")
# 3-D Secure statuses that show the cardholder took part in the payment (docs/actors.md).
CARDHOLDER_PRESENT_3DS = frozenset({"authenticate_successful", "authenticate_attempt_successful"})


def normalize_document(root: Element) -> list[NormalizedItem]:
    """Every transaction found under a Braintree XML root, one result each."""
    scrub_element(root)
    if root.tag == "transaction":
        transactions = [root]
    elif root.tag in LIST_ROOTS:
        # A search-results page may list only ids: then there is nothing to normalize here.
        transactions = root.findall("transaction") + root.findall("transactions/transaction")
    elif root.tag == NOTIFICATION_ROOT:
        transactions = root.findall("subject/transaction")
    else:
        return [
            dead_item(f"unsupported braintree document <{root.tag[:40]}>", scrub_raw(raw_xml(root)))
        ]
    return [guarded(partial(_from_transaction, t), scrub_raw(raw_xml(t))) for t in transactions]


def scrub_element(element: Element) -> None:
    """Drop card-number elements and redact PAN-like text in place, before anything reads it."""
    for child in list(element):
        if child.tag.lower().replace("-", "_") in PAN_KEYS:
            element.remove(child)
        else:
            scrub_element(child)
    if element.text and not is_id_key(element.tag):
        element.text = redact_card_numbers(element.text)


def raw_xml(element: Element) -> dict[str, object]:
    """The element as stored raw: `{"xml": "<transaction>…</transaction>"}`."""
    return {"xml": tostring(element, encoding="unicode").strip()}


def _text(element: Element | None, tag: str) -> str | None:
    if element is None:
        return None
    child = element.find(tag)
    if child is None or child.get("nil") == "true" or child.text is None:
        return None
    return child.text.strip() or None


def _require(element: Element, tag: str) -> str:
    value = _text(element, tag)
    if value is None:
        raise RecordError(f"transaction <{tag}> is missing")
    return value


def _funding(card: Element) -> CardFunding:
    prepaid = (_text(card, "prepaid") or "").lower()
    debit = (_text(card, "debit") or "").lower()
    if prepaid == FLAG_YES:
        return CardFunding.PREPAID
    if debit == FLAG_YES:
        return CardFunding.DEBIT
    # Braintree flags debit and prepaid only; a card that is neither is a credit card.
    if debit == FLAG_NO and prepaid == FLAG_NO:
        return CardFunding.CREDIT
    return CardFunding.UNKNOWN


def _card(transaction: Element) -> CanonicalCard | None:
    card = transaction.find("credit-card")
    if card is None:
        return None
    return build_card(
        brand=_text(card, "card-type"),
        funding=_funding(card),
        country=_text(card, "country-of-issuance"),
        bin_=_text(card, "bin"),
        last4=_text(card, "last-4"),
        exp_month=_text(card, "expiration-month"),
        exp_year=_text(card, "expiration-year"),
        fingerprint=_text(card, "unique-number-identifier"),
    )


def _actor(t: Element) -> Actor:
    """Who made a transaction: docs/actors.md, Braintree."""
    if _text(t.find("custom-fields"), PORTAL_RETRY_FIELD):
        return Actor.PORTAL
    if _text(t, "retried-transaction-id"):
        return Actor.PROCESSOR  # Braintree's own retry of a declined transaction
    if _text(t.find("three-d-secure-info"), "status") in CARDHOLDER_PRESENT_3DS:
        return Actor.CUSTOMER
    recurring = (_text(t, "recurring") or "").lower()
    if _text(t, "subscription-id") or recurring == "true":
        return Actor.BILLING_SYSTEM
    if recurring == "false":
        return Actor.CUSTOMER
    return Actor.PROCESSOR


def _billing(t: Element) -> tuple[str | None, str | None]:
    """(country, region) of the transaction's billing address."""
    billing = t.find("billing")
    country = _text(billing, "country-code-alpha2") or _text(billing, "country-code-alpha3")
    if country is None:
        return None, None
    return normalize_country(country), normalize_region(_text(billing, "region"))


def _from_transaction(t: Element) -> CanonicalRecord:
    transaction_id = _require(t, "id")
    raw_status = _require(t, "status")
    status = TRANSACTION_STATUSES.get(raw_status)
    if status is None:
        raise RecordError(f"transaction status {raw_status[:30]!r} is not an attempt outcome")
    kind = _text(t, "type")
    if kind is not None and kind != "sale":
        raise RecordError(f"transaction type {kind[:20]!r} is not a sale")
    currency = normalize_currency(_text(t, "currency-iso-code"), "transaction")
    amount_minor = major_to_minor(_require(t, "amount"), currency, "transaction")
    attempted_at = from_iso(_require(t, "created-at"), "transaction.created-at")
    card = _card(t)
    decline = None
    if status == "failed":
        gateway_reason = _text(t, "gateway-rejection-reason")
        code = _text(t, "processor-response-code")
        if raw_status == "gateway_rejected" and gateway_reason is not None:
            code = gateway_reason
        decline = classify(
            DeclineSignals(
                processor=Processor.BRAINTREE,
                declined_at=attempted_at,
                raw_code=code,
                card_brand=card.brand if card else None,
                # Older transactions lack network-response-code; the raw processor answer
                # ("05 : DO NOT HONOR") leads with the same network code.
                network_decline_code=_text(t, "network-response-code")
                or leading_code(_text(t, "additional-processor-response")),
                network_advice_code=_text(t, "merchant-advice-code"),
                processor_verdict=_text(t, "processor-response-type"),
                gateway_rejection_reason=gateway_reason,
            )
        )
    customer_id = _text(t.find("customer"), "id") or _text(t.find("customer-details"), "id")
    country, region = _billing(t)
    return CanonicalRecord(
        processor=Processor.BRAINTREE,
        processor_payment_id=transaction_id,
        status=status,
        amount_minor=amount_minor,
        currency=currency,
        customer_id=customer_id,
        card=card,
        decline=decline,
        attempted_at=attempted_at,
        invoice_ref=_text(t, "order-id"),
        subscription_ref=_text(t, "subscription-id"),
        raw_kind="transaction",
        actor=_actor(t),
        billing_country=country,
        billing_region=region,
    )
