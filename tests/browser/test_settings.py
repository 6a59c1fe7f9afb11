"""The settings screen in Chromium: the retry policy (preview, save, a version conflict),
webhook endpoints with a test delivery to a receiver on loopback, and API keys."""

import asyncio
import base64
import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, Route, expect

from tests.browser.conftest import PHONE, Demo, PageFactory, Shot

# The API's own work (a policy preview runs the model over scheduled payments) can take a while
# on a busy machine: expectations that wait on it wait this long (ms).
SLOW = 30_000

POLICY = """
query ($id: ID!) {
  merchant(id: $id) {
    retryPolicy {
      version maxAttempts windowDays controlGroupPercent fixedScheduleDays
      history(first: 1) { edges { node { version actor reason changes { field old new } } } }
    }
  }
}
"""
UPDATE = """
mutation ($input: UpdateRetryPolicyInput!) {
  updateRetryPolicy(input: $input) { errors { code message } retryPolicy { version } }
}
"""
MERCHANTS = "{ viewer { merchants(first: 10) { edges { node { id name } } } } }"
ENDPOINTS = """
query ($id: ID!) {
  merchant(id: $id) {
    webhookEndpoints { id url enabled recentDeliveries(first: 20) { id eventType status attempts } }
  }
}
"""


async def _merchant(demo: Demo) -> tuple[str, str, str]:
    """(id, name, key) of the merchant these tests change: the last one the demo made, which
    the other screens' tests do not use for their own changes."""
    name, key = list(demo.merchant_keys.items())[-1]
    data = await demo.api(MERCHANTS, key=key)
    merchant = data["viewer"]["merchants"]["edges"][0]["node"]
    assert merchant["name"] == name
    return merchant["id"], name, key


async def _policy(demo: Demo, merchant_id: str) -> dict[str, Any]:
    data = await demo.api(POLICY, {"id": merchant_id})
    policy: dict[str, Any] = data["merchant"]["retryPolicy"]
    return policy


async def _give_reason(page: Page, reason: str, confirm: str) -> None:
    dialog = page.get_by_role("dialog")
    await dialog.get_by_label("Reason (kept in the audit log)").fill(reason)
    await dialog.get_by_role("button", name=confirm, exact=True).click()
    await expect(dialog).to_have_count(0)


async def _open_settings(page: Page, demo: Demo, merchant_id: str, key: str) -> None:
    await page.goto(demo.link(f"/m/{merchant_id}/settings", key=key))
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Settings", timeout=SLOW)
    # The form is filled once the policy is read.
    await expect(page.locator("#policy-summary")).to_contain_text("Version", timeout=SLOW)


def _other(value: int, low: int, high: int) -> int:
    """A valid value different from `value` in [low, high]."""
    return value + 1 if value < high else max(low, value - 1)


async def test_a_policy_change_is_previewed_then_saved(
    demo: Demo, page: Page, new_page: PageFactory, shot: Shot
) -> None:
    merchant_id, _, key = await _merchant(demo)
    before = await _policy(demo, merchant_id)
    await _open_settings(page, demo, merchant_id, key)
    attempts = page.get_by_label("Max attempts", exact=True)
    await expect(attempts).to_have_value(str(before["maxAttempts"]))
    wanted = _other(before["maxAttempts"], 1, 15)
    await attempts.fill(str(wanted))
    await expect(page.locator("#policy-edits")).to_have_text("Unsaved: Max attempts.")

    # The preview names the change and what it would do, and changes nothing.
    await page.get_by_role("button", name="Preview", exact=True).click()
    card = page.locator("#policy-preview-card")
    await expect(card).to_contain_text(f"over version {before['version']}", timeout=SLOW)
    await expect(card.locator("li[data-field=maxAttempts]")).to_have_text(
        f"Max attempts: {before['maxAttempts']} → {wanted}"
    )
    await expect(card).to_contain_text("scheduled payments would be decided again")
    assert (await _policy(demo, merchant_id))["version"] == before["version"]
    await shot(page, "policy-preview")

    # Saved with a reason: the API answers the next version, which the history shows.
    await page.get_by_role("button", name="Save…").click()
    await _give_reason(page, "browser test: one more retry", "Save")
    await expect(page.locator("#status")).to_have_text(
        f"Saved: the retry policy is at version {before['version'] + 1}.", timeout=SLOW
    )
    after = await _policy(demo, merchant_id)
    assert after["version"] == before["version"] + 1
    assert after["maxAttempts"] == wanted
    newest = after["history"]["edges"][0]["node"]
    assert newest["reason"] == "browser test: one more retry"
    assert newest["changes"] == [
        {"field": "maxAttempts", "old": before["maxAttempts"], "new": wanted}
    ]
    row = page.locator(f"#policy-history tr[data-version='{after['version']}']")
    await expect(row).to_contain_text("browser test: one more retry", timeout=SLOW)
    await expect(row).to_contain_text(f"Max attempts: {before['maxAttempts']} → {wanted}")
    await expect(page.locator("#policy-summary")).to_contain_text(f"Version {after['version']},")
    await expect(page.locator("#policy-edits")).to_have_text("No unsaved edits.")
    await expect(page.locator("#policy-preview-card")).to_have_count(0)
    await shot(page, "settings")

    phone = await new_page(viewport=PHONE)
    await _open_settings(phone, demo, merchant_id, key)
    await expect(phone.get_by_label("Max attempts", exact=True)).to_have_value(str(wanted))
    await shot(phone, "settings-phone")


