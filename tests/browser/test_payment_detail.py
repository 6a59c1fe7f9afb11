"""A payment's screen in Chromium: attempts, timeline, decision and ledger as the API answers
them, and cancel and retry-now carried out with a reason."""

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.browser.conftest import PHONE, Demo, PageFactory, Shot

MERCHANTS = "{ viewer { merchants(first: 100) { edges { node { id name } } } } }"
CANDIDATES = """
query ($id: ID!, $filter: PaymentFilter, $orderBy: PaymentOrder) {
  merchant(id: $id) {
    payments(first: 50, filter: $filter, orderBy: $orderBy) {
      edges { node { id processorPaymentId state attemptCount decision { explanation } } }
    }
  }
}
"""
DETAIL = """
query ($id: ID!) {
  node(id: $id) {
    ... on Payment {
      id state processorPaymentId
      attempts { number outcome decline { category } }
      timeline { event fromState toState requestedBy reason }
      decision { reason explanation }
      ledger { attemptsLast24h attemptsLast30d }
    }
  }
}
"""


async def _merchants(demo: Demo) -> list[dict[str, Any]]:
    data = await demo.api(MERCHANTS)
    return [edge["node"] for edge in data["viewer"]["merchants"]["edges"]]


async def _find(
    demo: Demo,
    filter: dict[str, Any],
    fits: Callable[[dict[str, Any]], Any],
    order: dict[str, str] | None = None,
    count: int = 1,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A merchant and `count` of its payments matching `filter` and `fits`, waiting for the
    demo's payments to get there."""
    merchants = await _merchants(demo)
    deadline = time.monotonic() + 150
    while True:
        for merchant in merchants:
            data = await demo.api(
                CANDIDATES, {"id": merchant["id"], "filter": filter, "orderBy": order}
            )
            nodes = [e["node"] for e in data["merchant"]["payments"]["edges"] if fits(e["node"])]
            if len(nodes) >= count:
                return merchant, nodes[:count]
        assert time.monotonic() < deadline, f"no {count} payments matching {filter} came"
        await asyncio.sleep(1)


async def _detail(demo: Demo, payment_id: str) -> dict[str, Any]:
    data = await demo.api(DETAIL, {"id": payment_id})
    node: dict[str, Any] = data["node"]
    return node


@pytest.mark.timeout(300)
async def test_the_detail_shows_what_the_api_answers(
    demo: Demo, page: Page, new_page: PageFactory, shot: Shot
) -> None:
    # An ended payment (it no longer changes) with retries and a model decision explained.
    merchant, (payment,) = await _find(
        demo,
        {"states": ["RECOVERED", "EXHAUSTED"]},
        lambda p: p["attemptCount"] >= 2 and p["decision"] and p["decision"]["explanation"],
    )
    # Reached from the list, as a user does.
    search = f"/m/{merchant['id']}/payments?search={payment['processorPaymentId']}"
    await page.goto(demo.link(search))
    await page.get_by_role("link", name=payment["processorPaymentId"]).click()
    await expect(page).to_have_url(re.compile(r"/payments/[^/?]+$"))
    await expect(page.get_by_role("heading", level=1)).to_contain_text(
        payment["processorPaymentId"]
    )

    answer = await _detail(demo, payment["id"])
    attempts = page.get_by_role("table", name=re.compile("^Attempts"))
    rows = attempts.locator("tbody tr")
    await expect(rows).to_have_count(len(answer["attempts"]))
    for row, attempt in zip(await rows.all(), answer["attempts"], strict=True):
        await expect(row.locator("td").nth(0)).to_have_text(str(attempt["number"]))
        await expect(row.locator("td").nth(3)).to_have_text(
            attempt["outcome"].replace("_", " ").capitalize()
        )

    timeline = page.get_by_role("table", name=re.compile("^State changes"))
    steps = timeline.locator("tbody tr")
    await expect(steps).to_have_count(len(answer["timeline"]))
    await expect(steps.locator("td:nth-child(3)")).to_have_text(
        [step["event"].replace("_", " ") for step in answer["timeline"]]
    )
    await expect(steps.locator("td:nth-child(5)")).to_have_text(
        [step["reason"] for step in answer["timeline"]]
    )

    decision = page.get_by_role("region", name="Retry decision")
    await expect(decision.locator(".reason")).to_have_text(answer["decision"]["reason"])
    await expect(decision.locator("ol.explanation li")).to_have_text(
        answer["decision"]["explanation"]
    )

    # The ledger counts a sliding window of the demo's fast clock: read again until the two
    # reads fall in the same window.
    ledger = page.get_by_role("region", name="Card-network ledger")
    for attempt in range(5):
        shown = await ledger.locator("dd").all_inner_texts()
        answer = await _detail(demo, payment["id"])
        counts = answer["ledger"]
        if shown[:2] == [str(counts["attemptsLast24h"]), str(counts["attemptsLast30d"])]:
            break
        assert attempt < 4, (shown, counts)
        await page.reload()
        await expect(ledger).to_be_visible()

    # An ended payment's actions are off, and say why.
    await expect(page.get_by_role("button", name="Cancel recovery")).to_be_disabled()
    await expect(page.get_by_role("button", name="Retry now")).to_be_disabled()
    await expect(page.locator("#actions-why")).to_contain_text("Recovery has ended")
    await expect(page.get_by_role("button", name="Cancel recovery")).to_have_accessible_description(
        re.compile("Recovery has ended")
    )
    await shot(page, "payment")

    phone = await new_page(viewport=PHONE)
    await phone.goto(demo.link(f"/m/{merchant['id']}/payments/{payment['id']}"))
    await expect(phone.get_by_role("region", name="Retry decision")).to_be_visible()
    await shot(phone, "payment-phone")


@pytest.mark.timeout(300)
async def test_cancel_and_retry_now_with_a_reason(demo: Demo, page: Page, shot: Shot) -> None:
    # Scheduled payments whose retry is furthest away: none starts while the test runs.
    merchant, (payment, other) = await _find(
        demo,
        {"states": ["SCHEDULED"]},
        lambda p: True,
        order={"field": "NEXT_RETRY_AT", "direction": "DESC"},
        count=2,
    )
    await page.goto(demo.link(f"/m/{merchant['id']}/payments/{payment['id']}"))
    heading = page.get_by_role("heading", level=1)
    await expect(heading).to_contain_text("Scheduled")

    # Cancelling the dialog changes nothing.
    await page.get_by_role("button", name="Cancel recovery").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name="Cancel", exact=True).click()
    await expect(dialog).to_have_count(0)
    assert (await _detail(demo, payment["id"]))["state"] == "SCHEDULED"

    await page.get_by_role("button", name="Cancel recovery").click()
    await dialog.get_by_label("Reason").fill("customer asked to stop (browser test)")
    await dialog.get_by_role("button", name="Cancel recovery").click()
    await expect(heading).to_contain_text("Canceled")
    await expect(page.locator("#status")).to_have_text("Recovery canceled.")
    answer = await _detail(demo, payment["id"])
    assert answer["state"] == "CANCELED"
    last = answer["timeline"][-1]
    assert last["toState"] == "CANCELED"
    assert last["requestedBy"]
    final = page.get_by_role("table", name=re.compile("^State changes")).locator("tbody tr").last
    await expect(final).to_contain_text("Scheduled → Canceled")
    await expect(final).to_contain_text(f"requested by {last['requestedBy']}")
    await expect(page.get_by_role("button", name="Cancel recovery")).to_be_disabled()
    await shot(page, "payment-canceled")

    # Retry now on another scheduled payment. The demo's customers and processors settle
    # payments on their own too (its clock runs an hour a second), so one picked may have ended
    # by the time its page opens: its button is then disabled, rightly (checked through the
    # API), and the next scheduled payment is taken.
    retry = page.get_by_role("button", name="Retry now")
    for _ in range(5):
        await page.goto(demo.link(f"/m/{merchant['id']}/payments/{other['id']}"))
        await expect(heading).to_contain_text(other["processorPaymentId"])
        try:
            await expect(retry).to_be_enabled(timeout=5_000)
            break
        except AssertionError:
            assert (await _detail(demo, other["id"]))["state"] != "SCHEDULED"
            merchant, (other,) = await _find(
                demo,
                {"states": ["SCHEDULED"]},
                lambda p: p["id"] != payment["id"],
                order={"field": "NEXT_RETRY_AT", "direction": "DESC"},
            )
    else:
        pytest.fail("every scheduled payment picked ended before its page opened")
    await retry.click()
    await dialog.get_by_label("Reason").fill("card topped up (browser test)")
    await dialog.get_by_role("button", name="Retry now").click()
    await expect(page.locator("#status")).to_have_text("Retry requested.")
    await expect(page.locator(".notice")).to_contain_text("How the retry was placed")
    answer = await _detail(demo, other["id"])
    requested = [step for step in answer["timeline"] if step["event"] == "retry_requested"]
    assert requested
    assert requested[-1]["requestedBy"]
    events = page.get_by_role("table", name=re.compile("^State changes")).locator(
        "tbody td:nth-child(3)"
    )
    await expect(events.filter(has_text=re.compile(r"^retry requested$"))).to_have_count(
        len(requested)
    )
