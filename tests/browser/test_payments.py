"""The payments screen in Chromium: filters, search, sort, pages, export and live rows, each
checked against the API's answer to the same question."""

import asyncio
import csv
import io
import re
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Locator, Page, expect

from tests.browser.conftest import PHONE, Demo, PageFactory, Shot

TERMINAL = ["RECOVERED", "EXHAUSTED", "NOT_RETRYABLE", "CANCELED"]
MERCHANTS = """
query ($filter: PaymentFilter) {
  viewer {
    merchants(first: 100) {
      edges { node { id name payments(first: 1, filter: $filter) { totalCount } } }
    }
  }
}
"""
PAGE = """
query ($id: ID!, $first: Int!, $after: String, $filter: PaymentFilter, $orderBy: PaymentOrder) {
  merchant(id: $id) {
    payments(first: $first, after: $after, filter: $filter, orderBy: $orderBy) {
      totalCount
      isEstimate
      pageInfo { endCursor hasNextPage }
      edges {
        node {
          id processor processorPaymentId state nextRetryAt
          amount { amountMinor currency }
          card { last4 }
        }
      }
    }
  }
}
"""
CANCEL = """
mutation ($id: ID!, $reason: String!) {
  cancelPaymentRecovery(paymentId: $id, reason: $reason) {
    errors { code message }
    payment { state }
  }
}
"""


async def _merchant_with(demo: Demo, payments: int, filter: dict[str, Any]) -> dict[str, Any]:
    """The merchant with the most payments matching `filter`, once one has `payments`."""

    def most(data: dict[str, Any]) -> dict[str, Any]:
        nodes = [edge["node"] for edge in data["viewer"]["merchants"]["edges"]]
        return max(nodes, key=lambda m: m["payments"]["totalCount"])

    data = await demo.eventually(
        MERCHANTS,
        lambda d: most(d)["payments"]["totalCount"] >= payments,
        variables={"filter": filter},
        seconds=150,
    )
    return most(data)


async def _page_answer(demo: Demo, merchant_id: str, **variables: Any) -> dict[str, Any]:
    data = await demo.api(PAGE, {"id": merchant_id, "first": 25, **variables})
    answer: dict[str, Any] = data["merchant"]["payments"]
    return answer


async def _every_payment(demo: Demo, merchant_id: str, filter: dict[str, Any]) -> list[Any]:
    """Every payment matching `filter`, page after page."""
    nodes: list[Any] = []
    after = None
    while True:
        answer = await _page_answer(demo, merchant_id, first=100, after=after, filter=filter)
        nodes.extend(edge["node"] for edge in answer["edges"])
        if not answer["pageInfo"]["hasNextPage"]:
            return nodes
        after = answer["pageInfo"]["endCursor"]


def _rows(page: Page) -> Locator:
    return page.locator("table.payments tbody tr td:first-child")


def _after(page: Page) -> str | None:
    """The cursor of the page shown (the last of the route's `pages`)."""
    query = parse_qs(page.url.partition("?")[2])
    pages = query.get("pages", [""])[0]
    return pages.split(",")[-1] if pages else None


async def _agrees(page: Page, demo: Demo, merchant_id: str, **variables: Any) -> dict[str, Any]:
    """The rows, their order and the total count on the page equal the API's answer for the
    same filter, order and cursor. The demo's payments keep changing, so a page read just
    before a change is read again."""
    for attempt in range(5):
        answer = await _page_answer(demo, merchant_id, after=_after(page), **variables)
        ids = [edge["node"]["processorPaymentId"] for edge in answer["edges"]]
        count = ("about " if answer["isEstimate"] else "") + f"{answer['totalCount']:,}"
        try:
            await expect(_rows(page)).to_have_text(ids)
            await expect(page.locator(".list-summary")).to_have_text(
                re.compile(rf"^{count} payments?\b")
            )
            return answer
        except AssertionError:
            if attempt == 4:
                raise
            await page.reload()
    raise AssertionError("unreachable")


async def _apply(page: Page) -> None:
    await page.get_by_role("button", name="Apply").click()


