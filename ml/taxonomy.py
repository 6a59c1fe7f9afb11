"""Vocabularies shared by the simulator, the features and the rules: categories, codes, brands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

CATEGORIES: tuple[str, ...] = (
    "insufficient_funds",
    "do_not_honor",
    "card_expired",
    "lost_stolen",
    "fraud_suspected",
    "invalid_account",
    "processing_error",
    "velocity_exceeded",
    "authentication_required",
    "card_data_incorrect",
    "not_permitted",
    "payment_revoked",
    "processor_blocked",
    "other",
)
SOFT_CATEGORIES: frozenset[str] = frozenset(
    {"insufficient_funds", "do_not_honor", "processing_error", "velocity_exceeded"}
)

# ISO-8583-like network response codes the simulator emits for each category.
NETWORK_CODES_BY_CATEGORY: dict[str, tuple[tuple[str, float], ...]] = {
    "insufficient_funds": (("51", 1.0),),
    "do_not_honor": (("05", 0.85), ("01", 0.10), ("12", 0.05)),
    "card_expired": (("54", 0.9), ("33", 0.1)),
    "lost_stolen": (("41", 0.3), ("43", 0.3), ("04", 0.2), ("07", 0.2)),
    "fraud_suspected": (("59", 0.7), ("63", 0.3)),
    "invalid_account": (("14", 0.8), ("15", 0.2)),
    "processing_error": (("91", 0.6), ("96", 0.3), ("19", 0.1)),
    "velocity_exceeded": (("61", 0.6), ("65", 0.4)),
    "authentication_required": (("1A", 1.0),),
    "card_data_incorrect": (("N7", 0.7), ("82", 0.3)),
    "not_permitted": (("57", 0.6), ("58", 0.2), ("62", 0.2)),
    "payment_revoked": (("R1", 0.7), ("R0", 0.2), ("R3", 0.1)),
    "processor_blocked": (("46", 1.0),),
    "other": (("06", 1.0),),
}
NETWORK_CODES: tuple[str, ...] = (
    "",
    *sorted({code for options in NETWORK_CODES_BY_CATEGORY.values() for code, _ in options}),
)
# Mastercard merchant advice codes; "" means none was sent.
ADVICE_CODES: tuple[str, ...] = (
    "",
    "01",
    "02",
    "03",
    "21",
    "24",
    "25",
    "26",
    "27",
    "28",
    "29",
    "30",
)
ADVICE_DELAY_HOURS: dict[str, float] = {
    "02": 72.0,
    "24": 1.0,
    "25": 24.0,
    "26": 48.0,
    "27": 96.0,
    "28": 144.0,
    "29": 192.0,
    "30": 240.0,
}
VISA_CATEGORY_1_CODES: frozenset[str] = frozenset(
    {"04", "07", "12", "14", "15", "41", "43", "46", "57"}
)
STOP_PAYMENT_CODES: frozenset[str] = frozenset({"R0", "R1", "R3"})

BRANDS: tuple[str, ...] = ("visa", "mastercard", "amex", "discover")
FUNDINGS: tuple[str, ...] = ("credit", "debit", "prepaid", "unknown")
COUNTRIES: tuple[str, ...] = ("US", "GB", "CA", "DE", "FR", "AU", "BR", "other")
CURRENCIES: tuple[str, ...] = ("USD", "GBP", "CAD", "EUR", "AUD", "BRL", "other")

ADVICE_RETRY = "retry"
ADVICE_RETRY_LATER = "retry_later"
ADVICE_UPDATE = "update_credentials"
ADVICE_NEVER = "never"


def encode(values: Sequence[str | None], vocabulary: Sequence[str]) -> npt.NDArray[np.int16]:
    """Map strings to vocabulary indices; unknown values go to the last entry ("other")."""
    index: Mapping[str, int] = {v: i for i, v in enumerate(vocabulary)}
    fallback = len(vocabulary) - 1
    return np.fromiter(
        (index.get(v or "", fallback) for v in values), dtype=np.int16, count=len(values)
    )


def retry_advice(category: str, brand: str, network_code: str, advice_code: str) -> str:
    """The §1 precedence reduced to what the simulator emits: hard advice, then category."""
    if advice_code in {"03", "21"} or network_code in STOP_PAYMENT_CODES:
        return ADVICE_NEVER
    if brand == "visa" and network_code in VISA_CATEGORY_1_CODES:
        return ADVICE_NEVER
    if advice_code == "01":
        return ADVICE_UPDATE
    if advice_code in ADVICE_DELAY_HOURS:
        return ADVICE_RETRY_LATER
    if category in SOFT_CATEGORIES:
        return ADVICE_RETRY
    if category in {"card_expired", "invalid_account", "card_data_incorrect"}:
        return ADVICE_UPDATE
    return ADVICE_NEVER
