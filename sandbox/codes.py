"""Each processor's raw decline codes, card spellings and id formats, keyed by canonical values."""

from __future__ import annotations

import hashlib
import string

# Per canonical category: (Stripe outcome.reason, Stripe failure_code) choices.
STRIPE_REASONS: dict[str, tuple[tuple[str, str], ...]] = {
    "insufficient_funds": (("insufficient_funds", "card_declined"),),
    "do_not_honor": (
        ("generic_decline", "card_declined"),
        ("do_not_honor", "card_declined"),
        ("call_issuer", "card_declined"),
        ("try_again_later", "card_declined"),
        ("no_action_taken", "card_declined"),
    ),
    "card_expired": (("expired_card", "expired_card"), ("expired_card", "card_declined")),
    "lost_stolen": (
        ("lost_card", "card_declined"),
        ("stolen_card", "card_declined"),
        ("pickup_card", "card_declined"),
        ("restricted_card", "card_declined"),
    ),
    "fraud_suspected": (
        ("fraudulent", "card_declined"),
        ("merchant_blacklist", "card_declined"),
        ("security_violation", "card_declined"),
    ),
    "invalid_account": (
        ("invalid_account", "card_declined"),
        ("incorrect_number", "incorrect_number"),
    ),
    "processing_error": (
        ("processing_error", "processing_error"),
        ("issuer_not_available", "card_declined"),
        ("reenter_transaction", "card_declined"),
    ),
    "velocity_exceeded": (
        ("card_velocity_exceeded", "card_declined"),
        ("withdrawal_count_limit_exceeded", "card_declined"),
    ),
    "authentication_required": (("authentication_required", "card_declined"),),
    "card_data_incorrect": (
        ("incorrect_cvc", "incorrect_cvc"),
        ("incorrect_zip", "card_declined"),
    ),
    "not_permitted": (
        ("card_not_supported", "card_declined"),
        ("transaction_not_allowed", "card_declined"),
        ("not_permitted", "card_declined"),
    ),
    "payment_revoked": (
        ("revocation_of_authorization", "card_declined"),
        ("revocation_of_all_authorizations", "card_declined"),
        ("stop_payment_order", "card_declined"),
    ),
    "processor_blocked": (("previously_declined_do_not_retry", "card_declined"),),
    # A real decline code that no mapping table lists: the portal must count it as unmapped.
    "other": (("invalid_amount", "card_declined"),),
}

STRIPE_MESSAGES: dict[str, str] = {
    "insufficient_funds": "Your card has insufficient funds.",
    "card_expired": "Your card has expired.",
    "processing_error": "An error occurred while processing your card. Try again in a little bit.",
    "card_data_incorrect": "Your card's security code is incorrect.",
    "invalid_account": "Your card number is incorrect.",
}
STRIPE_DEFAULT_MESSAGE = "Your card was declined."

# Stripe's advice_code, where the API version renders one.
STRIPE_ADVICE: dict[str, str] = {
    "insufficient_funds": "try_again_later",
    "do_not_honor": "try_again_later",
    "processing_error": "try_again_later",
    "velocity_exceeded": "try_again_later",
    "card_expired": "confirm_card_data",
    "invalid_account": "confirm_card_data",
    "card_data_incorrect": "confirm_card_data",
}
STRIPE_HARD_ADVICE = "do_not_try_again"

# Per category: (Braintree processor-response-code, text) choices.
BRAINTREE_CODES: dict[str, tuple[tuple[str, str], ...]] = {
    "insufficient_funds": (("2001", "Insufficient Funds"),),
    "do_not_honor": (
        ("2000", "Do Not Honor"),
        ("2038", "Processor Declined"),
        ("2046", "Declined"),
    ),
    "card_expired": (("2004", "Expired Card"), ("2006", "Invalid Expiration Date")),
    "lost_stolen": (
        ("2012", "Processor Declined - Possible Lost Card"),
        ("2013", "Processor Declined - Possible Stolen Card"),
        ("2047", "Call Issuer. Pick Up Card"),
    ),
    "fraud_suspected": (("2014", "Processor Declined - Fraud Suspected"),),
    "invalid_account": (
        ("2005", "Invalid Credit Card Number"),
        ("2007", "No Account"),
        ("2008", "Card Account Length Error"),
        ("2009", "No Such Issuer"),
    ),
    "processing_error": (("3000", "Processor Network Unavailable - Try Again"),),
    "velocity_exceeded": (
        ("2002", "Limit Exceeded"),
        ("2003", "Cardholder's Activity Limit Exceeded"),
    ),
    "authentication_required": (("2099", "Cardholder Authentication Required"),),
    "card_data_incorrect": (("2010", "Card Issuer Declined CVV"),),
    "not_permitted": (
        ("2015", "Transaction Not Allowed"),
        ("2057", "Issuer or Cardholder has put a restriction on the card"),
    ),
    "payment_revoked": (
        ("2017", "Cardholder Stopped Billing"),
        ("2018", "Cardholder Stopped All Billing"),
    ),
    "processor_blocked": (("", ""),),
    "other": (("2019", "Invalid Transaction"),),
}
BRAINTREE_HARD_CATEGORIES = frozenset(
    {
        "card_expired",
        "lost_stolen",
        "fraud_suspected",
        "invalid_account",
        "authentication_required",
        "card_data_incorrect",
        "not_permitted",
        "payment_revoked",
        "processor_blocked",
        "other",
    }
)

