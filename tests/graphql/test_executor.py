"""The portal's executor answers exactly as Strawberry's own (data, errors, paths, locations),
and documents are parsed and validated once per query text."""

from enum import Enum
from typing import Any

import strawberry
from graphql import GraphQLObjectType, specified_rules
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types import ExecutionResult

from app.clock import FixedClock
from app.db import Database
from app.enums import PaymentState, Role
from app.services.seed import seed_payments
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from app.workflows.authentication import authenticate
from resolvers.context import Context
from resolvers.ids import encode_id
from schema.extensions import DocumentCache, PortalExecutor, PortalSchema, _plain_leaves
from schema.root import build_schema
from tests.support.factories import make_key, make_merchant
from tests.support.graphql import PAYMENTS_PAGE


def outcome(result: ExecutionResult) -> tuple[Any, list[Any] | None]:
    errors = None
    if result.errors is not None:
        errors = [dict(e.formatted) for e in result.errors]
    return result.data, errors


@strawberry.enum
class Colour(Enum):
    RED = "red"


class BrokenThing:
    """Read like a Thing, but its `broken` attribute raises."""

    def __init__(self, thing: "Thing") -> None:
        self._thing = thing

    def __getattr__(self, name: str) -> Any:
        if name == "broken":
            raise ValueError("no attribute today")
        return getattr(self._thing, name)


@strawberry.type
class Thing:
    name: str
    missing: str
    maybe: str | None
    colour: Colour
    bad_colour: Colour
    count: int
    huge: int
    broken: str


def _odd_things() -> list[Thing]:
    """A good thing, one with a null where null is refused, an unknown enum value and a huge
    Int, and one whose attribute raises."""
    good = _good_thing("a")
    bad = Thing(
        name="b",
        missing=None,  # type: ignore[arg-type]
        maybe="x",
        colour=Colour.RED,
        bad_colour="purple",  # type: ignore[arg-type]
        count=2,
        huge=2**40,
        broken="c",
    )
    return [good, bad, BrokenThing(good)]  # type: ignore[list-item]


def _good_thing(name: str) -> Thing:
    return Thing(
        name=name,
        missing="m",
        maybe=None,
        colour=Colour.RED,
        bad_colour=Colour.RED,
        count=1,
        huge=1,
        broken="b",
    )


@strawberry.type
class Query:
    @strawberry.field
    def things(self) -> list[Thing]:
        return _odd_things()


THINGS = "{ things { name missing maybe colour badColour count huge broken n: name } }"


@strawberry.type
class Box:
    label: str
    thing: Thing
    spare: Thing | None
    things: list[Thing]


@strawberry.type
class BoxQuery:
    @strawberry.field
    def boxes(self) -> list[Box]:
        odd = _odd_things()
        return [
            Box(label="plain", thing=_good_thing("a"), spare=None, things=[_good_thing("b")]),
            Box(label="odd", thing=odd[1], spare=odd[2], things=odd),
            Box(label="null", thing=None, spare=None, things=[None]),  # type: ignore[arg-type,list-item]
        ]


class CountingExecutor(PortalExecutor):
    """Counts the fields executed one by one (graphql-core's way)."""

    fields_executed = 0

    def execute_field(self, *args: Any, **kwargs: Any) -> Any:
        CountingExecutor.fields_executed += 1
        return super().execute_field(*args, **kwargs)


async def test_odd_values_fail_as_they_do_without_the_short_way() -> None:
    ours = PortalSchema(query=Query, execution_context_class=PortalExecutor)
    theirs = PortalSchema(
        query=Query, execution_context_class=StrawberryGraphQLCoreExecutionContext
    )
    # Every field of Thing takes the short way, and `things` (a resolver) does not.
    thing, query_type = ours._schema.type_map["Thing"], ours._schema.query_type
    assert isinstance(thing, GraphQLObjectType)
    assert set(_plain_leaves(thing)) == set(thing.fields)
    assert query_type is not None
    assert _plain_leaves(query_type) == {}
    for query in (
        THINGS,
        "{ things { maybe broken } }",
        "{ things { maybe badColour } }",
        "{ things { name maybe count } }",
        "{ things { name count name } }",
        "{ things { name missing } }",
        "{ things { huge } }",
    ):
        mine, reference = await ours.execute(query), await theirs.execute(query)
        assert outcome(mine) == outcome(reference), query
    # And the differences were there to be seen: errors at their paths, data nulled.
    data, errors = outcome(await ours.execute(THINGS))
    assert data is None
    assert errors
    assert {tuple(e["path"]) for e in errors} >= {("things", 1, "missing")}
    for query, path in (
        ("{ things { maybe broken } }", ("things", 2, "broken")),
        ("{ things { maybe badColour } }", ("things", 1, "badColour")),
    ):
        _, errors = outcome(await ours.execute(query))
        assert errors
        assert [tuple(e["path"]) for e in errors] == [path]


