"""Pins the decline taxonomy of docs/domain.md §1: table rows, precedence rules, conflicts."""

import logging
from datetime import UTC, datetime, timedelta

import pytest

from app.declines import (
    Decline,
    DeclineSignals,
    adyen_code_for_reason,
    classify,
    leading_code,
    normalize_network_code,
    pick_stripe_code,
)
from app.enums import Advice, DeclineCategory, Processor

C = DeclineCategory
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)

# (processor, raw code, category): the "typical raw codes" columns of the section 1 table.
PROCESSOR_ROWS: list[tuple[Processor, str, DeclineCategory]] = [
    # Stripe
    (Processor.STRIPE, "insufficient_funds", C.INSUFFICIENT_FUNDS),
    (Processor.STRIPE, "generic_decline", C.DO_NOT_HONOR),
    (Processor.STRIPE, "do_not_honor", C.DO_NOT_HONOR),
    (Processor.STRIPE, "call_issuer", C.DO_NOT_HONOR),
    (Processor.STRIPE, "no_action_taken", C.DO_NOT_HONOR),
    (Processor.STRIPE, "try_again_later", C.DO_NOT_HONOR),
    (Processor.STRIPE, "card_declined", C.DO_NOT_HONOR),
    (Processor.STRIPE, "expired_card", C.CARD_EXPIRED),
    (Processor.STRIPE, "invalid_expiry_month", C.CARD_EXPIRED),
    (Processor.STRIPE, "invalid_expiry_year", C.CARD_EXPIRED),
    (Processor.STRIPE, "lost_card", C.LOST_STOLEN),
    (Processor.STRIPE, "stolen_card", C.LOST_STOLEN),
    (Processor.STRIPE, "pickup_card", C.LOST_STOLEN),
    (Processor.STRIPE, "restricted_card", C.LOST_STOLEN),
    (Processor.STRIPE, "fraudulent", C.FRAUD_SUSPECTED),
    (Processor.STRIPE, "merchant_blacklist", C.FRAUD_SUSPECTED),
    (Processor.STRIPE, "security_violation", C.FRAUD_SUSPECTED),
    (Processor.STRIPE, "invalid_account", C.INVALID_ACCOUNT),
    (Processor.STRIPE, "incorrect_number", C.INVALID_ACCOUNT),
    (Processor.STRIPE, "invalid_number", C.INVALID_ACCOUNT),
    (Processor.STRIPE, "processing_error", C.PROCESSING_ERROR),
    (Processor.STRIPE, "issuer_not_available", C.PROCESSING_ERROR),
    (Processor.STRIPE, "reenter_transaction", C.PROCESSING_ERROR),
    (Processor.STRIPE, "card_velocity_exceeded", C.VELOCITY_EXCEEDED),
    (Processor.STRIPE, "withdrawal_count_limit_exceeded", C.VELOCITY_EXCEEDED),
    (Processor.STRIPE, "authentication_required", C.AUTHENTICATION_REQUIRED),
    (Processor.STRIPE, "incorrect_cvc", C.CARD_DATA_INCORRECT),
    (Processor.STRIPE, "invalid_cvc", C.CARD_DATA_INCORRECT),
    (Processor.STRIPE, "incorrect_zip", C.CARD_DATA_INCORRECT),
    (Processor.STRIPE, "card_not_supported", C.NOT_PERMITTED),
    (Processor.STRIPE, "transaction_not_allowed", C.NOT_PERMITTED),
    (Processor.STRIPE, "not_permitted", C.NOT_PERMITTED),
    (Processor.STRIPE, "currency_not_supported", C.NOT_PERMITTED),
    (Processor.STRIPE, "revocation_of_authorization", C.PAYMENT_REVOKED),
    (Processor.STRIPE, "revocation_of_all_authorizations", C.PAYMENT_REVOKED),
    (Processor.STRIPE, "stop_payment_order", C.PAYMENT_REVOKED),
    # Braintree processor response codes
    (Processor.BRAINTREE, "2001", C.INSUFFICIENT_FUNDS),
    (Processor.BRAINTREE, "2000", C.DO_NOT_HONOR),
    (Processor.BRAINTREE, "2038", C.DO_NOT_HONOR),
    (Processor.BRAINTREE, "2046", C.DO_NOT_HONOR),
    (Processor.BRAINTREE, "2004", C.CARD_EXPIRED),
    (Processor.BRAINTREE, "2006", C.CARD_EXPIRED),
    (Processor.BRAINTREE, "2012", C.LOST_STOLEN),
    (Processor.BRAINTREE, "2013", C.LOST_STOLEN),
    (Processor.BRAINTREE, "2047", C.LOST_STOLEN),
    (Processor.BRAINTREE, "2014", C.FRAUD_SUSPECTED),
    (Processor.BRAINTREE, "2005", C.INVALID_ACCOUNT),
    (Processor.BRAINTREE, "2007", C.INVALID_ACCOUNT),
    (Processor.BRAINTREE, "2008", C.INVALID_ACCOUNT),
    (Processor.BRAINTREE, "2009", C.INVALID_ACCOUNT),
    (Processor.BRAINTREE, "3000", C.PROCESSING_ERROR),
    (Processor.BRAINTREE, "2002", C.VELOCITY_EXCEEDED),
    (Processor.BRAINTREE, "2003", C.VELOCITY_EXCEEDED),
    (Processor.BRAINTREE, "2099", C.AUTHENTICATION_REQUIRED),
    (Processor.BRAINTREE, "2010", C.CARD_DATA_INCORRECT),
    (Processor.BRAINTREE, "2015", C.NOT_PERMITTED),
    (Processor.BRAINTREE, "2057", C.NOT_PERMITTED),
    (Processor.BRAINTREE, "2017", C.PAYMENT_REVOKED),
    (Processor.BRAINTREE, "2018", C.PAYMENT_REVOKED),
    # Adyen refusalReasonCode
    (Processor.ADYEN, "12", C.INSUFFICIENT_FUNDS),
    (Processor.ADYEN, "2", C.DO_NOT_HONOR),
    (Processor.ADYEN, "27", C.DO_NOT_HONOR),
    (Processor.ADYEN, "6", C.CARD_EXPIRED),
    (Processor.ADYEN, "5", C.LOST_STOLEN),
    (Processor.ADYEN, "14", C.FRAUD_SUSPECTED),
    (Processor.ADYEN, "20", C.FRAUD_SUSPECTED),
    (Processor.ADYEN, "22", C.FRAUD_SUSPECTED),
    (Processor.ADYEN, "31", C.FRAUD_SUSPECTED),
    (Processor.ADYEN, "8", C.INVALID_ACCOUNT),
    (Processor.ADYEN, "4", C.PROCESSING_ERROR),
    (Processor.ADYEN, "9", C.PROCESSING_ERROR),
    (Processor.ADYEN, "28", C.VELOCITY_EXCEEDED),
    (Processor.ADYEN, "29", C.VELOCITY_EXCEEDED),
    (Processor.ADYEN, "11", C.AUTHENTICATION_REQUIRED),
    (Processor.ADYEN, "24", C.CARD_DATA_INCORRECT),
    (Processor.ADYEN, "32", C.CARD_DATA_INCORRECT),
    (Processor.ADYEN, "10", C.NOT_PERMITTED),
    (Processor.ADYEN, "23", C.NOT_PERMITTED),
    (Processor.ADYEN, "25", C.NOT_PERMITTED),
    (Processor.ADYEN, "26", C.PAYMENT_REVOKED),
    (Processor.ADYEN, "46", C.PROCESSOR_BLOCKED),
    # Checkout.com response codes
    (Processor.CHECKOUT, "20051", C.INSUFFICIENT_FUNDS),
    (Processor.CHECKOUT, "20005", C.DO_NOT_HONOR),
    (Processor.CHECKOUT, "20001", C.DO_NOT_HONOR),
    (Processor.CHECKOUT, "20054", C.CARD_EXPIRED),
    (Processor.CHECKOUT, "30033", C.CARD_EXPIRED),
    (Processor.CHECKOUT, "30004", C.LOST_STOLEN),
    (Processor.CHECKOUT, "30007", C.LOST_STOLEN),
    (Processor.CHECKOUT, "30041", C.LOST_STOLEN),
    (Processor.CHECKOUT, "30043", C.LOST_STOLEN),
    (Processor.CHECKOUT, "20059", C.FRAUD_SUSPECTED),
    (Processor.CHECKOUT, "40101", C.FRAUD_SUSPECTED),
    (Processor.CHECKOUT, "41206", C.FRAUD_SUSPECTED),
    (Processor.CHECKOUT, "20014", C.INVALID_ACCOUNT),
    (Processor.CHECKOUT, "30015", C.INVALID_ACCOUNT),
    (Processor.CHECKOUT, "20068", C.PROCESSING_ERROR),
    (Processor.CHECKOUT, "20091", C.PROCESSING_ERROR),
    (Processor.CHECKOUT, "20096", C.PROCESSING_ERROR),
    (Processor.CHECKOUT, "20061", C.VELOCITY_EXCEEDED),
    (Processor.CHECKOUT, "20065", C.VELOCITY_EXCEEDED),
    (Processor.CHECKOUT, "20150", C.AUTHENTICATION_REQUIRED),
    (Processor.CHECKOUT, "20087", C.CARD_DATA_INCORRECT),
    (Processor.CHECKOUT, "20057", C.NOT_PERMITTED),
    (Processor.CHECKOUT, "20062", C.NOT_PERMITTED),
    (Processor.CHECKOUT, "200R1", C.PAYMENT_REVOKED),
    (Processor.CHECKOUT, "200R3", C.PAYMENT_REVOKED),
]

