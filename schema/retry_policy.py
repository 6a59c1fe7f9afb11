"""Retry policy types and the updateRetryPolicy mutation's input and payload."""

import uuid
from datetime import datetime
from typing import Annotated, Any, Self

import strawberry
from strawberry.scalars import JSON

from app.errors import ErrorCode, ValidationFailed
from app.models.retry_policy import RetryPolicy as RetryPolicyModel
from app.services.policy_preview import PREVIEW_PAYMENT_LIMIT
from app.services.retry_policy import KEEP, FieldChange, PolicyChanges, PolicyVersion
from jobs.policy_preview import (
    PAYMENT_SAMPLE,
    CurrencyForecast,
    PaymentForecast,
    Schedule,
)
from resolvers import retry_policy as policy_resolvers
from resolvers.context import Context
from resolvers.counts import CountOf, counter
from resolvers.ids import encode_id
from resolvers.model import MODEL_TYPE
from schema.enums import DeclineCategory, EndAction, RetryStrategy
from schema.mutation import Payload, mutation
from schema.relay import AfterArg, Connection, FirstArg, connection
from schema.rows import from_row
from schema.scalars import Long

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
        count = counter(info.context, CountOf("policy_history", self._row.merchant_id))
        return RetryPolicyVersionConnection.from_page(page, RetryPolicyVersion.from_version, count)

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
            changes=[_field_change(c) for c in item.changes],
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


@strawberry.input(
    description="Settings to change in a merchant's retry policy; omitted fields stay."
)
class RetryPolicyChangesInput:
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


@strawberry.input(description="A change to a merchant's retry policy; omitted fields stay.")
class UpdateRetryPolicyInput(RetryPolicyChangesInput):
    merchant_id: strawberry.ID = strawberry.field(description="The merchant's global id.")
    expected_version: int = strawberry.field(
        description="The version the change is based on; a newer one means VERSION_CONFLICT."
    )
    reason: str = strawberry.field(description="Why; kept in the audit log.")


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


@strawberry.type(
    description=(
        "One currency of a preview: its scheduled payments and the champion's expected "
        "recoveries under the current policy and under the change (amounts in minor units of "
        "this currency, never summed across currencies)."
    )
)
class RetryPolicyCurrencyForecast:
    currency: str = strawberry.field(description="ISO 4217 code.")
    payments: int = strawberry.field(description="Payments forecast in this currency.")
    amount: Long = strawberry.field(description="Their amount, in minor units.")
    current_expected_recoveries: float = strawberry.field(
        description="Payments expected to be recovered under the current policy (sum of chances)."
    )
    proposed_expected_recoveries: float = strawberry.field(
        description="Payments expected to be recovered under the change (sum of chances)."
    )
    expected_recoveries_change: float = strawberry.field(
        description="proposedExpectedRecoveries minus currentExpectedRecoveries."
    )
    current_expected_recovered_amount: Long = strawberry.field(
        description="Amount expected to be recovered under the current policy, minor units."
    )
    proposed_expected_recovered_amount: Long = strawberry.field(
        description="Amount expected to be recovered under the change, minor units."
    )
    expected_recovered_amount_change: Long = strawberry.field(
        description="proposedExpectedRecoveredAmount minus currentExpectedRecoveredAmount."
    )


@strawberry.type(description="A payment's remaining retries under one policy, as forecast.")
class RetryScheduleForecast:
    retry_times: list[datetime] = strawberry.field(
        description="When each remaining retry would be made."
    )
    success_probabilities: list[float] = strawberry.field(
        description=(
            "The champion's chance that each retry succeeds, given the ones before it declined."
        )
    )
    recovery_probability: float = strawberry.field(
        description="The chance that one of them succeeds: 1 - (1 - p1)(1 - p2)…"
    )


@strawberry.type(
    description="One scheduled payment's forecast under the current policy and the change."
)
class RetryPolicyPaymentForecast:
    payment_id: strawberry.ID = strawberry.field(description="The payment's global id.")
    currency: str = strawberry.field(description="ISO 4217 code.")
    amount: Long = strawberry.field(description="Its amount, in minor units.")
    current: RetryScheduleForecast = strawberry.field(
        description="Under the current policy (the retry already scheduled first)."
    )
    proposed: RetryScheduleForecast = strawberry.field(
        description="Under the change (every retry decided afresh)."
    )


PREVIEW_ASSUMPTIONS = (
    "Forecast by the champion model over the scheduled payments read (see scoredPayments). "
    "Assumes: each payment's remaining retries follow the schedule its policy would choose "
    "from now (under the current policy the retry already scheduled comes first; under the "
    "change every retry is decided afresh, as the engine re-decides every scheduled payment), "
    "each later retry decided as the engine would after the one before it was declined again "
    "with the same decline, within the network rules, window and attempt limit; the champion "
    "scores each retry given the declined ones before it, and a payment's chance of recovery "
    "is 1 - (1 - p1)(1 - p2)…; nothing else happens meanwhile (no new card, no payment by "
    "other means, the merchant's status as now). The control group keeps the fixed schedule."
)


