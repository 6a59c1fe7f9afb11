"""Fixtures: the sandbox served by uvicorn on a free loopback port, with a settable clock."""

import itertools
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import pytest

from sandbox.app import create_app
from sandbox.server import serving

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
_numbers = itertools.count(1)


class SettableClock:
    """A clock the tests move by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="session")
def sandbox_clock() -> SettableClock:
    return SettableClock(NOW)


@pytest.fixture(scope="session")
async def sandbox_url(sandbox_clock: SettableClock) -> AsyncIterator[str]:
    async with serving(create_app(sandbox_clock)) as url:
        yield url


@pytest.fixture(scope="session")
async def http(sandbox_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox_url, trust_env=False, timeout=10) as client:
        yield client


class AccountFactory(Protocol):
    """Creates a sandbox account of a processor."""

    def __call__(self, processor: str, **fields: Any) -> Awaitable[dict[str, Any]]: ...


@pytest.fixture
def make_account(http: httpx.AsyncClient) -> AccountFactory:
    """Create a sandbox account with a fresh id and key; returns the admin API's answer plus key."""

    async def make(processor: str, **fields: Any) -> dict[str, Any]:
        n = next(_numbers)
        body = {
            "processor": processor,
            "account_id": f"{processor}_{n}",
            "merchant_seed": 11,
            "api_key": f"key_{processor}_{n}",
            "history_days": 45,
            "customers": 300,
            **fields,
        }
        response = await http.post("/_sandbox/accounts", json=body)
        assert response.status_code == 201, response.text
        return {**response.json(), "api_key": body["api_key"]}

    return make


async def set_faults(http: httpx.AsyncClient, account_id: str, **faults: Any) -> None:
    """Replace an account's fault settings."""
    response = await http.post(f"/_sandbox/accounts/{account_id}/faults", json=faults)
    assert response.status_code == 200, response.text
