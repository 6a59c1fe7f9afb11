"""Adyen: AUTHORISATION notifications (single items and batches) to canonical records."""

from collections.abc import Mapping

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
    get_obj,
    get_str,
    guarded,
    minor_amount,
    normalize_country,
    normalize_currency,
    normalize_region,
    require_str,
    type_name,
)

AUTHORISATION = "AUTHORISATION"
# Auto Rescue ended: with success "true", Adyen's own retry of a refused payment was approved.
AUTORESCUE = "AUTORESCUE"
SUCCESS_VALUES: Mapping[str, RecordStatus] = {"true": "succeeded", "false": "failed"}
ITEM_KEY = "NotificationRequestItem"
# Adyen payment method variants start with the scheme ("mc_applepay", "visadebit", "amex").
VARIANT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("visa", "visa"),
    ("mc", "mastercard"),
    ("amex", "amex"),
    ("discover", "discover"),
    ("diners", "diners"),
    ("jcb", "jcb"),
    ("cup", "unionpay"),
    ("maestro", "maestro"),
    ("cartebancaire", "cartes_bancaires"),
    ("elo", "elo"),
)
WALLET_METHODS: frozenset[str] = frozenset({"scheme", "applepay", "googlepay", "paywithgoogle"})
# Who initiated a payment, by `shopperInteraction` and `recurringProcessingModel`
# (docs/actors.md): the shopper present (or on the phone), or a stored-details charge.
SHOPPER_PRESENT: frozenset[str] = frozenset({"ecommerce", "moto", "pos"})
MERCHANT_INITIATED_MODELS: frozenset[str] = frozenset({"subscription", "unscheduledcardonfile"})


def normalize_document(doc: object) -> list[NormalizedItem]:
    """Every notification item in one Adyen webhook body.

    `doc` is already scrubbed of card numbers (`dispatch` does it once per body)."""
    if isinstance(doc, list):
        return [r for item in doc for r in normalize_document(item)]
    if not isinstance(doc, Mapping):
        return [dead_item(f"adyen body is {type_name(doc)}, expected an object", doc)]
    if "notificationItems" in doc:
        items = doc.get("notificationItems")
        if not isinstance(items, list):
            return [dead_item(f"adyen notificationItems is {type_name(items)}", doc)]
        return [r for item in items for r in normalize_document(item)]
    if ITEM_KEY in doc:
        item = doc.get(ITEM_KEY)
        if not isinstance(item, Mapping):
            return [dead_item(f"adyen {ITEM_KEY} is {type_name(item)}", doc)]
        return [guarded(lambda: _from_item(item), doc)]
    return [guarded(lambda: _from_item(doc), doc)]


def _brand(item: JsonObject, extra: JsonObject) -> str | None:
    method = card_text(item.get("paymentMethod"))
    if method is None or method.lower() in WALLET_METHODS:
        method = card_text(extra.get("paymentMethodVariant")) or method
    if method is None:
        return None
    lowered = method.lower()
    for prefix, brand in VARIANT_PREFIXES:
        if lowered.startswith(prefix):
            return brand
    return lowered


def _card(item: JsonObject, extra: JsonObject) -> CanonicalCard | None:
    brand = _brand(item, extra)
    summary = card_text(extra.get("cardSummary"))
    expiry = card_text(extra.get("expiryDate"))
    if brand is None and summary is None and expiry is None:
        return None
    month, _, year = (expiry or "").partition("/")
    # Card attributes describe; a malformed one is dropped rather than failing the payment.
    return build_card(
        brand=brand,
        funding=extra.get("fundingSource"),
        country=extra.get("issuerCountry"),
        bin_=extra.get("cardBin"),
        last4=summary,
        exp_month=month,
        exp_year=year,
        fingerprint=None,
    )


def _status(item: JsonObject) -> RecordStatus:
    success = item.get("success")
    if isinstance(success, bool):
        return "succeeded" if success else "failed"
    if not isinstance(success, str) or success.strip().lower() not in SUCCESS_VALUES:
        raise RecordError(f"adyen success is {type_name(success)}, expected 'true' or 'false'")
    return SUCCESS_VALUES[success.strip().lower()]


def _actor(item: JsonObject, extra: JsonObject) -> Actor:
    """Who made a payment: docs/actors.md, Adyen."""
    if card_text(extra.get(f"metadata.{PORTAL_RETRY_KEY}")):
        return Actor.PORTAL
    if item.get("eventCode") == AUTORESCUE:
        return Actor.PROCESSOR
    if card_text(extra.get("paymentLinkId")) or _flag(extra.get("threeDAuthenticated")):
        return Actor.CUSTOMER
    interaction = (card_text(extra.get("shopperInteraction")) or "").lower()
    if interaction == "contauth":
        return Actor.BILLING_SYSTEM
    if interaction in SHOPPER_PRESENT:
        return Actor.CUSTOMER
    model = (card_text(extra.get("recurringProcessingModel")) or "").lower()
    if model in MERCHANT_INITIATED_MODELS:
        return Actor.BILLING_SYSTEM
    if model == "cardonfile":
        return Actor.CUSTOMER
    return Actor.PROCESSOR


def _flag(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _billing(extra: JsonObject) -> tuple[str | None, str | None]:
    country = normalize_country(card_text(extra.get("billingAddress.country")))
    if country is None:
        return None, None
    return country, normalize_region(extra.get("billingAddress.stateOrProvince"))


def _from_item(item: JsonObject) -> CanonicalRecord:
    where = "item"
    event_code = get_str(item, "eventCode", where)
    if event_code not in (AUTHORISATION, AUTORESCUE):
        raise RecordError(f"adyen eventCode {str(event_code)[:30]!r} is not {AUTHORISATION}")
    psp_reference = require_str(item, "pspReference", where)
    status = _status(item)
    if event_code == AUTORESCUE and status == "failed":
        raise RecordError("adyen AUTORESCUE without success ends a rescue; it is no attempt")
    amount = get_obj(item, "amount", where)
    if amount is None:
        raise RecordError("adyen amount is missing")
    currency = normalize_currency(get_str(amount, "currency", "amount"), "amount")
    amount_minor = minor_amount(amount, "value", "amount")
    attempted_at = from_iso(item.get("eventDate"), "item.eventDate")
    extra = get_obj(item, "additionalData", where) or {}
    card = _card(item, extra)
    decline = None
    if status == "failed":
        code = (
            get_str(item, "refusalReasonCode", where)
            or get_str(extra, "refusalReasonCode", "additionalData")
            or get_str(item, "refusalReason", where)
            or get_str(item, "reason", where)
        )
        decline = classify(
            DeclineSignals(
                processor=Processor.ADYEN,
                declined_at=attempted_at,
                raw_code=code,
                raw_text=get_str(extra, "refusalReasonRaw", "additionalData"),
                card_brand=card.brand if card else None,
                network_advice_code=get_str(extra, "merchantAdviceCode", "additionalData"),
            )
        )
    customer_id = (
        get_str(extra, "shopperReference", "additionalData")
        or get_str(extra, "recurring.shopperReference", "additionalData")
        or get_str(item, "shopperReference", where)
    )
    country, region = _billing(extra)
    return CanonicalRecord(
        processor=Processor.ADYEN,
        processor_payment_id=psp_reference,
        status=status,
        amount_minor=amount_minor,
        currency=currency,
        customer_id=customer_id,
        card=card,
        decline=decline,
        attempted_at=attempted_at,
        invoice_ref=get_str(item, "merchantReference", where),
        subscription_ref=None,
        raw_kind="notification",
        actor=_actor(item, extra),
        billing_country=country,
        billing_region=region,
    )
