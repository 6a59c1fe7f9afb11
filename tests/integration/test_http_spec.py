"""GraphQL-over-HTTP behaviour: media types, status codes, methods, request ids and logs."""

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog

from app.clock import FixedClock
from app.db import Database
from app.embedded import Services
from app.enums import Role
from app.settings import Settings
from portal import http as http_view
from portal.http import MAX_BODY_BYTES, negotiate
from portal.logging import REDACTED, redact_secrets
from tests.support.factories import make_key, make_merchant
from tests.support.http import portal_http
from tests.support.logs import json_logs

GRJ = "application/graphql-response+json"
JSON = "application/json"
VIEWER = "{ viewer { role } }"


@pytest.fixture
async def token(db: Database, clock: FixedClock) -> str:
    merchant = await make_merchant(db, "Spec", now=clock.now())
    return await make_key(db, Role.MERCHANT, [merchant], now=clock.now())


async def post(
    client: httpx.AsyncClient,
    body: Any,
    *,
    accept: str | None = GRJ,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = dict(headers or {})
    if accept is not None:
        sent["accept"] = accept
    if token is not None:
        sent["authorization"] = f"Bearer {token}"
    return await client.post("/graphql", json=body, headers=sent)


def codes(response: httpx.Response) -> list[str]:
    return [e["extensions"]["code"] for e in response.json()["errors"]]


def assert_request_error(response: httpx.Response, code: str) -> None:
    """A GraphQL request error under the spec's media type: 400, errors, no data."""
    assert response.status_code == 400
    assert response.headers["content-type"] == f"{GRJ}; charset=utf-8"
    body = response.json()
    assert "data" not in body
    assert codes(response) == [code]


# -- media type negotiation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, JSON),
        ("", JSON),
        ("*/*", JSON),
        ("application/*", JSON),
        (JSON, JSON),
        (GRJ, GRJ),
        (f"{GRJ}; charset=utf-8, {JSON}; charset=utf-8", GRJ),
        (f"{JSON}, {GRJ}", GRJ),
        (f"{JSON}; q=0.9, {GRJ}", GRJ),
        (f"{JSON}, {GRJ}; q=0.5", JSON),
        (f"{GRJ}, */*; q=0.1", GRJ),
        (f"{GRJ}; q=0, */*", JSON),
        ("text/html", None),
        ("application/xml, text/plain", None),
        (f"{JSON}; q=0", None),
    ],
)
def test_negotiation(accept: str | None, expected: str | None) -> None:
    assert negotiate(accept) == expected


async def test_spec_media_type_when_accepted(client: httpx.AsyncClient, token: str) -> None:
    response = await post(client, {"query": VIEWER}, token=token)
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{GRJ}; charset=utf-8"
    assert response.json()["data"] == {"viewer": {"role": "MERCHANT"}}


async def test_legacy_json_without_accept(client: httpx.AsyncClient, token: str) -> None:
    response = await post(client, {"query": VIEWER}, accept=None, token=token)
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{JSON}; charset=utf-8"


@pytest.mark.parametrize("accept", ["text/html", "application/xml", f"{JSON}; q=0"])
async def test_unacceptable_accept_is_406(client: httpx.AsyncClient, accept: str) -> None:
    response = await post(client, {"query": VIEWER}, accept=accept)
    assert response.status_code == 406
    assert codes(response) == ["NOT_ACCEPTABLE"]


# -- request errors: 400 with the spec type, 200 with legacy JSON ---------------------


async def test_unparseable_json_body(client: httpx.AsyncClient) -> None:
    for accept in (GRJ, JSON):
        response = await client.post(
            "/graphql",
            content=b'{"query":',
            headers={"content-type": JSON, "accept": accept},
        )
        assert response.status_code == 400
        assert codes(response) == ["BAD_REQUEST"]


@pytest.mark.parametrize(
    "body",
    [
        {"qeury": "{ __typename }"},
        {"query": None},
        {"query": 7},
        # Found by the HTTP fuzzer: an empty query was a 500 (Strawberry's MissingQueryError).
        {"query": ""},
        {"query": VIEWER, "variables": [7]},
        {"query": VIEWER, "operationName": 3},
        {"query": VIEWER, "extensions": "x"},
        "just a string",
    ],
)
async def test_invalid_parameters_are_400(client: httpx.AsyncClient, body: Any) -> None:
    for accept in (GRJ, JSON):
        response = await post(client, body, accept=accept)
        assert response.status_code == 400
        assert codes(response) == ["BAD_REQUEST"]


async def test_empty_query_over_get_is_400(client: httpx.AsyncClient) -> None:
    for accept in (GRJ, JSON):
        response = await client.get("/graphql", params={"query": ""}, headers={"accept": accept})
        assert response.status_code == 400
        assert codes(response) == ["BAD_REQUEST"]