@pytest.mark.timeout(300)
async def test_filter_sort_and_page_agree_with_the_api(
    demo: Demo, page: Page, new_page: PageFactory, shot: Shot
) -> None:
    terminal = {"states": TERMINAL}
    merchant = await _merchant_with(demo, 11, terminal)
    await page.goto(demo.link(f"/m/{merchant['id']}/payments"))
    await expect(page.get_by_role("heading", level=1)).to_have_text(
        f"Payments · {merchant['name']}"
    )
    await _agrees(page, demo, merchant["id"])
    await expect(page.locator(".live")).to_have_text("Live")
    await shot(page, "payments")

    # States chosen in the form, ten a page: the route keeps them, the rows follow.
    await page.get_by_text("Filters", exact=True).click()
    states = page.get_by_role("group", name="State")
    for state in ("Recovered", "Exhausted", "Not retryable", "Canceled"):
        await states.get_by_role("checkbox", name=state, exact=True).check()
    await page.get_by_label("Per page").select_option("10")
    await _apply(page)
    await expect(page).to_have_url(re.compile(r"states=RECOVERED%2CEXHAUSTED"))
    await expect(page.get_by_text("Filters (1 in use)")).to_be_visible()
    first = await _agrees(page, demo, merchant["id"], first=10, filter=terminal)
    assert first["pageInfo"]["hasNextPage"]

    # Next page by its cursor, Previous back, and the browser's Back returns to page 2.
    await page.get_by_role("button", name="Next →").click()
    await expect(page.locator(".list-summary")).to_contain_text("page 2")
    assert _after(page)
    second = await _agrees(page, demo, merchant["id"], first=10, filter=terminal)
    second_ids = [edge["node"]["processorPaymentId"] for edge in second["edges"]]
    await page.get_by_role("button", name="← Previous").click()
    await expect(page.locator(".list-summary")).to_contain_text("page 1")
    assert _after(page) is None
    await _agrees(page, demo, merchant["id"], first=10, filter=terminal)
    await page.go_back()
    await expect(page.locator(".list-summary")).to_contain_text("page 2")
    await expect(_rows(page).first).to_have_text(second_ids[0])

    # Sorting by amount needs one currency: the API's refusal is shown at the form, named.
    await page.get_by_label("Sort by").select_option("AMOUNT")
    await page.get_by_label("Order", exact=True).select_option("ASC")
    await _apply(page)
    problem = page.locator("#payments-problems [role=alert]")
    await expect(problem).to_contain_text("exactly one currency")
    await expect(problem).to_contain_text("INVALID_ARGUMENT")
    await expect(page.locator("#f-orderBy")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_role("heading", level=1)).to_be_visible()
    await shot(page, "payments-refused")

    # With the merchant's most common currency, and an amount floor in its major units.
    every = await _page_answer(demo, merchant["id"], first=100, filter=terminal)
    currencies = [edge["node"]["amount"]["currency"] for edge in every["edges"]]
    currency = max(set(currencies), key=currencies.count)
    await page.get_by_label("Currencies").fill(currency.lower())
    await page.get_by_label("Amount from").fill("5")
    await _apply(page)
    await expect(page.locator("#f-currencies")).to_have_value(currency)
    exponent = 0 if currency in {"JPY", "KRW"} else 2
    sorted_terminal = {**terminal, "currencies": [currency], "amountMin": 5 * 10**exponent}
    answer = await _agrees(
        page,
        demo,
        merchant["id"],
        first=10,
        filter=sorted_terminal,
        orderBy={"field": "AMOUNT", "direction": "ASC"},
    )
    amounts = [edge["node"]["amount"]["amountMinor"] for edge in answer["edges"]]
    assert amounts == sorted(amounts)
    assert all(amount >= 5 * 10**exponent for amount in amounts)
    await shot(page, "payments-sorted")

    phone = await new_page(viewport=PHONE)
    await phone.goto(demo.link(f"/m/{merchant['id']}/payments"))
    await _agrees(phone, demo, merchant["id"])
    await shot(phone, "payments-phone")


