"""Canonical decline taxonomy: what a processor said, mapped to category, verdict and advice."""

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.enums import Advice, DeclineCategory, Processor

logger = logging.getLogger(__name__)

C = DeclineCategory


@dataclass(frozen=True, slots=True)
class Decline:
    """The canonical reading of one declined attempt."""

    category: DeclineCategory
    retryable: bool
    advice: Advice
    not_before: datetime | None
    raw_code: str | None
    network_decline_code: str | None
    network_advice_code: str | None

    @property
    def unmapped(self) -> bool:
        return self.category is DeclineCategory.OTHER


@dataclass(frozen=True, slots=True)
class DeclineSignals:
    """Everything a processor told us about one decline, as read from its payload.

    `raw_code` is the processor's own code (Stripe decline code, Braintree processor response
    code, Adyen refusalReasonCode, Checkout.com response_code). `network_advice_code` is the
    Mastercard merchant advice code. `raw_text` is Adyen's `refusalReasonRaw`.
    """

    processor: Processor
    declined_at: datetime
    raw_code: str | None = None
    raw_text: str | None = None
    card_brand: str | None = None
    network_decline_code: str | None = None
    network_advice_code: str | None = None
    stripe_outcome_type: str | None = None
    stripe_advice_code: str | None = None
    processor_verdict: str | None = None
    gateway_rejection_reason: str | None = None


# --- Category defaults (docs/domain.md §1, the verdict column) ---------------------------

SOFT_CATEGORIES: frozenset[DeclineCategory] = frozenset(
    {C.INSUFFICIENT_FUNDS, C.DO_NOT_HONOR, C.PROCESSING_ERROR, C.VELOCITY_EXCEEDED}
)

# Soft categories whose next try must wait; the numbers are the portal's defaults.
CATEGORY_DELAYS: Mapping[DeclineCategory, timedelta] = {
    C.PROCESSING_ERROR: timedelta(hours=2),
    C.VELOCITY_EXCEEDED: timedelta(hours=24),
}

# What a hard category asks for when nothing stronger applies: a dead credential that the
# customer can replace is `update_credentials`; one that must never be charged again is `never`.
HARD_CATEGORY_ADVICE: Mapping[DeclineCategory, Advice] = {
    C.CARD_EXPIRED: Advice.UPDATE_CREDENTIALS,
    C.INVALID_ACCOUNT: Advice.UPDATE_CREDENTIALS,
    C.CARD_DATA_INCORRECT: Advice.UPDATE_CREDENTIALS,
    C.AUTHENTICATION_REQUIRED: Advice.UPDATE_CREDENTIALS,
    C.LOST_STOLEN: Advice.NEVER,
    C.FRAUD_SUSPECTED: Advice.NEVER,
    C.NOT_PERMITTED: Advice.NEVER,
    C.PAYMENT_REVOKED: Advice.NEVER,
    C.PROCESSOR_BLOCKED: Advice.NEVER,
    C.OTHER: Advice.NEVER,
}

# --- Code tables --------------------------------------------------------------------------

STRIPE_CODES: Mapping[str, DeclineCategory] = {
    "insufficient_funds": C.INSUFFICIENT_FUNDS,
    "generic_decline": C.DO_NOT_HONOR,
    "do_not_honor": C.DO_NOT_HONOR,
    "call_issuer": C.DO_NOT_HONOR,
    "no_action_taken": C.DO_NOT_HONOR,
    "try_again_later": C.DO_NOT_HONOR,
    "card_declined": C.DO_NOT_HONOR,
    "do_not_try_again": C.DO_NOT_HONOR,
    "expired_card": C.CARD_EXPIRED,
    "invalid_expiry_month": C.CARD_EXPIRED,
    "invalid_expiry_year": C.CARD_EXPIRED,
    "lost_card": C.LOST_STOLEN,
    "stolen_card": C.LOST_STOLEN,
    "pickup_card": C.LOST_STOLEN,
    "restricted_card": C.LOST_STOLEN,
    "fraudulent": C.FRAUD_SUSPECTED,
    "merchant_blacklist": C.FRAUD_SUSPECTED,
    "security_violation": C.FRAUD_SUSPECTED,
    "invalid_account": C.INVALID_ACCOUNT,
    "incorrect_number": C.INVALID_ACCOUNT,
    "invalid_number": C.INVALID_ACCOUNT,
    "new_account_information_available": C.INVALID_ACCOUNT,
    "processing_error": C.PROCESSING_ERROR,
    "issuer_not_available": C.PROCESSING_ERROR,
    "reenter_transaction": C.PROCESSING_ERROR,
    "card_velocity_exceeded": C.VELOCITY_EXCEEDED,
    "withdrawal_count_limit_exceeded": C.VELOCITY_EXCEEDED,
    "authentication_required": C.AUTHENTICATION_REQUIRED,
    "incorrect_cvc": C.CARD_DATA_INCORRECT,
    "invalid_cvc": C.CARD_DATA_INCORRECT,
    "incorrect_zip": C.CARD_DATA_INCORRECT,
    "card_not_supported": C.NOT_PERMITTED,
    "transaction_not_allowed": C.NOT_PERMITTED,
    "not_permitted": C.NOT_PERMITTED,
    "currency_not_supported": C.NOT_PERMITTED,
    # Stripe's reason when it refuses to resend a card it saw declined for good.
    "previously_declined_do_not_retry": C.PROCESSOR_BLOCKED,
    "revocation_of_authorization": C.PAYMENT_REVOKED,
    "revocation_of_all_authorizations": C.PAYMENT_REVOKED,
    "stop_payment_order": C.PAYMENT_REVOKED,
}

