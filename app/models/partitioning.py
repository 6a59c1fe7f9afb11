"""The append-only tables kept in monthly range partitions, and how their partitions are named.

Each table is partitioned by the time its rows happened (a webhook delivery by its event's
time), one partition per calendar month in UTC (`<table>_pYYYYMM`). Rows from before a table
was partitioned stay in the partition it started as (`<table>_p_initial`, from the beginning
of time to the first month boundary after its newest row); a default partition
(`<table>_default`) takes a row whose month has no partition yet, so an insert never fails for
want of one, and the partition cron moves such rows into their month's partition when it
creates it (app/services/partitions.py).
"""

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Partitioned:
    table: str
    # The timestamp column the table is partitioned by (part of its primary key).
    column: str

    @property
    def initial(self) -> str:
        return f"{self.table}_p_initial"

    @property
    def default(self) -> str:
        return f"{self.table}_default"

    def month(self, start: datetime) -> str:
        return f"{self.table}_p{start:%Y%m}"


PAYMENT_TRANSITION = Partitioned("payment_transition", "at")
MODEL_DECISION = Partitioned("model_decision", "decided_at")
RAW_RECORD = Partitioned("raw_record", "received_at")
OUTBOX_EVENT = Partitioned("outbox_event", "created_at")
# By its event's time: a delivery lives in the month of the event it delivers, whenever it is
# sent, so a month of deliveries goes before the month of events it refers to.
WEBHOOK_DELIVERY = Partitioned("webhook_delivery", "event_created_at")
# Deliveries before events: a month of events is dropped only once no delivery refers to it.
PARTITIONED: tuple[Partitioned, ...] = (
    PAYMENT_TRANSITION,
    MODEL_DECISION,
    RAW_RECORD,
    WEBHOOK_DELIVERY,
    OUTBOX_EVENT,
)


def month_start(moment: datetime) -> datetime:
    """The first instant of `moment`'s calendar month, in UTC."""
    at = moment.astimezone(UTC)
    return datetime(at.year, at.month, 1, tzinfo=UTC)


def add_months(start: datetime, months: int) -> datetime:
    """The month start `months` after (or before) the month start `start`."""
    index = start.year * 12 + start.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