async def test_search_finds_a_payment_by_what_the_merchant_has(demo: Demo, page: Page) -> None:
    merchant = await _merchant_with(demo, 5, {})
    answer = await _page_answer(demo, merchant["id"])
    known = answer["edges"][-1]["node"]
    await page.goto(demo.link(f"/m/{merchant['id']}/payments"))
    await expect(page.locator(".list-summary")).to_be_visible()
    search = page.get_by_role("searchbox", name="Search")
    await search.fill(known["processorPaymentId"])
    await search.press("Enter")
    await expect(page).to_have_url(re.compile(r"search="))
    await expect(_rows(page)).to_have_text([known["processorPaymentId"]])
    await expect(page.locator(".list-summary")).to_have_text(re.compile(r"^1 payment match"))

    # A card's last four match every payment on it, as the API says.
    last4 = next(e["node"]["card"]["last4"] for e in answer["edges"] if e["node"]["card"])
    search = page.get_by_role("searchbox", name="Search")
    await search.fill(last4)
    await search.press("Enter")
    await expect(page).to_have_url(re.compile(rf"search={last4}"))
    await _agrees(page, demo, merchant["id"], filter={"search": last4})

    # Days are the merchant's: "failed on or after" starts at its local midnight.
    policy = await demo.api(
        "query ($id: ID!) { serverTime merchant(id: $id) { retryPolicy { timezone } } }",
        {"id": merchant["id"]},
    )
    zone = ZoneInfo(policy["merchant"]["retryPolicy"]["timezone"])
    day = (datetime.fromisoformat(policy["serverTime"]).astimezone(zone) - timedelta(days=4)).date()
    midnight = datetime.combine(day, datetime.min.time(), tzinfo=zone)
    await page.get_by_role("searchbox", name="Search").fill("")
    await page.get_by_text("Filters", exact=True).click()
    await page.get_by_label("Failed on or after").fill(day.isoformat())
    await _apply(page)
    await expect(page).to_have_url(re.compile(rf"failedAfter={day.isoformat()}"))
    await _agrees(page, demo, merchant["id"], filter={"failedAfter": midnight.isoformat()})

    # Nothing found is said, not shown as an empty table.
    search = page.get_by_role("searchbox", name="Search")
    await search.fill("ch_no_such_payment")
    await search.press("Enter")
    await expect(page.get_by_text("No payments match these filters.")).to_be_visible()


async def test_export_writes_the_filtered_payments(demo: Demo, page: Page, shot: Shot) -> None:
    recovered = {"states": ["RECOVERED"]}
    merchant = await _merchant_with(demo, 1, recovered)
    await page.goto(demo.link(f"/m/{merchant['id']}/payments?states=RECOVERED"))
    await expect(_rows(page).first).to_be_visible()
    for attempt in range(3):
        async with page.expect_download() as started:
            await page.get_by_role("button", name="Export CSV").click()
        download = await started.value
        assert download.suggested_filename.endswith(".csv")
        path = await download.path()
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        nodes = await _every_payment(demo, merchant["id"], recovered)
        expected = {node["id"] for node in nodes}
        # Recoveries only add up: a payment recovered between the two reads exports next time.
        if {row["id"] for row in rows} == expected or attempt == 2:
            break
    assert {row["id"] for row in rows} == expected
    assert {row["state"] for row in rows} == {"RECOVERED"}
    by_id = {node["id"]: node for node in nodes}
    for row in rows:
        node = by_id[row["id"]]
        assert row["processor_payment_id"] == node["processorPaymentId"]
        assert int(row["amount_minor"]) == node["amount"]["amountMinor"]
        assert row["currency"] == node["amount"]["currency"]
    await expect(page.locator("#status")).to_contain_text("Exported")
    await shot(page, "payments-exported")


async def test_a_row_changes_live_when_its_payment_changes(
    demo: Demo, page: Page, shot: Shot
) -> None:
    scheduled = {"states": ["SCHEDULED"]}
    merchant = await _merchant_with(demo, 2, scheduled)
    # The retries furthest away, so none of them starts while the test runs.
    route = f"/m/{merchant['id']}/payments?states=SCHEDULED&orderBy=NEXT_RETRY_AT"
    await page.goto(demo.link(route))
    await expect(page.locator(".live")).to_have_text("Live")
    row = page.locator("table.payments tbody tr").first
    payment_id = await row.get_attribute("data-payment-id")
    assert payment_id
    result = await demo.api(CANCEL, {"id": payment_id, "reason": "browser test: live rows"})
    assert result["cancelPaymentRecovery"]["errors"] == []

    changed = page.locator(f'tr[data-payment-id="{payment_id}"]')
    await expect(changed).to_have_attribute("data-state", "CANCELED")
    await expect(changed).to_have_class(re.compile(r"\bfresh\b"))
    await expect(changed.locator(".badge.state")).to_have_text("Canceled")
    await shot(page, "payments-live")

    # The row leads to the payment's own screen.
    await changed.get_by_role("link").click()
    await expect(page).to_have_url(re.compile(r"/payments/[^/?]+$"))
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Canceled")