async def test_plain_trees_of_objects_answer_as_without_the_short_way() -> None:
    """Objects whose fields, to the leaves, only read attributes are read in one walk; an
    odd value anywhere in them sends the object through graphql-core, errors at their paths."""
    ours = PortalSchema(query=BoxQuery, execution_context_class=CountingExecutor)
    theirs = PortalSchema(
        query=BoxQuery, execution_context_class=StrawberryGraphQLCoreExecutionContext
    )
    for query in (
        "{ boxes { label thing { name count colour } things { name maybe } } }",
        "{ boxes { thing { badColour } } }",
        "{ boxes { spare { broken } things { huge } } }",
        "{ boxes { things { missing } } }",
        "{ boxes { thing { name } thing { count } } }",
        "{ boxes { t: thing { name } thing { name } } }",
        "{ boxes { thing { __typename name } } }",
        "query($yes: Boolean!) { boxes { thing { name @include(if: $yes) count } } }",
    ):
        variables = {"yes": False}
        mine = await ours.execute(query, variable_values=variables)
        reference = await theirs.execute(query, variable_values=variables)
        assert outcome(mine) == outcome(reference), query
    # A plain tree: only `boxes` (a resolver) and the odd boxes' fields go field by field.
    plain = "{ boxes { label thing { name count } things { name } } }"
    CountingExecutor.fields_executed = 0
    one_box = PortalSchema(query=OneBoxQuery, execution_context_class=CountingExecutor)
    data, errors = outcome(await one_box.execute(plain))
    assert errors is None
    assert data == {
        "boxes": [{"label": "plain", "thing": {"name": "a", "count": 1}, "things": [{"name": "b"}]}]
    }
    assert CountingExecutor.fields_executed == 1


@strawberry.type
class OneBoxQuery:
    @strawberry.field
    def boxes(self) -> list[Box]:
        return [Box(label="plain", thing=_good_thing("a"), spare=None, things=[_good_thing("b")])]


async def test_a_page_of_payments_is_the_same(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Executor", now=clock.now())
    async with db.uow(SYSTEM_SCOPE) as uow:
        await seed_payments(uow, merchant_id=merchant.id, count=60, now=clock.now())
        await uow.commit()
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    principal = await authenticate(db, token, now=clock.now())
    ours = build_schema(settings)
    theirs = build_schema(settings)
    theirs.execution_context_class = StrawberryGraphQLCoreExecutionContext
    variables = {"id": encode_id("Merchant", merchant.id), "first": 50}
    results = []
    for schema in (ours, theirs):
        context = Context(db=db, principal=principal, clock=clock, settings=settings)
        results.append(
            outcome(await schema.execute(PAYMENTS_PAGE, variables, context_value=context))
        )
    assert results[0] == results[1]
    data, errors = results[0]
    assert errors is None
    edges = data["merchant"]["payments"]["edges"]
    assert len(edges) == 50
    assert {e["node"]["state"] for e in edges} <= {s.name for s in PaymentState}


def test_documents_are_kept_parsed_and_validated_up_to_a_bound(settings: Settings) -> None:
    schema = build_schema(settings)
    rules = (*specified_rules,)
    cache = DocumentCache([], max_tokens=50, maxsize=2)
    first = cache.prepared(schema._schema, "{ viewer { role } }", rules)
    assert first is not None
    assert first[1] == []
    # The same text is the same document, validated once.
    assert cache.prepared(schema._schema, "{ viewer { role } }", rules) is first
    invalid = cache.prepared(schema._schema, "{ viewer { nope } }", rules)
    assert invalid is not None
    (error,) = invalid[1]
    assert error.message.startswith("Cannot query field 'nope' on type 'Viewer'.")
    # Syntax errors and documents over the token limit are left to Strawberry to report.
    assert cache.prepared(schema._schema, "{ viewer { ", rules) is None
    assert cache.prepared(schema._schema, "{ " + "a " * 60 + "}", rules) is None
    # Past the bound the least recently used document goes.
    cache.prepared(schema._schema, "{ viewer { name } }", rules)
    assert cache.prepared(schema._schema, "{ viewer { role } }", rules) is not first