async def test_body_must_be_utf8(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql",
        content=json.dumps({"query": VIEWER}).encode("utf-16"),
        headers={"content-type": JSON, "accept": GRJ},
    )
    assert response.status_code == 400
    assert codes(response) == ["BAD_REQUEST"]


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    body = {"query": VIEWER, "variables": {"blob": "x" * (MAX_BODY_BYTES + 1)}}
    response = await post(client, body)
    assert response.status_code == 413
    assert codes(response) == ["BAD_REQUEST"]


async def test_batching_is_refused(client: httpx.AsyncClient) -> None:
    response = await post(client, [{"query": VIEWER}, {"query": VIEWER}])
    assert response.status_code == 400
    assert codes(response) == ["BAD_REQUEST"]
    assert "batch" in response.json()["errors"][0]["message"]


async def test_syntax_error(client: httpx.AsyncClient, token: str) -> None:
    assert_request_error(
        await post(client, {"query": "{ viewer { "}, token=token), "GRAPHQL_VALIDATION_FAILED"
    )
    legacy = await post(client, {"query": "{ viewer { "}, accept=JSON, token=token)
    assert legacy.status_code == 200
    assert codes(legacy) == ["GRAPHQL_VALIDATION_FAILED"]


async def test_validation_error(client: httpx.AsyncClient, token: str) -> None:
    query = "{ viewer { noSuchField } }"
    assert_request_error(
        await post(client, {"query": query}, token=token), "GRAPHQL_VALIDATION_FAILED"
    )
    legacy = await post(client, {"query": query}, accept=JSON, token=token)
    assert legacy.status_code == 200
    assert codes(legacy) == ["GRAPHQL_VALIDATION_FAILED"]


async def test_variable_coercion_error(client: httpx.AsyncClient, token: str) -> None:
    body = {
        "query": "query ($n: Int) { merchants(first: $n) { edges { cursor } } }",
        "variables": {"n": "many"},
    }
    response = await post(client, body, token=token)
    assert response.status_code == 400
    assert "data" not in response.json()
    assert all(code != "INTERNAL_SERVER_ERROR" for code in codes(response))
    legacy = await post(client, body, accept=JSON, token=token)
    assert legacy.status_code == 200


async def test_operation_cannot_be_determined(client: httpx.AsyncClient, token: str) -> None:
    two = "query A { viewer { role } } query B { viewer { name } }"
    for body in ({"query": two}, {"query": two, "operationName": "C"}):
        response = await post(client, body, token=token)
        assert response.status_code == 400
        assert "data" not in response.json()
        assert codes(response)
        legacy = await post(client, body, accept=JSON, token=token)
        assert legacy.status_code == 200
        assert codes(legacy)
    chosen = await post(client, {"query": two, "operationName": "B"}, token=token)
    assert chosen.status_code == 200
    assert chosen.json()["data"] == {"viewer": {"name": "test"}}


# -- executed requests: 200, field errors included ------------------------------------


async def test_field_errors_are_a_200_partial_response(client: httpx.AsyncClient) -> None:
    # Without a key the operation still runs; `viewer` fails and nulls `data`.
    response = await post(client, {"query": VIEWER})
    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None
    assert codes(response) == ["UNAUTHENTICATED"]


async def test_partial_data_with_field_error(client: httpx.AsyncClient) -> None:
    response = await post(client, {"query": '{ __typename merchant(id: "nope") { name } }'})
    assert response.status_code == 200
    body = response.json()
    assert body["data"]["__typename"] == "Query"
    assert body["errors"]


async def test_invalid_key_is_401_with_the_spec_type(client: httpx.AsyncClient) -> None:
    response = await post(client, {"query": VIEWER}, token="rp_not-a-real-key-at-all")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "data" not in response.json()
    assert codes(response) == ["UNAUTHENTICATED"]
    legacy = await post(client, {"query": VIEWER}, accept=JSON, token="rp_not-a-real-key")
    assert legacy.status_code == 200
    assert codes(legacy) == ["UNAUTHENTICATED"]


@pytest.mark.parametrize("accept", [GRJ, JSON])
async def test_failure_outside_resolvers_is_a_coded_500(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, accept: str
) -> None:
    # A bug, not an outage (those are 503s, see test_http_outages.py): masked.
    async def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(http_view, "authenticate", broken)
    response = await post(client, {"query": VIEWER}, accept=accept, token="rp_whatever-key-value")
    assert response.status_code == 500
    assert codes(response) == ["INTERNAL_SERVER_ERROR"]
    assert "secret detail" not in response.text
    assert "retry-after" not in response.headers


# -- methods and content types ---------------------------------------------------------


MUTATION = (
    'mutation M { updateRetryPolicy(input: {merchantId: "x", expectedVersion: 1, '
    'reason: "r", maxAttempts: 3}) { errors { code } } }'
)