# The ISO-8583 column: network codes alone, with no processor code to go by.
NETWORK_ROWS: list[tuple[str, DeclineCategory]] = [
    ("51", C.INSUFFICIENT_FUNDS),
    ("05", C.DO_NOT_HONOR),
    ("01", C.DO_NOT_HONOR),
    ("54", C.CARD_EXPIRED),
    ("33", C.CARD_EXPIRED),
    ("04", C.LOST_STOLEN),
    ("07", C.LOST_STOLEN),
    ("41", C.LOST_STOLEN),
    ("43", C.LOST_STOLEN),
    ("59", C.FRAUD_SUSPECTED),
    ("63", C.FRAUD_SUSPECTED),
    ("14", C.INVALID_ACCOUNT),
    ("15", C.INVALID_ACCOUNT),
    ("91", C.PROCESSING_ERROR),
    ("96", C.PROCESSING_ERROR),
    ("19", C.PROCESSING_ERROR),
    ("61", C.VELOCITY_EXCEEDED),
    ("65", C.VELOCITY_EXCEEDED),
    ("1A", C.AUTHENTICATION_REQUIRED),
    ("N7", C.CARD_DATA_INCORRECT),
    ("82", C.CARD_DATA_INCORRECT),
    ("57", C.NOT_PERMITTED),
    ("58", C.NOT_PERMITTED),
    ("62", C.NOT_PERMITTED),
    ("R0", C.PAYMENT_REVOKED),
    ("R1", C.PAYMENT_REVOKED),
    ("R3", C.PAYMENT_REVOKED),
]

