"""Canonical payment records and the shared helpers every processor normalizer reads with."""

import json
import logging
import re
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Literal

from app.declines import Decline
from app.enums import Actor, CardFunding, Processor

logger = logging.getLogger(__name__)

# Stored with every normalized row, so history can be replayed when the mapping improves.
# 2: each record says who made the attempt (docs/actors.md) and where its payer is billed.
NORMALIZER_VERSION = 2

# The metadata key the portal's adapters write on every retry they send: a record carrying it
# is the portal's own charge, read back.
PORTAL_RETRY_KEY = "retry_of"
# A region (state, province) is free text in most payloads; longer text is not a region.
REGION_MAX = 64

RecordStatus = Literal["failed", "succeeded"]
JsonObject = Mapping[str, object]


class NormalizeError(Exception):
    """The body as a whole is unreadable (not JSON / not XML): nothing in it can be trusted."""


class RecordError(Exception):
    """One payment record cannot be normalized; the message becomes a dead letter's reason."""


@dataclass(frozen=True, slots=True)
class CanonicalCard:
    """The card of an attempt, without its number."""

    brand: str | None
    funding: CardFunding
    country: str | None
    bin: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    fingerprint: str | None


@dataclass(frozen=True, slots=True)
class CanonicalRecord:
    """One payment attempt as the portal understands it, whatever processor reported it."""

    processor: Processor
    processor_payment_id: str
    status: RecordStatus
    amount_minor: int
    currency: str
    customer_id: str | None
    card: CanonicalCard | None
    decline: Decline | None
    attempted_at: datetime
    invoice_ref: str | None
    subscription_ref: str | None
    raw_kind: str
    # Who made the attempt, read from the record (docs/actors.md); PROCESSOR when it says
    # nothing about its initiator.
    actor: Actor = Actor.PROCESSOR
    # The payer's billing address, as far as the record gives it: an ISO 3166-1 alpha-2 country
    # and the region (state, province) as sent. The card's issuer country is on `card`.
    billing_country: str | None = None
    billing_region: str | None = None

    def __post_init__(self) -> None:
        if self.attempted_at.utcoffset() != UTC.utcoffset(None):
            raise ValueError("attempted_at must be an aware UTC datetime")
        if (self.status == "failed") != (self.decline is not None):
            raise ValueError("a failed record carries a decline, a succeeded one does not")
        if self.amount_minor < 0:
            raise ValueError("amount_minor must not be negative")


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """A payment record that could not be normalized, with why and a card-safe excerpt (it is
    stored as a `dead_letter` row)."""

    reason: str
    payload_excerpt: str


# --- ISO data, kept compact: "alpha3alpha2" pairs and currency codes -----------------------

