"""GET /exports/payments.csv and .parquet: tenancy, the GraphQL filter, formats, refusals."""

import csv
import io
import uuid
from dataclasses import dataclass

import httpx
import pyarrow.parquet as pq
import pytest

from app.clock import FixedClock
from app.db import Database
from app.enums import PaymentState, Role
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.services import export
from app.settings import Settings
from portal.exports import COLUMNS
from resolvers.ids import encode_id
from tests.support.factories import make_key, make_merchant, make_payments
from tests.support.graphql import run_data


@dataclass
class Shop:
    merchants: dict[str, Merchant]
    payments: dict[str, list[Payment]]
    tokens: dict[str, str]


@pytest.fixture
async def shop(db: Database, clock: FixedClock) -> Shop:
    now = clock.now()
    merchants = {n: await make_merchant(db, f"Export {n}", now=now) for n in "ABC"}
    payments = {n: await make_payments(db, m, 3, now=now) for n, m in merchants.items()}
    payments["A"] += await make_payments(db, merchants["A"], 2, now=now, state=PaymentState.PENDING)
    tokens = {
        "merchant": await make_key(db, Role.MERCHANT, [merchants["A"]], now=now),
        "partner": await make_key(db, Role.PARTNER, [merchants["A"], merchants["B"]], now=now),
        "support": await make_key(db, Role.SUPPORT, [], now=now),
    }
    return Shop(merchants, payments, tokens)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _mid(shop: Shop, name: str) -> str:
    return encode_id("Merchant", shop.merchants[name].id)


def _csv(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.text)))