# The "default" column: (retryable, advice, minimum wait, maximum wait or None).
DEFAULTS: dict[DeclineCategory, tuple[bool, Advice, timedelta | None, timedelta | None]] = {
    C.INSUFFICIENT_FUNDS: (True, Advice.RETRY, None, None),
    C.DO_NOT_HONOR: (True, Advice.RETRY, None, None),
    C.PROCESSING_ERROR: (True, Advice.RETRY_LATER, timedelta(hours=1), timedelta(hours=23)),
    C.VELOCITY_EXCEEDED: (True, Advice.RETRY_LATER, timedelta(hours=24), None),
    C.CARD_EXPIRED: (False, Advice.UPDATE_CREDENTIALS, None, None),
    C.INVALID_ACCOUNT: (False, Advice.UPDATE_CREDENTIALS, None, None),
    C.CARD_DATA_INCORRECT: (False, Advice.UPDATE_CREDENTIALS, None, None),
    C.AUTHENTICATION_REQUIRED: (False, Advice.UPDATE_CREDENTIALS, None, None),
    C.LOST_STOLEN: (False, Advice.NEVER, None, None),
    C.FRAUD_SUSPECTED: (False, Advice.NEVER, None, None),
    C.NOT_PERMITTED: (False, Advice.NEVER, None, None),
    C.PAYMENT_REVOKED: (False, Advice.NEVER, None, None),
    C.PROCESSOR_BLOCKED: (False, Advice.NEVER, None, None),
    C.OTHER: (False, Advice.NEVER, None, None),
}