async def test_a_version_conflict_is_explained_and_the_edit_saved_again(
    demo: Demo, page: Page, shot: Shot
) -> None:
    merchant_id, _, key = await _merchant(demo)
    before = await _policy(demo, merchant_id)
    await _open_settings(page, demo, merchant_id, key)
    window = page.get_by_label("Window (days)", exact=True)
    await expect(window).to_have_value(str(before["windowDays"]))
    mine = _other(before["windowDays"], max(before["fixedScheduleDays"], default=1), 60)
    await window.fill(str(mine))

    # Meanwhile a colleague (the support key) saves another setting through the API.
    theirs = _other(before["controlGroupPercent"], 0, 50)
    answer = await demo.api(
        UPDATE,
        {
            "input": {
                "merchantId": merchant_id,
                "expectedVersion": before["version"],
                "reason": "colleague: a larger control group",
                "controlGroupPercent": theirs,
            }
        },
    )
    assert answer["updateRetryPolicy"]["errors"] == []
    colleague = (await demo.api("{ viewer { name } }"))["viewer"]["name"]
    newer = before["version"] + 1

    await page.get_by_role("button", name="Save…").click()
    await _give_reason(page, "browser test: a longer window", "Save")
    conflict = page.locator("#policy-conflict-box")
    await expect(conflict).to_contain_text("someone else changed the policy", timeout=SLOW)
    await expect(conflict).to_contain_text(
        f"You were editing version {before['version']}; the policy is now at version {newer}."
    )
    await expect(conflict).to_contain_text(f"Version {newer} by api_key:{colleague}")
    await expect(conflict).to_contain_text("colleague: a larger control group")
    await expect(conflict.locator("li[data-field=controlGroupPercent]")).to_have_text(
        f"Control group: {before['controlGroupPercent']}% → {theirs}%"
    )
    await expect(conflict).to_contain_text("Your edits are still in the form")
    # The user's edit stays; the colleague's setting is taken and marked.
    await expect(window).to_have_value(str(mine))
    await expect(page.get_by_label("Control group", exact=True)).to_have_value(str(theirs))
    await expect(page.locator(".changed-by-other[data-field=controlGroupPercent]")).to_contain_text(
        f"api_key:{colleague} set this to {theirs}% in version {newer}."
    )
    await expect(page.locator("#policy-edits")).to_have_text("Unsaved: Window (days).")
    await shot(page, "policy-conflict")
    assert (await _policy(demo, merchant_id))["version"] == newer

    await conflict.get_by_role("button", name=f"Save my edits on version {newer}…").click()
    await _give_reason(page, "browser test: a longer window", "Save")
    await expect(page.locator("#status")).to_have_text(
        f"Saved: the retry policy is at version {newer + 1}.", timeout=SLOW
    )
    await expect(conflict).to_have_count(0)
    after = await _policy(demo, merchant_id)
    assert after["version"] == newer + 1
    # Both changes hold: nothing the colleague saved was undone.
    assert (after["windowDays"], after["controlGroupPercent"]) == (mine, theirs)
    assert [c["field"] for c in after["history"]["edges"][0]["node"]["changes"]] == ["windowDays"]


async def test_invalid_settings_are_shown_at_their_field(demo: Demo, page: Page) -> None:
    merchant_id, _, key = await _merchant(demo)
    await _open_settings(page, demo, merchant_id, key)
    await page.get_by_label("Fixed schedule days", exact=True).fill("1, three")
    await page.get_by_role("button", name="Preview", exact=True).click()
    await expect(page.locator("[data-field=fixedScheduleDays] .field-error")).to_have_text(
        "Fixed schedule days are whole numbers separated by commas."
    )
    await expect(page.get_by_label("Fixed schedule days", exact=True)).to_be_focused()
    # What the API refuses is shown at its field too.
    await page.get_by_label("Fixed schedule days", exact=True).fill("1, 3")
    await page.get_by_label("Max attempts", exact=True).fill("99")
    await page.get_by_role("button", name="Preview", exact=True).click()
    await expect(page.locator("[data-field=maxAttempts] .field-error")).to_be_visible(timeout=SLOW)
    await expect(page.get_by_label("Max attempts", exact=True)).to_have_attribute(
        "aria-invalid", "true"
    )


