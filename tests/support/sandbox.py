"""The sandbox processors' admin API, as tests drive it: accounts, faults, a clock set by hand."""

from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


class SettableClock:
    """A clock the tests move by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class AccountFactory(Protocol):
    """Creates a sandbox account of a processor."""

    def __call__(self, processor: str, **fields: Any) -> Awaitable[dict[str, Any]]: ...


async def create_account(admin: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """Create a sandbox account; returns the admin API's answer plus the account's API key."""
    response = await admin.post("/_sandbox/accounts", json=body)
    assert response.status_code == 201, response.text
    return {**response.json(), "api_key": body["api_key"]}


async def set_faults(admin: httpx.AsyncClient, account_id: str, **faults: Any) -> None:
    """Replace an account's fault settings."""
    response = await admin.post(f"/_sandbox/accounts/{account_id}/faults", json=faults)
    assert response.status_code == 200, response.text