# Per category: (Adyen refusalReasonCode, refusalReason) choices.
ADYEN_CODES: dict[str, tuple[tuple[str, str], ...]] = {
    "insufficient_funds": (("12", "Not enough balance"),),
    "do_not_honor": (("2", "Refused"), ("27", "Declined Non Generic")),
    "card_expired": (("6", "Expired Card"),),
    "lost_stolen": (("5", "Blocked Card"),),
    "fraud_suspected": (
        ("14", "Acquirer Fraud"),
        ("20", "FRAUD"),
        ("22", "FRAUD-CANCELLED"),
        ("31", "Issuer Suspected Fraud"),
    ),
    "invalid_account": (("8", "Invalid Card Number"),),
    "processing_error": (("4", "Acquirer Error"), ("9", "Issuer Unavailable")),
    "velocity_exceeded": (
        ("28", "Withdrawal amount exceeded"),
        ("29", "Withdrawal count exceeded"),
    ),
    "authentication_required": (("11", "3D Not Authenticated"),),
    "card_data_incorrect": (("24", "CVC Declined"), ("32", "AVS Declined")),
    "not_permitted": (
        ("10", "Not supported"),
        ("23", "Transaction Not Permitted"),
        ("25", "Restricted Card"),
    ),
    "payment_revoked": (("26", "Revocation Of Auth"),),
    "processor_blocked": (("46", "Transaction blocked by Adyen to prevent excessive retry fees"),),
    "other": (("7", "Invalid Amount"),),
}

# Network response texts as acquirers echo them in Adyen's refusalReasonRaw and Braintree's
# additional-processor-response.
NETWORK_TEXTS: dict[str, str] = {
    "01": "Refer to card issuer",
    "04": "Pick up card",
    "05": "Do not honor",
    "06": "Error",
    "07": "Pick up card, special condition",
    "12": "Invalid transaction",
    "14": "Invalid card number",
    "15": "No such issuer",
    "19": "Re-enter transaction",
    "1A": "Additional customer authentication required",
    "33": "Expired card",
    "41": "Lost card",
    "43": "Stolen card",
    "46": "Closed account",
    "51": "Insufficient funds",
    "54": "Expired card",
    "57": "Transaction not permitted to cardholder",
    "58": "Transaction not permitted to terminal",
    "59": "Suspected fraud",
    "61": "Exceeds withdrawal amount limit",
    "62": "Restricted card",
    "63": "Security violation",
    "65": "Exceeds withdrawal count limit",
    "82": "Negative CAM, dCVV, iCVV or CVV results",
    "91": "Issuer unavailable",
    "96": "System malfunction",
    "N7": "Decline for CVV2 failure",
    "R0": "Stop payment order",
    "R1": "Revocation of authorization order",
    "R3": "Revocation of all authorizations order",
}

MASTERCARD_ADVICE_TEXTS: dict[str, str] = {
    "01": "New account information available",
    "02": "Cannot approve at this time, try again later",
    "03": "Do not try again",
    "21": "Payment cancellation",
    "24": "Retry after 1 hour",
    "25": "Retry after 24 hours",
    "26": "Retry after 2 days",
    "27": "Retry after 4 days",
    "28": "Retry after 6 days",
    "29": "Retry after 8 days",
    "30": "Retry after 10 days",
}

# Per category: (Checkout.com response_code, response_summary) choices.
CHECKOUT_CODES: dict[str, tuple[tuple[str, str], ...]] = {
    "insufficient_funds": (("20051", "Insufficient Funds"),),
    "do_not_honor": (("20005", "Declined - Do Not Honour"), ("20001", "Refer to card issuer")),
    "card_expired": (("20054", "Expired Card"), ("30033", "Expired Card - Pick Up")),
    "lost_stolen": (
        ("30004", "Pick up card (No fraud)"),
        ("30007", "Pick up card - Special conditions"),
        ("30041", "Lost Card - Pick Up"),
        ("30043", "Stolen Card - Pick Up"),
    ),
    "fraud_suspected": (("20059", "Suspected Fraud"), ("40101", "Risk Blocked Transaction")),
    "invalid_account": (("20014", "Invalid Card Number"), ("30015", "No such issuer")),
    "processing_error": (
        ("20068", "Response received too late / timeout"),
        ("20091", "Issuer unavailable or switch is inoperative"),
        ("20096", "System malfunction"),
    ),
    "velocity_exceeded": (
        ("20061", "Exceeds Withdrawal Value Limit"),
        ("20065", "Exceeds Withdrawal Frequency Limit"),
    ),
    "authentication_required": (("20150", "Card not 3D Secure enabled"),),
    "card_data_incorrect": (("20087", "Bad Track Data"),),
    "not_permitted": (
        ("20057", "Transaction not permitted to cardholder"),
        ("20062", "Restricted Card"),
    ),
    "payment_revoked": (
        ("200R1", "Issuer initiated a stop payment (revocation order) for this authorization"),
        ("200R3", "Issuer initiated a stop payment for all authorizations"),
    ),
    # Checkout.com has no processor-side retry block; a code no table lists stands in.
    "processor_blocked": (("20046", "Closed Account"),),
    "other": (("20012", "Invalid Transaction"),),
}

