"""API key types, the apiKeys list, and the createApiKey and revokeApiKey mutations."""

from datetime import datetime
from typing import Annotated, Self

import strawberry

from app.errors import ErrorCode
from app.models.api_key import ApiKey as ApiKeyModel
from resolvers import api_key as key_resolvers
from resolvers.context import Context
from resolvers.counts import CountOf, counter
from schema.enums import ApiKeyScope, Role
from schema.merchant import Merchant
from schema.mutation import Payload, ReasonArg, mutation
from schema.node import Node
from schema.relay import AfterArg, Connection, FirstArg, connection
from schema.rows import from_row

Info = strawberry.Info[Context, None]


@strawberry.type(description="An API key: its role and grants; never its token or hash.")
class ApiKey(Node):
    name: str = strawberry.field(description="The key's name.")
    role: Role = strawberry.field(description="What the key may do.")
    prefix: str = strawberry.field(description="The token's first characters, to recognize it.")
    created_at: datetime = strawberry.field(description="When the key was created.")
    last_used_at: datetime | None = strawberry.field(
        description="When the key last authenticated (to the minute)."
    )
    revoked_at: datetime | None = strawberry.field(description="When it was revoked, if it was.")
    scopes: list[ApiKeyScope] = strawberry.field(
        description=(
            "What it may do within its role: READ (queries) and, with WRITE, mutations. Keys "
            "made before scopes existed have both."
        )
    )
    expires_at: datetime | None = strawberry.field(
        description="When it stops authenticating (like an unknown key); null never."
    )
    _row: strawberry.Private[ApiKeyModel]

    @classmethod
    def from_model(cls, row: ApiKeyModel) -> Self:
        scopes = [ApiKeyScope(s) for s in row.scopes]
        return from_row(cls, row, id=cls.global_id(row.id), scopes=scopes, _row=row)

    @strawberry.field(description="The merchants the key may see; empty for support keys.")
    async def merchants(self, info: Info) -> list[Merchant]:
        rows = await key_resolvers.merchants(info.context, self._row.id)
        return [Merchant.from_model(m) for m in rows]


@connection(
    "A page of API keys, newest first.",
    edge="An API key and its cursor.",
    noun="key",
    nouns="keys",
)
class ApiKeyConnection(Connection[ApiKey]):
    pass


async def api_keys(info: Info, first: FirstArg = None, after: AfterArg = None) -> ApiKeyConnection:
    page = await key_resolvers.api_keys_page(info.context, first=first, after=after)
    count = counter(info.context, CountOf("api_keys"))
    return ApiKeyConnection.from_page(page, ApiKey.from_model, count)


@strawberry.input(description="A new API key.")
class CreateApiKeyInput:
    role: Role = strawberry.field(
        description="MERCHANT (one merchant), PARTNER (one or more) or SUPPORT (none)."
    )
    merchant_ids: list[strawberry.ID] = strawberry.field(
        description="Global ids of the merchants the key may see."
    )
    name: str = strawberry.field(description="A name, 1-200 characters, shown in the audit log.")
    scopes: list[ApiKeyScope] = strawberry.field(
        default_factory=lambda: list(ApiKeyScope),
        description=(
            "What it may do: READ (required; every query) and WRITE (every mutation; a key "
            "without it is FORBIDDEN on each). Both unless told."
        ),
    )
    expires_at: datetime | None = strawberry.field(
        default=None,
        description=(
            "When it stops authenticating, in the future; null (the default) never. An "
            "expired key is refused like an unknown one (401)."
        ),
    )


class CreateApiKeyPayload(Payload):
    api_key: ApiKey | None = strawberry.field(description="The new key, when it was created.")
    token: str | None = strawberry.field(
        description="The bearer token. Shown only in this response; store it now."
    )


@mutation(
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID),
    why="refused a key",
    errors="Why the key was refused",
    subject="merchantIds",
    description=(
        "Create an API key, with its scopes and an optional expiry; the token is returned "
        "once. Support may create any key; a merchant key only merchant keys for its own "
        "merchant. Audited."
    ),
)
async def create_api_key(info: Info, input: CreateApiKeyInput) -> CreateApiKeyPayload:
    row, token = await key_resolvers.create(
        info.context,
        role=input.role,
        merchant_global_ids=[str(m) for m in input.merchant_ids],
        name=input.name,
        scopes=frozenset(input.scopes),
        expires_at=input.expires_at,
    )
    return CreateApiKeyPayload(api_key=ApiKey.from_model(row), token=token)


class RevokeApiKeyPayload(Payload):
    api_key: ApiKey | None = strawberry.field(description="The key, revoked.")


@mutation(
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID),
    errors="Why the key was not revoked",
    subject="id",
    description=(
        "Revoke an API key the caller can see (support, or a merchant key for its "
        "merchant's keys). Audited."
    ),
)
async def revoke_api_key(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="The key's global id.")],
    reason: ReasonArg,
) -> RevokeApiKeyPayload:
    row = await key_resolvers.revoke(info.context, global_id=str(id), reason=reason)
    return RevokeApiKeyPayload(api_key=ApiKey.from_model(row))
