"""Generated queries, mutations and HTTP requests over the whole schema, as every kind of caller."""

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import graphql
import httpx
import pytest
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import job_key_prefix
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis_graphql import mutations, nodes, queries

from app.clock import FixedClock
from app.crypto import CredentialBox
from app.db import Database
from app.embedded import Services, create_scratch_database, drop_database
from app.enums import Role
from app.errors import ErrorCode
from app.models.payment import Payment
from app.services.api_key import revoke_api_key
from app.services.webhook_endpoint import create_endpoint
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, system_principal
from portal.migrate import upgrade_database
from resolvers.ids import encode_cursor, encode_id
from tests.support import hangs
from tests.support.factories import key_id, make_connection, make_key, make_merchant, make_payments
from tests.support.graphql import run, schema_for
from tests.support.http import portal_http
from tests.support.model_rows import make_model

# Bounded for the normal suite (well under a minute in all). To hunt, raise the count and let
# each run explore new examples: PORTAL_FUZZ_EXAMPLES=2000 PORTAL_FUZZ_RANDOM=1 pytest <this file>
EXAMPLES = int(os.environ.get("PORTAL_FUZZ_EXAMPLES", "200"))
# Derandomized by default: CI explores the same examples every run and a failure reproduces.
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("PORTAL_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
MERCHANTS = "ABC"
# Root fields that take an id or list tenants' rows come first: Hypothesis favours early ones.
LOOKUPS_FIRST = ("node", "merchant", "merchants", "viewer")
ID_ORDER = (
    "Payment",
    "Merchant",
    "ProcessorConnection",
    "WebhookEndpoint",
    "Customer",
    "Card",
    "ApiKey",
)
# Which merchants each caller may see; everything of the others must never appear.
CALLERS: dict[str, set[str]] = {
    "merchant": {"A"},
    "partner": {"A", "B"},
    "support": {"A", "B", "C"},
    "revoked": set(),
    "unknown": set(),
    "none": set(),
}


class Fuzzed:
    """The seeded data, the tokens of each caller and what each caller must never see."""

    def __init__(self, db: Database, settings: Settings, queue: ArqRedis) -> None:
        self.db = db
        self.settings = settings
        self.queue = queue
        self.clock = FixedClock(NOW)
        self.tokens: dict[str, str | None] = {}
        # Global ids, raw keys and names of each merchant's rows.
        self.owned: dict[str, set[str]] = {n: {f"Fuzzed merchant {n}"} for n in MERCHANTS}
        # The ids arguments are drawn from, in the order given by ID_ORDER.
        self.ids: list[str] = []

    def __repr__(self) -> str:
        # Hypothesis prints the test's arguments with each failure: keep the fixture short.
        return "Fuzzed(...)"

    def hidden_from(self, caller: str) -> set[str]:
        return {
            text for name in MERCHANTS if name not in CALLERS[caller] for text in self.owned[name]
        }


async def _seed(w: Fuzzed) -> None:
    """Three merchants with payments, customers, cards, a connection, an endpoint and keys."""
    db, now = w.db, NOW
    box = CredentialBox(w.settings.secret_key.get_secret_value())
    merchants = {n: await make_merchant(db, f"Fuzzed merchant {n}", now=now) for n in MERCHANTS}
    tokens = w.tokens
    tokens.update(
        {
            "merchant": await make_key(db, Role.MERCHANT, [merchants["A"]], now=now),
            "partner": await make_key(
                db, Role.PARTNER, [merchants["A"], merchants["B"]], now=now, name="partner"
            ),
            "support": await make_key(db, Role.SUPPORT, [], now=now, name="support"),
            "revoked": await make_key(db, Role.MERCHANT, [merchants["A"]], now=now, name="gone"),
            "unknown": "rp_" + "0" * 40,
            "none": None,
        }
    )
    revoked = await key_id(db, str(tokens["revoked"]))
    other_keys = {n: await make_key(db, Role.MERCHANT, [merchants[n]], now=now) for n in "BC"}
    async with db.uow(SYSTEM_SCOPE) as uow:
        await revoke_api_key(
            uow, principal=system_principal(), key_id=revoked, reason="fuzz", now=now
        )
        await uow.commit()
    by_type: dict[str, list[str]] = {}
    for name, merchant in merchants.items():
        connection = await make_connection(db, merchant, now=now, settings=w.settings)
        payments: list[Payment] = await make_payments(
            db, merchant, 2, now=now, connection=connection
        )
        async with db.uow(SYSTEM_SCOPE) as uow:
            endpoint = await create_endpoint(
                uow,
                principal=system_principal(),
                merchant_id=merchant.id,
                url=f"https://{name.lower()}.fuzz.test/hooks",
                secret="fuzz-secret-" + "x" * 20,
                box=box,
                policy=w.settings.url_policy,
                now=now,
            )
            await uow.commit()
        rows: list[tuple[str, uuid.UUID]] = [
            ("Merchant", merchant.id),
            ("ProcessorConnection", connection.id),
            ("WebhookEndpoint", endpoint.id),
        ]
        for payment in payments:
            rows += [("Payment", payment.id), ("Customer", payment.customer_id)]
            if payment.card_id is not None:
                rows.append(("Card", payment.card_id))
        if name in other_keys:
            rows.append(("ApiKey", await key_id(db, other_keys[name])))
        for type_name, key in rows:
            w.owned[name] |= {encode_id(type_name, key), str(key)}
            by_type.setdefault(type_name, []).insert(0, encode_id(type_name, key))
    model = await make_model(db, now=now)
    # Global ids only (raw keys and names are there to be looked for, not sent), ordered so
    # the first ones, which Hypothesis draws most in a short run, are other tenants' rows of the
    # types looked up most: C's then B's payments, merchants, connections and so on.
    w.ids = [global_id for type_name in ID_ORDER for global_id in by_type.get(type_name, [])]
    w.ids.append(encode_id("Model", model.id))


@pytest.fixture(scope="module")
async def fuzzed(services: Services, settings: Settings) -> AsyncIterator[Fuzzed]:
    """A database of its own, on a real pool, seeded once for every example of the module.

    Not the rolled-back test connection: when a non-null root field fails, graphql-core
    cancels the sibling fields still running, and a statement cancelled mid-flight makes
    SQLAlchemy invalidate its connection; on a pool that costs one reconnect, on the one
    shared test connection it would end every later example. Mutations commit here; the
    examples are few and small, so what they add does not slow the later ones.
    """
    url = await create_scratch_database(services, "portal_fuzz")
    await asyncio.to_thread(upgrade_database, url)
    await hangs.limit_waits(url)
    db = Database.from_url(url, pool_size=4, max_overflow=4)
    # A queue of its own: no worker sharing this Redis runs the polls a mutation queues.
    name = f"test-fuzz-{uuid.uuid4().hex[:8]}"
    queue = await create_pool(RedisSettings.from_dsn(services.redis_url), default_queue_name=name)
    try:
        fuzzed = Fuzzed(db, settings, queue)
        await _seed(fuzzed)
        yield fuzzed
    finally:
        queued = [job_key_prefix + job.decode() for job in await queue.zrange(name, 0, -1)]
        await queue.delete(name, *queued)
        await queue.aclose()
        await db.dispose()
        await drop_database(services, url)


def _scalars(ids: list[str]) -> dict[str, st.SearchStrategy[graphql.ValueNode]]:
    """Argument values that reach past parsing: real ids of every tenant, cursors, instants."""
    instants = st.datetimes(
        min_value=datetime(1970, 1, 2),  # noqa: DTZ001 - made aware below
        max_value=datetime(2100, 1, 1),  # noqa: DTZ001
        timezones=st.sampled_from([UTC, None]),
    )
    junk = st.text(max_size=40)
    cursors = st.builds(
        encode_cursor,
        st.datetimes(timezones=st.just(UTC)),
        st.uuids(),
    )
    return {
        # Page sizes mostly within 1-100: a refused one ends the operation before execution.
        "Int": _mostly(st.integers(1, 100), st.integers(-(2**31), 2**31 - 1)).map(nodes.Int),
        # Strings are cursors, time zones and free text (names, reasons, URLs) alike.
        "String": _mostly(
            st.one_of(cursors, st.sampled_from(["UTC", "Europe/Paris"]), st.text(max_size=20)),
            junk,
        ).map(nodes.String),
        "ID": _mostly(st.sampled_from(ids) | cursors, junk).map(nodes.String),
        "DateTime": _mostly(instants.map(datetime.isoformat), junk).map(nodes.String),
        "Long": _mostly(
            st.integers(min_value=-(2**70), max_value=2**70).map(nodes.Int),
            junk.map(nodes.String),
        ),
        "JSON": st.one_of(
            st.integers(min_value=-(2**40), max_value=2**40).map(nodes.Int),
            junk.map(nodes.String),
            st.booleans().map(nodes.Boolean),
        ),
    }


def _mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Good values four times in five: one malformed argument fails validation of the whole
    operation, so junk everywhere would leave execution, where bugs live, mostly untried."""
    return st.integers(0, 4).flatmap(lambda n: bad if n == 4 else good)


def _strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a response with the key it sits under, to look for another tenant."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield "", str(name)
            yield from _strings(item, str(name))
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, key)
    elif value is not None:
        yield key, str(value)


async def _check(w: Fuzzed, caller: str, query: str) -> None:
    note(f"{caller}: {query}")
    result = await run(w.db, w.settings, w.clock, query, token=w.tokens[caller], redis=w.queue)
    for error in result.errors or []:
        code = (error.extensions or {}).get("code")
        assert code is not None, (query, error)
        assert code != ErrorCode.INTERNAL_SERVER_ERROR.value, (caller, query, error)
    hidden = w.hidden_from(caller)
    # A message may repeat what the caller sent (a malformed or unknown id); nothing else of
    # a hidden tenant may appear, an id or a name above all.
    leaked = {
        text
        for key, text in _strings(result.data)
        for h in hidden
        if h in text and not (key == "message" and h in query)
    }
    assert not leaked, (caller, query, leaked)
    # An error may repeat what the caller sent (a malformed id), never anything else hidden.
    for error in result.errors or []:
        said = {h for h in hidden if h in error.message and h not in query}
        assert not said, (caller, query, error.message)


# Callers with a working key reach further into the schema: they get most examples.
CALLER = st.sampled_from(
    ["merchant", "merchant", "partner", "partner", "support", "support", *sorted(CALLERS)]
)


class _SelectIds(graphql.Visitor):
    """Adds `id` to every selection on a type that has one."""

    def __init__(self, types: graphql.TypeInfo) -> None:
        super().__init__()
        self.types = types

    def leave_selection_set(self, node: graphql.SelectionSetNode, *_: Any) -> Any:
        parent = graphql.get_named_type(self.types.get_parent_type())
        fields = getattr(parent, "fields", {})
        selected = {s.name.value for s in node.selections if isinstance(s, graphql.FieldNode)}
        if "id" not in fields or "id" in selected:
            return None
        id_field = graphql.FieldNode(name=graphql.NameNode(value="id"))
        return graphql.SelectionSetNode(selections=(*node.selections, id_field))


def _printer(schema: graphql.GraphQLSchema) -> Callable[[graphql.DocumentNode], str]:
    """Prints an operation with every object's `id` selected.

    The generator picks fields at random; with ids always there, an object of a merchant the
    key may not see shows in the response by its id, whichever fields were picked.
    """

    def print_with_ids(document: graphql.DocumentNode) -> str:
        types = graphql.TypeInfo(schema)
        return graphql.print_ast(
            graphql.visit(document, graphql.TypeInfoVisitor(types, _SelectIds(types)))
        )

    return print_with_ids


def _operations(
    fuzzed: Fuzzed, build: Callable[..., st.SearchStrategy[Any]], root: graphql.GraphQLObjectType
) -> st.SearchStrategy[str]:
    """Operations on one root field at a time, arguments drawn from the seeded rows among others.

    One field per operation: a failing non-null root field (a FORBIDDEN `models`, say) nulls
    the whole response, and every sibling with it would go unchecked.
    """
    schema = schema_for(fuzzed.settings)._schema
    scalars = _scalars(fuzzed.ids)
    per_field = [
        build(
            schema,
            fields=[name],
            custom_scalars=scalars,
            allow_x00=False,
            print_ast=_printer(schema),
        )
        for name in sorted(root.fields, key=lambda f: (f not in LOOKUPS_FIRST, f))
    ]
    strategy: st.SearchStrategy[str] = st.one_of(per_field)
    return strategy


@pytest.fixture
def query_strategy(fuzzed: Fuzzed) -> st.SearchStrategy[str]:
    schema = schema_for(fuzzed.settings)._schema
    return _operations(fuzzed, queries, schema.query_type)


@pytest.fixture
def mutation_strategy(fuzzed: Fuzzed) -> st.SearchStrategy[str]:
    schema = schema_for(fuzzed.settings)._schema
    assert schema.mutation_type is not None
    return _operations(fuzzed, mutations, schema.mutation_type)


@FUZZ
@given(data=st.data())
async def test_generated_queries(
    fuzzed: Fuzzed, query_strategy: st.SearchStrategy[str], data: st.DataObject
) -> None:
    query = data.draw(query_strategy, "query")
    # Every caller runs the same query: one that leaks shows it whichever key it needs.
    for caller in sorted(CALLERS):
        await _check(fuzzed, caller, query)


@FUZZ
@given(data=st.data())
async def test_generated_mutations(
    fuzzed: Fuzzed, mutation_strategy: st.SearchStrategy[str], data: st.DataObject
) -> None:
    await _check(fuzzed, data.draw(CALLER, "caller"), data.draw(mutation_strategy, "mutation"))


@pytest.fixture(scope="module")
async def http(fuzzed: Fuzzed, services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with portal_http(fuzzed.db, services.redis_url, fuzzed.settings, fuzzed.clock) as client:
        yield client


# Header values httpx can send (printable ASCII).
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
_JSON_LEAVES = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
# Two levels of JSON are enough to reach every branch that reads `variables` or `extensions`.
JSON_VALUES = (
    _JSON_LEAVES
    | st.lists(_JSON_LEAVES, max_size=4)
    | st.dictionaries(st.text(max_size=8), _JSON_LEAVES | st.lists(_JSON_LEAVES, max_size=3))
)
MEDIA = st.sampled_from(
    [
        "application/json",
        "application/json",
        "application/json",
        "application/graphql-response+json",
        "application/json; charset=utf-8",
        "*/*",
        "text/html",
        "application/*;q=0",
        "text/plain",
        "multipart/form-data; boundary=x",
    ]
)


@st.composite
def requests(draw: st.DrawFn, fuzzed: Fuzzed) -> tuple[str, dict[str, str], Any, bytes | None]:
    """A method, headers, query parameters and a body, mostly almost right."""
    schema = schema_for(fuzzed.settings)._schema
    operation = draw(
        st.one_of(
            queries(schema, custom_scalars=_scalars(fuzzed.ids), allow_x00=False),
            mutations(schema, custom_scalars=_scalars(fuzzed.ids), allow_x00=False),
            st.text(max_size=60),
        )
    )
    payload = draw(
        st.one_of(
            st.fixed_dictionaries(
                {"query": st.just(operation)},
                optional={
                    "variables": JSON_VALUES,
                    "operationName": st.none() | st.text(max_size=10),
                    "extensions": JSON_VALUES,
                },
            ),
            JSON_VALUES,
            st.lists(st.fixed_dictionaries({"query": st.just(operation)}), max_size=2),
        )
    )
    body: bytes | None = draw(
        st.one_of(
            st.just(json.dumps(payload).encode()),
            st.binary(max_size=80),
            st.none(),
        )
    )
    headers: dict[str, str] = {}
    for name, values in {
        "content-type": MEDIA | HEADER_TEXT,
        "accept": MEDIA | HEADER_TEXT,
        "authorization": st.sampled_from(
            [f"Bearer {t}" for t in fuzzed.tokens.values() if t] + ["Bearer", "Basic x"]
        )
        | HEADER_TEXT,
    }.items():
        # Mostly present: a request without them is refused before it reaches anything.
        if draw(st.integers(0, 3)):
            headers[name] = draw(values)
    method = draw(st.sampled_from(["POST", "POST", "GET", "PUT", "DELETE", "OPTIONS"]))
    params: Any = None
    if method == "GET" and isinstance(payload, dict):
        params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in payload.items()}
    return method, headers, params, body


@FUZZ
@given(data=st.data())
async def test_http_never_answers_500(
    fuzzed: Fuzzed, http: httpx.AsyncClient, data: st.DataObject
) -> None:
    method, headers, params, body = data.draw(requests(fuzzed), "request")
    response = await http.request(method, "/graphql", headers=headers, params=params, content=body)
    assert response.status_code < 500, response.text
    if "json" in response.headers.get("content-type", ""):
        answer = response.json()
        for error in answer.get("errors") or []:
            code = error.get("extensions", {}).get("code")
            assert code is not None, answer
            assert code != ErrorCode.INTERNAL_SERVER_ERROR.value, answer