# ---- webhooks ----------------------------------------------------------------------------


@dataclass
class Receiver:
    """An HTTP server on loopback that accepts every POST and keeps what it got."""

    url: str
    received: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)

    def deliveries_of(self, event_type: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
        return [(h, body) for h, body in self.received if body.get("type") == event_type]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got: list[tuple[dict[str, str], dict[str, Any]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            got.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hooks", received=got)
    finally:
        server.shutdown()
        server.server_close()


def _raw_id(global_id: str) -> str:
    """The uuid in a global id (`Type:uuid`, base64url without padding)."""
    decoded = base64.urlsafe_b64decode(global_id + "=" * (-len(global_id) % 4)).decode()
    return decoded.split(":", 1)[1]


async def test_a_test_webhook_is_delivered_and_redelivered(
    demo: Demo, page: Page, receiver: Receiver, shot: Shot
) -> None:
    merchant_id, _, key = await _merchant(demo)
    await _open_settings(page, demo, merchant_id, key)
    await page.get_by_label("New endpoint URL").fill(receiver.url)
    await page.get_by_role("button", name="Add endpoint").click()
    # The signing secret is shown once.
    secret = page.locator(".secret-box", has_text=f"Signing secret of {receiver.url}")
    await expect(secret).to_be_visible(timeout=SLOW)
    first_secret = await secret.locator("input").input_value()
    assert first_secret
    card = page.locator("article.endpoint", has_text=receiver.url)
    await expect(card.locator(".endpoint-head")).to_contain_text("Enabled", timeout=SLOW)
    await expect(card).to_contain_text("Receives every event type.")
    # Narrowed to a rare event type, so the merchant's payment events do not crowd the test
    # delivery out of the recent ones (a test event is sent whatever the types).
    await card.locator("summary", has_text="Event types").click()
    await card.get_by_label("payment.duplicate_charge", exact=True).check()
    await card.get_by_role("button", name="Save event types…").click()
    await _give_reason(page, "browser test: only rare events", "Change")
    await expect(card).to_contain_text("Receives: payment.duplicate_charge.", timeout=SLOW)

    await card.get_by_role("button", name=f"Send test to {receiver.url}").click()
    ping = card.locator("tbody tr", has_text="ping")
    await expect(ping).to_have_attribute("data-status", "DELIVERED", timeout=SLOW)
    await expect(ping).to_contain_text("HTTP 204")
    delivery_id = await ping.get_attribute("data-delivery")
    assert delivery_id
    # The receiver got it, under the delivery's id; the API agrees with the page.
    pings = receiver.deliveries_of("ping")
    assert [h["portal-delivery"] for h, _ in pings] == [_raw_id(delivery_id)]
    data = await demo.api(ENDPOINTS, {"id": merchant_id}, key=key)
    endpoint = next(e for e in data["merchant"]["webhookEndpoints"] if e["url"] == receiver.url)
    answered = next(d for d in endpoint["recentDeliveries"] if d["id"] == delivery_id)
    assert (answered["eventType"], answered["status"], answered["attempts"]) == (
        "ping",
        "DELIVERED",
        1,
    )
    await shot(page, "webhook-delivered")

    # Sent again: a new delivery of the same event.
    await ping.get_by_role("button", name="Redeliver ping").click()
    await _give_reason(page, "browser test: once more", "Redeliver")
    again = card.locator("tbody tr", has_text="(redelivery)")
    await expect(again).to_have_attribute("data-status", "DELIVERED", timeout=SLOW)
    pings = receiver.deliveries_of("ping")
    assert len(pings) == 2
    assert pings[0][1]["id"] == pings[1][1]["id"]

    # A new secret, shown once; the old one still signs for a while, as the card says.
    await card.get_by_role("button", name=f"Rotate secret of {receiver.url}").click()
    await _give_reason(page, "browser test: rotate", "Rotate")
    rotated = page.locator(".secret-box", has_text=f"New signing secret of {receiver.url}")
    await expect(rotated).to_be_visible(timeout=SLOW)
    assert await rotated.locator("input").input_value() not in ("", first_secret)
    await expect(card).to_contain_text("The previous secret still signs until", timeout=SLOW)

    # Disabled, then deleted.
    await card.get_by_role("button", name=f"Disable {receiver.url}").click()
    await _give_reason(page, "browser test: pause the receiver", "Disable")
    await expect(card.locator(".endpoint-head")).to_contain_text("Disabled", timeout=SLOW)
    data = await demo.api(ENDPOINTS, {"id": merchant_id}, key=key)
    endpoint = next(e for e in data["merchant"]["webhookEndpoints"] if e["url"] == receiver.url)
    assert endpoint["enabled"] is False
    await card.get_by_role("button", name=f"Delete {receiver.url}").click()
    await _give_reason(page, "browser test: done", "Delete")
    await expect(page.locator("article.endpoint", has_text=receiver.url)).to_have_count(
        0, timeout=SLOW
    )
    data = await demo.api(ENDPOINTS, {"id": merchant_id}, key=key)
    assert receiver.url not in [e["url"] for e in data["merchant"]["webhookEndpoints"]]


# ---- API keys ----------------------------------------------------------------------------


async def test_a_key_is_created_shown_once_and_revoked(demo: Demo, page: Page, shot: Shot) -> None:
    merchant_id, _, key = await _merchant(demo)
    await _open_settings(page, demo, merchant_id, key)
    name = "browser test reader"
    await page.get_by_label("Key name", exact=True).fill(name)
    await page.get_by_label("Write", exact=True).uncheck()
    await page.get_by_label("Expires", exact=True).select_option("30")
    await page.get_by_role("button", name="Create key").click()
    box = page.locator(".secret-box", has_text=f"Token of the key {name}")
    await expect(box).to_be_visible(timeout=SLOW)
    token = await box.locator("input").input_value()
    assert token.startswith("rp_")

    # The new key works, read-only, and the list shows it as the API does.
    viewer = await demo.api("{ viewer { name role } }", key=token)
    assert viewer["viewer"] == {"name": name, "role": "MERCHANT"}
    keys = await demo.api(
        "{ apiKeys(first: 50) { edges { node { id name scopes expiresAt revokedAt } } } }", key=key
    )
    created = next(e["node"] for e in keys["apiKeys"]["edges"] if e["node"]["name"] == name)
    assert created["scopes"] == ["READ"]
    assert created["expiresAt"] is not None
    row = page.locator(f"tr[data-key='{created['id']}']")
    await expect(row).to_contain_text("Read", timeout=SLOW)
    await expect(row).not_to_contain_text("Write")
    await expect(row).to_contain_text("Active")
    await shot(page, "api-key-created")

    await row.get_by_role("button", name=f"Revoke {name}").click()
    await _give_reason(page, "browser test: no longer needed", "Revoke")
    await expect(row).to_contain_text("Revoked", timeout=SLOW)
    # Refused at once (the revoking process forgets the key it cached).
    async with httpx.AsyncClient(base_url=demo.url) as http:
        answer = await http.post(
            "/graphql",
            json={"query": "{ viewer { name } }"},
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/graphql-response+json",
            },
        )
    assert answer.status_code == 401
    assert answer.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_a_key_created_while_the_user_moves_on_still_shows_its_token(
    demo: Demo, page: Page
) -> None:
    """The portal creates the key whatever the page does once the request is sent: a user who
    leaves the settings screen before the answer arrives is still told, and given the token
    (it cannot be read again), over the screen they moved to."""
    merchant_id, _, key = await _merchant(demo)
    await _open_settings(page, demo, merchant_id, key)
    sent = asyncio.Event()
    answer = asyncio.Event()

    async def hold_creation(route: Route) -> None:
        # The creation's answer waits until the user has moved on.
        if "createApiKey" in (route.request.post_data or ""):
            sent.set()
            await answer.wait()
        # Refused when the page has given the request up (the token would then be lost).
        with contextlib.suppress(PlaywrightError):
            await route.continue_()

    await page.route("**/graphql", hold_creation)
    name = "browser test key made while leaving"
    await page.get_by_label("Key name", exact=True).fill(name)
    await page.get_by_role("button", name="Create key").click()
    await asyncio.wait_for(sent.wait(), SLOW / 1000)
    # The click is acknowledged at once, before the portal answers.
    await expect(page.locator("#status")).to_contain_text(f"Creating the key {name}")

    nav = page.get_by_role("navigation", name="Dashboard")
    await nav.get_by_role("link", name="Overview").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Overview", timeout=SLOW)
    answer.set()

    dialog = page.get_by_role("dialog")
    box = dialog.locator(".secret-box", has_text=f"Token of the key {name}")
    await expect(box).to_be_visible(timeout=SLOW)
    await expect(page.locator("#status")).to_contain_text(f"Key {name} created.")
    token = await box.locator("input").input_value()
    viewer = await demo.api("{ viewer { name role } }", key=token)
    assert viewer["viewer"] == {"name": name, "role": "MERCHANT"}
    await dialog.get_by_role("button", name="Close").click()
    await expect(dialog).to_have_count(0)
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Overview")
