"""Observable inputs of the model: what a real system stores about a failed payment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from ml import taxonomy

PAST_SUCCESS_SLOTS = 6

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I16 = npt.NDArray[np.int16]


@dataclass(frozen=True)
class FailureRow:
    """One failed payment as the portal stores it (times timezone-aware)."""

    failure_id: int
    customer_id: int
    failed_at: datetime
    amount_minor: int
    currency: str
    category: str
    network_code: str
    advice_code: str
    funding: str
    brand: str
    country: str | None
    tz_offset_minutes: int
    past_success_at: tuple[datetime, ...] = ()


@dataclass(frozen=True)
class FailureRecords:
    """Column arrays of failed payments; times are UTC epoch seconds, codes vocabulary indices."""

    failure_id: I64
    customer_id: I64
    failed_at: F64
    amount_minor: I64
    currency: I16
    category: I16
    network_code: I16
    advice_code: I16
    funding: I16
    brand: I16
    country: I16
    tz_offset_minutes: I16
    # (n, PAST_SUCCESS_SLOTS) past successful charge times of the customer, NaN-padded.
    past_success: F64

    def __len__(self) -> int:
        return int(self.failed_at.shape[0])

    def take(self, index: npt.NDArray[np.intp] | I64) -> FailureRecords:
        """Rows at the given positions."""
        return FailureRecords(
            failure_id=self.failure_id[index],
            customer_id=self.customer_id[index],
            failed_at=self.failed_at[index],
            amount_minor=self.amount_minor[index],
            currency=self.currency[index],
            category=self.category[index],
            network_code=self.network_code[index],
            advice_code=self.advice_code[index],
            funding=self.funding[index],
            brand=self.brand[index],
            country=self.country[index],
            tz_offset_minutes=self.tz_offset_minutes[index],
            past_success=self.past_success[index],
        )

    def row(self, i: int) -> FailureRow:
        """One record with strings and datetimes, as the portal would hold it."""
        past = tuple(
            datetime.fromtimestamp(float(t), tz=UTC)
            for t in self.past_success[i]
            if not np.isnan(t)
        )
        country = taxonomy.COUNTRIES[int(self.country[i])]
        return FailureRow(
            failure_id=int(self.failure_id[i]),
            customer_id=int(self.customer_id[i]),
            failed_at=datetime.fromtimestamp(float(self.failed_at[i]), tz=UTC),
            amount_minor=int(self.amount_minor[i]),
            currency=taxonomy.CURRENCIES[int(self.currency[i])],
            category=taxonomy.CATEGORIES[int(self.category[i])],
            network_code=taxonomy.NETWORK_CODES[int(self.network_code[i])],
            advice_code=taxonomy.ADVICE_CODES[int(self.advice_code[i])],
            funding=taxonomy.FUNDINGS[int(self.funding[i])],
            brand=taxonomy.BRANDS[int(self.brand[i])],
            country=None if country == "other" else country,
            tz_offset_minutes=int(self.tz_offset_minutes[i]),
            past_success_at=past,
        )

    @staticmethod
    def from_rows(rows: Sequence[FailureRow]) -> FailureRecords:
        """Encode portal rows into column arrays (unknown strings map to "other")."""
        past = np.full((len(rows), PAST_SUCCESS_SLOTS), np.nan)
        for i, r in enumerate(rows):
            # The most recent successes carry the freshest pay-cycle evidence.
            recent = sorted(r.past_success_at)[-PAST_SUCCESS_SLOTS:]
            for j, t in enumerate(recent):
                past[i, j] = t.timestamp()
        return FailureRecords(
            failure_id=np.array([r.failure_id for r in rows], dtype=np.int64),
            customer_id=np.array([r.customer_id for r in rows], dtype=np.int64),
            failed_at=np.array([r.failed_at.timestamp() for r in rows], dtype=np.float64),
            amount_minor=np.array([r.amount_minor for r in rows], dtype=np.int64),
            currency=taxonomy.encode([r.currency for r in rows], taxonomy.CURRENCIES),
            category=taxonomy.encode([r.category for r in rows], taxonomy.CATEGORIES),
            network_code=_encode_code([r.network_code for r in rows], taxonomy.NETWORK_CODES),
            advice_code=_encode_code([r.advice_code for r in rows], taxonomy.ADVICE_CODES),
            funding=taxonomy.encode([r.funding for r in rows], taxonomy.FUNDINGS),
            brand=_encode_brand([r.brand for r in rows]),
            country=taxonomy.encode([r.country for r in rows], taxonomy.COUNTRIES),
            tz_offset_minutes=np.array([r.tz_offset_minutes for r in rows], dtype=np.int16),
            past_success=past,
        )


def _encode_code(values: Sequence[str], vocabulary: Sequence[str]) -> I16:
    # Unknown codes map to "" (no code) rather than to a real code at the end of the list.
    index = {v: i for i, v in enumerate(vocabulary)}
    return np.fromiter((index.get(v, 0) for v in values), dtype=np.int16, count=len(values))


def _encode_brand(values: Sequence[str]) -> I16:
    index = {v: i for i, v in enumerate(taxonomy.BRANDS)}
    # Brands outside the four networks are treated like Discover: 20/30-day caps, no advice codes.
    return np.fromiter((index.get(v, 3) for v in values), dtype=np.int16, count=len(values))
