"""The dashboard's shell and overview in Chromium, checked against the API's own answers."""

import re
from datetime import datetime, timedelta
from typing import Any

from playwright.async_api import Page, expect

from tests.browser.conftest import PHONE, Demo, PageFactory, Shot

MERCHANTS = "{ viewer { role merchants(first: 100) { edges { node { id name } } } } }"
STATS = """
query ($id: ID!, $from: DateTime!, $to: DateTime!) {
  merchant(id: $id) {
    recoveryStats(from: $from, to: $to, granularity: DAY) {
      currencies {
        currency
        summary { failedCount recoveredCount }
        uplift { difference }
      }
    }
  }
}
"""


async def _merchants(demo: Demo, key: str | None = None) -> list[dict[str, Any]]:
    data = await demo.api(MERCHANTS, key=key)
    return [edge["node"] for edge in data["viewer"]["merchants"]["edges"]]


async def _busy_merchant(demo: Demo) -> dict[str, Any]:
    """A merchant with payments in the last 30 days of the portal's clock."""

    def has_payments(data: dict[str, Any]) -> bool:
        return bool(data["merchant"]["recoveryStats"]["currencies"])

    merchant = (await _merchants(demo))[0]
    now = datetime.fromisoformat((await demo.api("{ serverTime }"))["serverTime"])
    window = {"from": (now - timedelta(days=30)).isoformat(), "to": now.isoformat()}
    await demo.eventually(STATS, has_payments, variables={"id": merchant["id"], **window})
    return merchant


async def _page_agrees(page: Page, demo: Demo, merchant_id: str) -> bool:
    """Each currency row's failed and recovered counts, and the detailed currency's uplift,
    equal the API's for the same window (read right after the page; the demo keeps recovering
    payments, so the caller retries)."""
    rows = page.locator("table:has(caption:text('Recovery per currency')) tbody tr")
    shown = {}
    for row in await rows.all():
        cells = [c.strip() for c in await row.locator("td").all_inner_texts()]
        shown[cells[0]] = (int(cells[1].replace(",", "")), int(cells[2].replace(",", "")))
    detailed = await page.locator("section.currency").get_attribute("data-currency")
    uplift = await page.locator(".figure:has-text('Model uplift') .figure-value").inner_text()
    now = datetime.fromisoformat((await demo.api("{ serverTime }"))["serverTime"])
    window = {"from": (now - timedelta(days=30)).isoformat(), "to": now.isoformat()}
    data = await demo.api(STATS, {"id": merchant_id, **window})
    currencies = data["merchant"]["recoveryStats"]["currencies"]
    answered = {
        c["currency"]: (c["summary"]["failedCount"], c["summary"]["recoveredCount"])
        for c in currencies
    }
    answer = next(c["uplift"] for c in currencies if c["currency"] == detailed)
    expected = "—" if answer is None else f"{answer['difference'] * 100:+.1f} pts"
    return shown == answered and uplift == expected


async def test_the_overview_shows_what_the_api_answers(
    demo: Demo, page: Page, new_page: PageFactory, shot: Shot
) -> None:
    merchant = await _busy_merchant(demo)
    await page.goto(demo.link(f"/m/{merchant['id']}/overview"))
    await expect(page.get_by_role("heading", level=1)).to_have_text(
        f"Overview · {merchant['name']}"
    )
    # The key left the address for session storage.
    assert "key=" not in page.url
    stored = await page.evaluate("window.sessionStorage.getItem('portal.apiKey')")
    assert stored == demo.support_key
    await expect(page.get_by_role("table", name="Recovery per currency")).to_be_visible()
    for _ in range(5):
        if await _page_agrees(page, demo, merchant["id"]):
            break
        await page.reload()
        await expect(page.get_by_role("table", name="Recovery per currency")).to_be_visible()
    else:
        raise AssertionError("the overview's counts never matched the API's")
    for name in ("By decline category", "By processor", "By card funding", "Recovered by"):
        await expect(page.get_by_role("region", name=name)).to_be_visible()
    await expect(page.get_by_text("Model uplift")).to_be_visible()
    await shot(page, "overview")

    # Another currency and another period, chosen with the keyboard-reachable selects.
    currencies = await page.locator("#currency option").all_inner_texts()
    other = currencies[-1]
    await page.get_by_label("Currency").select_option(other)
    await expect(page.get_by_role("heading", level=2, name=f"{other} in detail")).to_be_visible()
    await page.get_by_label("Period").select_option("90")
    await expect(page.get_by_text("Recovered revenue per week")).to_be_visible()

    phone = await new_page(viewport=PHONE)
    await phone.goto(demo.link(f"/m/{merchant['id']}/overview"))
    await expect(phone.get_by_role("table", name="Recovery per currency")).to_be_visible()
    await shot(phone, "overview-phone")


async def test_a_merchant_key_sees_its_own_merchant_only(demo: Demo, page: Page) -> None:
    name, key = next(iter(demo.merchant_keys.items()))
    await page.goto(demo.link(key=key))
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Overview · {name}")
    # No switcher to other merchants and no support screen for a merchant's key.
    await expect(page.locator("#merchant-switcher")).to_have_count(0)
    await expect(page.get_by_role("link", name="Support")).to_have_count(0)
    # Another merchant's address answers "not available", with nothing of it shown.
    others = [m for m in await _merchants(demo) if m["name"] != name]
    await page.goto(f"{demo.url}/dashboard/#/m/{others[0]['id']}/overview")
    await expect(page.get_by_role("alert")).to_contain_text("not visible to this key")
    await expect(page.get_by_text(others[0]["name"])).to_have_count(0)


async def test_keyboard_navigation_and_sign_in(demo: Demo, page: Page, shot: Shot) -> None:
    await page.goto(f"{demo.url}/dashboard/")
    # No key yet: the form asks for one, labelled.
    field = page.get_by_label("API key")
    await expect(field).to_be_focused()
    await shot(page, "sign-in")
    await field.fill("rp_not-a-key")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("alert")).to_contain_text("not accepted")
    await page.get_by_label("API key").fill(demo.support_key)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Overview")
    # The navigation is reachable with Tab and follows Enter.
    payments = page.get_by_role("link", name="Payments", exact=True)
    for _ in range(10):
        if await payments.evaluate("el => el === document.activeElement"):
            break
        await page.keyboard.press("Tab")
    await expect(payments).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(r"/dashboard/#/m/[^/]+/payments$"))
    await expect(payments).to_have_attribute("aria-current", "page")


async def test_graphiql_is_served_from_this_machine(demo: Demo, page: Page, shot: Shot) -> None:
    # Opened after the dashboard in the same tab, the IDE's headers carry that key.
    await page.goto(demo.link())
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Overview")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    await page.goto(f"{demo.url}/graphql")
    await expect(page.locator(".graphiql-container")).to_be_visible()
    assert requests
    assert all(url.startswith(demo.url) for url in requests), requests
    await expect(page.locator(".graphiql-editor-tool")).to_contain_text(demo.support_key)
    await shot(page, "graphiql")