def decline(processor: Processor, code: str | None = None, **kwargs: str | None) -> Decline:
    return classify(DeclineSignals(processor=processor, declined_at=T0, raw_code=code, **kwargs))


def assert_default(result: Decline, category: DeclineCategory) -> None:
    retryable, advice, min_wait, max_wait = DEFAULTS[category]
    assert result.category is category
    assert result.retryable is retryable
    assert result.advice is advice
    if min_wait is None:
        assert result.not_before is None
    else:
        assert result.not_before is not None
        assert result.not_before - T0 >= min_wait
        if max_wait is not None:
            assert result.not_before - T0 <= max_wait


def test_every_category_has_a_pinned_default() -> None:
    assert set(DEFAULTS) == set(DeclineCategory)


@pytest.mark.parametrize(
    ("processor", "code", "category"),
    PROCESSOR_ROWS,
    ids=[f"{p.value}-{c}" for p, c, _ in PROCESSOR_ROWS],
)
def test_processor_code_maps_to_category_with_its_default(
    processor: Processor, code: str, category: DeclineCategory
) -> None:
    # An Amex card keeps the Visa and Mastercard rules out of the way.
    result = decline(processor, code, card_brand="amex")
    assert_default(result, category)
    assert result.raw_code == code


@pytest.mark.parametrize(("code", "category"), NETWORK_ROWS, ids=[c for c, _ in NETWORK_ROWS])
@pytest.mark.parametrize("processor", list(Processor))
def test_network_code_alone_maps_to_category(
    processor: Processor, code: str, category: DeclineCategory
) -> None:
    result = decline(processor, None, card_brand="discover", network_decline_code=code)
    assert_default(result, category)
    assert result.network_decline_code == code


def test_network_code_is_padded_and_upper_cased() -> None:
    assert normalize_network_code("5") == "05"
    assert normalize_network_code(" n7 ") == "N7"
    assert normalize_network_code("") is None
    result = decline(Processor.STRIPE, None, card_brand="amex", network_decline_code="5")
    assert result.category is C.DO_NOT_HONOR
    assert result.network_decline_code == "05"


def test_processor_code_decides_over_network_code() -> None:
    result = decline(
        Processor.STRIPE, "insufficient_funds", card_brand="amex", network_decline_code="54"
    )
    assert result.category is C.INSUFFICIENT_FUNDS


