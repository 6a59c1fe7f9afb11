"""Imports every table so the metadata is complete (Alembic, tests)."""

from app.models.api_key import ApiKey, ApiKeyMerchant
from app.models.audit import AuditLog
from app.models.base import TenantOwned, metadata
from app.models.bulk_action import BulkAction, BulkActionPayment
from app.models.customer import CardCredential, Customer, CustomerSuccess
from app.models.end_action import EndActionRun
from app.models.ingestion import DeadLetter, ProcessorConnection, RawRecord, RawRecordKey
from app.models.merchant import Merchant
from app.models.model_version import ModelDecision, ModelVersion
from app.models.payment import Payment, PaymentAttempt
from app.models.retry import OutboxEvent, PaymentTransition
from app.models.retry_policy import RetryPolicy
from app.models.stats import (
    RecoveryDayRollup,
    RecoveryDayZone,
    RecoveryMonthRollup,
    RecoveryMonthZone,
    RecoveryRollup,
)
from app.models.webhook_endpoint import WebhookDelivery, WebhookEndpoint

__all__ = [
    "ApiKey",
    "ApiKeyMerchant",
    "AuditLog",
    "BulkAction",
    "BulkActionPayment",
    "CardCredential",
    "Customer",
    "CustomerSuccess",
    "DeadLetter",
    "EndActionRun",
    "Merchant",
    "ModelDecision",
    "ModelVersion",
    "OutboxEvent",
    "Payment",
    "PaymentAttempt",
    "PaymentTransition",
    "ProcessorConnection",
    "RawRecord",
    "RawRecordKey",
    "RecoveryDayRollup",
    "RecoveryDayZone",
    "RecoveryMonthRollup",
    "RecoveryMonthZone",
    "RecoveryRollup",
    "RetryPolicy",
    "TenantOwned",
    "WebhookDelivery",
    "WebhookEndpoint",
    "metadata",
]
