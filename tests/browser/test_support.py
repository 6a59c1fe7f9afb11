"""The support screen in Chromium: merchants paused and resumed, bulk actions counted by a dry
run before they run (the count checked against the API's), and dead letters with their records
and a replay."""

import re
import secrets
from typing import Any

import httpx
from playwright.async_api import Page, expect

from tests.browser.conftest import PHONE, Demo, PageFactory, Shot

# Bulk actions and replays run as jobs in the demo's worker: expectations on them wait this
# long (ms).
SLOW = 60_000

MERCHANTS = "{ merchants(first: 100) { edges { node { id name status } } } }"
WAITING = """
query ($id: ID!) {
  merchant(id: $id) {
    payments(first: 20, filter: {states: [PENDING, SCHEDULED]}) {
      edges { node { amount { currency } decline { category } } }
    }
  }
}
"""
DRY_CANCEL = """
mutation ($filter: PaymentFilter!, $ids: [ID!]) {
  cancelPaymentRecoveries(filter: $filter, merchantIds: $ids, dryRun: true, reason: "count") {
    errors { code message }
    count
  }
}
"""
DRY_PAUSE = """
mutation ($ids: [ID!]!) {
  pauseMerchantsRecovery(merchantIds: $ids, dryRun: true, reason: "count") {
    errors { code message }
    count
  }
}
"""
BULK_ACTION = """
query ($id: ID!) {
  node(id: $id) {
    ... on BulkAction { kind status expectedCount succeededCount skippedCount reason }
  }
}
"""
CREATE_MERCHANT = """
mutation ($name: String!) {
  createMerchant(input: {name: $name}) { errors { message } merchant { id } }
}
"""
STATUS = "query ($id: ID!) { merchant(id: $id) { status } }"
DEAD_LETTERS = """
query ($id: ID!) {
  node(id: $id) {
    ... on ProcessorConnection {
      deadLetters(first: 50) {
        totalCount
        edges { node { id reason rawRecord { externalId } } }
      }
    }
  }
}
"""


async def _give_reason(page: Page, reason: str, confirm: str) -> None:
    dialog = page.get_by_role("dialog")
    await dialog.get_by_label("Reason (kept in the audit log)").fill(reason)
    await dialog.get_by_role("button", name=confirm, exact=True).click()
    await expect(dialog).to_have_count(0)


async def _open_support(page: Page, demo: Demo) -> None:
    await page.goto(demo.link("/support"))
    await expect(page.get_by_role("heading", level=1)).to_have_text("Support", timeout=SLOW)
    await expect(page.locator("#merchants tbody tr").first).to_be_visible(timeout=SLOW)
    await expect(page.locator(".dead-letter-summary")).to_be_visible(timeout=SLOW)


async def _new_merchant(demo: Demo, prefix: str) -> dict[str, str]:
    name = f"{prefix} {secrets.token_hex(3)}"
    data = await demo.api(CREATE_MERCHANT, {"name": name})
    return {"id": data["createMerchant"]["merchant"]["id"], "name": name}


async def test_other_keys_are_told_the_screen_is_for_support(demo: Demo, page: Page) -> None:
    _, key = next(iter(demo.merchant_keys.items()))
    await page.goto(demo.link("/support", key=key))
    await expect(page.get_by_role("heading", level=1)).to_have_text("Support", timeout=SLOW)
    await expect(page.get_by_role("note")).to_contain_text("Support keys only.")
    await expect(page.get_by_role("button", name="Count (dry run)")).to_have_count(0)


async def _waiting_payment(demo: Demo) -> tuple[dict[str, Any], str]:
    """A merchant (not the one the settings tests change) and the currency of one of its
    payments waiting for a retry."""
    merchants = [m["node"] for m in (await demo.api(MERCHANTS))["merchants"]["edges"]]
    demo_names = list(demo.merchant_keys)
    merchant = next(m for m in merchants if m["name"] == demo_names[-2])
    data = await demo.eventually(
        WAITING,
        lambda d: bool(d["merchant"]["payments"]["edges"]),
        variables={"id": merchant["id"]},
    )
    payment = data["merchant"]["payments"]["edges"][0]["node"]
    return merchant, payment["amount"]["currency"]