# --- Unmapped codes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("processor", "code"),
    [
        (Processor.STRIPE, "some_new_code"),
        (Processor.BRAINTREE, "2999"),
        (Processor.ADYEN, "3"),
        (Processor.CHECKOUT, "20999"),
        (Processor.CHECKOUT, "30999"),
        (Processor.STRIPE, None),
    ],
)
def test_unknown_code_is_other_not_retryable_and_logged(
    processor: Processor, code: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.declines"):
        result = decline(processor, code, card_brand="amex")
    assert_default(result, C.OTHER)
    assert result.unmapped
    assert any("unmapped" in r.getMessage() for r in caplog.records)


def test_unmapped_log_never_carries_a_card_number(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="app.declines"):
        decline(Processor.STRIPE, "4111111111111111", card_brand="visa")
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "unmapped" in text
    assert "4111111111111111" not in text


def test_classify_refuses_a_naive_timestamp() -> None:
    with pytest.raises(ValueError, match="aware"):
        classify(
            DeclineSignals(
                processor=Processor.STRIPE,
                declined_at=datetime(2026, 1, 1),  # noqa: DTZ001 -- the point of the test
                raw_code="insufficient_funds",
            )
        )


# --- Rule 1: hard network or processor advice ----------------------------------------------


@pytest.mark.parametrize("advice_code", ["03", "21", "3", "03 : Do not try again"])
def test_mastercard_advice_03_21_is_never_over_a_soft_category(advice_code: str) -> None:
    result = decline(
        Processor.STRIPE,
        "insufficient_funds",
        card_brand="mastercard",
        network_advice_code=advice_code,
    )
    assert result.category is C.INSUFFICIENT_FUNDS
    assert (result.retryable, result.advice) == (False, Advice.NEVER)
    assert result.network_advice_code in {"03", "21"}


def test_mastercard_advice_applies_when_the_brand_is_unknown() -> None:
    result = decline(Processor.BRAINTREE, "2001", network_advice_code="21")
    assert result.advice is Advice.NEVER


@pytest.mark.parametrize("brand", ["mastercard", "MasterCard", "maestro", "mc"])
def test_mastercard_advice_follows_every_mastercard_brand(brand: str) -> None:
    result = decline(Processor.ADYEN, "12", card_brand=brand, network_advice_code="03")
    assert result.advice is Advice.NEVER


@pytest.mark.parametrize("brand", ["visa", "Visa", "visa_electron"])
def test_visa_rules_follow_every_visa_brand(brand: str) -> None:
    result = decline(
        Processor.STRIPE, "generic_decline", card_brand=brand, network_decline_code="04"
    )
    assert result.advice is Advice.NEVER


def test_advice_code_text_is_kept_when_it_has_no_code() -> None:
    result = decline(Processor.STRIPE, "generic_decline", network_advice_code="Retry later")
    assert result.network_advice_code == "Retry later"
    assert_default(result, C.DO_NOT_HONOR)


def test_mastercard_advice_is_ignored_on_another_brand() -> None:
    result = decline(Processor.BRAINTREE, "2001", card_brand="visa", network_advice_code="03")
    assert_default(result, C.INSUFFICIENT_FUNDS)


@pytest.mark.parametrize("network_code", ["04", "07", "12", "14", "15", "41", "43", "46", "57"])
@pytest.mark.parametrize("processor", [Processor.STRIPE, Processor.BRAINTREE])
def test_visa_category_1_network_code_is_never(processor: Processor, network_code: str) -> None:
    soft_code = "generic_decline" if processor is Processor.STRIPE else "2000"
    result = decline(
        processor,
        soft_code,
        card_brand="visa",
        network_decline_code=network_code,
        processor_verdict="soft_declined",
    )
    assert result.category is C.DO_NOT_HONOR
    assert (result.retryable, result.advice) == (False, Advice.NEVER)


@pytest.mark.parametrize("network_code", ["04", "12", "14", "57"])
def test_visa_category_1_codes_do_not_apply_to_other_brands(network_code: str) -> None:
    result = decline(
        Processor.STRIPE,
        "generic_decline",
        card_brand="mastercard",
        network_decline_code=network_code,
    )
    assert_default(result, C.DO_NOT_HONOR)


def test_visa_category_1_reads_network_codes_not_processor_numbering() -> None:
    # Adyen refusalReasonCode 12 is "Not enough balance", not ISO-8583 12.
    result = decline(Processor.ADYEN, "12", card_brand="visa")
    assert_default(result, C.INSUFFICIENT_FUNDS)
    # Braintree 2014 and Checkout.com 20014 are not network code 14 either.
    checkout = decline(Processor.CHECKOUT, "20051", card_brand="visa")
    assert_default(checkout, C.INSUFFICIENT_FUNDS)


def test_visa_category_1_from_adyen_raw_response() -> None:
    result = decline(Processor.ADYEN, "2", card_brand="visa", raw_text="14 : Invalid card number")
    assert result.network_decline_code == "14"
    assert result.category is C.INVALID_ACCOUNT
    assert result.advice is Advice.NEVER


def test_stripe_advice_do_not_try_again_is_never() -> None:
    result = decline(
        Processor.STRIPE,
        "insufficient_funds",
        card_brand="visa",
        stripe_advice_code="do_not_try_again",
    )
    assert result.category is C.INSUFFICIENT_FUNDS
    assert (result.retryable, result.advice) == (False, Advice.NEVER)


def test_stripe_blocked_outcome_is_processor_blocked_never() -> None:
    result = decline(
        Processor.STRIPE,
        "previously_declined_do_not_retry",
        card_brand="visa",
        stripe_outcome_type="blocked",
    )
    assert result.category is C.PROCESSOR_BLOCKED
    assert (result.retryable, result.advice) == (False, Advice.NEVER)
    assert not result.unmapped


def test_stripe_decline_code_do_not_try_again_is_never() -> None:
    result = decline(Processor.STRIPE, "do_not_try_again", card_brand="amex")
    assert result.category is C.DO_NOT_HONOR
    assert (result.retryable, result.advice) == (False, Advice.NEVER)


def test_stripe_previously_declined_reason_is_blocked_without_outcome_type() -> None:
    result = decline(Processor.STRIPE, "previously_declined_do_not_retry", card_brand="amex")
    assert result.category is C.PROCESSOR_BLOCKED
    assert result.advice is Advice.NEVER


def test_stripe_blocked_beats_a_soft_code() -> None:
    result = decline(Processor.STRIPE, "insufficient_funds", stripe_outcome_type="blocked")
    assert result.category is C.PROCESSOR_BLOCKED
    assert result.advice is Advice.NEVER


def test_braintree_excessive_retry_is_never_even_with_a_soft_verdict() -> None:
    result = decline(
        Processor.BRAINTREE,
        "excessive_retry",
        gateway_rejection_reason="excessive_retry",
        processor_verdict="soft_declined",
    )
    assert result.category is C.PROCESSOR_BLOCKED
    assert (result.retryable, result.advice) == (False, Advice.NEVER)


def test_adyen_46_is_never() -> None:
    result = decline(Processor.ADYEN, "46", card_brand="mastercard", network_advice_code="24")
    assert result.category is C.PROCESSOR_BLOCKED
    assert (result.retryable, result.advice) == (False, Advice.NEVER)


# --- Rule 2: new credentials ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("processor", "code", "kwargs"),
    [
        (Processor.STRIPE, "insufficient_funds", {"network_advice_code": "01"}),
        (Processor.ADYEN, "2", {"network_advice_code": "01 : New account information available"}),
        (Processor.STRIPE, "new_account_information_available", {}),
        (Processor.BRAINTREE, "2022", {}),
        (Processor.BRAINTREE, "2022", {"processor_verdict": "soft_declined"}),
        (Processor.CHECKOUT, "20108", {}),
    ],
)
def test_new_credentials_signal_is_update_credentials(
    processor: Processor, code: str, kwargs: dict[str, str]
) -> None:
    result = decline(processor, code, card_brand="mastercard", **kwargs)
    assert (result.retryable, result.advice) == (False, Advice.UPDATE_CREDENTIALS)


