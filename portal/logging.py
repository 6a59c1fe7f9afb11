"""Structured logging: JSON lines with the request id bound and secrets redacted."""

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Mapping, MutableMapping
from functools import lru_cache
from typing import IO, Any

import httpx
import orjson
import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.services.api_key import TOKEN_PREFIX

REDACTED = "[REDACTED]"
# Substrings of key names whose values are never written to a log line.
SECRET_KEYS = ("authorization", "token", "credential", "api_key", "apikey", "secret", "password")
# Secrets inside free text: bearer credentials and the portal's own key format.
_SECRET_TEXT = re.compile(
    rf"(?i)(bearer\s+)[^\s\"',;]+|{re.escape(TOKEN_PREFIX)}[A-Za-z0-9_\-]{{8,}}"
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")


def _is_secret_key(key: object) -> bool:
    return _is_secret_name(key) if isinstance(key, str) else _is_secret_name(str(key))


@lru_cache(maxsize=4096)
def _is_secret_name(key: str) -> bool:
    # `X-Api-Key`, `api-key` and `api_key` are the same secret.
    lowered = key.lower().replace("-", "_")
    return any(part in lowered for part in SECRET_KEYS)


def _json_line(value: Any, *, default: Callable[[Any], Any] = repr, **_: Any) -> str:
    """One log line as JSON: orjson, or the standard library for what orjson refuses
    (integers past 64 bits, keys that are not strings)."""
    try:
        return orjson.dumps(value, default=default).decode()
    except TypeError:
        return json.dumps(value, default=default)


def _scrub_text(text: str) -> str:
    return _SECRET_TEXT.sub(lambda m: (m.group(1) or "") + REDACTED, text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, Mapping):
        return {k: REDACTED if _is_secret_key(k) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact_secrets(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: secret-named keys (at any depth) and bearer tokens in text."""
    for key, value in list(event_dict.items()):
        if key.startswith("_"):
            continue  # structlog's own bookkeeping (the stdlib record, for instance)
        event_dict[key] = REDACTED if _is_secret_key(key) else _scrub(value)
    return event_dict


class UrlSecretsFilter(logging.Filter):
    """Keeps only the scheme, host and port of URLs httpx logs (one INFO line per request):
    merchants put tokens in webhook URLs' paths (`/hooks/<id>/<token>`) and query strings,
    and processors' URLs may carry keys."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _bare_url(a) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True


def _bare_url(url: httpx.URL) -> httpx.URL:
    return httpx.URL(scheme=url.scheme, host=url.host, port=url.port)


def configure_logging(
    level: str = "INFO", *, json: bool = True, stream: IO[str] | None = None
) -> None:
    """Route stdlib and structlog records through one renderer (to stderr unless `stream`)."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(_json_line) if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                # Last before rendering, so exception text and every field pass through it.
                redact_secrets,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # On the logger, not the handler: records from "httpx" are filtered before propagating.
    client_logger = logging.getLogger("httpx")
    if not any(isinstance(f, UrlSecretsFilter) for f in client_logger.filters):
        client_logger.addFilter(UrlSecretsFilter())


def request_id_from(value: str | None) -> str:
    """The client's X-Request-ID when it is a sane token, else a new one (no log injection)."""
    if value and _REQUEST_ID.match(value):
        return value
    return uuid.uuid4().hex


class RequestLogMiddleware:
    """Binds a request id to every log line of a request, returns it, and logs the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._log = structlog.stdlib.get_logger("portal.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                header = value.decode("latin-1")
                break
        request_id = request_id_from(header)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("x-request-id", request_id)
            await send(message)

        # Bound and reset by hand: `bound_contextvars`'s generator costs more than both.
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                operation=state.get("graphql_operation"),
            )
            structlog.contextvars.reset_contextvars(**bound)
