"""Running GraphQL operations in-process with a real context."""

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from strawberry.types import ExecutionResult

from app.clock import Clock
from app.db import Database
from app.settings import Settings
from app.workflows.authentication import authenticate
from resolvers.context import Context
from resolvers.ids import encode_id
from schema.root import build_schema
from tests.support.statements import count_statements, without_savepoints

# The payments list with every field of a payment and its attempts.
PAYMENTS_PAGE = """
query($id: ID!, $first: Int, $after: String, $filter: PaymentFilter) {
  merchant(id: $id) {
    payments(first: $first, after: $after, filter: $filter) {
      edges { cursor node {
        id processor processorPaymentId state
        amount { amountMinor currency }
        decline { category retryable advice rawCode networkAdviceCode }
        failedAt nextRetryAt recoveredAt attemptCount
        attempts { number attemptedAt outcome actor decline { category } card { last4 } }
        customer { id } card { brand last4 funding country }
      } }
      pageInfo { hasNextPage endCursor }
    }
  }
}
"""

UPDATE_RETRY_POLICY = """
mutation($input: UpdateRetryPolicyInput!) { updateRetryPolicy(input: $input) {
  retryPolicy { version enabled maxAttempts windowDays minHoursBetweenAttempts
    quietHours { startHour endHour } timezone excludedDeclineCategories strategy
    fixedScheduleDays endAction controlGroupPercent updatedBy }
  errors { code message field } } }"""

_SCHEMAS: dict[int, Any] = {}


def schema_for(settings: Settings) -> Any:
    key = id(settings)
    if key not in _SCHEMAS:
        _SCHEMAS[key] = build_schema(settings)
    return _SCHEMAS[key]


async def run(
    db: Database,
    settings: Settings,
    clock: Clock,
    query: str,
    *,
    token: str | None,
    variables: dict[str, Any] | None = None,
    redis: Any = None,
) -> ExecutionResult:
    principal = None if token is None else await authenticate(db, token, now=clock.now())
    context = Context(db=db, principal=principal, clock=clock, settings=settings, redis=redis)
    result: ExecutionResult = await schema_for(settings).execute(
        query, variable_values=variables, context_value=context
    )
    return result


def succeeded(result: ExecutionResult) -> dict[str, Any]:
    """The data of an operation that must have succeeded."""
    assert result.errors is None, result.errors
    assert result.data is not None
    return result.data


async def run_data(
    db: Database,
    settings: Settings,
    clock: Clock,
    query: str,
    token: str,
    /,
    *,
    redis: Any = None,
    **variables: Any,
) -> dict[str, Any]:
    """The data of an operation that must succeed, its variables given as keywords."""
    return succeeded(
        await run(db, settings, clock, query, token=token, variables=variables, redis=redis)
    )


async def run_counted(
    connection: AsyncConnection,
    db: Database,
    settings: Settings,
    clock: Clock,
    query: str,
    *,
    token: str,
    variables: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Run an operation that must succeed: its data and the statements it sent on `connection`
    (without the test transaction's savepoints)."""
    with count_statements(connection) as statements:
        result = await run(db, settings, clock, query, token=token, variables=variables)
    return succeeded(result), without_savepoints(statements)


@dataclass(frozen=True)
class CountedPage:
    """A page of payments and the statements reading it sent."""

    edges: list[dict[str, Any]]
    statements: list[str]


async def count_payment_pages(
    connection: AsyncConnection,
    db: Database,
    settings: Settings,
    clock: Clock,
    query: str,
    *,
    merchant_id: uuid.UUID,
    token: str,
) -> dict[int, CountedPage]:
    """A merchant's payments page (`query` takes `$id` and `$first`) of 1 row and of 50, each
    with the statements it cost. The key authenticates once first, so that last_used_at is
    fresh and the pages' requests are read-only."""
    await run(db, settings, clock, "{ viewer { role } }", token=token)
    pages = {}
    for first in (1, 50):
        data, statements = await run_counted(
            connection,
            db,
            settings,
            clock,
            query,
            token=token,
            variables={"id": encode_id("Merchant", merchant_id), "first": first},
        )
        pages[first] = CountedPage(data["merchant"]["payments"]["edges"], statements)
    return pages


def codes(result: ExecutionResult) -> list[str]:
    return [str((e.extensions or {}).get("code")) for e in result.errors or []]
