"""The dashboard in a real browser: `portal demo` on loopback, driven by Playwright through the
system's Chromium.

One demo runs for the whole package (a scratch database, the test Redis); each test gets a
fresh browser context. Screenshots go under `test-output/browser/` (`PORTAL_TEST_OUTPUT`
moves it), one folder per test, so a run leaves a picture of every screen it visited.
"""

import asyncio
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from app.embedded import Services, create_scratch_database, drop_database
from tests.support.queue import drop_queue, job_queue, private_queue_name
from tests.support.stack import PORTAL, ROOT, free_port

OUTPUT = Path(os.environ.get("PORTAL_TEST_OUTPUT", ROOT / "test-output")) / "browser"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# Chromium as root in a container, with nothing reaching outside this machine.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
STARTUP_SECONDS = 150
# What a screen may take to show an answer on a machine shared with other work (the default
# of 5 s is for a quiet one); a screen that never shows it still fails.
expect.set_options(timeout=20_000)


def chromium() -> str:
    """The system's Chromium; installed from the distribution's packages when missing and
    this process may (the set-up `.ci/run` does too)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        done = subprocess.run(install, capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)  # noqa: S607
            subprocess.run(install, capture_output=True, check=False)  # noqa: S603
        found = shutil.which("chromium")
        if found:
            return found
    pytest.fail("the browser tests need Chromium: install the `chromium` package")


@dataclass
class Demo:
    """A running `portal demo`: its address, keys and what it printed."""

    url: str
    support_key: str
    merchant_keys: dict[str, str]
    lines: list[str] = field(default_factory=list)

    async def api(
        self, query: str, variables: dict[str, Any] | None = None, *, key: str | None = None
    ) -> dict[str, Any]:
        """The API's answer to `query` (the support key unless `key`), errors failing the test."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
            response = await http.post(
                "/graphql",
                json={"query": query, "variables": variables or {}},
                headers={"Authorization": f"Bearer {key or self.support_key}"},
            )
        body: dict[str, Any] = response.json()
        assert not body.get("errors"), body["errors"]
        data: dict[str, Any] = body["data"]
        return data

    async def eventually(
        self,
        query: str,
        check: Callable[[dict[str, Any]], bool],
        *,
        variables: dict[str, Any] | None = None,
        key: str | None = None,
        seconds: float = 90,
    ) -> dict[str, Any]:
        """The first answer to `query` that passes `check` (the demo's data keeps arriving)."""
        deadline = time.monotonic() + seconds
        while True:
            data = await self.api(query, variables, key=key)
            if check(data):
                return data
            assert time.monotonic() < deadline, f"never true within {seconds} s: {data}"
            await asyncio.sleep(0.5)

    def link(self, route: str = "", *, key: str | None = None) -> str:
        """The dashboard opened with `key` (support's unless given) at `route` (`/m/<id>/...`)."""
        rest = f"&{route}" if route else ""
        return f"{self.url}/dashboard/#key={key or self.support_key}{rest}"


def _read_lines(stream: Any, lines: list[str], seen: threading.Event) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))
        if line.startswith("Support API key: "):
            seen.set()
    seen.set()


@pytest.fixture(scope="package")
async def demo(services: Services) -> AsyncIterator[Demo]:
    url = await create_scratch_database(services, "portal_browser")
    port = free_port()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    # A queue of its own: no other test run's worker takes the demo's jobs, nor it theirs.
    queue_name = private_queue_name()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": services.redis_url,
        "PORTAL_QUEUE_NAME": queue_name,
    }
    command = [
        *PORTAL,
        "demo",
        "--port",
        str(port),
        "--customers",
        "200",
        "--training-failures",
        "4000",
    ]
    with (OUTPUT / "demo.log").open("w") as log:
        process = await asyncio.to_thread(
            subprocess.Popen,
            command,
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        lines: list[str] = []
        seen = threading.Event()
        assert process.stdout is not None
        threading.Thread(
            target=_read_lines, args=(process.stdout, lines, seen), daemon=True
        ).start()
        try:
            assert await asyncio.to_thread(seen.wait, STARTUP_SECONDS), "the demo never started"
            assert process.poll() is None, f"the demo ended: {lines}"
            running = _demo_from(lines, port)
            await _wait_ready(running.url)
            yield running
        finally:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
            process.stdout.close()
            async with job_queue(services, queue_name) as queue:
                await drop_queue(queue)
            await drop_database(services, url)


def _demo_from(lines: list[str], port: int) -> Demo:
    support = next(line for line in lines if line.startswith("Support API key: "))
    merchants = {}
    for line in lines:
        match = re.match(r"Merchant API key \((.+), \w+\): (\S+)$", line)
        if match:
            merchants[match.group(1)] = match.group(2)
    return Demo(
        url=f"http://127.0.0.1:{port}",
        support_key=support.removeprefix("Support API key: "),
        merchant_keys=merchants,
        lines=lines,
    )


async def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=url) as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    pytest.fail("the demo's API never became ready")


@pytest.fixture(scope="package")
async def browser() -> AsyncIterator[Browser]:
    executable = chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


PageFactory = Callable[..., Awaitable[Page]]


@pytest.fixture
async def new_page(browser: Browser) -> AsyncIterator[PageFactory]:
    """Pages in fresh contexts (their own session storage); the test fails on any script
    error or console error a page reported."""
    contexts = []
    problems: list[str] = []

    def record(message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        # The API's typed refusals (a bad argument: 400) are answers the page shows; any
        # other failed load (a missing module: 404) is a fault.
        refused = re.match(r"Failed to load resource: .* status of 4\d\d", message.text)
        if refused and message.location.get("url", "").split("?")[0].endswith("/graphql"):
            return
        problems.append(f"console: {message.text} ({message.location.get('url')})")

    async def make(*, viewport: dict[str, int] | None = None) -> Page:
        context = await browser.new_context(viewport=viewport or DESKTOP)  # type: ignore[arg-type]
        contexts.append(context)
        page = await context.new_page()
        page.on("console", record)
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        return page

    yield make
    for context in contexts:
        await context.close()
    assert not problems, problems


@pytest.fixture
async def page(new_page: PageFactory) -> Page:
    return await new_page()


Shot = Callable[[Page, str], Awaitable[Path]]


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Shot:
    """Saves a full-page screenshot as `<output>/<test>/<name>.png`."""
    folder = OUTPUT / re.sub(r"[^\w.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)

    async def take(page: Page, name: str) -> Path:
        path = folder / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        return path

    return take
