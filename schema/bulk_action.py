"""Support's bulk actions: cancelPaymentRecoveries, pauseMerchantsRecovery and the BulkAction
node that follows their job."""

from datetime import datetime
from typing import Annotated, Self

import strawberry

from app.errors import ErrorCode
from app.models.bulk_action import BulkAction as BulkActionModel
from app.services.bulk_action import Submitted
from resolvers import bulk_action as bulk_resolvers
from resolvers.context import Context
from schema.enums import BulkActionKind, BulkActionStatus
from schema.mutation import Payload, ReasonArg, mutation
from schema.node import Node
from schema.payment import PaymentFilter
from schema.rows import from_row

Info = strawberry.Info[Context, None]

DryRunArg = Annotated[
    bool,
    strawberry.argument(
        description="Only count what the action would change; nothing is changed or queued."
    ),
]
ClientMutationIdArg = Annotated[
    str | None,
    strawberry.argument(
        description=(
            "Makes the submission idempotent: submitted again by the same key with the same "
            "id (1-255 characters), the action already submitted is returned and nothing runs "
            "twice; with a different request, INVALID."
        )
    ),
]


@strawberry.type(
    description=(
        "A bulk change submitted by a support key and carried out by one job: its progress "
        "and outcome. Visible to support keys only (`node(id:)`)."
    )
)
class BulkAction(Node):
    kind: BulkActionKind = strawberry.field(description="What the action does.")
    status: BulkActionStatus = strawberry.field(
        description="QUEUED until its job starts, RUNNING, then SUCCEEDED or FAILED."
    )
    reason: str = strawberry.field(description="Why, as given; kept in the audit log.")
    client_mutation_id: str | None = strawberry.field(
        description="The client mutation id it was submitted with, if any."
    )
    requested_by: str = strawberry.field(
        description="The API key that submitted it (`api_key:<name>`, as in the audit log)."
    )
    expected_count: int = strawberry.field(
        description=(
            "What the dry run counted when it was submitted: payments a cancel would end, or "
            "merchants not paused yet."
        )
    )
    succeeded_count: int = strawberry.field(
        description="Changed so far: payments canceled, or merchants paused."
    )
    skipped_count: int = strawberry.field(
        description=(
            "Left alone so far: payments that had ended or whose charge was in flight when "
            "their turn came, merchants already paused."
        )
    )
    error: str | None = strawberry.field(description="Why the job failed, when it FAILED.")
    created_at: datetime = strawberry.field(description="When it was submitted.")
    started_at: datetime | None = strawberry.field(description="When its job started.")
    finished_at: datetime | None = strawberry.field(description="When it SUCCEEDED or FAILED.")

    @classmethod
    def from_model(cls, row: BulkActionModel) -> Self:
        label = f"api_key:{row.actor_name}" if row.actor_key_id else row.actor_name
        return from_row(cls, row, id=cls.global_id(row.id), requested_by=label)


def _bulk(submitted: Submitted) -> BulkAction | None:
    return None if submitted.action is None else BulkAction.from_model(submitted.action)


class CancelPaymentRecoveriesPayload(Payload):
    count: int | None = strawberry.field(
        description=(
            "Payments the cancel changes: those the filter matches that are PENDING or "
            "SCHEDULED (a charge in flight is left alone), counted now for a dry run, when it "
            "was submitted otherwise."
        )
    )
    dry_run: bool | None = strawberry.field(description="Whether this was only a count.")
    bulk_action: BulkAction | None = strawberry.field(
        description="The action and its job's progress; null for a dry run."
    )
    client_mutation_id: str | None = strawberry.field(
        description="The client mutation id given, echoed."
    )


@mutation(
    refuses=(ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND, ErrorCode.INVALID),
    errors="Why the bulk cancel was refused",
    subject="merchantIds",
    description=(
        "Stop recovering every PENDING or SCHEDULED payment the filter matches, at the given "
        "merchants or all of them (support only; other keys get FORBIDDEN). With dryRun, only "
        "the count. Otherwise one job cancels them as cancelPaymentRecovery does (each through "
        "the state machine, on its timeline) and writes one audit entry with the count; follow "
        "it with `bulkAction` or `node(id:)`. The job reaches no further than the submission: "
        "only payments the portal held when it was submitted, and no more than its count."
    ),
)
async def cancel_payment_recoveries(
    info: Info,
    filter: Annotated[
        PaymentFilter,
        strawberry.argument(description="Which payments, as in `Merchant.payments`."),
    ],
    reason: ReasonArg,
    merchant_ids: Annotated[
        list[strawberry.ID] | None,
        strawberry.argument(
            description="Only these merchants' payments; every merchant's when null."
        ),
    ] = None,
    dry_run: DryRunArg = False,
    client_mutation_id: ClientMutationIdArg = None,
) -> CancelPaymentRecoveriesPayload:
    submitted = await bulk_resolvers.cancel_recoveries(
        info.context,
        filters=filter.to_values(),
        merchant_global_ids=None if merchant_ids is None else [str(m) for m in merchant_ids],
        reason=reason,
        dry_run=dry_run,
        client_mutation_id=client_mutation_id,
    )
    return CancelPaymentRecoveriesPayload(
        count=submitted.count,
        dry_run=dry_run,
        bulk_action=_bulk(submitted),
        client_mutation_id=client_mutation_id,
    )


class PauseMerchantsRecoveryPayload(Payload):
    count: int | None = strawberry.field(
        description=(
            "Merchants the pause changes (those not paused yet), counted now for a dry run, "
            "when it was submitted otherwise."
        )
    )
    dry_run: bool | None = strawberry.field(description="Whether this was only a count.")
    bulk_action: BulkAction | None = strawberry.field(
        description="The action and its job's progress; null for a dry run."
    )
    client_mutation_id: str | None = strawberry.field(
        description="The client mutation id given, echoed."
    )


@mutation(
    refuses=(ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND, ErrorCode.INVALID),
    errors="Why the bulk pause was refused",
    subject="merchantIds",
    description=(
        "Stop several merchants' recovery, as pauseMerchantRecovery does for one (support "
        "only; other keys get FORBIDDEN). With dryRun, only the count. Otherwise one job "
        "pauses them and writes one audit entry with the count; follow it with `bulkAction` "
        "or `node(id:)`."
    ),
)
async def pause_merchants_recovery(
    info: Info,
    merchant_ids: Annotated[
        list[strawberry.ID], strawberry.argument(description="The merchants, 1-1000 global ids.")
    ],
    reason: ReasonArg,
    dry_run: DryRunArg = False,
    client_mutation_id: ClientMutationIdArg = None,
) -> PauseMerchantsRecoveryPayload:
    submitted = await bulk_resolvers.pause_merchants(
        info.context,
        merchant_global_ids=[str(m) for m in merchant_ids],
        reason=reason,
        dry_run=dry_run,
        client_mutation_id=client_mutation_id,
    )
    return PauseMerchantsRecoveryPayload(
        count=submitted.count,
        dry_run=dry_run,
        bulk_action=_bulk(submitted),
        client_mutation_id=client_mutation_id,
    )