def test_new_credentials_keeps_the_category_of_the_code() -> None:
    result = decline(
        Processor.STRIPE, "insufficient_funds", card_brand="mastercard", network_advice_code="01"
    )
    assert result.category is C.INSUFFICIENT_FUNDS
    assert result.network_advice_code == "01"


def test_rule_1_beats_rule_2() -> None:
    result = decline(
        Processor.STRIPE,
        "new_account_information_available",
        card_brand="visa",
        stripe_advice_code="do_not_try_again",
    )
    assert result.advice is Advice.NEVER


# --- Rule 3: Mastercard says when -----------------------------------------------------------

MC_DELAYS = [
    ("24", timedelta(hours=1)),
    ("25", timedelta(hours=24)),
    ("26", timedelta(days=2)),
    ("27", timedelta(days=4)),
    ("28", timedelta(days=6)),
    ("29", timedelta(days=8)),
    ("30", timedelta(days=10)),
]


@pytest.mark.parametrize(("advice_code", "delay"), MC_DELAYS)
def test_mastercard_advice_24_to_30_sets_not_before(advice_code: str, delay: timedelta) -> None:
    result = decline(
        Processor.STRIPE,
        "insufficient_funds",
        card_brand="mastercard",
        network_advice_code=advice_code,
    )
    assert (result.retryable, result.advice) == (True, Advice.RETRY_LATER)
    assert result.not_before == T0 + delay


