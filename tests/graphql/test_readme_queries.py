"""The README's example queries are valid against the schema (documentation cannot drift)."""

import re
from pathlib import Path

from graphql import parse, validate

from app.settings import Settings
from tests.support.graphql import schema_for

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_examples_validate(settings: Settings) -> None:
    blocks = re.findall(r"```graphql\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "the README has no GraphQL examples"
    schema = schema_for(settings)._schema
    for block in blocks:
        document = parse(block)
        assert len(document.definitions) >= 2
        errors = validate(schema, document)
        assert errors == [], [e.message for e in errors]
