"""Running one processor's normalizer over its recorded payloads (tests/fixtures/processors)."""

import json
from dataclasses import dataclass
from pathlib import Path

from app.enums import Processor
from app.processors.normalize.dispatch import normalize_payload
from app.processors.normalize.records import CanonicalRecord, RejectedRecord

PROCESSOR_FIXTURES = Path(__file__).parents[1] / "fixtures" / "processors"


@dataclass(frozen=True)
class Normalizer:
    """One processor's normalizer, fed raw bytes or JSON documents."""

    processor: Processor

    def load(self, name: str) -> bytes:
        """A recorded payload of this processor."""
        return (PROCESSOR_FIXTURES / self.processor.value / name).read_bytes()

    def run(self, body: bytes | object) -> list[CanonicalRecord | RejectedRecord]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return normalize_payload(self.processor, raw)

    def one_record(self, body: bytes | object) -> CanonicalRecord:
        results = self.run(body)
        assert len(results) == 1
        record = results[0]
        assert isinstance(record, CanonicalRecord), record
        return record

    def one_dead_letter(self, body: bytes | object) -> RejectedRecord:
        results = self.run(body)
        assert len(results) == 1
        letter = results[0]
        assert isinstance(letter, RejectedRecord), letter
        return letter


def card_json(
    brand: str, funding: str, country: str, *, last4: str, exp_month: int, exp_year: int
) -> dict[str, object]:
    """A card as `record_to_json` writes it."""
    return {
        "brand": brand,
        "funding": funding,
        "country": country,
        "last4": last4,
        "exp_month": exp_month,
        "exp_year": exp_year,
    }


def decline_json(
    category: str,
    *,
    advice: str,
    raw_code: str,
    retryable: bool,
    not_before: str | None = None,
    network_decline_code: str | None = None,
    network_advice_code: str | None = None,
) -> dict[str, object]:
    """A decline as `record_to_json` writes it; the optional fields are None unless given."""
    return {
        "category": category,
        "retryable": retryable,
        "advice": advice,
        "not_before": not_before,
        "raw_code": raw_code,
        "network_decline_code": network_decline_code,
        "network_advice_code": network_advice_code,
    }


def failed_record_json(
    processor: Processor,
    processor_payment_id: str,
    *,
    amount_minor: int,
    currency: str,
    customer_id: str,
    card: dict[str, object],
    decline: dict[str, object],
    attempted_at: str,
    actor: str,
    billing: dict[str, str | None] | None = None,
) -> dict[str, object]:
    """The whole of `record_to_json` for a failed payment's record."""
    return {
        "processor": processor.value,
        "processor_payment_id": processor_payment_id,
        "status": "failed",
        "amount_minor": amount_minor,
        "currency": currency,
        "customer_id": customer_id,
        "card": card,
        "decline": decline,
        "attempted_at": attempted_at,
        "actor": actor,
        "billing": billing,
    }
