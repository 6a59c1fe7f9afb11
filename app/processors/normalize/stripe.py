"""Stripe: charges, PaymentIntents, list pages, events and error envelopes to canonical records."""

from collections.abc import Mapping
from datetime import datetime

from app.declines import Decline, DeclineSignals, classify, pick_stripe_code
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
    from_unix,
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

CHARGE_STATUSES: Mapping[str, RecordStatus] = {"failed": "failed", "succeeded": "succeeded"}
PAYMENT_INTENT_SUCCEEDED = "succeeded"
# 3-D Secure results that show the cardholder took part in the payment (docs/actors.md).
CARDHOLDER_PRESENT_3DS = frozenset({"authenticated", "attempt_acknowledged"})


def normalize_document(doc: object) -> list[NormalizedItem]:
    """Every payment record found in one Stripe response or webhook body.

    `doc` is already scrubbed of card numbers (`dispatch` does it once per body)."""
    return _from_item(doc, event_created=None, raw=doc)


def _from_item(item: object, event_created: datetime | None, raw: object) -> list[NormalizedItem]:
    """`raw` is what a replay needs: the item itself, or the event that carried it."""
    if isinstance(item, list):
        # A bare array of objects (an export, a fixture file): each element stands alone.
        return [r for entry in item for r in _from_item(entry, event_created, raw=entry)]
    if not isinstance(item, Mapping):
        return [dead_item(f"stripe item is {type_name(item)}, expected an object", raw)]
    kind = item.get("object")
    if kind == "list":
        data = item.get("data")
        if not isinstance(data, list):
            return [dead_item(f"stripe list.data is {type_name(data)}, expected a list", raw)]
        return [r for entry in data for r in _from_item(entry, event_created, raw=entry)]
    if kind == "event":
        return _from_event(item)
    if kind is None and "error" in item:
        return [guarded(lambda: _from_error(item), raw)]
    return [guarded(lambda: _from_object(item, event_created), raw)]


def _from_event(event: JsonObject) -> list[NormalizedItem]:
    data = event.get("data")
    inner = data.get("object") if isinstance(data, Mapping) else None
    if not isinstance(inner, Mapping) or inner.get("object") in ("list", "event"):
        return [dead_item("stripe event has no payment in data.object", event)]
    created = event.get("created")
    event_created = from_unix(created, "event.created") if isinstance(created, int) else None
    return _from_item(inner, event_created, raw=event)


def _object_kind(obj: JsonObject) -> str:
    kind = obj.get("object")
    if isinstance(kind, str):
        return kind
    # Hand-built fixtures and some exports omit `object`; the id prefix is unambiguous.
    ident = obj.get("id")
    if isinstance(ident, str):
        if ident.startswith(("ch_", "py_")):
            return "charge"
        if ident.startswith("pi_"):
            return "payment_intent"
    return type_name(kind)


def _from_object(obj: JsonObject, event_created: datetime | None) -> CanonicalRecord:
    kind = _object_kind(obj)
    if kind == "charge":
        return _from_charge(obj)
    if kind == "payment_intent":
        return _from_payment_intent(obj, event_created, error=None)
    raise RecordError(f"unsupported stripe object {kind[:40]!r}")


def _card_from(container: JsonObject | None, where: str) -> CanonicalCard | None:
    """A card from `payment_method_details`, a legacy `source`/`card`, or a PaymentMethod."""
    if container is None:
        return None
    pmd = get_obj(container, "payment_method_details", where)
    card = get_obj(pmd, "card", f"{where}.payment_method_details") if pmd else None
    if card is None:
        source = get_obj(container, "source", where)
        if source is not None:
            # Sources API nests the card; the older Card object is the source itself.
            card = get_obj(source, "card", f"{where}.source") or source
    if card is None:
        card = get_obj(container, "card", where)
    if card is None:
        return None
    return build_card(
        brand=card.get("brand") or card.get("network"),
        funding=card.get("funding"),
        country=card.get("country"),
        bin_=card.get("iin"),
        last4=card.get("last4"),
        exp_month=card.get("exp_month"),
        exp_year=card.get("exp_year"),
        fingerprint=card.get("fingerprint"),
    )


