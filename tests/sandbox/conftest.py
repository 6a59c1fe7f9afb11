"""Fixtures: the sandbox served by uvicorn on a free loopback port, with a settable clock."""

import itertools
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from sandbox.app import create_app
from sandbox.server import serving
from tests.support.sandbox import NOW, AccountFactory, SettableClock, create_account

_numbers = itertools.count(1)


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
        return await create_account(http, body)

    return make
