"""The GraphQL HTTP view: bearer token -> principal -> typed context."""

import uuid
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse
from strawberry.types import ExecutionResult

from app.clock import Clock
from app.db import Database
from app.services.api_key import authenticate
from app.settings import Settings
from resolvers.context import Context


def bearer_token(request: Request | WebSocket) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class PortalGraphQL(GraphQL[Context, None]):
    """Strawberry's ASGI view with the portal's context."""

    def __init__(self, *args: Any, settings: Settings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._settings = settings

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        """Every error carries extensions.code, parse errors included (they skip extensions)."""
        response = await super().process_result(request, result)
        errors = response.get("errors")
        for error in errors if isinstance(errors, list) else []:
            if isinstance(error, dict):
                extensions = error.setdefault("extensions", {})
                if isinstance(extensions, dict):
                    extensions.setdefault("code", "GRAPHQL_VALIDATION_FAILED")
        return response

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        state = request.app.state
        db: Database = state.db
        clock: Clock = state.clock
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        token = bearer_token(request)
        principal = None
        if token is not None:
            principal = await authenticate(db, token, now=clock.now())
        return Context(
            db=db,
            principal=principal,
            clock=clock,
            settings=self._settings,
            redis=state.redis,
            request_id=request_id,
        )