BRAINTREE_CODES: Mapping[str, DeclineCategory] = {
    "2001": C.INSUFFICIENT_FUNDS,
    "2000": C.DO_NOT_HONOR,
    "2038": C.DO_NOT_HONOR,
    "2046": C.DO_NOT_HONOR,
    # "Call Issuer": generic; its retryability follows Braintree's own verdict (rule 4).
    "2044": C.DO_NOT_HONOR,
    "2004": C.CARD_EXPIRED,
    "2006": C.CARD_EXPIRED,
    "2012": C.LOST_STOLEN,
    "2013": C.LOST_STOLEN,
    "2047": C.LOST_STOLEN,
    "2014": C.FRAUD_SUSPECTED,
    "2005": C.INVALID_ACCOUNT,
    "2007": C.INVALID_ACCOUNT,
    "2008": C.INVALID_ACCOUNT,
    "2009": C.INVALID_ACCOUNT,
    "2022": C.INVALID_ACCOUNT,
    "3000": C.PROCESSING_ERROR,
    "2002": C.VELOCITY_EXCEEDED,
    "2003": C.VELOCITY_EXCEEDED,
    "2099": C.AUTHENTICATION_REQUIRED,
    "2010": C.CARD_DATA_INCORRECT,
    "2015": C.NOT_PERMITTED,
    "2057": C.NOT_PERMITTED,
    "2017": C.PAYMENT_REVOKED,
    "2018": C.PAYMENT_REVOKED,
}

# Braintree `gateway-rejection-reason`: the gateway, not the issuer, refused the attempt.
BRAINTREE_GATEWAY_REJECTIONS: Mapping[str, DeclineCategory] = {
    "excessive_retry": C.PROCESSOR_BLOCKED,
    "cvv": C.CARD_DATA_INCORRECT,
    "avs": C.CARD_DATA_INCORRECT,
    "avs_and_cvv": C.CARD_DATA_INCORRECT,
    "fraud": C.FRAUD_SUSPECTED,
    "risk_threshold": C.FRAUD_SUSPECTED,
    "three_d_secure": C.AUTHENTICATION_REQUIRED,
}

# Adyen refusalReasonCode (Adyen's own numbering, not ISO-8583).
ADYEN_CODES: Mapping[str, DeclineCategory] = {
    "12": C.INSUFFICIENT_FUNDS,
    "2": C.DO_NOT_HONOR,
    "27": C.DO_NOT_HONOR,
    "6": C.CARD_EXPIRED,
    "5": C.LOST_STOLEN,
    "14": C.FRAUD_SUSPECTED,
    "20": C.FRAUD_SUSPECTED,
    "22": C.FRAUD_SUSPECTED,
    "31": C.FRAUD_SUSPECTED,
    "8": C.INVALID_ACCOUNT,
    "4": C.PROCESSING_ERROR,
    "9": C.PROCESSING_ERROR,
    "28": C.VELOCITY_EXCEEDED,
    "29": C.VELOCITY_EXCEEDED,
    "11": C.AUTHENTICATION_REQUIRED,
    "38": C.AUTHENTICATION_REQUIRED,
    "24": C.CARD_DATA_INCORRECT,
    "32": C.CARD_DATA_INCORRECT,
    "10": C.NOT_PERMITTED,
    "23": C.NOT_PERMITTED,
    "25": C.NOT_PERMITTED,
    "26": C.PAYMENT_REVOKED,
    "46": C.PROCESSOR_BLOCKED,
}

