"""The events merchants receive: each type's payload, its version and its JSON Schema.

One definition serves everything that shows an event: the outbox rows are written from these
models (`app/services/retry/outbox.py`), webhooks post them, the event feed and the live
subscription serve them, and `webhookEventTypes` publishes their schemas
(`model_json_schema`). A payload change that a receiver could not read with the old schema
(a field removed, renamed or narrowed) is a new version of its type; adding an optional field
is not.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from app.enums import EndAction, EndActionStatus, PaymentState, Processor

DateTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class PaymentEventData(BaseModel):
    """A change of one payment in recovery."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="The event type, as in `Portal-Event`.")
    payment_id: str = Field(description="The payment's id in the portal (a UUID).")
    processor: Processor = Field(description="The processor the payment failed at.")
    processor_payment_id: str = Field(description="The processor's id of the failed payment.")
    invoice_ref: str | None = Field(description="The invoice it was to pay, when known.")
    subscription_ref: str | None = Field(description="Its subscription, when known.")
    state: PaymentState = Field(description="The payment's state after the change.")
    previous_state: PaymentState = Field(description="Its state before the change.")
    next_retry_at: DateTime | None = Field(
        description="When the portal will retry it (ISO 8601 with offset); null when none."
    )
    amount_minor: int = Field(ge=0, description="The amount due, in minor units of `currency`.")
    currency: str = Field(pattern="^[A-Z]{3}$", description="ISO 4217 currency code.")
    reason: str = Field(description="Why the change happened, in words.")


class EndActionEventData(PaymentEventData):
    """A payment's end-of-window action, carried out at the processor or given up."""

    end_action: EndAction = Field(description="What the merchant chose to happen.")
    end_action_status: EndActionStatus = Field(description="Where carrying it out stands.")
    detail: str | None = Field(description="What the processor answered, or the last error.")


@dataclass(frozen=True)
class EventType:
    """One type of event: its name, payload version, meaning and payload model."""

    name: str
    version: int
    description: str
    model: type[PaymentEventData]

    def schema(self) -> dict[str, Any]:
        """The JSON Schema (draft 2020-12) its payloads validate against."""
        schema = self.model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = f"{self.name} v{self.version}"
        schema["description"] = self.description
        return schema

    def payload(self, **fields: Any) -> dict[str, Any]:
        """A payload of this type, checked against its model, as stored and sent (JSON)."""
        return self.model(type=self.name, **fields).model_dump(mode="json")


def _event(
    name: str, description: str, base: type[PaymentEventData] = PaymentEventData
) -> EventType:
    const: Any = Literal[name]  # this type's `type`: one value (`const` in the schema)
    model: type[PaymentEventData] = create_model(
        "".join(part.title() for part in name.replace(".", "_").split("_")) + "Data",
        __base__=base,
        __doc__=description,
        type=(const, Field(description="The event type, as in `Portal-Event`.")),
    )
    return EventType(name=name, version=1, description=description, model=model)


def state_event(state: PaymentState) -> str:
    """The event a payment's move into `state` emits."""
    return f"payment.{state.lower()}"


_STATE_MEANINGS = {
    PaymentState.PENDING: "The payment waits for a retry decision (a new failure, or reopened "
    "by a new card).",
    PaymentState.SCHEDULED: "A retry time was chosen (`next_retry_at`).",
    PaymentState.RETRYING: "The portal is charging the payment now.",
    PaymentState.RECOVERED: "The payment was paid: by a portal retry or elsewhere.",
    PaymentState.EXHAUSTED: "The retry window or the attempts ran out unpaid.",
    PaymentState.NOT_RETRYABLE: "The decline or a rule forbids any retry.",
    PaymentState.CANCELED: "Recovery stopped: canceled, voided, customer deleted or stopped "
    "by a person.",
}

EVENT_TYPES: tuple[EventType, ...] = (
    *(_event(state_event(state), meaning) for state, meaning in _STATE_MEANINGS.items()),
    _event("payment.rescheduled", "A scheduled payment's retry time changed."),
    _event(
        "payment.duplicate_charge",
        "A charge succeeded on a payment already paid or canceled: refund one of them.",
    ),
    _event(
        "payment.end_action",
        "The merchant's end-of-window action was carried out (or cannot be at this "
        "processor, `detail` says why).",
        EndActionEventData,
    ),
    _event(
        "payment.end_action_failed",
        "Every try of the end-of-window action failed; `detail` holds the last error.",
        EndActionEventData,
    ),
)
BY_NAME: dict[str, EventType] = {t.name: t for t in EVENT_TYPES}
# Every type a merchant's webhook endpoints may receive, in the order they are listed.
NAMES: tuple[str, ...] = tuple(t.name for t in EVENT_TYPES)


def event_type(name: str) -> EventType:
    """The definition of an event type; KeyError for a name the portal never emits."""
    return BY_NAME[name]


def version_of(name: str) -> int:
    return BY_NAME[name].version


def isoformat(at: datetime | None) -> str | None:
    """Times in payloads: ISO 8601 with the offset, as Python writes them."""
    return None if at is None else at.isoformat()


__all__ = [
    "BY_NAME",
    "EVENT_TYPES",
    "NAMES",
    "EndActionEventData",
    "EventType",
    "PaymentEventData",
    "event_type",
    "isoformat",
    "state_event",
    "version_of",
]