@pytest.mark.parametrize(("advice_code", "delay"), MC_DELAYS)
def test_mastercard_advice_24_to_30_makes_a_hard_category_soft(
    advice_code: str, delay: timedelta
) -> None:
    result = decline(
        Processor.CHECKOUT, "20057", card_brand="mastercard", network_advice_code=advice_code
    )
    assert result.category is C.NOT_PERMITTED
    assert (result.retryable, result.advice, result.not_before) == (
        True,
        Advice.RETRY_LATER,
        T0 + delay,
    )


def test_mastercard_advice_02_waits_at_least_72_hours() -> None:
    result = decline(Processor.BRAINTREE, "2000", card_brand="mastercard", network_advice_code="02")
    assert (result.retryable, result.advice) == (True, Advice.RETRY_LATER)
    assert result.not_before is not None
    assert result.not_before - T0 >= timedelta(hours=72)


def test_mastercard_delay_never_shortens_the_category_wait() -> None:
    result = decline(
        Processor.STRIPE,
        "card_velocity_exceeded",
        card_brand="mastercard",
        network_advice_code="24",
    )
    assert result.not_before == T0 + timedelta(hours=24)


def test_rule_3_beats_the_processor_verdict() -> None:
    result = decline(
        Processor.BRAINTREE,
        "2001",
        card_brand="mastercard",
        network_advice_code="25",
        processor_verdict="hard_declined",
    )
    assert (result.retryable, result.not_before) == (True, T0 + timedelta(hours=24))


def test_mastercard_delay_is_ignored_on_visa() -> None:
    result = decline(
        Processor.STRIPE, "insufficient_funds", card_brand="visa", network_advice_code="24"
    )
    assert_default(result, C.INSUFFICIENT_FUNDS)


# --- Rule 4: the processor's own verdict ----------------------------------------------------


@pytest.mark.parametrize(
    ("code", "category"), [("2044", C.DO_NOT_HONOR), ("2057", C.NOT_PERMITTED)]
)
def test_braintree_2044_and_2057_follow_braintrees_verdict(
    code: str, category: DeclineCategory
) -> None:
    soft = decline(Processor.BRAINTREE, code, processor_verdict="soft_declined")
    hard = decline(Processor.BRAINTREE, code, processor_verdict="hard_declined")
    assert soft.category is hard.category is category
    assert (soft.retryable, soft.advice) == (True, Advice.RETRY)
    assert hard.retryable is False
    assert hard.advice in {Advice.NEVER, Advice.UPDATE_CREDENTIALS}


def test_braintree_2044_without_verdict_is_soft_and_2057_hard() -> None:
    assert_default(decline(Processor.BRAINTREE, "2044"), C.DO_NOT_HONOR)
    assert_default(decline(Processor.BRAINTREE, "2057"), C.NOT_PERMITTED)


def test_braintree_verdict_decides_retryable_but_not_category() -> None:
    hard_on_soft = decline(Processor.BRAINTREE, "2001", processor_verdict="hard_declined")
    assert hard_on_soft.category is C.INSUFFICIENT_FUNDS
    assert (hard_on_soft.retryable, hard_on_soft.advice) == (False, Advice.NEVER)
    soft_on_hard = decline(Processor.BRAINTREE, "2004", processor_verdict="soft_declined")
    assert soft_on_hard.category is C.CARD_EXPIRED
    assert soft_on_hard.retryable is True
    hard_on_hard = decline(Processor.BRAINTREE, "2004", processor_verdict="hard_declined")
    assert hard_on_hard.advice is Advice.UPDATE_CREDENTIALS