STRIPE_BRANDS = {"visa": "visa", "mastercard": "mastercard", "amex": "amex", "discover": "discover"}
STRIPE_LEGACY_BRANDS = {
    "visa": "Visa",
    "mastercard": "MasterCard",
    "amex": "American Express",
    "discover": "Discover",
}
BRAINTREE_BRANDS = STRIPE_LEGACY_BRANDS
ADYEN_METHODS = {"visa": "visa", "mastercard": "mc", "amex": "amex", "discover": "discover"}
# Two spellings per brand, as Checkout.com's list API and its webhooks differ.
CHECKOUT_SCHEMES = {
    "visa": ("VISA", "Visa"),
    "mastercard": ("MASTERCARD", "Mastercard"),
    "amex": ("AMEX", "Amex"),
    "discover": ("DISCOVER", "Discover"),
}
ALPHA3 = {
    "US": "USA",
    "GB": "GBR",
    "CA": "CAN",
    "DE": "DEU",
    "FR": "FRA",
    "AU": "AUS",
    "BR": "BRA",
}
# ISO 4217 minor-unit exponents that differ from two.
CURRENCY_EXPONENT = {"JPY": 0, "KRW": 0, "KWD": 3, "BHD": 3}

_ALPHANUM = string.digits + string.ascii_letters
_LOWER = string.digits + string.ascii_lowercase
_UPPER = string.digits + string.ascii_uppercase
# Byte-to-character tables per alphabet, so ids cost one hash and one translate.
_TABLES: dict[str, bytes] = {}


def digest(*parts: object) -> int:
    """A stable 256-bit integer from the parts."""
    data = "\x1f".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.sha256(data).digest(), "big")


def pick(options: tuple[tuple[str, str], ...], *parts: object) -> tuple[str, str]:
    """A stable choice among options, keyed by the parts."""
    return options[digest("pick", *parts) % len(options)]


def token(alphabet: str, length: int, *parts: object) -> str:
    """A stable random-looking string (at most 32 characters) of the alphabet, keyed by parts."""
    table = _TABLES.get(alphabet)
    if table is None:
        table = _TABLES[alphabet] = bytes(ord(alphabet[i % len(alphabet)]) for i in range(256))
    data = "\x1f".join(map(str, parts)).encode()
    return hashlib.sha256(data).digest()[:length].translate(table).decode("ascii")


def stripe_id(prefix: str, *parts: object) -> str:
    """A Stripe-style object id ("ch_" + 24 alphanumerics)."""
    return prefix + token(_ALPHANUM, 24, prefix, *parts)


def braintree_id(*parts: object) -> str:
    """A Braintree-style transaction id (8 lower-case alphanumerics)."""
    return token(_LOWER, 8, "bt", *parts)


def adyen_psp(*parts: object) -> str:
    """An Adyen pspReference (16 upper-case alphanumerics)."""
    return token(_UPPER, 16, "adyen", *parts)


def checkout_id(prefix: str, *parts: object) -> str:
    """A Checkout.com id ("pay_" + 26 lower-case alphanumerics)."""
    return prefix + token(_LOWER, 26, prefix, *parts)


def major_units(amount_minor: int, currency: str) -> str:
    """Minor units as a decimal string in major units ("33.30")."""
    exp = CURRENCY_EXPONENT.get(currency.upper(), 2)
    if exp == 0:
        return str(amount_minor)
    sign = "-" if amount_minor < 0 else ""
    whole, frac = divmod(abs(amount_minor), 10**exp)
    return f"{sign}{whole}.{frac:0{exp}d}"


def minor_units(amount: str, currency: str) -> int:
    """A decimal string in major units back to integer minor units; ValueError if malformed."""
    exp = CURRENCY_EXPONENT.get(currency.upper(), 2)
    text = amount.strip()
    whole, _, frac = text.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(frac) > exp:
        raise ValueError(f"not an amount: {amount!r}")
    scale: int = 10**exp
    return int(whole) * scale + int(frac.ljust(exp, "0") or "0")