async def test_a_bulk_cancel_is_counted_before_it_runs(
    demo: Demo, page: Page, new_page: PageFactory, shot: Shot
) -> None:
    merchant, currency = await _waiting_payment(demo)
    await _open_support(page, demo)
    await page.get_by_label(f"Select {merchant['name']}", exact=True).check()
    await expect(page.locator("#merchant-selection")).to_have_text(
        f"1 merchant selected: {merchant['name']}."
    )
    form = page.locator("#cancel-form")
    count_button = form.get_by_role("button", name="Count (dry run)")
    result = page.locator("#cancel-result")
    await form.get_by_label("Currencies").fill(currency)

    # Changing the filter makes a count stale: nothing can be confirmed on an old count.
    await count_button.click()
    await expect(result.locator(".dry-run-sentence")).to_be_visible(timeout=SLOW)
    await form.get_by_label("Search").fill("x")
    await expect(result).to_have_text("The filter changed: count again before canceling.")
    await expect(page.locator("#cancel-confirm")).to_have_count(0)
    await form.get_by_label("Search").fill("")

    # The page's dry-run count is the API's for the same filter and merchant (payments keep
    # moving in the demo, so a mismatch, or nothing left to cancel, is counted again).
    sentence = result.locator(".dry-run-sentence")
    for _ in range(10):
        await count_button.click()
        await expect(sentence).to_be_visible(timeout=SLOW)
        text = await sentence.inner_text()
        shown = re.fullmatch(
            r"This would cancel (\d+) payments? across 1 merchant \(of the 1 selected merchant\)\.",
            text,
        )
        if shown is None:
            assert text == (
                "Nothing to cancel: no pending or scheduled payment of the 1 selected merchant "
                "matches."
            ), text
        count = int(shown.group(1)) if shown else 0
        answer = await demo.api(
            DRY_CANCEL, {"filter": {"currencies": [currency]}, "ids": [merchant["id"]]}
        )
        if count and count == answer["cancelPaymentRecoveries"]["count"]:
            break
    else:
        raise AssertionError("the page's dry-run count never matched the API's")
    # Split per merchant (read beside the dry run, so it may differ by a payment that moved).
    await expect(result.locator(".per-merchant li")).to_have_text(
        re.compile(rf"^{re.escape(merchant['name'])}: \d+ payments?$")
    )
    await shot(page, "bulk-cancel-dry-run")

    confirm = page.locator("#cancel-confirm")
    await expect(confirm).to_have_text(f"Cancel {count} payment{'' if count == 1 else 's'}…")
    await confirm.click()
    await _give_reason(page, "browser test: bulk cancel", "Cancel them")
    progress = page.locator("#cancel-progress .bulk-progress")
    await expect(progress).to_have_attribute("data-status", "SUCCEEDED", timeout=SLOW)
    action_id = await progress.get_attribute("data-action")
    assert action_id
    action = (await demo.api(BULK_ACTION, {"id": action_id}))["node"]
    assert action["kind"] == "CANCEL_PAYMENT_RECOVERIES"
    assert action["reason"] == "browser test: bulk cancel"
    expected = action["expectedCount"]
    await expect(page.locator("#cancel-result")).to_contain_text(
        f"Submitted: {expected} payment{'' if expected == 1 else 's'} to cancel"
    )
    # The job cancels what matches when it runs (payments that failed meanwhile too, none that
    # were retried meanwhile): the page shows what it did as the API tells it.
    done = action["succeededCount"]
    await expect(progress).to_have_text(
        re.compile(rf"Succeeded {done} payments? canceled \({expected} counted when submitted\)")
    )
    await shot(page, "support")

    phone = await new_page(viewport=PHONE)
    await _open_support(phone, demo)
    await shot(phone, "support-phone")


async def test_a_bulk_pause_is_counted_before_it_runs(demo: Demo, page: Page, shot: Shot) -> None:
    active = await _new_merchant(demo, "Browser pause")
    paused = await _new_merchant(demo, "Browser paused")
    answer = await demo.api(
        """mutation ($id: ID!) {
          pauseMerchantRecovery(merchantId: $id, reason: "set-up") { errors { message } }
        }""",
        {"id": paused["id"]},
    )
    assert answer["pauseMerchantRecovery"]["errors"] == []
    await _open_support(page, demo)
    for merchant in (active, paused):
        await page.get_by_label(f"Select {merchant['name']}", exact=True).check()
    section = page.locator("#bulk-pause")
    await section.get_by_role("button", name="Count (dry run)").click()
    answer = await demo.api(DRY_PAUSE, {"ids": [active["id"], paused["id"]]})
    assert answer["pauseMerchantsRecovery"]["count"] == 1
    await expect(section.locator(".dry-run-sentence")).to_have_text(
        "This would pause recovery at 1 merchant (1 of the 2 selected is paused already).",
        timeout=SLOW,
    )
    await section.get_by_role("button", name="Pause 1 merchant…").click()
    await _give_reason(page, "browser test: bulk pause", "Pause them")
    await expect(section.locator(".bulk-progress")).to_have_attribute(
        "data-status", "SUCCEEDED", timeout=SLOW
    )
    row = page.locator(f"#merchants tr[data-merchant='{active['id']}']")
    await expect(row).to_contain_text("Paused", timeout=SLOW)
    assert (await demo.api(STATUS, {"id": active["id"]}))["merchant"]["status"] == "PAUSED"
    await shot(page, "bulk-pause")

    # Resumed on its own row.
    await row.get_by_role("button", name=f"Resume recovery at {active['name']}").click()
    await _give_reason(page, "browser test: resume", "Resume")
    await expect(row).to_contain_text("Active", timeout=SLOW)
    assert (await demo.api(STATUS, {"id": active["id"]}))["merchant"]["status"] == "ACTIVE"


