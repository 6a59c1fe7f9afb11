"""What every processor adapter offers, and the HTTP calling discipline they share."""

import asyncio
import hashlib
import json
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol

import httpx
import orjson

from app.enums import Processor

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# Pre-flight reads are advisory and sit in front of a charge: each gets a short timeout and
# two tries (`call`), so a slow processor delays an attempt by seconds, not minutes.
PREFLIGHT_TIMEOUT = httpx.Timeout(4.0, connect=2.0)
PREFLIGHT_TRIES = 2
# Waits longer than this are not slept through in-line: the job is deferred instead.
MAX_INLINE_WAIT_SECONDS = 5.0


class ProcessorError(Exception):
    """A call to a processor failed; the message never contains credentials.

    `status` is the HTTP status the processor answered with when that status failed the call
    (see `call`); None when no answer came or an answer could not be used.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientProcessorError(ProcessorError):
    """Worth retrying later (timeout, 429, 5xx); `retry_after` is the processor's wait, if any."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class PermanentProcessorError(ProcessorError):
    """Retrying will not help (bad credentials, bad request): needs a person."""


class UnsupportedByProcessor(PermanentProcessorError):
    """The processor's API has no such operation (Adyen and Checkout.com keep no subscription
    objects, so there is none to cancel); the message says why."""


