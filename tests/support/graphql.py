"""Running GraphQL operations in-process with a real context."""

from typing import Any

from strawberry.types import ExecutionResult

from app.clock import Clock
from app.db import Database
from app.services.api_key import authenticate
from app.settings import Settings
from resolvers.context import Context
from schema.root import build_schema

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


def codes(result: ExecutionResult) -> list[str]:
    return [str((e.extensions or {}).get("code")) for e in result.errors or []]
