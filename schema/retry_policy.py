"""Retry policy types and the updateRetryPolicy mutation's input and payload."""

from datetime import datetime
from typing import Any, Self

import strawberry
from strawberry.scalars import JSON

from app.errors import ErrorCode, ValidationFailed
from app.models.retry_policy import RetryPolicy as RetryPolicyModel
from app.services.retry_policy import KEEP, PolicyChanges, PolicyVersion
from resolvers import retry_policy as policy_resolvers
from resolvers.context import Context
from resolvers.ids import encode_id
from schema.enums import DeclineCategory, EndAction, RetryStrategy
from schema.mutation import Payload, mutation
from schema.relay import AfterArg, Connection, FirstArg, connection
from schema.rows import from_row

Info = strawberry.Info[Context, None]


@strawberry.type(description="Hours of the customer's day when no retry is made.")
class QuietHours:
    start_hour: int = strawberry.field(description="First quiet hour, 0-23, local time.")
    end_hour: int = strawberry.field(description="Hour quiet ends, 0-23, local time (exclusive).")


@strawberry.type(description="A version of a merchant's retry configuration.")
class RetryPolicy:
    version: int = strawberry.field(description="Version number; each change adds one.")
    enabled: bool = strawberry.field(description="Whether the portal retries at all.")
    max_attempts: int = strawberry.field(description="Most retries per payment (1-15).")
    window_days: int = strawberry.field(description="Days after the first failure to retry in.")
    min_hours_between_attempts: int = strawberry.field(description="Minimum spacing in hours.")
    quiet_hours: QuietHours | None = strawberry.field(
        description="No retries in these hours of the customer's local time."
    )
    timezone: str = strawberry.field(
        description="Time zone used for quiet hours when the customer's is unknown."
    )
    excluded_decline_categories: list[DeclineCategory] = strawberry.field(
        description="Decline categories never retried."
    )
    strategy: RetryStrategy = strawberry.field(description="How retry times are chosen.")
    fixed_schedule_days: list[int] = strawberry.field(
        description=(
            "Days after the first failure for the fixed schedule; they also time the retry "
            "placed after each decline until a fresh decision is made."
        )
    )
    end_action: EndAction = strawberry.field(
        description=(
            "What happens when recovery ends unpaid: CANCEL_SUBSCRIPTION cancels the "
            "subscription at the processor (Stripe, Braintree; Adyen and Checkout.com keep no "
            "subscriptions, so it is recorded NOT_SUPPORTED), LEAVE_INVOICE_OPEN leaves the "
            "invoice as it is; each payment's endAction says how it went."
        )
    )
    control_group_percent: int = strawberry.field(
        description=(
            "Percent of payments (0-50) a MODEL policy keeps on the fixed schedule, the "
            "control group the model's uplift is measured against; default 10."
        )
    )
    updated_at: datetime = strawberry.field(description="When this version was made.")
    updated_by: str = strawberry.field(description="Who made this version.")
    _row: strawberry.Private[RetryPolicyModel]

    @strawberry.field(
        description=(
            "Every version of the merchant's policy, newest first (whichever version this is): "
            "who made it, when, why, and what it changed over the version before it."
        )
    )
    async def history(
        self, info: Info, first: FirstArg = None, after: AfterArg = None
    ) -> "RetryPolicyVersionConnection":
        page = await policy_resolvers.history(
            info.context, self._row.merchant_id, first=first, after=after
        )
        return RetryPolicyVersionConnection.from_page(page, RetryPolicyVersion.from_version)

    @classmethod
    def from_model(cls, row: RetryPolicyModel) -> Self:
        quiet = (
            QuietHours(start_hour=row.quiet_hours_start, end_hour=row.quiet_hours_end)
            if row.quiet_hours_start is not None and row.quiet_hours_end is not None
            else None
        )
        return from_row(
            cls,
            row,
            quiet_hours=quiet,
            excluded_decline_categories=[
                DeclineCategory(c) for c in row.excluded_decline_categories
            ],
            fixed_schedule_days=list(row.fixed_schedule_days),
            updated_at=row.created_at,
            updated_by=row.created_by,
            _row=row,
        )


@strawberry.type(description="One setting a policy version changed, before and after.")
class RetryPolicyFieldChange:
    field: str = strawberry.field(
        description="The setting, named as in RetryPolicy (e.g. `maxAttempts`, `quietHours`)."
    )
    old: JSON | None = strawberry.field(
        description=(
            "Its value in the version before, as JSON (enums as their names, quietHours as "
            "`{startHour, endHour}`); null when it was null."
        )
    )
    new: JSON | None = strawberry.field(description="Its value in this version, the same way.")