def _card_details(container: JsonObject | None) -> JsonObject | None:
    """`payment_method_details.card` of a charge, when it has one."""
    pmd = container.get("payment_method_details") if container is not None else None
    card = pmd.get("card") if isinstance(pmd, Mapping) else None
    return card if isinstance(card, Mapping) else None


def _actor(obj: JsonObject, charge: JsonObject | None) -> Actor:
    """Who made a charge (or a PaymentIntent's attempt): docs/actors.md, Stripe.

    `obj` is the charge or the intent (its metadata and invoice); `charge` the charge whose
    card details show 3-D Secure (the intent's latest charge)."""
    if metadata_text(obj.get("metadata"), PORTAL_RETRY_KEY):
        return Actor.PORTAL
    card = _card_details(charge)
    secure = card.get("three_d_secure") if card is not None else None
    # A value of any other type (a list, an object) is no 3-D Secure result, not an error.
    if isinstance(secure, Mapping) and card_text(secure.get("result")) in CARDHOLDER_PRESENT_3DS:
        return Actor.CUSTOMER
    if obj.get("invoice") is not None:
        return Actor.BILLING_SYSTEM
    return Actor.PROCESSOR


def _billing(container: JsonObject | None) -> tuple[str | None, str | None]:
    """(country, region) of `billing_details.address`, else of a legacy card source."""
    if container is None:
        return None, None
    details = container.get("billing_details")
    address = details.get("address") if isinstance(details, Mapping) else None
    if isinstance(address, Mapping) and address.get("country") is not None:
        return normalize_country(card_text(address.get("country"))), normalize_region(
            address.get("state")
        )
    source = container.get("source")
    if isinstance(source, Mapping):
        card = source.get("card") if isinstance(source.get("card"), Mapping) else source
        if isinstance(card, Mapping) and card.get("address_country") is not None:
            return normalize_country(card_text(card.get("address_country"))), normalize_region(
                card.get("address_state")
            )
    return None, None


def _decline(
    *,
    code: str | None,
    declined_at: datetime,
    card: CanonicalCard | None,
    outcome: JsonObject | None,
    details: JsonObject | None,
) -> Decline:
    """`details` is where the network fields live: the charge's outcome or the error object."""

    def detail(key: str) -> str | None:
        for source in (details, outcome):
            if source is not None:
                value = get_str(source, key, "decline")
                if value is not None:
                    return value
        return None

    return classify(
        DeclineSignals(
            processor=Processor.STRIPE,
            declined_at=declined_at,
            raw_code=code,
            card_brand=card.brand if card else None,
            network_decline_code=detail("network_decline_code"),
            network_advice_code=detail("network_advice_code"),
            stripe_outcome_type=get_str(outcome, "type", "outcome") if outcome else None,
            stripe_advice_code=detail("advice_code"),
        )
    )


def _from_charge(charge: JsonObject) -> CanonicalRecord:
    where = "charge"
    charge_id = require_str(charge, "id", where)
    raw_status = require_str(charge, "status", where)
    status = CHARGE_STATUSES.get(raw_status)
    if status is None:
        raise RecordError(f"charge status {raw_status[:20]!r} is not a final outcome")
    attempted_at = from_unix(charge.get("created"), "charge.created")
    card = _card_from(charge, where)
    decline = None
    if status == "failed":
        outcome = get_obj(charge, "outcome", where)
        code = pick_stripe_code(
            get_str(outcome, "reason", "outcome") if outcome else None,
            get_str(charge, "failure_code", where),
        )
        decline = _decline(
            code=code, declined_at=attempted_at, card=card, outcome=outcome, details=None
        )
    source = get_obj(charge, "source", where)
    invoice = charge.get("invoice")
    country, region = _billing(charge)
    return CanonicalRecord(
        processor=Processor.STRIPE,
        processor_payment_id=charge_id,
        status=status,
        amount_minor=minor_amount(charge, "amount", where),
        currency=normalize_currency(get_str(charge, "currency", where), where),
        customer_id=get_id(charge, "customer", where)
        or (get_id(source, "customer", "charge.source") if source else None),
        card=card,
        decline=decline,
        attempted_at=attempted_at,
        invoice_ref=get_id(charge, "invoice", where),
        subscription_ref=get_id(invoice, "subscription", "charge.invoice")
        if isinstance(invoice, Mapping)
        else None,
        raw_kind="charge",
        actor=_actor(charge, charge),
        billing_country=country,
        billing_region=region,
    )


