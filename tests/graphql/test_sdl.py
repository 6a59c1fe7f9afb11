"""The committed SDL matches the code, and every type and field is described."""

from pathlib import Path

from graphql import GraphQLObjectType

from app.settings import Settings
from schema.root import export_sdl
from tests.support.graphql import schema_for

SDL = Path(__file__).resolve().parents[2] / "schema" / "schema.graphql"


def test_committed_sdl_matches_the_schema(settings: Settings) -> None:
    assert SDL.read_text() == export_sdl(schema_for(settings)), (
        "schema changed: run `portal export-schema` and review the diff"
    )


def test_every_type_and_field_is_described(settings: Settings) -> None:
    schema = schema_for(settings)._schema
    missing: list[str] = []
    for name, graphql_type in schema.type_map.items():
        if name.startswith("__") or name in {"String", "Int", "Boolean", "ID", "Float"}:
            continue
        if not graphql_type.description:
            missing.append(name)
        if isinstance(graphql_type, GraphQLObjectType):
            missing += [f"{name}.{f}" for f, d in graphql_type.fields.items() if not d.description]
    assert missing == []
