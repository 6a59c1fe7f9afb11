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
