"""API keys: create (token once), list by visibility, revoke, and what a key never shows."""

from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import select

from app.clock import FixedClock
from app.db import Database
from app.enums import Role
from app.models.api_key import ApiKey
from app.models.merchant import Merchant
from app.services.api_key import hash_token
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from resolvers.ids import encode_id
from tests.support.audit import audit_entries
from tests.support.factories import key_id, make_key, make_merchant
from tests.support.graphql import codes, run, run_counted, run_data, schema_for

CREATE = """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
  apiKey { id name role prefix createdAt lastUsedAt revokedAt merchants { id name } }
  token errors { code message field } } }"""

LIST = """query($first: Int, $after: String) { apiKeys(first: $first, after: $after) {
  edges { cursor node { id name role merchants { id } } } pageInfo { hasNextPage endCursor } } }"""

REVOKE = """mutation($id: ID!, $reason: String!) { revokeApiKey(id: $id, reason: $reason) {
  apiKey { id revokedAt } errors { code message field } } }"""


def _mid(merchant: Merchant) -> str:
    return encode_id("Merchant", merchant.id)


async def _keys(db: Database) -> list[ApiKey]:
    async with db.session(SYSTEM_SCOPE) as s:
        return list((await s.execute(select(ApiKey))).scalars())


async def test_support_creates_a_key_whose_token_works_once_shown(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Keyed", now=clock.now())
    support = await make_key(db, Role.SUPPORT, [], now=clock.now(), name="ops")
    data = await run_data(
        db,
        settings,
        clock,
        CREATE,
        support,
        input={"role": "MERCHANT", "merchantIds": [_mid(merchant)], "name": " dashboard "},
    )
    payload = data["createApiKey"]
    assert payload["errors"] == []
    key, token = payload["apiKey"], payload["token"]
    assert token.startswith(key["prefix"])
    assert key["name"] == "dashboard"
    assert key["role"] == "MERCHANT"
    assert key["revokedAt"] is None
    assert key["lastUsedAt"] is None
    assert key["merchants"] == [{"id": _mid(merchant), "name": "Keyed"}]
    # The token authenticates, as the merchant's key; only its hash is stored.
    viewer = await run_data(db, settings, clock, "{ viewer { role name } }", token)
    assert viewer["viewer"] == {"role": "MERCHANT", "name": "dashboard"}
    stored = {k.token_hash for k in await _keys(db)}
    assert hash_token(token) in stored
    assert token not in stored
    # Listing never shows the token again.
    listed = await run_data(db, settings, clock, LIST, support)
    assert token not in str(listed)
    [entry] = await audit_entries(db, action="api_key.create")
    assert entry.merchant_id == merchant.id
    assert entry.actor == "api_key:ops"
    assert entry.after == {
        "name": "dashboard",
        "role": "merchant",
        "prefix": key["prefix"],
        "revoked_at": None,
        "scopes": ["read", "write"],
        "expires_at": None,
    }
    assert token not in str(entry.after)


def test_api_key_type_exposes_no_secret(settings: Settings) -> None:
    fields = set(schema_for(settings)._schema.type_map["ApiKey"].fields)
    assert fields == {
        "id",
        "name",
        "role",
        "prefix",
        "createdAt",
        "lastUsedAt",
        "revokedAt",
        "scopes",
        "expiresAt",
        "merchants",
    }


async def test_support_key_creation_is_logged_under_no_merchant(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    support = await make_key(db, Role.SUPPORT, [], now=clock.now())
    data = await run_data(
        db,
        settings,
        clock,
        CREATE,
        support,
        input={"role": "SUPPORT", "merchantIds": [], "name": "s"},
    )
    assert data["createApiKey"]["apiKey"]["merchants"] == []
    [entry] = await audit_entries(db, action="api_key.create")
    assert entry.merchant_id is None


async def test_partner_key_creation_is_logged_for_each_merchant(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    a = await make_merchant(db, "A", now=clock.now())
    b = await make_merchant(db, "B", now=clock.now())
    support = await make_key(db, Role.SUPPORT, [], now=clock.now())
    data = await run_data(
        db,
        settings,
        clock,
        CREATE,
        support,
        input={"role": "PARTNER", "merchantIds": [_mid(a), _mid(b), _mid(a)], "name": "agency"},
    )
    assert len(data["createApiKey"]["apiKey"]["merchants"]) == 2
    entries = await audit_entries(db, action="api_key.create")
    assert sorted(str(e.merchant_id) for e in entries) == sorted([str(a.id), str(b.id)])
    # Neither merchant's entry names the other.
    for entry in entries:
        assert str(a.id if entry.merchant_id == b.id else b.id) not in str(entry.after)


async def test_merchant_key_creates_keys_for_its_own_merchant_only(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    own = await make_merchant(db, "Own", now=clock.now())
    other = await make_merchant(db, "Other", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [own], now=clock.now())
    before = len(await _keys(db))
    data = await run_data(
        db,
        settings,
        clock,
        CREATE,
        token,
        input={"role": "MERCHANT", "merchantIds": [_mid(other)], "name": "x"},
    )
    assert [(e["code"], e["field"]) for e in data["createApiKey"]["errors"]] == [
        ("NOT_FOUND", "merchantIds")
    ]
    for role, ids in (("PARTNER", [own]), ("SUPPORT", [])):
        result = await run(
            db,
            settings,
            clock,
            CREATE,
            token=token,
            variables={"input": {"role": role, "merchantIds": [_mid(m) for m in ids], "name": "x"}},
        )
        assert codes(result) == ["FORBIDDEN"]
    assert len(await _keys(db)) == before
    data = await run_data(
        db,
        settings,
        clock,
        CREATE,
        token,
        input={"role": "MERCHANT", "merchantIds": [_mid(own)], "name": "ci"},
    )
    assert data["createApiKey"]["errors"] == []
    assert len(await _keys(db)) == before + 1


async def test_partner_may_not_create_keys(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "P", now=clock.now())
    partner = await make_key(db, Role.PARTNER, [merchant], now=clock.now())
    result = await run(
        db,
        settings,
        clock,
        CREATE,
        token=partner,
        variables={"input": {"role": "MERCHANT", "merchantIds": [_mid(merchant)], "name": "x"}},
    )
    assert codes(result) == ["FORBIDDEN"]


@pytest.mark.parametrize(
    ("role", "merchants", "name", "code", "field"),
    [
        ("MERCHANT", 2, "two", "INVALID", "merchantIds"),
        ("MERCHANT", 0, "none", "INVALID", "merchantIds"),
        ("PARTNER", 0, "none", "INVALID", "merchantIds"),
        ("SUPPORT", 1, "one", "INVALID", "merchantIds"),
        ("MERCHANT", 1, "   ", "INVALID", "name"),
        ("MERCHANT", 1, "n" * 201, "INVALID", "name"),
        ("MERCHANT", -1, "bad id", "NOT_FOUND", "merchantIds"),
    ],
)
async def test_invalid_keys_are_refused_and_write_nothing(
    db: Database,
    settings: Settings,
    clock: FixedClock,
    role: str,
    merchants: int,
    name: str,
    code: str,
    field: str,
) -> None:
    rows = [await make_merchant(db, f"M{i}", now=clock.now()) for i in range(2)]
    support = await make_key(db, Role.SUPPORT, [], now=clock.now())
    ids = ["not-an-id"] if merchants < 0 else [_mid(m) for m in rows[:merchants]]
    before = len(await _keys(db))
    data = await run_data(
        db,
        settings,
        clock,
        CREATE,
        support,
        input={"role": role, "merchantIds": ids, "name": name},
    )
    payload = data["createApiKey"]
    assert payload["apiKey"] is None
    assert payload["token"] is None
    assert [(e["code"], e["field"]) for e in payload["errors"]] == [(code, field)]
    assert len(await _keys(db)) == before
    assert await audit_entries(db, action="api_key.create") == []


async def test_list_is_newest_first_and_pages_by_cursor(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Paged", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now(), name="k0")
    for i in range(1, 5):
        clock.set(clock.now() + timedelta(minutes=1))
        await make_key(db, Role.MERCHANT, [merchant], now=clock.now(), name=f"k{i}")
    names: list[str] = []
    after = None
    while True:
        data = await run_data(db, settings, clock, LIST, token, first=2, after=after)
        page = data["apiKeys"]
        names += [e["node"]["name"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert names == ["k4", "k3", "k2", "k1", "k0"]
    result = await run(db, settings, clock, LIST, token=token, variables={"after": "junk"})
    assert codes(result) == ["INVALID_CURSOR"]
    result = await run(db, settings, clock, LIST, token=token, variables={"first": 101})
    assert codes(result) == ["INVALID_ARGUMENT"]


async def test_revoke_stops_the_token_and_is_audited_once(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Revoking", now=clock.now())
    admin = await make_key(db, Role.MERCHANT, [merchant], now=clock.now(), name="admin")
    leaked = await make_key(db, Role.MERCHANT, [merchant], now=clock.now(), name="leaked")
    global_id = encode_id("ApiKey", await key_id(db, leaked))
    for reason in ("  ", "r" * 1001):
        data = await run_data(db, settings, clock, REVOKE, admin, id=global_id, reason=reason)
        assert [(e["code"], e["field"]) for e in data["revokeApiKey"]["errors"]] == [
            ("INVALID", "reason")
        ]
    viewer = await run(db, settings, clock, "{ viewer { role } }", token=leaked)
    assert viewer.errors is None
    first = await run_data(db, settings, clock, REVOKE, admin, id=global_id, reason="leaked in CI")
    assert first["revokeApiKey"]["errors"] == []
    revoked_at = first["revokeApiKey"]["apiKey"]["revokedAt"]
    assert revoked_at is not None
    again = await run_data(db, settings, clock, REVOKE, admin, id=global_id, reason="twice")
    assert again["revokeApiKey"]["apiKey"]["revokedAt"] == revoked_at
    viewer = await run(db, settings, clock, "{ viewer { role } }", token=leaked)
    assert codes(viewer) == ["UNAUTHENTICATED"]
    [entry] = await audit_entries(db, action="api_key.revoke")
    assert entry.merchant_id == merchant.id
    assert entry.reason == "leaked in CI"
    assert entry.actor == "api_key:admin"
    assert entry.before is not None
    assert entry.after is not None
    assert entry.before["revoked_at"] is None
    assert entry.after["revoked_at"] is not None


async def test_revoke_unknown_or_malformed_id_is_not_found(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "M", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    for bad in ("junk", _mid(merchant), encode_id("ApiKey", merchant.id)):
        data = await run_data(db, settings, clock, REVOKE, token, id=bad, reason="r")
        assert [(e["code"], e["field"]) for e in data["revokeApiKey"]["errors"]] == [
            ("NOT_FOUND", "id")
        ]


async def test_key_list_statement_count_is_constant(
    connection: AsyncConnection, db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchants = [await make_merchant(db, f"M{i}", now=clock.now()) for i in range(3)]
    # Older than every partner key, so the pages below hold partner keys only.
    support = await make_key(db, Role.SUPPORT, [], now=clock.now() - timedelta(minutes=1))
    for i in range(30):
        await make_key(db, Role.PARTNER, merchants[: 1 + i % 3], now=clock.now(), name=f"p{i}")
    await run(db, settings, clock, "{ viewer { role } }", token=support)
    counts = {}
    for first in (1, 30):
        data, statements = await run_counted(
            connection, db, settings, clock, LIST, token=support, variables={"first": first}
        )
        assert len(data["apiKeys"]["edges"]) == first
        assert all(e["node"]["merchants"] for e in data["apiKeys"]["edges"])
        counts[first] = len(statements)
    # key lookup + keys page + grants + merchants (support keys read no grants of their own)
    assert counts[1] == counts[30] == 4