async def test_merchant_key_exports_its_own_payments_as_csv(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    response = await client.get("/exports/payments.csv", headers=_auth(shop.tokens["merchant"]))
    rows = _csv(response)
    assert response.text.splitlines()[0] == ",".join(COLUMNS)
    expected = sorted(shop.payments["A"], key=lambda p: (p.first_failed_at, p.id), reverse=True)
    assert [r["id"] for r in rows] == [encode_id("Payment", p.id) for p in expected]
    first, payment = rows[0], expected[0]
    assert first["amount_minor"] == str(payment.amount_minor)
    assert first["currency"] == "EUR"
    assert first["card_brand"] == "visa"
    assert len(first["card_last4"]) == 4
    assert first["failed_at"].endswith("Z")
    assert "attachment" in response.headers["content-disposition"]
    # Nothing that could hold a card number: no such column, and no cell of 12+ digits.
    assert not any(c for c in COLUMNS if "number" in c or c in {"pan", "bin"})
    assert not any(len(v) >= 12 and v.isdigit() for r in rows for v in r.values())


async def test_parquet_has_one_row_group_per_batch(
    client: httpx.AsyncClient, shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "BATCH_SIZE", 2)
    response = await client.get(
        "/exports/payments.parquet",
        params={"merchantId": _mid(shop, "A")},
        headers=_auth(shop.tokens["support"]),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    parquet = pq.ParquetFile(io.BytesIO(response.content))
    assert parquet.metadata.num_rows == 5
    assert parquet.metadata.num_row_groups == 3  # 2 + 2 + 1
    table = parquet.read()
    assert table.schema.field("amount_minor").type == "int64"
    assert str(table.schema.field("failed_at").type) == "timestamp[us, tz=UTC]"
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(encode_id("Payment", p.id) for p in shop.payments["A"])
    amounts = dict(zip(ids, table.column("amount_minor").to_pylist(), strict=True))
    for p in shop.payments["A"]:
        assert amounts[encode_id("Payment", p.id)] == p.amount_minor


async def test_empty_export_is_a_header_or_a_valid_empty_file(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    params = {"states": "RECOVERED"}
    response = await client.get(
        "/exports/payments.csv", params=params, headers=_auth(shop.tokens["merchant"])
    )
    assert _csv(response) == []
    response = await client.get(
        "/exports/payments.parquet", params=params, headers=_auth(shop.tokens["merchant"])
    )
    assert response.status_code == 200
    assert pq.read_table(io.BytesIO(response.content)).num_rows == 0


PAGE = """query($id: ID!, $filter: PaymentFilter) { merchant(id: $id) {
  payments(first: 100, filter: $filter) { edges { node { id } } } } }"""


@pytest.mark.parametrize(
    ("params", "variables"),
    [
        ({"states": "PENDING"}, {"states": ["PENDING"]}),
        ({"states": ["PENDING", "SCHEDULED"]}, {"states": ["PENDING", "SCHEDULED"]}),
        (
            {"currencies": "EUR", "amountMin": "2000", "amountMax": "2001"},
            {"currencies": ["EUR"], "amountMin": 2000, "amountMax": 2001},
        ),
        ({"failedAfter": "2026-11-02T11:58:30Z"}, {"failedAfter": "2026-11-02T11:58:30Z"}),
        ({"processors": "ADYEN"}, {"processors": ["ADYEN"]}),
    ],
)
async def test_export_matches_the_graphql_filter(
    client: httpx.AsyncClient,
    shop: Shop,
    db: Database,
    settings: Settings,
    clock: FixedClock,
    params: dict[str, object],
    variables: dict[str, object],
) -> None:
    token = shop.tokens["partner"]
    data = await run_data(db, settings, clock, PAGE, token, id=_mid(shop, "A"), filter=variables)
    expected = [e["node"]["id"] for e in data["merchant"]["payments"]["edges"]]
    response = await client.get(
        "/exports/payments.csv",
        params={**params, "merchantId": _mid(shop, "A")},  # type: ignore[dict-item]
        headers=_auth(token),
    )
    assert [r["id"] for r in _csv(response)] == expected


async def test_tenancy(client: httpx.AsyncClient, shop: Shop) -> None:
    async def status(role: str | None, merchant: str | None) -> int:
        params = {} if merchant is None else {"merchantId": _mid(shop, merchant)}
        headers = {} if role is None else _auth(shop.tokens[role])
        response = await client.get("/exports/payments.csv", params=params, headers=headers)
        if response.status_code != 200:
            assert response.headers["content-type"] == "application/json"
        return response.status_code

    assert await status(None, "A") == 401
    assert await status("merchant", None) == 200
    assert await status("merchant", "A") == 200
    assert await status("merchant", "B") == 404
    assert await status("partner", None) == 400  # two merchants: say which
    assert await status("partner", "B") == 200
    assert await status("partner", "C") == 404
    assert await status("support", None) == 400
    assert await status("support", "C") == 200
    response = await client.get(
        "/exports/payments.csv", headers={"Authorization": "Bearer rp_not-a-key"}
    )
    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"states": "NOPE"}, "states"),
        ({"states": "PENDING,,LOST"}, "states"),
        ({"amountMin": "12"}, "amountMin"),
        ({"amountMin": "1.5", "currencies": "EUR"}, "amountMin"),
        ({"amountMax": "-1", "currencies": "EUR"}, "amountMax"),
        ({"currencies": "eur"}, "currencies"),
        ({"failedAfter": "yesterday"}, "failedAfter"),
        ({"failedAfter": "2026-11-01T00:00:00"}, "failedAfter"),
        ({"search": "  "}, "search"),
        ({"search": ["a", "b"]}, "search"),
        ({"color": "red"}, "color"),
        ({"merchantId": "not-an-id"}, "merchantId"),
        ({"merchantId": encode_id("Payment", uuid.uuid4())}, "merchantId"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(
    client: httpx.AsyncClient, shop: Shop, params: dict[str, object], parameter: str
) -> None:
    for path in ("/exports/payments.csv", "/exports/payments.parquet"):
        response = await client.get(
            path,
            params=params,  # type: ignore[arg-type]
            headers=_auth(shop.tokens["merchant"]),
        )
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["code"] == "INVALID_ARGUMENT"
        assert body["parameter"] == parameter
        assert body["message"]


async def test_formula_cells_are_neutralized_in_csv(
    client: httpx.AsyncClient, shop: Shop, db: Database
) -> None:
    from sqlalchemy import update
    from sqlmodel import col

    from app.tenancy import SYSTEM_SCOPE

    target = shop.payments["A"][0]
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            update(Payment).where(col(Payment.id) == target.id).values(invoice_ref="=HYPERLINK(1)")
        )
        await uow.commit()
    rows = _csv(await client.get("/exports/payments.csv", headers=_auth(shop.tokens["merchant"])))
    [row] = [r for r in rows if r["id"] == encode_id("Payment", target.id)]
    assert row["invoice_ref"] == "'=HYPERLINK(1)"


async def test_graphql_refuses_the_same_times_without_an_offset(
    shop: Shop, db: Database, settings: Settings, clock: FixedClock
) -> None:
    """The check the export's 400 comes from is the filter's own: the connection refuses a
    time without an offset too, naming the field."""
    from tests.support.graphql import run

    result = await run(
        db,
        settings,
        clock,
        PAGE,
        token=shop.tokens["merchant"],
        variables={"id": _mid(shop, "A"), "filter": {"nextRetryBefore": "2026-11-03T00:00:00"}},
    )
    [error] = result.errors or []
    assert (error.extensions or {}).get("code") == "INVALID_ARGUMENT"
    assert (error.extensions or {}).get("field") == "filter.nextRetryBefore"