# Adyen codes that say only "declined": the raw network response decides instead.
ADYEN_GENERIC_CODES: frozenset[str] = frozenset({"2", "27"})

# Adyen's refusal reason texts, for notifications that carry the text but not the code.
ADYEN_REASON_TEXTS: Mapping[str, str] = {
    "refused": "2",
    "referral": "3",
    "acquirer error": "4",
    "blocked card": "5",
    "expired card": "6",
    "invalid amount": "7",
    "invalid card number": "8",
    "issuer unavailable": "9",
    "not supported": "10",
    "3d not authenticated": "11",
    "not enough balance": "12",
    "acquirer fraud": "14",
    "cancelled": "15",
    "shopper cancelled": "16",
    "invalid pin": "17",
    "pin tries exceeded": "18",
    "pin validation not possible": "19",
    "fraud": "20",
    "not submitted": "21",
    "fraud-cancelled": "22",
    "transaction not permitted": "23",
    "cvc declined": "24",
    "restricted card": "25",
    "revocation of auth": "26",
    "declined non generic": "27",
    "withdrawal amount exceeded": "28",
    "withdrawal count exceeded": "29",
    "issuer suspected fraud": "31",
    "avs declined": "32",
    "authentication required": "38",
    "transaction blocked by adyen to prevent excessive retry fees": "46",
}

CHECKOUT_CODES: Mapping[str, DeclineCategory] = {
    "20051": C.INSUFFICIENT_FUNDS,
    "20005": C.DO_NOT_HONOR,
    "20001": C.DO_NOT_HONOR,
    # 20054 and 20014 sit in the "soft" 20xxx range but are hard by meaning.
    "20054": C.CARD_EXPIRED,
    "30033": C.CARD_EXPIRED,
    "30004": C.LOST_STOLEN,
    "30007": C.LOST_STOLEN,
    "30041": C.LOST_STOLEN,
    "30043": C.LOST_STOLEN,
    "20059": C.FRAUD_SUSPECTED,
    "20014": C.INVALID_ACCOUNT,
    "30015": C.INVALID_ACCOUNT,
    "20108": C.INVALID_ACCOUNT,
    "20068": C.PROCESSING_ERROR,
    "20091": C.PROCESSING_ERROR,
    "20096": C.PROCESSING_ERROR,
    "20061": C.VELOCITY_EXCEEDED,
    "20065": C.VELOCITY_EXCEEDED,
    "20150": C.AUTHENTICATION_REQUIRED,
    "20087": C.CARD_DATA_INCORRECT,
    "20057": C.NOT_PERMITTED,
    "20062": C.NOT_PERMITTED,
    "200R1": C.PAYMENT_REVOKED,
    "200R3": C.PAYMENT_REVOKED,
}

# Checkout.com 4xxxx codes are risk responses; a pattern, so it lives apart from exact codes.
CHECKOUT_RISK_PATTERN = re.compile(r"4\d{4}")

# ISO-8583 response codes as networks send them.
NETWORK_CODES: Mapping[str, DeclineCategory] = {
    "51": C.INSUFFICIENT_FUNDS,
    "05": C.DO_NOT_HONOR,
    "01": C.DO_NOT_HONOR,
    "54": C.CARD_EXPIRED,
    "33": C.CARD_EXPIRED,
    "04": C.LOST_STOLEN,
    "07": C.LOST_STOLEN,
    "41": C.LOST_STOLEN,
    "43": C.LOST_STOLEN,
    "59": C.FRAUD_SUSPECTED,
    "63": C.FRAUD_SUSPECTED,
    "14": C.INVALID_ACCOUNT,
    "15": C.INVALID_ACCOUNT,
    # Visa "closed account" and "invalid transaction": category-1 codes with a plain meaning.
    "46": C.INVALID_ACCOUNT,
    "12": C.NOT_PERMITTED,
    "91": C.PROCESSING_ERROR,
    "96": C.PROCESSING_ERROR,
    "19": C.PROCESSING_ERROR,
    "61": C.VELOCITY_EXCEEDED,
    "65": C.VELOCITY_EXCEEDED,
    "1A": C.AUTHENTICATION_REQUIRED,
    "N7": C.CARD_DATA_INCORRECT,
    "82": C.CARD_DATA_INCORRECT,
    "57": C.NOT_PERMITTED,
    "58": C.NOT_PERMITTED,
    "62": C.NOT_PERMITTED,
    "R0": C.PAYMENT_REVOKED,
    "R1": C.PAYMENT_REVOKED,
    "R3": C.PAYMENT_REVOKED,
}

