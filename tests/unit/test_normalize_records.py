"""Shared normalizer helpers: card spellings, timestamps, record invariants, excerpts."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.declines import Decline
from app.enums import Advice, CardFunding, DeclineCategory, Processor
from app.processors.normalize.records import (
    NORMALIZER_VERSION,
    CanonicalRecord,
    RecordError,
    excerpt,
    from_iso,
    from_unix,
    get_str,
    major_to_minor,
    minor_amount,
    normalize_bin,
    normalize_brand,
    normalize_country,
    normalize_funding,
    normalize_last4,
    normalize_year,
    redact_card_numbers,
    scrub_raw,
)


@pytest.mark.parametrize(
    ("raw", "brand"),
    [
        ("Visa", "visa"),
        ("VISA", "visa"),
        ("MasterCard", "mastercard"),
        ("mastercard", "mastercard"),
        ("American Express", "amex"),
        ("amex", "amex"),
        ("Discover", "discover"),
        ("Diners Club", "diners"),
        ("JCB", "jcb"),
        ("UnionPay", "unionpay"),
        ("China UnionPay", "unionpay"),
        ("Unknown", None),
        ("", None),
        (None, None),
        ("Some New Scheme", "some_new_scheme"),
    ],
)
def test_brand_spellings(raw: str | None, brand: str | None) -> None:
    assert normalize_brand(raw) == brand


@pytest.mark.parametrize(
    ("raw", "funding"),
    [
        ("credit", CardFunding.CREDIT),
        ("CREDIT", CardFunding.CREDIT),
        ("Debit", CardFunding.DEBIT),
        ("prepaid", CardFunding.PREPAID),
        ("Deferred Debit", CardFunding.CREDIT),
        ("charge", CardFunding.CREDIT),
        ("unknown", CardFunding.UNKNOWN),
        ("weird", CardFunding.UNKNOWN),
        (None, CardFunding.UNKNOWN),
    ],
)
def test_funding_spellings(raw: str | None, funding: CardFunding) -> None:
    assert normalize_funding(raw) is funding


@pytest.mark.parametrize(
    ("raw", "country"),
    [
        ("US", "US"),
        ("us", "US"),
        ("USA", "US"),
        ("GBR", "GB"),
        ("DEU", "DE"),
        ("JPN", "JP"),
        ("Unknown", None),
        ("ZZ", None),
        ("QQ", None),
        ("XYZ", None),
        ("United States", None),
        (None, None),
    ],
)
def test_country_spellings(raw: str | None, country: str | None) -> None:
    assert normalize_country(raw) == country


def test_card_number_digits_are_never_kept() -> None:
    assert normalize_last4("4242") == "4242"
    assert normalize_last4("4242424242424242") == "4242"
    assert normalize_last4("42") is None
    assert normalize_bin("424242") == "424242"
    assert normalize_bin("42424242") == "42424242"
    assert normalize_bin("4242424242424242") is None
    assert normalize_year("30") == 2030
    assert normalize_year(2027) == 2027
    assert normalize_year("1899") is None


def test_timestamps_become_aware_utc() -> None:
    assert from_iso("2024-01-01T01:00:00+01:00", "t") == datetime(2024, 1, 1, tzinfo=UTC)
    assert from_iso("2024-01-01T00:00:00.1234567Z", "t").microsecond == 123456
    assert from_unix(0, "t") == datetime(1970, 1, 1, tzinfo=UTC)
    with pytest.raises(RecordError, match="time zone"):
        from_iso("2024-01-01T00:00:00", "t")
    with pytest.raises(RecordError, match="unix timestamp"):
        from_unix(True, "t")
    with pytest.raises(RecordError, match="out of range"):
        from_unix(10**20, "t")


def _record(**changes: object) -> CanonicalRecord:
    fields: dict[str, object] = {
        "processor": Processor.STRIPE,
        "processor_payment_id": "ch_1",
        "status": "succeeded",
        "amount_minor": 100,
        "currency": "USD",
        "customer_id": None,
        "card": None,
        "decline": None,
        "attempted_at": datetime(2024, 1, 1, tzinfo=UTC),
        "invoice_ref": None,
        "subscription_ref": None,
        "raw_kind": "charge",
    }
    fields.update(changes)
    return CanonicalRecord(**fields)  # type: ignore[arg-type]


def test_record_invariants() -> None:
    assert _record().status == "succeeded"
    decline = Decline(DeclineCategory.OTHER, False, Advice.NEVER, None, None, None, None)
    with pytest.raises(ValueError, match="decline"):
        _record(status="failed")
    with pytest.raises(ValueError, match="decline"):
        _record(decline=decline)
    with pytest.raises(ValueError, match="UTC"):
        _record(attempted_at=datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=2))))
    with pytest.raises(ValueError, match="negative"):
        _record(amount_minor=-1)


def test_normalizer_version_is_an_int() -> None:
    assert isinstance(NORMALIZER_VERSION, int)
    assert NORMALIZER_VERSION >= 1


def test_redaction_only_touches_plausible_card_numbers() -> None:
    assert redact_card_numbers("pan 4111111111111111 end") == "pan [redacted] end"
    assert redact_card_numbers("4111-1111-1111-1111") == "[redacted]"
    # A 16-digit reference that fails the Luhn check stays readable.
    assert redact_card_numbers("8313842560770002") == "8313842560770002"


def test_excerpt_drops_card_number_keys_and_is_short() -> None:
    text = excerpt({"card": {"number": "5555555555554444", "last4": "4444"}, "pad": "x" * 5000})
    assert "5555555555554444" not in text
    assert "4444" in text
    assert len(text) <= 603


def test_text_that_postgres_cannot_store_is_refused() -> None:
    assert get_str({"id": " cus_1 "}, "id", "x") == "cus_1"
    with pytest.raises(RecordError, match="NUL"):
        get_str({"id": "cus\x001"}, "id", "x")
    with pytest.raises(RecordError, match="surrogate"):
        get_str({"id": "cus\ud8001"}, "id", "x")
    text = excerpt({"id": "a\x00b\ud800"})
    assert "\x00" not in text
    text.encode("utf-8")


def test_amounts_beyond_bigint_are_refused() -> None:
    assert minor_amount({"amount": 2**63 - 1}, "amount", "x") == 2**63 - 1
    with pytest.raises(RecordError, match="out of range"):
        minor_amount({"amount": 2**63}, "amount", "x")
    with pytest.raises(RecordError, match="out of range"):
        major_to_minor("1" + "0" * 30, "USD", "x")


def test_scrub_raw_drops_and_redacts_card_numbers_but_keeps_ids() -> None:
    scrubbed = scrub_raw(
        {
            "id": "4111111111111111",
            "pspReference": "4111111111111111",
            "card": {"number": "4111111111111111", "last4": "1111"},
            "note": "card 4111 1111 1111 1111",
            "amount": 4111111111111111,
            "created": 1700000000,
        }
    )
    assert scrubbed == {
        "id": "4111111111111111",
        "pspReference": "4111111111111111",
        "card": {"last4": "1111"},
        "note": "card [redacted]",
        "amount": "[redacted]",
        "created": 1700000000,
    }
