"""GraphQL enums: the core's enums, registered with descriptions for the API."""

import strawberry

from app.enums import (
    Actor,
    Advice,
    ApiKeyScope,
    AttemptOutcome,
    BulkActionKind,
    BulkActionStatus,
    CardFunding,
    ConnectionStatus,
    DeclineCategory,
    EndAction,
    EndActionStatus,
    MerchantStatus,
    PaymentState,
    Processor,
    RetryStrategy,
    Role,
    WebhookDeliveryStatus,
)

# strawberry.enum registers the class itself, so the API and the core share one type.
for _cls, _description in (
    (Role, "What an API key may do."),
    (ApiKeyScope, "What an API key may do within its role: READ queries, WRITE mutations."),
    (PaymentState, "Where a payment is in recovery."),
    (DeclineCategory, "Canonical decline category, whatever the processor."),
    (Advice, "What the decline says about retrying."),
    (AttemptOutcome, "Result of an attempt."),
    (Actor, "Who made an attempt or brought about a recovery."),
    (Processor, "A payment processor."),
    (CardFunding, "Card funding type."),
    (RetryStrategy, "How retry times are chosen."),
    (EndAction, "What happens when the retry window ends unrecovered."),
    (EndActionStatus, "Where carrying out an end action at the processor stands."),
    (MerchantStatus, "Whether a merchant's recovery runs."),
    (ConnectionStatus, "Whether a processor connection is polled."),
    (WebhookDeliveryStatus, "Where a webhook delivery stands."),
    (BulkActionKind, "What a support bulk action does."),
    (BulkActionStatus, "Where a bulk action's job stands."),
):
    strawberry.enum(_cls, description=_description)

__all__ = [
    "Actor",
    "Advice",
    "ApiKeyScope",
    "AttemptOutcome",
    "BulkActionKind",
    "BulkActionStatus",
    "CardFunding",
    "ConnectionStatus",
    "DeclineCategory",
    "EndAction",
    "EndActionStatus",
    "MerchantStatus",
    "PaymentState",
    "Processor",
    "RetryStrategy",
    "Role",
    "WebhookDeliveryStatus",
]
