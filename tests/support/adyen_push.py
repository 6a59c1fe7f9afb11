"""A webhook endpoint for the sandbox's Adyen pushes, and what tests do with the pushes."""

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from sandbox.server import serving

KEY_HEX = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"


class Receiver:
    """A webhook endpoint that refuses its first deliveries, then accepts."""

    def __init__(self) -> None:
        self.refusals: list[Response] = []
        self.batches: list[dict[str, Any]] = []
        self.url = ""
        self.verify_with: str | None = None
        self.closed = False

    async def receive(self, request: Request) -> Response:
        batch = orjson.loads(await request.body())
        self.batches.append(batch)
        if self.closed:
            return PlainTextResponse("unavailable", 503)
        if self.refusals:
            return self.refusals.pop(0)
        key = self.verify_with
        items = [i["NotificationRequestItem"] for i in batch["notificationItems"]]
        if key is not None and not all(signature_ok(i, key) for i in items):
            return PlainTextResponse("bad signature", 401)
        return PlainTextResponse("[accepted]")

    def items(self) -> list[dict[str, Any]]:
        return [i["NotificationRequestItem"] for b in self.batches for i in b["notificationItems"]]


@asynccontextmanager
async def serve_receiver() -> AsyncIterator[Receiver]:
    """A receiver served on a free loopback port."""
    found = Receiver()
    app = Starlette(routes=[Route("/webhooks/adyen", found.receive, methods=["POST"])])
    async with serving(app) as url:
        found.url = f"{url}/webhooks/adyen"
        yield found


def signature_ok(item: dict[str, Any], key_hex: str) -> bool:
    """Whether an item's HMAC signature is Adyen's over its eight signed fields."""
    amount = item["amount"]
    fields = [
        item.get("pspReference", ""),
        item.get("originalReference", ""),
        item.get("merchantAccountCode", ""),
        item.get("merchantReference", ""),
        str(amount["value"]),
        amount["currency"],
        item["eventCode"],
        item["success"],
    ]
    mac = hmac.new(bytes.fromhex(key_hex), ":".join(fields).encode(), hashlib.sha256).digest()
    return hmac.compare_digest(
        base64.b64encode(mac).decode(), item["additionalData"]["hmacSignature"]
    )


async def push_all(http: httpx.AsyncClient, account_id: str) -> None:
    """Force the account's pushes until nothing is pending."""
    for _ in range(20):
        summary = (await http.post(f"/_sandbox/accounts/{account_id}/push")).json()
        if summary["pending"] == 0:
            return
    raise AssertionError(f"still pending after forced pushes: {summary}")
