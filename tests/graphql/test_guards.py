"""Query guards: depth and token limits refuse a query before it runs."""

from app.clock import FixedClock
from app.db import Database
from app.enums import Role
from app.settings import Settings
from tests.support.factories import make_key, make_merchant
from tests.support.graphql import codes, run

DEEP = (
    "{ viewer { merchants { edges { node { payments { edges { node { "
    "attempts { decline { category } } } } } } } } } }"
)


async def test_depth_limit(db: Database, clock: FixedClock) -> None:
    merchant = await make_merchant(db, "Guards", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    strict = Settings(environment="test", max_query_depth=5)
    result = await run(db, strict, clock, DEEP, token=token)
    assert result.data is None
    assert codes(result) == ["GRAPHQL_VALIDATION_FAILED"]
    relaxed = Settings(environment="test")
    assert (await run(db, relaxed, clock, DEEP, token=token)).errors is None


async def test_token_limit(db: Database, clock: FixedClock) -> None:
    merchant = await make_merchant(db, "Tokens", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    strict = Settings(environment="test", max_tokens=20)
    result = await run(db, strict, clock, DEEP, token=token)
    assert result.data is None
    assert result.errors


PRODUCTION = Settings(environment="production", secret_key="x" * 40, metrics_token="m" * 32)


async def test_introspection_is_a_validation_error_in_production(
    db: Database, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Introspect", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    for query in (
        "{ __schema { types { name } } }",
        '{ __type(name: "Payment") { fields { name } } }',
        "{ viewer { role } __schema { queryType { name } } }",
    ):
        refused = await run(db, PRODUCTION, clock, query, token=token)
        assert refused.data is None
        assert refused.errors
        assert set(codes(refused)) == {"GRAPHQL_VALIDATION_FAILED"}
        assert all("introspection has been disabled" in e.message for e in refused.errors)
        allowed = await run(db, Settings(environment="test"), clock, query, token=token)
        assert allowed.errors is None, allowed.errors
    # Clients still learn which type they got.
    typename = await run(db, PRODUCTION, clock, "{ viewer { __typename role } }", token=token)
    assert typename.errors is None
    assert typename.data == {"viewer": {"__typename": "Viewer", "role": "MERCHANT"}}
    enabled = Settings(
        environment="production", secret_key="x" * 40, metrics_token="m" * 32, introspection=True
    )
    opened = await run(db, enabled, clock, "{ __schema { queryType { name } } }", token=token)
    assert opened.data == {"__schema": {"queryType": {"name": "Query"}}}