PROCESSOR_CODES: Mapping[Processor, Mapping[str, DeclineCategory]] = {
    Processor.STRIPE: STRIPE_CODES,
    Processor.BRAINTREE: BRAINTREE_CODES,
    Processor.ADYEN: ADYEN_CODES,
    Processor.CHECKOUT: CHECKOUT_CODES,
}

# Free-text hints in Adyen's refusalReasonRaw, first match wins.
RAW_TEXT_HINTS: tuple[tuple[str, DeclineCategory], ...] = (
    ("expir", C.CARD_EXPIRED),
    ("insufficient", C.INSUFFICIENT_FUNDS),
    ("not enough balance", C.INSUFFICIENT_FUNDS),
    ("stolen", C.LOST_STOLEN),
    ("lost card", C.LOST_STOLEN),
    ("pick up", C.LOST_STOLEN),
    ("pickup", C.LOST_STOLEN),
    ("fraud", C.FRAUD_SUSPECTED),
    ("cvc", C.CARD_DATA_INCORRECT),
    ("cvv", C.CARD_DATA_INCORRECT),
    ("invalid card number", C.INVALID_ACCOUNT),
    ("invalid account", C.INVALID_ACCOUNT),
    ("closed account", C.INVALID_ACCOUNT),
    ("withdrawal", C.VELOCITY_EXCEEDED),
    ("exceeds", C.VELOCITY_EXCEEDED),
    ("authentication required", C.AUTHENTICATION_REQUIRED),
    ("not permitted", C.NOT_PERMITTED),
    ("not supported", C.NOT_PERMITTED),
    ("revocation", C.PAYMENT_REVOKED),
    ("stop payment", C.PAYMENT_REVOKED),
    ("issuer unavailable", C.PROCESSING_ERROR),
    ("system malfunction", C.PROCESSING_ERROR),
)

# --- Precedence signals (docs/domain.md §1, rules 1 to 3) ----------------------------------

# Visa category 1 ("issuer will never approve"), as ISO-8583 network response codes.
VISA_CATEGORY_1_CODES: frozenset[str] = frozenset(
    {"04", "07", "12", "14", "15", "41", "43", "46", "57"}
)
MASTERCARD_NEVER_ADVICE: frozenset[str] = frozenset({"03", "21"})
MASTERCARD_NEW_CREDENTIALS_ADVICE = "01"
MASTERCARD_ADVICE_DELAYS: Mapping[str, timedelta] = {
    "02": timedelta(hours=72),
    "24": timedelta(hours=1),
    "25": timedelta(hours=24),
    "26": timedelta(days=2),
    "27": timedelta(days=4),
    "28": timedelta(days=6),
    "29": timedelta(days=8),
    "30": timedelta(days=10),
}
STRIPE_NEVER_ADVICE: frozenset[str] = frozenset({"do_not_try_again"})
# Stripe also sends the same words as a decline code; it means what the advice code means.
NEVER_CODES: Mapping[Processor, frozenset[str]] = {
    Processor.STRIPE: frozenset({"do_not_try_again"}),
    Processor.BRAINTREE: frozenset(),
    Processor.ADYEN: frozenset(),
    Processor.CHECKOUT: frozenset(),
}
STRIPE_NEW_CREDENTIALS: frozenset[str] = frozenset(
    {"new_account_information_available", "confirm_card_data"}
)
STRIPE_SOFT_ADVICE: frozenset[str] = frozenset({"try_again_later"})
NEW_CREDENTIALS_CODES: Mapping[Processor, frozenset[str]] = {
    Processor.STRIPE: frozenset({"new_account_information_available"}),
    Processor.BRAINTREE: frozenset({"2022"}),
    Processor.ADYEN: frozenset(),
    Processor.CHECKOUT: frozenset({"20108"}),
}
PROCESSOR_VERDICTS: Mapping[str, bool] = {"soft_declined": True, "hard_declined": False}