@dataclass(frozen=True)
class RawItem:
    """One record as received: `payload` is stored as JSONB, `body` is what normalizers read."""

    external_id: str | None
    payload: dict[str, Any]
    body: bytes

    @cached_property
    def content_hash(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    @classmethod
    def from_json(cls, record: Mapping[str, Any], external_id: str | None) -> "RawItem":
        payload = dict(record)
        return cls(external_id=external_id, payload=payload, body=canonical_json(payload))

    @classmethod
    def from_parsed(
        cls, record: Mapping[str, Any], external_id: str | None, *, floats: bool = True
    ) -> "RawItem":
        """`from_json` for a record read by `response_json` (whose numbers are all finite):
        the same body, computed several times faster. `floats=False` says the text it was
        parsed from holds no float (`response_page`), so its body is not searched for one."""
        payload = dict(record)
        return cls(external_id=external_id, payload=payload, body=_canonical_fast(payload, floats))

    @classmethod
    def from_xml(cls, xml: str, external_id: str | None) -> "RawItem":
        return cls(external_id=external_id, payload={"xml": xml}, body=xml.encode())


def _finite(number: str) -> float:
    """A JSON number with a fraction or an exponent, refused when no float holds it (`1e400`
    would be read as infinity, which jsonb refuses)."""
    value = float(number)
    if not math.isfinite(value):
        raise ValueError(f"{number[:40]} is not a JSON number a float can hold")
    return value


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


def response_json(response: httpx.Response) -> Any:
    """The response's JSON, parsed by orjson (several times faster on list pages); a body it
    refuses is parsed by the standard library, with its errors. So is a body that may hold an
    integer beyond 64 bits: orjson reads one as a float, losing its digits, where the standard
    library keeps it exact. Either way NaN and Infinity are refused (they are not JSON, and
    PostgreSQL's jsonb takes neither), so every number in what it returns is finite."""
    content = response.content
    if _LONG_NUMBER.search(content) is None:
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass
    return json.loads(content, parse_constant=_not_json, parse_float=_finite)


# A number token of 19 digits or more (after ':', '[' or ',', or opening the text): it may be
# an integer beyond 64 bits (2**63 has 19 digits). Strings that merely look like one, and long
# floats, only cost the standard library's parse.
_LONG_NUMBER = re.compile(rb"(?:^|[:\[,])\s*-?[0-9]{19}")


def response_page(response: httpx.Response) -> tuple[Any, bool]:
    """`response_json` for a list page, and whether the text may hold a float anywhere (a
    page without one spares each of its records the search, `RawItem.from_parsed`)."""
    return response_json(response), _ANY_FLOAT_TOKEN.search(response.content) is not None


def canonical_json(payload: Mapping[str, Any]) -> bytes:
    """A record's canonical JSON: keys sorted, no spaces, non-ASCII escaped. Its SHA-256 is the
    record's identity (`RawItem.content_hash`), so this text never changes for a given record:
    rows stored years ago deduplicate against the same record read today."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


# A float in orjson's compact output: a number token (after ':', '[' or ',') with a fraction or
# an exponent. The standard library spells some floats differently (1e-05 against 0.00001);
# strings that merely look like this only cost the slow path.
_FLOAT_TOKEN = re.compile(rb"[:\[,]-?[0-9]+[.eE]")
# The same in any JSON text, whitespace allowed after the punctuation: a number with a fraction
# or an exponent is the only JSON value parsed as a float, and every value follows ':', '[' or
# ','. No match anywhere (strings included) means no float in what the text holds.
_ANY_FLOAT_TOKEN = re.compile(rb"[:\[,]\s*-?[0-9]+[.eE]")


def _has_float(text: bytes) -> bool:
    """Whether orjson's output holds a float. Outside its strings, compact JSON has only
    punctuation, numbers, true, false and null, so a '.' or an exponent there is a float.
    A string holding a quote (escaped) would misplace the split: then the expression decides."""
    if b'\\"' in text:
        return bool(_FLOAT_TOKEN.search(text))
    outside = b"".join(text.split(b'"')[::2])
    if b"." in outside or b"E" in outside:
        return True
    return b"e" in outside.replace(b"true", b"").replace(b"false", b"")


def _canonical_fast(payload: Mapping[str, Any], floats: bool = True) -> bytes:
    """`canonical_json`, byte for byte, by orjson where its output is provably the same: only
    ASCII (the standard library escapes the rest, DEL included, as \\uXXXX; both escape control
    characters alike) and no float. Anything else, or anything orjson refuses (an integer
    beyond 64 bits, a non-string key), takes the standard library's path. orjson writes NaN and
    Infinity as null, so the payload's numbers must be finite (see `response_json`).
    `floats=False`: the payload was parsed from a text without a float (`response_page`)."""
    try:
        fast = orjson.dumps(
            payload,
            option=orjson.OPT_SORT_KEYS
            | orjson.OPT_PASSTHROUGH_DATETIME
            | orjson.OPT_PASSTHROUGH_DATACLASS
            | orjson.OPT_PASSTHROUGH_SUBCLASS,
        )
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return canonical_json(payload)
    if fast.isascii() and b"\x7f" not in fast and not (floats and _has_float(fast)):
        return fast
    return canonical_json(payload)


def body_of(payload: Mapping[str, Any]) -> bytes:
    """The normalizer input of a stored payload (the inverse of RawItem's constructors)."""
    xml = payload.get("xml")
    if isinstance(xml, str) and len(payload) == 1:
        return xml.encode()
    return canonical_json(dict(payload))


@dataclass(frozen=True)
class ListPage:
    """Records read in one step, and the cursor to store once they are committed."""

    items: list[RawItem]
    cursor: dict[str, Any]
    more: bool


@dataclass(frozen=True)
class ChargeResult:
    """The processor's answer to a charge: the attempt's id, verdict and raw record."""

    processor_payment_id: str
    approved: bool
    item: RawItem


@dataclass(frozen=True)
class BillingRefs:
    """The processor's references behind one payment, as ingestion stored them: the customer
    (always), the invoice or merchant order reference and the subscription (when the charge
    named them)."""

    customer_ref: str
    invoice_ref: str | None = None
    subscription_ref: str | None = None


@dataclass(frozen=True)
class StoredMethod:
    """A payment method the processor keeps for a customer, as its API describes it (never a
    card number). `fingerprint` is the processor's card fingerprint where it shows one."""

    ref: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    fingerprint: str | None = None


# Why a retry must not be charged: each maps to one transition of the payment.
Stop = Literal[
    "invoice_paid",
    "invoice_voided",
    "subscription_canceled",
    "subscription_ended",
    "customer_deleted",
]


@dataclass(frozen=True)
class BillingState:
    """What the processor says, just before a retry, about the billing objects behind it.

    `stop` is set when the retry must not be charged (`detail` says what the processor
    answered); `method` is the payment method a charge now would be made on (the
    subscription's or the customer's default), when the processor names one. `checked` lists
    what the processor's API could tell ("invoice", "subscription", "customer",
    "payment_method"); anything else it cannot, and the charge goes ahead as before.
    """

    stop: Stop | None = None
    detail: str = ""
    method: StoredMethod | None = None
    checked: frozenset[str] = frozenset()
    # Every stored method, for a processor that keeps several but names no default (Adyen).
    methods: tuple[StoredMethod, ...] = ()


@dataclass(frozen=True)
class CancelResult:
    """The processor's answer to a subscription cancellation (`already`: it was canceled
    before this request, by an earlier try or by someone else)."""

    subscription_ref: str
    status: str
    already: bool = False


@dataclass(frozen=True)
class ConnectionInfo:
    """What an adapter needs to talk to one account (credentials already decrypted)."""

    kind: Processor
    base_url: str
    credentials: Mapping[str, Any] = field(repr=False)
    account_ref: str | None = None


class ProcessorAdapter(Protocol):
    """One processor's API, in the portal's terms."""

    async def list_page(self, cursor: Mapping[str, Any]) -> ListPage: ...

    async def fetch(self, processor_payment_id: str) -> RawItem: ...

    async def charge(
        self,
        *,
        retry_of: str,
        amount_minor: int,
        currency: str,
        customer_ref: str,
        idempotency_key: str,
        payment_method_ref: str | None = None,
    ) -> ChargeResult: ...

    async def billing_state(self, refs: BillingRefs) -> BillingState: ...

    async def cancel_subscription(
        self, refs: BillingRefs, *, idempotency_key: str
    ) -> CancelResult: ...


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


async def call(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    processor: Processor,
    max_attempts: int = 3,
    base_delay: float = 0.2,
    answers: frozenset[int] = frozenset({402}),
    **kwargs: Any,
) -> httpx.Response:
    """One API call with bounded retries and backoff that honours rate-limit signals.
    Statuses in `answers` are business answers (a declined charge), returned, not raised."""
    last: TransientProcessorError | None = None
    for attempt in range(max_attempts):
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.TimeoutException:
            last = TransientProcessorError(f"{processor.value}: {method} timed out")
        except httpx.TransportError as exc:
            last = TransientProcessorError(f"{processor.value}: {type(exc).__name__}")
        else:
            status = response.status_code
            if status == 429 or status >= 500:
                if response.headers.get("stripe-should-retry", "").lower() == "false":
                    raise PermanentProcessorError(
                        f"{processor.value}: HTTP {status}, processor says do not retry",
                        status=status,
                    )
                last = TransientProcessorError(
                    f"{processor.value}: HTTP {status}",
                    status=status,
                    retry_after=_retry_after(response),
                )
            elif status in (401, 403):
                raise PermanentProcessorError(
                    f"{processor.value}: HTTP {status}, check credentials", status=status
                )
            elif status >= 400 and status not in answers:
                raise PermanentProcessorError(
                    f"{processor.value}: HTTP {status}: {response.text[:200]}", status=status
                )
            else:
                return response
        if attempt + 1 < max_attempts:
            delay = last.retry_after
            if delay is None:
                delay = base_delay * 2**attempt * (0.5 + random.random())  # noqa: S311 - jitter
            if delay > MAX_INLINE_WAIT_SECONDS:
                raise last
            await asyncio.sleep(delay)
    if last is None:  # pragma: no cover - max_attempts >= 1 always sets it
        raise ValueError("max_attempts must be at least 1")
    raise last