@strawberry.type(description="A version of a merchant's retry policy in its history.")
class RetryPolicyVersion:
    version: int = strawberry.field(description="The version number.")
    created_at: datetime = strawberry.field(description="When this version was made.")
    actor: str = strawberry.field(
        description=(
            "Who made it: `api_key:<name>`, or the portal itself (e.g. `system` for the default "
            "policy a new merchant gets)."
        )
    )
    api_key_id: strawberry.ID | None = strawberry.field(
        description=(
            "The global id of the API key that made it; null for versions the portal made "
            "itself (the first version, the CLI, jobs), whose audit entries name no key."
        )
    )
    reason: str | None = strawberry.field(
        description="Why, as given with the change (`default policy` for the first version)."
    )
    changes: list[RetryPolicyFieldChange] = strawberry.field(
        description=(
            "What it changed over the version before it, one entry per setting that differs, "
            "computed from the stored versions; empty for the first version."
        )
    )
    policy: RetryPolicy = strawberry.field(description="The policy as this version set it.")

    @classmethod
    def from_version(cls, item: PolicyVersion) -> Self:
        row = item.policy
        return cls(
            version=row.version,
            created_at=row.created_at,
            actor=row.created_by,
            api_key_id=None
            if item.actor_key_id is None
            else strawberry.ID(encode_id("ApiKey", item.actor_key_id)),
            reason=row.reason,
            changes=[
                RetryPolicyFieldChange(
                    field=c.field,
                    old=None if c.old is None else JSON(c.old),
                    new=None if c.new is None else JSON(c.new),
                )
                for c in item.changes
            ],
            policy=RetryPolicy.from_model(row),
        )


@connection(
    "A page of a merchant's retry policy versions, newest first.",
    edge="A policy version and its cursor.",
    noun="version",
    nouns="versions",
)
class RetryPolicyVersionConnection(Connection[RetryPolicyVersion]):
    pass


@strawberry.input(description="Quiet hours in the customer's local time.")
class QuietHoursInput:
    start_hour: int = strawberry.field(description="First quiet hour, 0-23.")
    end_hour: int = strawberry.field(description="Hour quiet ends, 0-23 (exclusive).")


@strawberry.input(description="A change to a merchant's retry policy; omitted fields stay.")
class UpdateRetryPolicyInput:
    merchant_id: strawberry.ID = strawberry.field(description="The merchant's global id.")
    expected_version: int = strawberry.field(
        description="The version the change is based on; a newer one means VERSION_CONFLICT."
    )
    reason: str = strawberry.field(description="Why; kept in the audit log.")
    enabled: bool | None = strawberry.field(default=strawberry.UNSET, description="On or off.")
    max_attempts: int | None = strawberry.field(
        default=strawberry.UNSET, description="Most retries per payment, 1-15."
    )
    window_days: int | None = strawberry.field(
        default=strawberry.UNSET, description="Retry window in days, 1-60."
    )
    min_hours_between_attempts: int | None = strawberry.field(
        default=strawberry.UNSET, description="Minimum spacing in hours."
    )
    quiet_hours: QuietHoursInput | None = strawberry.field(
        default=strawberry.UNSET, description="Quiet hours; null removes them."
    )
    timezone: str | None = strawberry.field(
        default=strawberry.UNSET, description="IANA time zone, e.g. Europe/Paris."
    )
    excluded_decline_categories: list[DeclineCategory] | None = strawberry.field(
        default=strawberry.UNSET, description="Decline categories never retried."
    )
    strategy: RetryStrategy | None = strawberry.field(
        default=strawberry.UNSET, description="How retry times are chosen."
    )
    fixed_schedule_days: list[int] | None = strawberry.field(
        default=strawberry.UNSET, description="Days after the first failure, increasing."
    )
    end_action: EndAction | None = strawberry.field(
        default=strawberry.UNSET, description="What happens when the window ends."
    )
    control_group_percent: int | None = strawberry.field(
        default=strawberry.UNSET,
        description="Percent of payments a MODEL policy keeps on the fixed schedule, 0-50.",
    )

    def to_changes(self) -> PolicyChanges:
        """The change as the core takes it; explicit null is refused except for quietHours."""
        values: dict[str, Any] = {}
        nulls: list[tuple[str, str]] = []
        for name, api_name in (
            ("enabled", "enabled"),
            ("max_attempts", "maxAttempts"),
            ("window_days", "windowDays"),
            ("min_hours_between_attempts", "minHoursBetweenAttempts"),
            ("timezone", "timezone"),
            ("excluded_decline_categories", "excludedDeclineCategories"),
            ("strategy", "strategy"),
            ("fixed_schedule_days", "fixedScheduleDays"),
            ("end_action", "endAction"),
            ("control_group_percent", "controlGroupPercent"),
        ):
            value = getattr(self, name)
            if value is strawberry.UNSET:
                continue
            if value is None:
                nulls.append((api_name, "cannot be null; omit the field to keep it"))
                continue
            values[name] = value
        if self.quiet_hours is not strawberry.UNSET:
            quiet = self.quiet_hours
            values["quiet_hours"] = None if quiet is None else (quiet.start_hour, quiet.end_hour)
        if nulls:
            raise ValidationFailed(nulls)
        return PolicyChanges(**{k: values.get(k, KEEP) for k in _CHANGE_FIELDS})


_CHANGE_FIELDS = tuple(PolicyChanges.__dataclass_fields__)


class UpdateRetryPolicyPayload(Payload):
    retry_policy: RetryPolicy | None = strawberry.field(
        description="The new current version, when the change was applied."
    )


@mutation(
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.VERSION_CONFLICT, ErrorCode.INVALID),
    why="refused a change",
    subject="merchantId",
    description=(
        "Change a merchant's retry policy (support, or the merchant's own key). "
        "Adds a version and an audit entry."
    ),
)
async def update_retry_policy(
    info: Info, input: UpdateRetryPolicyInput
) -> UpdateRetryPolicyPayload:
    row = await policy_resolvers.update(
        info.context,
        merchant_global_id=str(input.merchant_id),
        expected_version=input.expected_version,
        changes=input.to_changes(),
        reason=input.reason,
    )
    return UpdateRetryPolicyPayload(retry_policy=RetryPolicy.from_model(row))
