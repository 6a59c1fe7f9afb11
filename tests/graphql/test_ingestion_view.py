"""ProcessorConnection.rawRecords and deadLetters: paged, payloads scrubbed, who may read."""

from datetime import timedelta
from typing import Any

from app.clock import FixedClock
from app.db import Database
from app.enums import Processor, Role
from app.models.ingestion import DeadLetter, ProcessorConnection, RawRecord
from app.processors.normalize.display import REDACTED, UNREADABLE_XML, payload_for_display
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from resolvers.ids import encode_id
from tests.support.factories import make_connection, make_key, make_merchant
from tests.support.graphql import codes, run, run_data

PAN = "4242424242424242"

STRIPE_CHARGE: dict[str, Any] = {
    "id": "ch_1",
    "object": "charge",
    "client_secret": "pi_1_secret_abc",
    "description": f"card {PAN} declined",
    "billing_details": {"email": "jo@example.com", "name": "Jo Doe"},
    "payment_method_details": {
        "card": {
            "brand": "visa",
            "last4": "4242",
            "exp_month": 12,
            "exp_year": 2030,
            "fingerprint": "fp_secret",
            "name": "JO DOE",
            "cvc": "123",
            "iin": "424242",
        }
    },
    "metadata": {"api_key": "sk_live_leaked", "webhook-signature": "t=1,v1=abc"},
}

BRAINTREE_XML = (
    "<transaction><id>bt_1</id><credit-card><bin>411111</bin><last-4>1111</last-4>"
    "<expiration-month>12</expiration-month><cardholder-name>Jo Doe</cardholder-name>"
    "<token>vault_token</token><unique-number-identifier>u1</unique-number-identifier>"
    f"</credit-card><processor-response-text>card {PAN}</processor-response-text></transaction>"
)


def test_json_payload_keeps_card_brand_last4_bin_expiry_only() -> None:
    shown = payload_for_display(STRIPE_CHARGE)
    card = shown["payment_method_details"]["card"]
    assert card == {
        "brand": "visa",
        "last4": "4242",
        "exp_month": 12,
        "exp_year": 2030,
        "fingerprint": REDACTED,
        "name": REDACTED,
        "cvc": REDACTED,
        "iin": "424242",
    }
    assert shown["client_secret"] == REDACTED
    assert shown["metadata"] == {"api_key": REDACTED, "webhook-signature": REDACTED}
    assert PAN not in str(shown)
    # Not card data: the customer's billing name stays for support.
    assert shown["billing_details"] == {"email": "jo@example.com", "name": "Jo Doe"}


def test_xml_payload_is_scrubbed_element_by_element() -> None:
    shown = payload_for_display({"xml": BRAINTREE_XML})
    xml = shown["xml"]
    assert "<bin>411111</bin>" in xml
    assert "<last-4>1111</last-4>" in xml
    assert "Jo Doe" not in xml
    assert "vault_token" not in xml
    assert "u1" not in xml
    assert PAN not in xml
    assert f"<cardholder-name>{REDACTED}</cardholder-name>" in xml
    assert payload_for_display({"xml": "<transaction><oops"}) == {"xml": UNREADABLE_XML}


async def _land(
    db: Database, connection: ProcessorConnection, clock: FixedClock, n: int
) -> list[RawRecord]:
    rows = []
    async with db.uow(SYSTEM_SCOPE) as uow:
        for i in range(n):
            row = RawRecord(
                merchant_id=connection.merchant_id,
                connection_id=connection.id,
                processor=Processor.STRIPE,
                external_id=f"ch_{i}",
                received_at=clock.now() + timedelta(seconds=i),
                content_hash=f"{i:064d}",
                payload={**STRIPE_CHARGE, "id": f"ch_{i}"},
            )
            uow.session.add(row)
            rows.append(row)
        await uow.session.flush()
        uow.session.add(
            DeadLetter(
                merchant_id=connection.merchant_id,
                connection_id=connection.id,
                raw_record_id=rows[0].id,
                normalizer_version=3,
                reason="charge has no amount",
                created_at=clock.now(),
            )
        )
        await uow.commit()
    return rows