def test_soft_verdict_keeps_the_category_wait() -> None:
    result = decline(Processor.BRAINTREE, "2002", processor_verdict="soft_declined")
    assert result.advice is Advice.RETRY_LATER
    assert result.not_before == T0 + timedelta(hours=24)


def test_stripe_advice_try_again_later_is_a_soft_verdict() -> None:
    result = decline(
        Processor.STRIPE,
        "card_not_supported",
        card_brand="amex",
        stripe_advice_code="try_again_later",
    )
    assert result.category is C.NOT_PERMITTED
    assert result.retryable is True


@pytest.mark.parametrize(
    ("code", "category"), [("20054", C.CARD_EXPIRED), ("20014", C.INVALID_ACCOUNT)]
)
def test_checkout_20054_and_20014_are_hard_despite_the_20xxx_range(
    code: str, category: DeclineCategory
) -> None:
    assert_default(decline(Processor.CHECKOUT, code, card_brand="visa"), category)


def test_a_checkout_code_range_alone_is_not_a_verdict() -> None:
    assert_default(decline(Processor.CHECKOUT, "20099"), C.OTHER)


# --- Known conflicts: Stripe ----------------------------------------------------------------


def test_stripe_call_issuer_is_soft_do_not_honor() -> None:
    assert_default(decline(Processor.STRIPE, "call_issuer", card_brand="visa"), C.DO_NOT_HONOR)


def test_pick_stripe_code_prefers_the_specific_reason() -> None:
    assert pick_stripe_code("insufficient_funds", "card_declined") == "insufficient_funds"
    assert pick_stripe_code(None, "card_declined") == "card_declined"
    assert pick_stripe_code("", "expired_card") == "expired_card"
    assert pick_stripe_code("highest_risk_level", "card_declined") == "highest_risk_level"
    assert pick_stripe_code(None, None) is None


# --- Known conflicts: Adyen refusalReasonRaw ------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "category", "network_code"),
    [
        ("05 : Do not honor", C.DO_NOT_HONOR, "05"),
        ("51 : Insufficient funds", C.INSUFFICIENT_FUNDS, "51"),
        ("DECLINED Expiry Incorrect", C.CARD_EXPIRED, None),
        ("N7 : FRAUD", C.CARD_DATA_INCORRECT, "N7"),
        ("05 : Expired card", C.CARD_EXPIRED, "05"),
        ("Not enough balance", C.INSUFFICIENT_FUNDS, None),
    ],
)
@pytest.mark.parametrize("code", ["2", "Refused", None])
def test_adyen_raw_response_decides_over_the_generic_refusal(
    raw: str, category: DeclineCategory, network_code: str | None, code: str | None
) -> None:
    result = decline(Processor.ADYEN, code, card_brand="amex", raw_text=raw)
    assert result.category is category
    assert result.network_decline_code == network_code


def test_adyen_specific_refusal_code_is_kept_over_raw_text() -> None:
    result = decline(Processor.ADYEN, "12", card_brand="amex", raw_text="05 : Do not honor")
    assert result.category is C.INSUFFICIENT_FUNDS
    assert result.network_decline_code == "05"


def test_adyen_reason_text_maps_to_its_code() -> None:
    assert adyen_code_for_reason("Refused") == "2"
    assert adyen_code_for_reason("not enough balance") == "12"
    assert (
        adyen_code_for_reason("Transaction blocked by Adyen to prevent excessive retry fees")
        == "46"
    )
    assert adyen_code_for_reason("something new") is None
    result = decline(Processor.ADYEN, "Expired Card", card_brand="amex")
    assert (result.raw_code, result.category) == ("6", C.CARD_EXPIRED)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("05 : Do not honor", "05"),
        ("N7 : FRAUD", "N7"),
        ("01 : New account information available", "01"),
        ("1A", "1A"),
        ("DECLINED Expiry Incorrect", None),
        (": nothing", None),
        ("", None),
        (None, None),
    ],
)
def test_leading_code(text: str | None, code: str | None) -> None:
    assert leading_code(text) == code