# Card brands by network: Visa's rules follow Visa cards, Mastercard's follow Maestro too.
VISA_BRANDS: frozenset[str] = frozenset({"visa", "visa_electron", "electron", "vpay"})
MASTERCARD_BRANDS: frozenset[str] = frozenset(
    {"mastercard", "master card", "mc", "maestro", "debit mastercard"}
)
_LONG_DIGITS = re.compile(r"\d{12,}")
_NETWORK_TOKEN = re.compile(r"(?=[0-9A-Z]*\d)[0-9A-Z]{1,3}")


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    stripped = value.strip()
    return stripped or None


def safe_for_log(value: str | None, limit: int = 64) -> str:
    """A short log-safe rendering: long digit runs (possible card numbers) are redacted."""
    if value is None:
        return "-"
    return _LONG_DIGITS.sub("[redacted]", value)[:limit]


def _network(brand: str | None) -> str | None:
    """ "visa", "mastercard", another brand in lower case, or None when unknown."""
    cleaned = _clean(brand)
    if cleaned is None:
        return None
    lowered = cleaned.lower()
    if lowered in VISA_BRANDS:
        return "visa"
    if lowered in MASTERCARD_BRANDS:
        return "mastercard"
    return None if lowered == "unknown" else lowered


def normalize_network_code(value: str | None) -> str | None:
    """ISO-8583 codes are two characters; processors sometimes drop the leading zero."""
    cleaned = _clean(value)
    if cleaned is None:
        return None
    code = cleaned.upper()
    if len(code) == 1 and code.isdigit():
        return "0" + code
    return code


def leading_code(text: str | None) -> str | None:
    """The code in front of texts such as "05 : Do not honor" or "01 : New account ..."."""
    cleaned = _clean(text)
    if cleaned is None:
        return None
    head = cleaned.split(":", 1)[0].split()
    token = head[0].upper() if head else ""
    if _NETWORK_TOKEN.fullmatch(token) is None:
        return None
    return normalize_network_code(token)


def adyen_code_for_reason(reason: str | None) -> str | None:
    """Adyen's refusalReasonCode for a refusal reason text such as "Not enough balance"."""
    cleaned = _clean(reason)
    if cleaned is None:
        return None
    return ADYEN_REASON_TEXTS.get(cleaned.lower())


def pick_stripe_code(*candidates: str | None) -> str | None:
    """The most telling of Stripe's codes: `card_declined` only when nothing better is known."""
    present = [c for c in (_clean(x) for x in candidates) if c is not None]
    for code in present:
        if code in STRIPE_CODES and code != "card_declined":
            return code
    return present[0] if present else None


def _text_hint(text: str | None) -> DeclineCategory | None:
    if text is None:
        return None
    lowered = text.lower()
    for needle, category in RAW_TEXT_HINTS:
        if needle in lowered:
            return category
    return None


def _processor_category(
    s: DeclineSignals, raw_code: str | None, network_code: str | None
) -> DeclineCategory | None:
    """The category named by the processor's own code, refined where the rules allow."""
    if s.processor is Processor.STRIPE and _clean(s.stripe_outcome_type) == "blocked":
        return C.PROCESSOR_BLOCKED
    gateway = _clean(s.gateway_rejection_reason)
    if s.processor is Processor.BRAINTREE and gateway is not None:
        by_gateway = BRAINTREE_GATEWAY_REJECTIONS.get(gateway.lower())
        if by_gateway is not None:
            return by_gateway
    category = PROCESSOR_CODES[s.processor].get(raw_code) if raw_code else None
    if (
        category is None
        and s.processor is Processor.CHECKOUT
        and raw_code
        and CHECKOUT_RISK_PATTERN.fullmatch(raw_code)
    ):
        category = C.FRAUD_SUSPECTED
    if s.processor is Processor.ADYEN and (category is None or raw_code in ADYEN_GENERIC_CODES):
        # "Refused" says nothing: the raw network answer and its text decide.
        by_network = NETWORK_CODES.get(network_code) if network_code else None
        by_text = _text_hint(s.raw_text)
        if by_network is not None and by_network is not C.DO_NOT_HONOR:
            return by_network
        if by_text is not None:
            return by_text
        if by_network is not None:
            return by_network
    return category


def _is_mastercard_advice_applicable(brand: str | None) -> bool:
    # Merchant advice codes are Mastercard's; with the brand unknown, the stricter reading holds.
    return brand is None or brand == "mastercard"


def _soft_advice(
    category: DeclineCategory, declined_at: datetime
) -> tuple[Advice, datetime | None]:
    delay = CATEGORY_DELAYS.get(category)
    if delay is None:
        return Advice.RETRY, None
    return Advice.RETRY_LATER, declined_at + delay