_ALPHA3_PAIRS = """
ABWAW AFGAF AGOAO AIAAI ALAAX ALBAL ANDAD AREAE ARGAR ARMAM ASMAS ATAAQ ATFTF ATGAG AUSAU
AUTAT AZEAZ BDIBI BELBE BENBJ BESBQ BFABF BGDBD BGRBG BHRBH BHSBS BIHBA BLMBL BLRBY BLZBZ
BMUBM BOLBO BRABR BRBBB BRNBN BTNBT BVTBV BWABW CAFCF CANCA CCKCC CHECH CHLCL CHNCN CIVCI
CMRCM CODCD COGCG COKCK COLCO COMKM CPVCV CRICR CUBCU CUWCW CXRCX CYMKY CYPCY CZECZ DEUDE
DJIDJ DMADM DNKDK DOMDO DZADZ ECUEC EGYEG ERIER ESHEH ESPES ESTEE ETHET FINFI FJIFJ FLKFK
FRAFR FROFO FSMFM GABGA GBRGB GEOGE GGYGG GHAGH GIBGI GINGN GLPGP GMBGM GNBGW GNQGQ GRCGR
GRDGD GRLGL GTMGT GUFGF GUMGU GUYGY HKGHK HMDHM HNDHN HRVHR HTIHT HUNHU IDNID IMNIM INDIN
IOTIO IRLIE IRNIR IRQIQ ISLIS ISRIL ITAIT JAMJM JEYJE JORJO JPNJP KAZKZ KENKE KGZKG KHMKH
KIRKI KNAKN KORKR KWTKW LAOLA LBNLB LBRLR LBYLY LCALC LIELI LKALK LSOLS LTULT LUXLU LVALV
MACMO MAFMF MARMA MCOMC MDAMD MDGMG MDVMV MEXMX MHLMH MKDMK MLIML MLTMT MMRMM MNEME MNGMN
MNPMP MOZMZ MRTMR MSRMS MTQMQ MUSMU MWIMW MYSMY MYTYT NAMNA NCLNC NERNE NFKNF NGANG NICNI
NIUNU NLDNL NORNO NPLNP NRUNR NZLNZ OMNOM PAKPK PANPA PCNPN PERPE PHLPH PLWPW PNGPG POLPL
PRIPR PRKKP PRTPT PRYPY PSEPS PYFPF QATQA REURE ROURO RUSRU RWARW SAUSA SDNSD SENSN SGPSG
SGSGS SHNSH SJMSJ SLBSB SLESL SLVSV SMRSM SOMSO SPMPM SRBRS SSDSS STPST SURSR SVKSK SVNSI
SWESE SWZSZ SXMSX SYCSC SYRSY TCATC TCDTD TGOTG THATH TJKTJ TKLTK TKMTM TLSTL TONTO TTOTT
TUNTN TURTR TUVTV TWNTW TZATZ UGAUG UKRUA UMIUM URYUY USAUS UZBUZ VATVA VCTVC VENVE VGBVG
VIRVI VNMVN VUTVU WLFWF WSMWS YEMYE ZAFZA ZMBZM ZWEZW
"""
ALPHA3_TO_ALPHA2: Mapping[str, str] = {p[:3]: p[3:] for p in _ALPHA3_PAIRS.split()}
ALPHA2_CODES: frozenset[str] = frozenset(ALPHA3_TO_ALPHA2.values())
# Spellings processors use for "no country known"; mapped to None rather than guessed.
UNKNOWN_COUNTRIES: frozenset[str] = frozenset({"unknown", "zz", "xx", "n/a", "na", "none", "-"})

# ISO 4217 currencies that can settle a card payment (funds codes and metals left out).
_CURRENCY_CODES = """
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD
BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP
DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HRK HTG HUF IDR ILS
INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD
MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR
PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS
SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW
UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG ZWL
"""
ISO_CURRENCIES: frozenset[str] = frozenset(_CURRENCY_CODES.split())
# ISO 4217 minor-unit exponents that differ from the usual 2.
_EXPONENT_GROUPS: Mapping[int, str] = {
    0: "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF",
    3: "BHD IQD JOD KWD LYD OMR TND",
    4: "CLF UYW",
}
CURRENCY_EXPONENTS: Mapping[str, int] = {
    code: exponent for exponent, codes in _EXPONENT_GROUPS.items() for code in codes.split()
}

BRANDS: Mapping[str, str] = {
    "visa": "visa",
    "mastercard": "mastercard",
    "master card": "mastercard",
    "master": "mastercard",
    "mc": "mastercard",
    "amex": "amex",
    "american express": "amex",
    "american_express": "amex",
    "americanexpress": "amex",
    "discover": "discover",
    "diners": "diners",
    "diners club": "diners",
    "diners_club": "diners",
    "dinersclub": "diners",
    "jcb": "jcb",
    "unionpay": "unionpay",
    "union pay": "unionpay",
    "china unionpay": "unionpay",
    "china union pay": "unionpay",
    "cup": "unionpay",
    "maestro": "maestro",
    "cartes bancaires": "cartes_bancaires",
    "cartes_bancaires": "cartes_bancaires",
    "eftpos australia": "eftpos_au",
    "eftpos_au": "eftpos_au",
    "elo": "elo",
    "interac": "interac",
}
UNKNOWN_BRANDS: frozenset[str] = frozenset({"unknown", "", "none", "n/a"})

FUNDING: Mapping[str, CardFunding] = {
    "credit": CardFunding.CREDIT,
    "debit": CardFunding.DEBIT,
    "prepaid": CardFunding.PREPAID,
    # Charge and deferred-debit cards are billed later, like credit.
    "charge": CardFunding.CREDIT,
    "deferred debit": CardFunding.CREDIT,
    "deferred_debit": CardFunding.CREDIT,
    "unknown": CardFunding.UNKNOWN,
}