def _from_payment_intent(
    intent: JsonObject, event_created: datetime | None, error: JsonObject | None
) -> CanonicalRecord:
    where = "payment_intent"
    intent_id = require_str(intent, "id", where)
    raw_status = get_str(intent, "status", where)
    failure = error or get_obj(intent, "last_payment_error", where)
    latest = intent.get("latest_charge")
    latest_charge = latest if isinstance(latest, Mapping) else None
    status: RecordStatus
    if raw_status == PAYMENT_INTENT_SUCCEEDED:
        status = "succeeded"
    elif failure is not None:
        status = "failed"
    else:
        raise RecordError(f"payment intent status {str(raw_status)[:30]!r} is not an outcome")

    # The attempt is a charge: key it by the charge id so list pages and events agree.
    charge_id = (
        (
            get_id(failure, "charge", "last_payment_error")
            if failure and status == "failed"
            else None
        )
        or get_id(intent, "latest_charge", where)
        or intent_id
    )
    if latest_charge is not None and isinstance(latest_charge.get("created"), int):
        attempted_at = from_unix(latest_charge.get("created"), "latest_charge.created")
    elif event_created is not None:
        attempted_at = event_created
    else:
        attempted_at = from_unix(intent.get("created"), "payment_intent.created")

    payment_method = get_obj(failure, "payment_method", "last_payment_error") if failure else None
    card = _card_from(payment_method, "payment_method") or _card_from(
        latest_charge, "latest_charge"
    )
    if card is None:
        card = _card_from(get_obj(intent, "payment_method", where), "payment_method")

    decline = None
    if status == "failed" and failure is not None:
        outcome = get_obj(latest_charge, "outcome", "latest_charge") if latest_charge else None
        code = pick_stripe_code(
            get_str(failure, "decline_code", "last_payment_error"),
            get_str(outcome, "reason", "outcome") if outcome else None,
            get_str(failure, "code", "last_payment_error"),
        )
        decline = _decline(
            code=code, declined_at=attempted_at, card=card, outcome=outcome, details=failure
        )
    country, region = _billing(latest_charge)
    for method in (payment_method, intent.get("payment_method")):
        if country is None and isinstance(method, Mapping):
            country, region = _billing(method)
    return CanonicalRecord(
        processor=Processor.STRIPE,
        processor_payment_id=charge_id,
        status=status,
        amount_minor=minor_amount(intent, "amount", where),
        currency=normalize_currency(get_str(intent, "currency", where), where),
        customer_id=get_id(intent, "customer", where),
        card=card,
        decline=decline,
        attempted_at=attempted_at,
        invoice_ref=get_id(intent, "invoice", where),
        subscription_ref=None,
        raw_kind="payment_intent" if error is None else "error",
        actor=_actor(intent, latest_charge),
        billing_country=country,
        billing_region=region,
    )


def _from_error(envelope: JsonObject) -> CanonicalRecord:
    error = get_obj(envelope, "error", "envelope")
    if error is None:
        raise RecordError("stripe error envelope has no error object")
    intent = get_obj(error, "payment_intent", "error")
    if intent is not None:
        return _from_payment_intent(intent, None, error=error)
    charge = error.get("charge")
    if isinstance(charge, Mapping):
        return _from_charge(charge)
    if isinstance(charge, str):
        raise RecordError(
            f"stripe error for charge {charge[:40]} carries no amount, currency or time; "
            "fetch the charge"
        )
    kind = get_str(error, "type", "error")
    code = get_str(error, "code", "error")
    raise RecordError(f"stripe error is not a payment decline (type={kind}, code={code})")