RAW = """query($id: ID!, $first: Int, $after: String, $since: DateTime) { node(id: $id) {
  ... on ProcessorConnection { rawRecords(first: $first, after: $after, since: $since) {
    edges { node { externalId processor payload normalizedAt } }
    pageInfo { hasNextPage endCursor } totalCount isEstimate } } } }"""

DEAD = """query($id: ID!) { node(id: $id) { ... on ProcessorConnection {
  deadLetters(first: 10) { totalCount edges { node { reason normalizerVersion
    rawRecord { externalId payload } } } } } } }"""


async def test_support_pages_raw_records_newest_first_scrubbed(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Raw", now=clock.now())
    connection = await make_connection(db, merchant, now=clock.now(), settings=settings)
    await _land(db, connection, clock, 3)
    support = await make_key(db, Role.SUPPORT, [], now=clock.now())
    cid = encode_id("ProcessorConnection", connection.id)
    page = (await run_data(db, settings, clock, RAW, support, id=cid, first=2))["node"]
    raw = page["rawRecords"]
    assert [e["node"]["externalId"] for e in raw["edges"]] == ["ch_2", "ch_1"]
    assert raw["pageInfo"]["hasNextPage"] is True
    assert (raw["totalCount"], raw["isEstimate"]) == (3, False)
    payload = raw["edges"][0]["node"]["payload"]
    assert payload["client_secret"] == REDACTED
    assert PAN not in str(payload)
    after = raw["pageInfo"]["endCursor"]
    page = (await run_data(db, settings, clock, RAW, support, id=cid, first=2, after=after))["node"]
    assert [e["node"]["externalId"] for e in page["rawRecords"]["edges"]] == ["ch_0"]
    assert page["rawRecords"]["pageInfo"]["hasNextPage"] is False
    since = (clock.now() + timedelta(seconds=1)).isoformat()
    page = (await run_data(db, settings, clock, RAW, support, id=cid, since=since))["node"]
    assert [e["node"]["externalId"] for e in page["rawRecords"]["edges"]] == ["ch_2", "ch_1"]
    assert page["rawRecords"]["totalCount"] == 2

    naive = (clock.now() + timedelta(seconds=1)).replace(tzinfo=None).isoformat()
    result = await run(
        db, settings, clock, RAW, token=support, variables={"id": cid, "since": naive}
    )
    assert codes(result) == ["INVALID_ARGUMENT"]

    dead = (await run_data(db, settings, clock, DEAD, support, id=cid))["node"]["deadLetters"]
    [letter] = [e["node"] for e in dead["edges"]]
    assert dead["totalCount"] == 1
    assert letter["reason"] == "charge has no amount"
    assert letter["normalizerVersion"] == 3
    assert letter["rawRecord"]["externalId"] == "ch_0"
    assert letter["rawRecord"]["payload"]["metadata"]["api_key"] == REDACTED


async def test_merchant_reads_its_own_partner_is_refused(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Own", now=clock.now())
    other = await make_merchant(db, "Other", now=clock.now())
    mine = await make_connection(db, merchant, now=clock.now(), settings=settings)
    theirs = await make_connection(db, other, now=clock.now(), settings=settings)
    await _land(db, mine, clock, 1)
    await _land(db, theirs, clock, 1)
    own = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    partner = await make_key(db, Role.PARTNER, [merchant, other], now=clock.now())
    mine_id = encode_id("ProcessorConnection", mine.id)
    theirs_id = encode_id("ProcessorConnection", theirs.id)
    data = await run_data(db, settings, clock, DEAD, own, id=mine_id)
    assert len(data["node"]["deadLetters"]["edges"]) == 1
    # Another merchant's connection does not exist for this key.
    data = await run_data(db, settings, clock, DEAD, own, id=theirs_id)
    assert data["node"] is None
    for query in (RAW, DEAD):
        result = await run(db, settings, clock, query, token=partner, variables={"id": mine_id})
        assert codes(result) == ["FORBIDDEN"]