# Keys under which a payload might carry a full card number: never read, never echoed.
PAN_KEYS: frozenset[str] = frozenset(
    {"number", "card_number", "cardnumber", "pan", "account_number", "primary_account_number"}
)
_DIGIT_RUN = re.compile(r"\d[\d -]{11,22}\d")
_ID_KEY = re.compile(r"(^|[_-])id$|reference$|^id$", re.IGNORECASE)
EXCERPT_LIMIT = 600
# Processor payloads nest a handful of levels; anything deeper is cut, not walked.
SCRUB_DEPTH = 64
# Amounts are stored as BIGINT.
MAX_AMOUNT_MINOR = 2**63 - 1


# --- Field readers: each raises RecordError with a precise reason ---------------------------


def type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def get_obj(obj: JsonObject, key: str, where: str) -> JsonObject | None:
    value = obj.get(key)
    if value is None or type(value) is dict:  # parsed JSON: skip the slower ABC check
        return value
    if not isinstance(value, Mapping):
        raise RecordError(f"{where}.{key} is {type_name(value)}, expected an object")
    return value


def get_str(obj: JsonObject, key: str, where: str) -> str | None:
    """A string field; an integer id is read as its decimal string."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise RecordError(f"{where}.{key} is bool, expected a string")
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise RecordError(f"{where}.{key} is {type_name(value)}, expected a string")
    if not is_storable_text(value):
        raise RecordError(f"{where}.{key} holds a NUL or an unpaired surrogate")
    stripped = value.strip()
    return stripped or None


def is_storable_text(value: str) -> bool:
    """Postgres text takes neither NUL nor lone surrogates (which JSON can smuggle in)."""
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def require_str(obj: JsonObject, key: str, where: str) -> str:
    value = get_str(obj, key, where)
    if value is None:
        raise RecordError(f"{where}.{key} is missing")
    return value


def get_id(obj: JsonObject, key: str, where: str) -> str | None:
    """An id that may be a string or an expanded object carrying `id`."""
    value = obj.get(key)
    if isinstance(value, Mapping):
        return get_str(value, "id", f"{where}.{key}")
    return get_str(obj, key, where)


def require_int(obj: JsonObject, key: str, where: str) -> int:
    value = obj.get(key)
    if value is None:
        raise RecordError(f"{where}.{key} is missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"{where}.{key} is {type_name(value)}, expected an integer")
    return value


def minor_amount(obj: JsonObject, key: str, where: str) -> int:
    amount = require_int(obj, key, where)
    if not 0 <= amount <= MAX_AMOUNT_MINOR:
        raise RecordError(f"{where}.{key} is out of range")
    return amount


def normalize_currency(value: str | None, where: str) -> str:
    if value is None:
        raise RecordError(f"{where} currency is missing")
    code = value.strip().upper()
    if code not in ISO_CURRENCIES:
        raise RecordError(f"{where} currency {value[:8]!r} is not an ISO 4217 code")
    return code


def major_to_minor(amount: str, currency: str, where: str) -> int:
    """A decimal string in major units ("33.30") to integer minor units, exactly."""
    try:
        value = Decimal(amount.strip())
    except InvalidOperation:
        raise RecordError(f"{where} amount {amount[:20]!r} is not a decimal") from None
    if not value.is_finite() or value < 0:
        raise RecordError(f"{where} amount {amount[:20]!r} is not a non-negative number")
    minor = value.scaleb(CURRENCY_EXPONENTS.get(currency, 2))
    if minor != minor.to_integral_value():
        raise RecordError(f"{where} amount {amount[:20]!r} has more decimals than {currency}")
    if minor > MAX_AMOUNT_MINOR:
        raise RecordError(f"{where} amount {amount[:20]!r} is out of range")
    return int(minor)


def from_unix(value: object, where: str) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"{where} is {type_name(value)}, expected a unix timestamp")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise RecordError(f"{where} {value} is out of range") from None


def from_iso(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise RecordError(f"{where} is {type_name(value)}, expected an ISO-8601 timestamp")
    text = value.strip()
    # Python 3.11 parses "Z" and 1-6 fractional digits; Checkout sends up to 7.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise RecordError(f"{where} {value[:40]!r} is not an ISO-8601 timestamp") from None
    if parsed.tzinfo is None:
        raise RecordError(f"{where} {value[:40]!r} has no time zone")
    return parsed.astimezone(UTC)


# --- Card fields ----------------------------------------------------------------------------


def normalize_brand(value: str | None) -> str | None:
    if value is None:
        return None
    lowered = " ".join(value.strip().lower().replace("-", " ").split())
    if lowered in UNKNOWN_BRANDS:
        return None
    return BRANDS.get(lowered, lowered.replace(" ", "_"))


def normalize_funding(value: str | None) -> CardFunding:
    if value is None:
        return CardFunding.UNKNOWN
    lowered = " ".join(value.strip().lower().replace("-", " ").split())
    return FUNDING.get(lowered, FUNDING.get(lowered.replace(" ", "_"), CardFunding.UNKNOWN))


def normalize_country(value: str | None) -> str | None:
    if value is None:
        return None
    code = value.strip().upper()
    if code.lower() in UNKNOWN_COUNTRIES:
        return None
    if len(code) == 3:
        return ALPHA3_TO_ALPHA2.get(code)
    return code if code in ALPHA2_CODES else None


def normalize_region(value: object) -> str | None:
    """A billing region (state, province) as sent, whitespace collapsed; None when it is not
    text or too long to be one."""
    text = card_text(value)
    if text is None:
        return None
    collapsed = " ".join(text.split())
    return collapsed if len(collapsed) <= REGION_MAX else None


def metadata_text(metadata: object, key: str) -> str | None:
    """One metadata value as text; metadata is the merchant's own and never fails a record."""
    if not isinstance(metadata, Mapping):
        return None
    return card_text(metadata.get(key))