async def test_get_runs_queries(client: httpx.AsyncClient, token: str) -> None:
    response = await client.get(
        "/graphql",
        params={"query": "query ($n: Int) { merchants(first: $n) { edges { cursor } } }"},
        headers={"accept": GRJ, "authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200
    assert len(response.json()["data"]["merchants"]["edges"]) == 1


@pytest.mark.parametrize("accept", [GRJ, JSON])
async def test_get_mutation_is_405(client: httpx.AsyncClient, token: str, accept: str) -> None:
    response = await client.get(
        "/graphql",
        params={"query": MUTATION},
        headers={"accept": accept, "authorization": f"Bearer {token}"},
    )
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert codes(response) == ["METHOD_NOT_ALLOWED"]


async def test_get_with_bad_variables_json(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/graphql", params={"query": VIEWER, "variables": "{nope"}, headers={"accept": GRJ}
    )
    assert response.status_code == 400
    assert codes(response) == ["BAD_REQUEST"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
async def test_other_methods_are_405(client: httpx.AsyncClient, method: str) -> None:
    response = await client.request(method, "/graphql", headers={"accept": GRJ})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert codes(response) == ["METHOD_NOT_ALLOWED"]


@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        ("text/plain", json.dumps({"query": MUTATION})),
        ("application/x-www-form-urlencoded", "query=" + MUTATION),
        (
            "multipart/form-data; boundary=x",
            f'--x\r\nContent-Disposition: form-data; name="query"\r\n\r\n{MUTATION}\r\n--x--\r\n',
        ),
        ("application/json; charset=latin-1", json.dumps({"query": MUTATION})),
        (None, json.dumps({"query": MUTATION})),
    ],
)
async def test_csrf_prone_content_types_are_415(
    client: httpx.AsyncClient, token: str, content_type: str | None, content: str
) -> None:
    headers = {"accept": GRJ, "authorization": f"Bearer {token}"}
    if content_type is not None:
        headers["content-type"] = content_type
    response = await client.post("/graphql", content=content.encode(), headers=headers)
    assert response.status_code == 415
    assert codes(response) == ["UNSUPPORTED_MEDIA_TYPE"]


async def test_json_with_utf8_charset_is_accepted(client: httpx.AsyncClient, token: str) -> None:
    response = await client.post(
        "/graphql",
        content=json.dumps({"query": VIEWER}).encode(),
        headers={
            "content-type": "application/json; charset=UTF-8",
            "accept": GRJ,
            "authorization": f"Bearer {token}",
        },
    )
    assert response.status_code == 200


# -- request ids and logs --------------------------------------------------------------


async def test_request_id_generated_and_echoed(client: httpx.AsyncClient) -> None:
    generated = await client.get("/healthz")
    assert len(generated.headers["x-request-id"]) == 32
    echoed = await post(client, {"query": VIEWER}, headers={"x-request-id": "abc-123.X_y"})
    assert echoed.headers["x-request-id"] == "abc-123.X_y"
    hostile = await post(client, {"query": VIEWER}, headers={"x-request-id": "a b\tc"})
    assert hostile.headers["x-request-id"] != "a b\tc"


def test_redaction_processor() -> None:
    event: dict[str, Any] = {
        "event": "calling with Authorization: Bearer sk_live_123 and rp_abcdefghijklmnop",
        "authorization": "Bearer x",
        "headers": {"X-Api-Key": "k", "accept": "a"},
        "items": [{"client_secret": "s"}, "token rp_abcdefghijklmnop"],
        "credentials": {"user": "u"},
        "count": 3,
    }
    out = redact_secrets(None, "info", event)
    assert out["event"] == f"calling with Authorization: Bearer {REDACTED} and {REDACTED}"
    assert out["authorization"] == REDACTED
    assert out["headers"] == {"X-Api-Key": REDACTED, "accept": "a"}
    assert out["items"] == [{"client_secret": REDACTED}, f"token {REDACTED}"]
    assert out["credentials"] == REDACTED
    assert out["count"] == 3


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    with json_logs("INFO") as stream:
        yield stream


async def test_logs_carry_request_id_and_never_the_token(
    db: Database,
    services: Services,
    settings: Settings,
    clock: FixedClock,
    token: str,
    captured_logs: io.StringIO,
) -> None:
    async with portal_http(db, services.redis_url, settings, clock) as http:
        response = await http.post(
            "/graphql",
            json={"query": "query Me { viewer { role } }"},
            headers={"authorization": f"Bearer {token}", "x-request-id": "req-42"},
        )
        # A careless log call in a handler: the processor must still hide the token.
        logging.getLogger("portal.test").warning(
            "header was %s", f"Bearer {token}", extra={"token": token}
        )
        structlog.get_logger("portal.test").info(
            "careless", authorization=f"Bearer {token}", api_key=token, note=token
        )
    assert response.status_code == 200
    output = captured_logs.getvalue()
    assert token not in output
    assert token[len("rp_") :] not in output
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    requests = [line for line in lines if line.get("event") == "request"]
    assert requests, output
    assert requests[0]["request_id"] == "req-42"
    assert requests[0]["operation"] == "Me"
    assert requests[0]["status"] == 200
    careless = next(line for line in lines if line.get("event") == "careless")
    assert careless["authorization"] == REDACTED
    assert careless["api_key"] == REDACTED
    assert careless["note"] == REDACTED