@dataclass(frozen=True, slots=True)
class _Codes:
    """A decline's codes, cleaned: the processor's, the network's, and the card's network."""

    raw: str | None
    network: str | None
    network_advice: str | None
    stripe_advice: str | None
    brand: str | None


def _codes(s: DeclineSignals) -> _Codes:
    raw_code = _clean(s.raw_code)
    if s.processor is Processor.ADYEN and raw_code is not None and not raw_code.isdigit():
        raw_code = adyen_code_for_reason(raw_code) or raw_code
    network_code = normalize_network_code(s.network_decline_code)
    if network_code is None and s.processor is Processor.ADYEN:
        network_code = leading_code(s.raw_text)
    return _Codes(
        raw=raw_code,
        network=network_code,
        network_advice=leading_code(s.network_advice_code) or _clean(s.network_advice_code),
        stripe_advice=_clean(s.stripe_advice_code),
        brand=_network(s.card_brand),
    )


def _category(s: DeclineSignals, codes: _Codes) -> DeclineCategory:
    category = _processor_category(s, codes.raw, codes.network)
    if category is None and codes.network is not None:
        category = NETWORK_CODES.get(codes.network)
    if category is None:
        logger.warning(
            "unmapped decline code: processor=%s code=%s network_code=%s",
            s.processor.value,
            safe_for_log(codes.raw),
            safe_for_log(codes.network),
        )
        return C.OTHER
    return category


def _verdict(
    s: DeclineSignals, codes: _Codes, category: DeclineCategory
) -> tuple[bool, Advice, datetime | None]:
    """Retryable, advice and not-before by the five precedence levels, the first that applies."""
    raw_code, stripe_advice = codes.raw, codes.stripe_advice
    mastercard_advice = (
        codes.network_advice if _is_mastercard_advice_applicable(codes.brand) else None
    )

    # Rule 1: hard network or processor advice.
    if (
        mastercard_advice in MASTERCARD_NEVER_ADVICE
        or (codes.brand == "visa" and codes.network in VISA_CATEGORY_1_CODES)
        or stripe_advice in STRIPE_NEVER_ADVICE
        or (raw_code is not None and raw_code in NEVER_CODES[s.processor])
        or category is C.PROCESSOR_BLOCKED
    ):
        return False, Advice.NEVER, None

    # Rule 2: the issuer says a newer credential exists.
    if (
        mastercard_advice == MASTERCARD_NEW_CREDENTIALS_ADVICE
        or (raw_code is not None and raw_code in NEW_CREDENTIALS_CODES[s.processor])
        or (s.processor is Processor.STRIPE and stripe_advice in STRIPE_NEW_CREDENTIALS)
    ):
        return False, Advice.UPDATE_CREDENTIALS, None

    # Rule 3: Mastercard says when to come back.
    delay = MASTERCARD_ADVICE_DELAYS.get(mastercard_advice) if mastercard_advice else None
    if delay is not None:
        not_before = s.declined_at + delay
        category_delay = CATEGORY_DELAYS.get(category)
        if category_delay is not None:
            not_before = max(not_before, s.declined_at + category_delay)
        return True, Advice.RETRY_LATER, not_before

    # Rule 4: the processor's own soft/hard verdict decides retryability.
    verdict = PROCESSOR_VERDICTS.get((_clean(s.processor_verdict) or "").lower())
    if verdict is None and s.processor is Processor.STRIPE and stripe_advice in STRIPE_SOFT_ADVICE:
        verdict = True
    if verdict is True:
        return True, *_soft_advice(category, s.declined_at)
    if verdict is False:
        if category in SOFT_CATEGORIES:
            return False, Advice.NEVER, None
        return False, HARD_CATEGORY_ADVICE[category], None

    # Rule 5: the category default.
    if category in SOFT_CATEGORIES:
        return True, *_soft_advice(category, s.declined_at)
    return False, HARD_CATEGORY_ADVICE[category], None


def classify(s: DeclineSignals) -> Decline:
    """Apply the code tables and the five precedence levels of docs/domain.md §1."""
    if s.declined_at.tzinfo is None:
        raise ValueError("declined_at must be timezone-aware")
    codes = _codes(s)
    category = _category(s, codes)
    retryable, advice, not_before = _verdict(s, codes, category)
    return Decline(
        category=category,
        retryable=retryable,
        advice=advice,
        not_before=not_before,
        raw_code=codes.raw,
        network_decline_code=codes.network,
        network_advice_code=codes.network_advice,
    )