async def _connection_with_dead_letters(demo: Demo) -> tuple[str, str, int]:
    """(merchant name, connection id, dead letters) of a new merchant connected to a sandbox
    account whose first records are malformed."""
    sandbox = next(
        line.split()[2] for line in demo.lines if line.startswith("Sandbox processors: ")
    )
    tag = secrets.token_hex(4)
    api_key = f"sk_test_browser_{tag}"
    async with httpx.AsyncClient(base_url=sandbox) as http:
        account = {
            "processor": "stripe",
            "account_id": f"browser-{tag}",
            "api_key": api_key,
            "merchant_seed": 11,
            "customers": 30,
            "history_days": 3,
        }
        assert (await http.post("/_sandbox/accounts", json=account)).status_code == 201
        faults = await http.post(f"/_sandbox/accounts/browser-{tag}/faults", json={"malformed": 3})
        assert faults.status_code == 200
    merchant = await _new_merchant(demo, "Browser dead letters")
    data = await demo.api(
        """mutation ($input: ConnectProcessorInput!) {
          connectProcessor(input: $input) { errors { message } processorConnection { id } }
        }""",
        {
            "input": {
                "merchantId": merchant["id"],
                "kind": "STRIPE",
                "baseUrl": f"{sandbox}/stripe",
                "credentials": {"api_key": api_key},
            }
        },
    )
    connection_id = data["connectProcessor"]["processorConnection"]["id"]
    await demo.api(
        "mutation ($id: ID!) { syncProcessorConnection(id: $id) { errors { message } } }",
        {"id": connection_id},
    )
    # Some malformed records may still read as payments: the count is taken once it holds
    # still between two answers.
    seen: list[int] = []

    def settled(data: dict[str, Any]) -> bool:
        letters = data["node"]["deadLetters"]
        whole = len(letters["edges"]) == letters["totalCount"]
        seen.append(letters["totalCount"] if whole else -1)
        return len(seen) >= 2 and seen[-1] == seen[-2] and seen[-1] > 0

    found = await demo.eventually(DEAD_LETTERS, settled, variables={"id": connection_id})
    return merchant["name"], connection_id, found["node"]["deadLetters"]["totalCount"]


async def test_dead_letters_are_shown_with_their_records(
    demo: Demo, page: Page, shot: Shot
) -> None:
    merchant_name, connection_id, total = await _connection_with_dead_letters(demo)
    await _open_support(page, demo)
    row = page.locator(f"#dead-letters tr[data-connection='{connection_id}']")
    await expect(row.locator("td[data-label='Dead letters']")).to_have_text(
        str(total), timeout=SLOW
    )
    await expect(row).to_contain_text(merchant_name)
    await row.get_by_role("button", name="Show").click()
    detail = page.locator("#dead-letter-detail")
    await expect(detail.get_by_role("heading", level=3)).to_be_focused(timeout=SLOW)
    await expect(detail.locator("tbody tr")).to_have_count(total)
    letters = (await demo.api(DEAD_LETTERS, {"id": connection_id}))["node"]["deadLetters"]
    for edge in letters["edges"]:
        letter = edge["node"]
        shown = detail.locator(f"tr[data-dead-letter='{letter['id']}']")
        await expect(shown.locator(".dead-letter-reason")).to_have_text(letter["reason"])
        await expect(shown).to_contain_text(letter["rawRecord"]["externalId"])
    first = detail.locator("tbody tr").first
    await first.get_by_text("Show the record").click()
    await expect(first.locator("pre.payload")).to_be_visible()
    await shot(page, "dead-letters")

    # A replay reads the records again: they still fail, and stay dead letters.
    await row.get_by_role("button", name="Replay").click()
    await _give_reason(page, "browser test: replay", "Replay")
    job = page.locator("#replay-jobs tbody tr").first
    await expect(job).to_have_attribute("data-state", "SUCCEEDED", timeout=SLOW)
    job_id = await job.get_attribute("data-job")
    answer = await demo.api(
        "query ($id: ID!) { backgroundJob(id: $id) { state result } }", {"id": job_id}
    )
    assert answer["backgroundJob"]["state"] == "SUCCEEDED"
    assert answer["backgroundJob"]["result"]["dead_letters"] == total
    await expect(job).to_contain_text(f"dead letters: {total}")
    await expect(row.locator("td[data-label='Dead letters']")).to_have_text(
        str(total), timeout=SLOW
    )
