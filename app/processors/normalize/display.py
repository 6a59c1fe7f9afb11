"""Stored processor payloads as support may read them: no secrets, no card data beyond the
card's brand, last four digits, BIN and expiry.

Raw records are stored already scrubbed of card numbers (`records.scrub_raw`); this goes
further for display. It runs the same card-number scrub again (a row stored before a scrub
rule existed is covered too), then replaces the value of every field that names a secret
(keys, tokens, signatures, passwords), a card verification value, track data, the
cardholder's name or the card's fingerprint with `[redacted]`, keeping the key so that a
reader sees the field was there. Braintree's XML is parsed and scrubbed element by element;
XML that cannot be parsed is withheld whole.
"""

from collections.abc import Mapping
from typing import Any
from xml.etree.ElementTree import Element, ParseError, tostring

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from app.processors.normalize.braintree import scrub_element
from app.processors.normalize.records import SCRUB_DEPTH, scrub_raw

REDACTED = "[redacted]"
UNREADABLE_XML = "[unreadable XML withheld]"

# Field names compared in lower case without dashes and underscores.
_SECRET_SUFFIXES = (
    "secret",
    "password",
    "passphrase",
    "token",
    "signature",
    "apikey",
    "privatekey",
    "hmackey",
    "hmackeyhex",
)
_SECRET_NAMES = frozenset(
    {
        "authorization",
        "cvc",
        "cvc2",
        "cvv",
        "cvv2",
        "cid",
        "cvn",
        "securitycode",
        "cardsecuritycode",
        "pin",
        "pinblock",
        "track1",
        "track2",
        "trackdata",
        "magstripe",
        "cardholder",
        "cardholdername",
        "holdername",
        "nameoncard",
        "fingerprint",
        "uniquenumberidentifier",
    }
)
# A mapping holding one of these is a card: its `name` is the cardholder's.
_CARD_MARKERS = frozenset(
    {"last4", "expmonth", "expirymonth", "expirationmonth", "expyear", "expiryyear", "bin"}
)


def _plain(key: str) -> str:
    return key.lower().replace("-", "").replace("_", "")


def is_sensitive(key: str, *, in_card: bool = False) -> bool:
    """Whether a field of this name holds what support may not read."""
    plain = _plain(key)
    return (
        plain in _SECRET_NAMES
        or plain.endswith(_SECRET_SUFFIXES)
        or plain.startswith("encrypted")
        or (in_card and plain == "name")
    )


def _redact(value: object, depth: int = 0) -> object:
    if depth > SCRUB_DEPTH:
        return "..."
    if isinstance(value, Mapping):
        card = any(_plain(str(k)) in _CARD_MARKERS for k in value)
        return {
            str(k): REDACTED if is_sensitive(str(k), in_card=card) else _redact(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v, depth + 1) for v in value]
    return value


def _redact_element(element: Element) -> None:
    card = any(_plain(child.tag) in _CARD_MARKERS for child in element)
    for child in element:
        if is_sensitive(child.tag, in_card=card):
            for grandchild in list(child):
                child.remove(grandchild)
            child.attrib.clear()
            child.text = REDACTED
        else:
            _redact_element(child)


def _xml_for_display(text: object) -> str:
    if not isinstance(text, str):
        return UNREADABLE_XML
    try:
        root = fromstring(text)
    except (ParseError, DefusedXmlException, ValueError):
        return UNREADABLE_XML
    scrub_element(root)
    _redact_element(root)
    return str(tostring(root, encoding="unicode"))


def payload_for_display(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A stored raw payload as support may read it (see the module's docstring)."""
    cleaned = _redact(scrub_raw(payload))
    if not isinstance(cleaned, dict):
        return {}
    if set(cleaned) == {"xml"}:
        cleaned["xml"] = _xml_for_display(cleaned["xml"])
    return cleaned
