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