@strawberry.type(
    description=(
        "What a retry policy change would do, computed without making it: the change is "
        "checked and applied in a transaction that is rolled back."
    )
)
class RetryPolicyPreview:
    based_on_version: int = strawberry.field(description="The current version it changes.")
    proposed: RetryPolicy = strawberry.field(
        description="The policy as the change would make it (its version is the next one)."
    )
    changes: list[RetryPolicyFieldChange] = strawberry.field(
        description="What it would change, setting by setting."
    )
    redecided_payments: int = strawberry.field(
        description=(
            "Scheduled payments the engine would decide again under the change: all of the "
            "merchant's scheduled payments (exact)."
        )
    )
    scored_payments: int = strawberry.field(
        description=(
            f"How many of them the forecast covers: the {PREVIEW_PAYMENT_LIMIT} with the "
            "soonest retries at most. The figures below are over these only."
        )
    )
    rescheduled_payments: int | None = strawberry.field(
        description=(
            "Of those, how many would retry at other times; null without a champion model."
        )
    )
    model_id: strawberry.ID | None = strawberry.field(
        description="The champion model forecasting (global id); null when none is usable."
    )
    currencies: list[RetryPolicyCurrencyForecast] = strawberry.field(
        description="Expected recoveries per currency. "
        + PREVIEW_ASSUMPTIONS
        + " Empty without a champion model."
    )
    payments: list[RetryPolicyPaymentForecast] = strawberry.field(
        description=(
            f"Up to {PAYMENT_SAMPLE} payments one by one, the largest changes in their chance "
            "of recovery first."
        )
    )

    @classmethod
    def from_preview(cls, found: policy_resolvers.Preview) -> Self:
        forecast = found.forecast
        return cls(
            based_on_version=found.current.version,
            proposed=RetryPolicy.from_model(found.proposed),
            changes=[_field_change(c) for c in found.changes],
            redecided_payments=found.redecided,
            scored_payments=found.scored,
            rescheduled_payments=None if forecast is None else forecast.rescheduled,
            model_id=None
            if forecast is None
            else strawberry.ID(encode_id(MODEL_TYPE, uuid.UUID(forecast.model_id))),
            currencies=[] if forecast is None else [_currency(c) for c in forecast.currencies],
            payments=[] if forecast is None else [_payment(p) for p in forecast.payments],
        )


def _field_change(change: FieldChange) -> RetryPolicyFieldChange:
    return RetryPolicyFieldChange(
        field=change.field,
        old=None if change.old is None else JSON(change.old),
        new=None if change.new is None else JSON(change.new),
    )


def _currency(c: CurrencyForecast) -> RetryPolicyCurrencyForecast:
    return RetryPolicyCurrencyForecast(
        currency=c.currency,
        payments=c.payments,
        amount=Long(c.amount_minor),
        current_expected_recoveries=c.current_recoveries,
        proposed_expected_recoveries=c.proposed_recoveries,
        expected_recoveries_change=c.proposed_recoveries - c.current_recoveries,
        current_expected_recovered_amount=Long(c.current_amount_minor),
        proposed_expected_recovered_amount=Long(c.proposed_amount_minor),
        expected_recovered_amount_change=Long(c.proposed_amount_minor - c.current_amount_minor),
    )


def _schedule(s: Schedule) -> RetryScheduleForecast:
    return RetryScheduleForecast(
        retry_times=list(s.times),
        success_probabilities=list(s.probabilities),
        recovery_probability=s.recovery_probability,
    )


def _payment(p: PaymentForecast) -> RetryPolicyPaymentForecast:
    return RetryPolicyPaymentForecast(
        payment_id=strawberry.ID(encode_id("Payment", uuid.UUID(p.payment_id))),
        currency=p.currency,
        amount=Long(p.amount_minor),
        current=_schedule(p.current),
        proposed=_schedule(p.proposed),
    )


class PreviewRetryPolicyPayload(Payload):
    preview: RetryPolicyPreview | None = strawberry.field(
        description="What the change would do, when it is valid."
    )


@mutation(
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID),
    why="refused a preview",
    errors="Why the change would be refused (as updateRetryPolicy would refuse it)",
    subject="merchantId",
    description=(
        "Preview a change to a merchant's retry policy without making it (support, or the "
        "merchant's own key): how many scheduled payments would be re-decided, and the "
        "champion model's expected recoveries under the current policy and the change. "
        "Nothing is written: no version, no audit entry, no schedule."
    ),
)
async def preview_retry_policy(
    info: Info,
    merchant_id: Annotated[
        strawberry.ID, strawberry.argument(description="The merchant's global id.")
    ],
    input: Annotated[
        RetryPolicyChangesInput, strawberry.argument(description="The settings to change.")
    ],
) -> PreviewRetryPolicyPayload:
    found = await policy_resolvers.preview(
        info.context, merchant_global_id=str(merchant_id), changes=input.to_changes()
    )
    return PreviewRetryPolicyPayload(preview=RetryPolicyPreview.from_preview(found))
