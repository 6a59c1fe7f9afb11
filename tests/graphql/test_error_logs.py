"""What the API logs of a request's errors: a client's mistake is one INFO line, a bug keeps
its ERROR with the traceback."""

import logging
from typing import Any

import pytest

from app.clock import FixedClock
from app.db import Database
from app.enums import Role
from app.settings import Settings
from resolvers import payment as payment_resolvers
from resolvers.ids import encode_id
from tests.support.factories import make_key, make_merchant
from tests.support.graphql import PAYMENTS_PAGE, codes, run


async def _page(
    db: Database, settings: Settings, clock: FixedClock, query: str, **variables: Any
) -> list[str]:
    merchant = await make_merchant(db, "Logs", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    result = await run(
        db,
        settings,
        clock,
        query,
        token=token,
        variables={"id": encode_id("Merchant", merchant.id), **variables},
    )
    return codes(result)


@pytest.mark.parametrize(
    ("query", "variables", "code"),
    [
        (PAYMENTS_PAGE, {"first": 0}, "INVALID_ARGUMENT"),
        (PAYMENTS_PAGE, {"after": "not-a-cursor"}, "INVALID_CURSOR"),
        ("query($id: ID!) { merchant(id: $id) { nope } }", {}, "GRAPHQL_VALIDATION_FAILED"),
    ],
)
async def test_a_clients_mistake_is_one_info_line(
    db: Database,
    settings: Settings,
    clock: FixedClock,
    caplog: pytest.LogCaptureFixture,
    query: str,
    variables: dict[str, Any],
    code: str,
) -> None:
    caplog.set_level(logging.INFO)
    assert await _page(db, settings, clock, query, **variables) == [code]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    lines = [r.getMessage() for r in caplog.records if r.name == "portal.graphql"]
    assert len(lines) == 1
    assert lines[0].startswith(f"client error {code}: ")


async def test_a_bug_is_logged_as_an_error_with_its_traceback(
    db: Database,
    settings: Settings,
    clock: FixedClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug in the payments page")

    monkeypatch.setattr(payment_resolvers, "payments_page", broken)
    assert await _page(db, settings, clock, PAYMENTS_PAGE) == ["INTERNAL_SERVER_ERROR"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors
    assert any(r.exc_info is not None for r in errors)
