"""Building API objects from rows: only declared fields are read, so sealed columns never leak."""

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import strawberry

from app.enums import ConnectionStatus, Processor, Role
from app.models.api_key import ApiKey as ApiKeyModel
from app.models.ingestion import ProcessorConnection as ConnectionModel
from app.models.webhook_endpoint import WebhookEndpoint as EndpointModel
from schema.api_key import ApiKey
from schema.connection import ProcessorConnection
from schema.rows import from_row
from schema.webhook_endpoint import WebhookEndpoint

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SEALED = b"sealed credential bytes"


def _computed() -> str:
    return "resolved"


@strawberry.type(description="A test type.")
class Shown:
    name: str = strawberry.field(description="Copied.")
    label: str = strawberry.field(description="Given.")
    computed: str = strawberry.field(resolver=_computed, description="Resolved, never copied.")


@strawberry.type(description="A test type with an id.")
class WithId:
    id: strawberry.ID = strawberry.field(description="Never copied from the row.")


def test_declared_fields_are_copied_and_nothing_else() -> None:
    row = SimpleNamespace(name="n", label="row label", computed="row", secret_encrypted=SEALED)
    shown = from_row(Shown, row, label="given")
    assert (shown.name, shown.label) == ("n", "given")
    assert "row" not in vars(shown).values()
    assert not hasattr(shown, "secret_encrypted")
    assert SEALED not in vars(shown).values()


def test_an_id_must_be_given() -> None:
    key = uuid.uuid4()
    with pytest.raises(TypeError, match=r"WithId\.id: give the id"):
        from_row(WithId, SimpleNamespace(id=key))
    assert from_row(WithId, SimpleNamespace(id=key), id=strawberry.ID("global")).id == "global"


def test_sealed_columns_never_reach_the_api_types() -> None:
    merchant_id = uuid.uuid4()
    connection = ConnectionModel(
        merchant_id=merchant_id,
        kind=Processor.STRIPE,
        name="Stripe",
        base_url="https://api.stripe.test",
        credentials_encrypted=SEALED,
        status=ConnectionStatus.ACTIVE,
        created_at=NOW,
    )
    endpoint = EndpointModel(
        merchant_id=merchant_id,
        url="https://hooks.example.com/portal",
        secret_encrypted=SEALED,
        previous_secret_encrypted=SEALED,
        previous_secret_expires_at=NOW,
        created_at=NOW,
    )
    key = ApiKeyModel(
        name="k", prefix="pk_", token_hash=SEALED.hex(), role=Role.SUPPORT, created_at=NOW
    )
    for shown in (
        ProcessorConnection.from_model(connection),
        WebhookEndpoint.from_model(endpoint),
        ApiKey.from_model(key),
    ):
        public = {name: value for name, value in vars(shown).items() if name != "_row"}
        assert SEALED not in public.values()
        assert SEALED.hex() not in public.values()
        assert not {"credentials_encrypted", "secret_encrypted", "token_hash"} & public.keys()