def _digits(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    return text if text.isascii() and text.isdigit() else None


def normalize_last4(value: object) -> str | None:
    """Four digits; a full card number in this field is cut to its last four, never kept."""
    digits = _digits(value)
    if digits is None:
        return None
    if len(digits) == 4:
        return digits
    if 12 <= len(digits) <= 19:
        return digits[-4:]
    return None


def normalize_bin(value: object) -> str | None:
    """The 6 or 8 leading digits; anything longer may be a card number and is dropped."""
    digits = _digits(value)
    if digits is None or len(digits) not in (6, 8):
        return None
    return digits


def normalize_month(value: object) -> int | None:
    digits = _digits(value)
    if digits is None:
        return None
    month = int(digits)
    return month if 1 <= month <= 12 else None


def normalize_year(value: object) -> int | None:
    digits = _digits(value)
    if digits is None:
        return None
    year = int(digits)
    if len(digits) == 2:
        year += 2000
    return year if 2000 <= year <= 2100 else None


def card_text(value: object) -> str | None:
    """A free-form card attribute; non-strings are ignored rather than failing the record."""
    if isinstance(value, str) and value.strip() and is_storable_text(value):
        return value.strip()
    return None


def build_card(
    *,
    brand: object,
    funding: object | CardFunding,
    country: object,
    bin_: object,
    last4: object,
    exp_month: object,
    exp_year: object,
    fingerprint: object,
) -> CanonicalCard:
    return CanonicalCard(
        brand=normalize_brand(card_text(brand)),
        funding=funding
        if isinstance(funding, CardFunding)
        else normalize_funding(card_text(funding)),
        country=normalize_country(card_text(country)),
        bin=normalize_bin(bin_),
        last4=normalize_last4(last4),
        exp_month=normalize_month(exp_month),
        exp_year=normalize_year(exp_year),
        fingerprint=card_text(fingerprint),
    )


# --- Dead-letter excerpts: short and without card numbers -----------------------------------


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def redact_card_numbers(text: str) -> str:
    """Replace any run of 13-19 digits that passes the Luhn check (a plausible PAN)."""

    def replace(match: re.Match[str]) -> str:
        digits = re.sub(r"[ -]", "", match.group(0))
        if 13 <= len(digits) <= 19 and digits.isdigit() and _luhn_ok(digits):
            return "[redacted]"
        return match.group(0)

    return _DIGIT_RUN.sub(replace, text)


def is_id_key(key: str) -> bool:
    """Ids and references are opaque: a numeric one that happens to pass Luhn stays intact."""
    return _ID_KEY.search(key) is not None


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact_card_numbers(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        text = str(value)
        if 13 <= len(text) <= 19 and _luhn_ok(text):
            return "[redacted]"
    return value


def _scrub(value: object, depth: int = 0, key: str = "") -> object:
    if depth > SCRUB_DEPTH:
        return "..."
    if isinstance(value, Mapping):
        return {
            str(k): _scrub(v, depth + 1, str(k))
            for k, v in value.items()
            if str(k).lower().replace("-", "_") not in PAN_KEYS
        }
    if isinstance(value, list):
        return [_scrub(v, depth + 1, key) for v in value]
    return value if is_id_key(key) else _redact_value(value)


_DIGIT_RUN_BYTES = re.compile(rb"\d[\d -]{11,22}\d")
_PAN_KEY_BYTES = re.compile(
    rb"[\"<](?:card[_-]?number|number|pan|account[_-]number|primary[_-]account[_-]number)[\"> /]",
    re.IGNORECASE,
)


# Digits, spaces and dashes (what a card-number run is made of) as "0", everything else as "x":
# a run long enough to be a card number becomes thirteen zeros, found by a substring search.
_RUN_CHARS = bytes(ord("0") if chr(b) in "0123456789 -" else ord("x") for b in range(256))
_RUN_FLOOR = b"0" * 13


def may_hold_card_number(body: bytes) -> bool:
    """Cheap pre-check on a raw body: False means scrubbing it would change nothing (no PAN
    key and no run of digits long enough to be a card number), so the walk can be skipped.

    Each regular expression runs only where a plain substring search says it could match: a
    digit run needs thirteen digits, spaces or dashes in a row, and every PAN key spells
    "number" or "pan" (bytes patterns fold ASCII case only, as `bytes.lower` does)."""
    if _RUN_FLOOR in body.translate(_RUN_CHARS) and _DIGIT_RUN_BYTES.search(body):
        return True
    lowered = body.lower()
    return (b"number" in lowered or b"pan" in lowered) and bool(_PAN_KEY_BYTES.search(body))


def scrub_raw(value: object) -> object:
    """The payload less anything that may be a full card number: PAN fields and PAN-like text.

    Normalizers read the scrubbed payload, so no record, raw copy or log can hold a PAN.
    """
    return _scrub(value)


def excerpt(value: object) -> str:
    """A short, card-safe rendering of a payload fragment for a dead letter."""
    if isinstance(value, str | bytes):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    else:
        text = json.dumps(_scrub(value), default=str, ensure_ascii=False, sort_keys=True)
    text = redact_card_numbers(text).replace("\x00", "\\0")
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) > EXCERPT_LIMIT:
        return text[:EXCERPT_LIMIT] + "..."
    return text


# --- Per-record isolation: one bad record never stops the batch -----------------------------

Result = CanonicalRecord | RejectedRecord


@dataclass(frozen=True, slots=True)
class NormalizedItem:
    """One payment record: its own raw payload and what it normalized to.

    `raw` is self-contained (a Stripe event keeps its envelope, an Adyen item its wrapper, a
    Braintree transaction is `{"xml": "<transaction>…"}`) so `normalize_stored` can replay it; card
    number fields are already dropped from it.
    """

    raw: object
    result: Result


def rejected(reason: str, payload: object) -> RejectedRecord:
    return RejectedRecord(
        reason=redact_card_numbers(reason)[:300], payload_excerpt=excerpt(payload)
    )


def dead_item(reason: str, raw: object) -> NormalizedItem:
    """`raw` is already scrubbed (see `guarded`)."""
    return NormalizedItem(raw=raw, result=rejected(reason, raw))


def guarded(build: Callable[[], CanonicalRecord], raw: object) -> NormalizedItem:
    """Run one record's normalization; its failure becomes a dead letter, not an exception.

    `raw` is already scrubbed: the JSON normalizers are handed scrubbed documents (see
    `dispatch`), and Braintree scrubs each transaction's XML before it gets here. Scrubbing
    once per document rather than once per record keeps the walk off the ingestion path."""
    kept = raw
    try:
        return NormalizedItem(raw=kept, result=build())
    except RecordError as exc:
        return NormalizedItem(raw=kept, result=rejected(str(exc), kept))
    except Exception as exc:
        # A bug, not bad data: keep the batch going, log where without echoing payload values.
        trace = "".join(traceback.format_tb(exc.__traceback__))[-2000:]
        logger.error("normalizer bug %s\n%s", type(exc).__name__, trace)
        return NormalizedItem(
            raw=kept, result=rejected(f"internal error: {type(exc).__name__}", kept)
        )
