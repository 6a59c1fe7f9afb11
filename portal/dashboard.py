"""The reference dashboard at /dashboard and the GraphQL IDE's files, served from the package.

Both are static: the dashboard is plain ES modules that talk to the public GraphQL API (and the
export endpoint) like any other client, with the API key the user pastes kept in the browser's
session storage. Nothing is fetched from outside this server: GraphiQL and React are vendored
under `static/graphiql` (see its VENDORED.md).
"""

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).parent / "static"
DASHBOARD = STATIC / "dashboard"
GRAPHIQL = STATIC / "graphiql"

# The dashboard runs only its own scripts and styles and talks only to this origin (GraphQL
# over HTTP and, for live updates, its websocket), so the page cannot be made to load or send
# anything elsewhere even if some data it shows were crafted to try.
DASHBOARD_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
# GraphiQL's editor sets inline styles of its own and its stylesheet embeds its fonts;
# everything else as the dashboard.
GRAPHIQL_POLICY = DASHBOARD_POLICY.replace(
    "style-src 'self'", "style-src 'self' 'unsafe-inline'; font-src 'self' data:"
)


def _headers(policy: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        # The dashboard's link carries the key in its fragment, which browsers never send;
        # no referrer either, so no page address leaves with a request.
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


class _Secured:
    """Static files with the page's security headers on every response."""

    def __init__(self, app: ASGIApp, policy: str) -> None:
        self._app = app
        self._headers = [(k.lower().encode(), v.encode()) for k, v in _headers(policy).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self._headers]}
            await send(message)

        await self._app(scope, receive, send_with_headers)


async def _dashboard_index(_: Request) -> Response:
    return FileResponse(DASHBOARD / "index.html", headers=_headers(DASHBOARD_POLICY))


async def _to_dashboard(_: Request) -> Response:
    return RedirectResponse("/dashboard/", status_code=308)


def graphiql_page() -> Response:
    """GraphiQL on the vendored files (the page `GET /graphql` answers a browser with)."""
    return FileResponse(GRAPHIQL / "index.html", headers=_headers(GRAPHIQL_POLICY))


def dashboard_routes(*, graphiql: bool) -> list[BaseRoute]:
    """/dashboard/ (the page; every screen is a fragment route of it), its files, and the IDE's
    when GraphiQL is on."""
    routes: list[BaseRoute] = [
        Route("/dashboard", _to_dashboard, methods=["GET", "HEAD"]),
        Route("/dashboard/", _dashboard_index, methods=["GET", "HEAD"]),
        Mount(
            "/dashboard/assets",
            _Secured(StaticFiles(directory=DASHBOARD, follow_symlink=False), DASHBOARD_POLICY),
        ),
    ]
    if graphiql:
        ide = _Secured(StaticFiles(directory=GRAPHIQL), GRAPHIQL_POLICY)
        routes.append(Mount("/graphiql", ide))
    return routes
