"""Shared by the processor endpoints: JSON responses, faults, paging effects, idempotency."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from sandbox.state import Account, Sandbox, StoredResponse

T = TypeVar("T")
IDEMPOTENT_REPLAYED = "Idempotent-Replayed"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response rendered with orjson."""
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def sandbox_of(request: Request) -> Sandbox:
    """The sandbox state behind a request."""
    sandbox: Sandbox = request.app.state.sandbox
    return sandbox


def iso(t: datetime) -> str:
    """ISO-8601 UTC with a Z suffix."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """An ISO-8601 or unix-seconds timestamp; naive ISO values are taken as UTC."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return datetime.fromtimestamp(int(text), tz=UTC)
    t = datetime.fromisoformat(text)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


async def request_fault(account: Account, *, write: bool = False) -> str | None:
    """Apply the account's pending request faults: stall if slow; return an error kind or None."""
    delay, error = account.faults.take_request(write=write)
    if delay > 0:
        await asyncio.sleep(delay)
    return error


def page_effects(account: Account, page: list[T], repeat: T | None) -> list[T]:
    """Duplicate and out-of-order faults on one page: repeat a record of the previous page,
    shuffle the page."""
    faults = account.faults
    out = list(page)
    if faults.duplicates and repeat is not None:
        out.insert(0, repeat)
    if faults.out_of_order and len(out) > 1:
        faults.pages += 1
        random.Random(f"{account.account_id}/{faults.pages}").shuffle(out)
    return out


def corrupt_json(record: dict[str, Any], kind: str) -> dict[str, Any]:
    """A broken copy of a JSON record: wrong-typed amount and no currency, or cut short."""
    if kind == "truncated":
        return dict(list(record.items())[:3])
    out = dict(record)
    amount = out.get("amount")
    if isinstance(amount, dict):
        out["amount"] = {**amount, "value": "12,34"}
        out["amount"].pop("currency", None)
    else:
        out["amount"] = "12,34"
    out.pop("currency", None)
    return out


def corrupt_page(account: Account, records: list[T], corrupt: Callable[[T, str], T]) -> list[T]:
    """Corrupt the first records of a page while the account has corruptions pending."""
    out = []
    for record in records:
        kind = account.faults.take_corruption()
        out.append(record if kind is None else corrupt(record, kind))
    return out


def fingerprint(params: Sequence[tuple[str, str]] | dict[str, Any]) -> str:
    """A digest of request parameters, to tell a replay from a conflicting reuse of a key."""
    canonical = orjson.dumps(
        sorted(params.items()) if isinstance(params, dict) else sorted(params),
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).hexdigest()


def replay(stored: StoredResponse) -> Response:
    """A stored response sent again, marked as a replay."""
    headers = {**stored.headers, IDEMPOTENT_REPLAYED: "true"}
    return Response(stored.body, stored.status, headers, media_type=stored.media_type)


def remember(account: Account, key: str | None, print_: str, response: Response) -> Response:
    """Keep a response for replay under its idempotency key."""
    if key is not None:
        headers = {k: v for k, v in response.headers.items() if k.lower() == "retry-after"}
        account.idempotency[key] = StoredResponse(
            print_, response.status_code, bytes(response.body), response.media_type or "", headers
        )
    return response


def connection_credentials(
    processor: str, account_id: str, api_key: str, hmac_key_hex: str | None = None
) -> dict[str, str]:
    """What a portal connection to a sandbox account presents, per processor: Braintree signs
    in with a public/private key pair (the account id is the public key), the others with an
    API key; Adyen's webhooks are signed with the account's HMAC key."""
    credentials = (
        {"public_key": account_id, "private_key": api_key}
        if processor == "braintree"
        else {"api_key": api_key}
    )
    if processor == "adyen" and hmac_key_hex is not None:
        credentials["hmac_key_hex"] = hmac_key_hex
    return credentials
