"""The `portal` command end to end, as a user runs it, against a scratch database."""

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.crypto import CredentialBox
from app.db import Database
from app.embedded import Services
from app.enums import Processor
from app.services.connection import create_connection
from app.services.merchant import create_merchant
from app.services.stats.figures import MIN_ARM_SIZE
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, system_principal
from jobs.enqueue import enqueue_poll, poll_job_id
from portal.migrate import upgrade_database
from tests.support.cli import portal_ok, run_portal
from tests.support.factories import SANDBOX_URLS
from tests.support.normalize import PROCESSOR_FIXTURES
from tests.support.queue import job_queue
from tests.support.stack import PORTAL, ROOT, free_port


def _wait_ready(http: httpx.Client) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if http.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server never became ready")


def _graphql(http: httpx.Client, token: str, query: str) -> Any:
    response = http.post(
        "/graphql", json={"query": query}, headers={"Authorization": f"Bearer {token}"}
    )
    return response.json()["data"]


def _cli_flow(env: dict[str, str]) -> None:
    assert portal_ok(env, "migrate") == "database at head"
    merchant_id = portal_ok(env, "merchant", "create", "--name", "CLI Merchant")
    output = portal_ok(env, "apikey", "create", "--role", "merchant", "--merchant", merchant_id)
    token = output.splitlines()[-1]
    assert token.startswith("rp_")
    reader = portal_ok(
        env,
        "apikey",
        "create",
        "--role",
        "merchant",
        "--merchant",
        merchant_id,
        "--scope",
        "read",
        "--expires-at",
        "2099-01-01T00:00:00Z",
    ).splitlines()[-1]
    naive = run_portal(
        env, "apikey", "create", "--role", "support", "--expires-at", "2099-01-01T00:00:00"
    )
    assert naive.returncode == 2
    assert "UTC offset" in naive.stderr
    seeded = portal_ok(env, "seed", "--merchant", merchant_id, "--payments", "40")
    assert seeded == "seeded 40 payments"
    port = free_port()
    server = subprocess.Popen(  # noqa: S603
        [*PORTAL, "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            _wait_ready(http)
            query = (
                f'{{ merchant(id: "{merchant_id}") {{ name '
                "payments(first: 100) { edges { node { state } } } } }"
            )
            merchant = _graphql(http, token, query)["merchant"]
            refused = http.post(
                "/graphql",
                json={
                    "query": 'mutation { revokeApiKey(id: "x", reason: "r") { errors { code } } }'
                },
                headers={"Authorization": f"Bearer {reader}"},
            ).json()
            assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
            assert "WRITE scope" in refused["errors"][0]["message"]
        assert merchant["name"] == "CLI Merchant"
        states = {e["node"]["state"] for e in merchant["payments"]["edges"]}
        assert len(merchant["payments"]["edges"]) == 40
        assert len(states) >= 3
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert "portal using database: DATABASE_URL" in stderr
    assert token not in stderr


# Six CLI commands and a server start, each a fresh interpreter (about 30 s unloaded).
@pytest.mark.timeout(300)
async def test_migrate_merchant_key_seed_then_serve(env: dict[str, str]) -> None:
    await asyncio.to_thread(_cli_flow, env)


def _serve_two_processes(env: dict[str, str]) -> None:
    assert portal_ok(env, "migrate") == "database at head"
    port = free_port()
    server = subprocess.Popen(  # noqa: S603
        [*PORTAL, "serve", "--port", str(port), "--workers", "2"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            _wait_ready(http)
            answers = [http.get("/readyz").json() for _ in range(10)]
        assert all(a["database"] == "ok" and a["redis"] == "ok" for a in answers)
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0, stderr
    # Each process logs its own start-up line: two processes served.
    assert stderr.count("portal using database: DATABASE_URL") == 2, stderr


async def test_serve_runs_several_processes_on_one_port(env: dict[str, str]) -> None:
    await asyncio.to_thread(_serve_two_processes, env)


async def test_several_processes_need_shared_services(env: dict[str, str]) -> None:
    alone = {k: v for k, v in env.items() if k not in {"REDIS_URL", "PORTAL_REDIS_URL"}}
    done = await asyncio.to_thread(run_portal, alone, "serve", "--workers", "2")
    assert done.returncode == 2
    assert "needs DATABASE_URL and REDIS_URL" in done.stderr


async def test_bad_input_exits_with_a_message(env: dict[str, str]) -> None:
    done = await asyncio.to_thread(run_portal, env, "seed", "--merchant", "nonsense")
    assert done.returncode == 1
    assert "error: malformed id" in done.stderr
    assert "Traceback" not in done.stderr


def _stats_agree(merchant: dict[str, Any]) -> bool:
    """recoveryStats counts what the payments list shows (when the list is complete)."""
    if merchant["payments"]["pageInfo"]["hasNextPage"]:
        return True
    states: list[str] = [p["node"]["state"] for p in merchant["payments"]["edges"]]
    summaries = [c["summary"] for c in merchant["recoveryStats"]["currencies"]]
    failed = sum(int(s["failedCount"]) for s in summaries)
    recovered = sum(int(s["recoveredCount"]) for s in summaries)
    return failed == len(states) and recovered == states.count("RECOVERED")


def _demo_flow(env: dict[str, str]) -> None:
    port = free_port()
    demo = subprocess.Popen(  # noqa: S603
        [*PORTAL, "demo", "--port", str(port), "--customers", "200", "--speed", "7200"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = demo.stdout.readline().strip()
            lines.append(line)
            if line.startswith("Support API key: "):
                break
        assert any(line.startswith(f"GraphQL: http://127.0.0.1:{port}/graphql ") for line in lines)
        assert any(
            line.startswith(f"Dashboard: http://127.0.0.1:{port}/dashboard/#key=") for line in lines
        )
        support = lines[-1].removeprefix("Support API key: ")
        query = (
            "{ merchants { edges { node { name payments(first: 100) "
            "{ edges { node { state recoveredBy } } } } } } }"
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            _wait_ready(http)
            # Within a minute: every processor's payments ingested, some recovered by retries.
            deadline = time.monotonic() + 75
            while time.monotonic() < deadline:
                merchants = [
                    e["node"] for e in _graphql(http, support, query)["merchants"]["edges"]
                ]
                payments = [p["node"] for m in merchants for p in m["payments"]["edges"]]
                ingested = all(m["payments"]["edges"] for m in merchants)
                if ingested and any(p["recoveredBy"] == "PORTAL" for p in payments):
                    break
                time.sleep(1)
            # The statistics agree with the payments listed, merchant by merchant. The worker
            # keeps moving payments, so a read can fall between two commits: read again.
            stats_query = (
                "{ merchants { edges { node { name payments(first: 100) { pageInfo "
                "{ hasNextPage } edges { node { state } } } recoveryStats(from: "
                '"2020-01-01T00:00:00Z", to: "2030-01-01T00:00:00Z", granularity: MONTH) '
                "{ currencies { summary { failedCount recoveredCount } } } } } } }"
            )
            for _ in range(10):
                listed = [
                    e["node"] for e in _graphql(http, support, stats_query)["merchants"]["edges"]
                ]
                if all(_stats_agree(m) for m in listed):
                    break
                time.sleep(0.2)
        assert len(merchants) == 4
        assert ingested, [m["name"] for m in merchants if not m["payments"]["edges"]]
        assert any(p["recoveredBy"] == "PORTAL" for p in payments)
        disagreeing = [m["name"] for m in listed if not _stats_agree(m)]
        assert disagreeing == []
    finally:
        demo.terminate()
        demo.communicate(timeout=30)


# Waits up to 90 s for the demo to start and 75 s for its first recoveries.
@pytest.mark.timeout(300)
async def test_demo_ingests_retries_and_recovers(env: dict[str, str]) -> None:
    await asyncio.to_thread(_demo_flow, env)


MODEL_QUERY = (
    "{ merchants { edges { node { name payments(first: 50) { edges { node { decision "
    '{ strategy explanation } } } } recoveryStats(from: "2020-01-01T00:00:00Z", to: '
    '"2030-01-01T00:00:00Z", granularity: MONTH) { currencies { currency uplift '
    "{ treatment { eligibleCount } control { eligibleCount } } } } } } } }"
)


def _model_flow(env: dict[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the demo until the model has decided with an explanation and an uplift is shown;
    answer the model's explained decisions and the uplifts seen last."""
    port = free_port()
    demo = subprocess.Popen(  # noqa: S603
        # A month of history for 12,000 subscribers: both arms reach MIN_ARM_SIZE on the
        # backfill alone, without waiting for new failures.
        [
            *PORTAL,
            "demo",
            "--port",
            str(port),
            "--merchants",
            "1",
            "--customers",
            "12000",
            "--history-days",
            "30",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert demo.stdout is not None
        support = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not support:
            line = demo.stdout.readline().strip()
            support = line.removeprefix("Support API key: ") if line.startswith("Support") else ""
        decisions: list[dict[str, Any]] = []
        uplifts: list[dict[str, Any]] = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            _wait_ready(http)
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline and not (decisions and uplifts):
                [merchant] = [
                    e["node"] for e in _graphql(http, support, MODEL_QUERY)["merchants"]["edges"]
                ]
                found = [p["node"]["decision"] for p in merchant["payments"]["edges"]]
                # A payment moved by a rule keeps its policy's strategy without an explanation.
                decisions = [
                    d for d in found if d and d["strategy"] == "MODEL" and d["explanation"]
                ]
                stats = merchant["recoveryStats"]["currencies"]
                uplifts = [c["uplift"] for c in stats if c["uplift"] is not None]
                time.sleep(1)
        return decisions, uplifts
    finally:
        demo.terminate()
        demo.communicate(timeout=30)


# Waits up to 90 s for the demo to start and 150 s for the model's decisions and an uplift (the
# demo trains its model first, on two cores shared with the rest of the suite).
@pytest.mark.timeout(300)
async def test_demo_trains_a_model_that_decides_and_shows_an_uplift(env: dict[str, str]) -> None:
    decisions, uplifts = await asyncio.to_thread(_model_flow, env)
    assert decisions, "no payment decided by the model with an explanation"
    assert uplifts, "no currency with an uplift"
    for uplift in uplifts:
        assert uplift["treatment"]["eligibleCount"] >= MIN_ARM_SIZE
        assert uplift["control"]["eligibleCount"] >= MIN_ARM_SIZE


class SlowProcessor:
    """A Stripe charges list on loopback that takes `delay` seconds to answer (empty)."""

    def __init__(self, delay: float) -> None:
        self.asked = threading.Event()
        self.answered = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.asked.set()
                time.sleep(delay)
                body = json.dumps({"object": "list", "data": [], "has_more": False}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                outer.answered.set()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def _slow_connection(database_url: str, base_url: str) -> uuid.UUID:
    await asyncio.to_thread(upgrade_database, database_url)
    db = Database.from_url(database_url, pool_size=1)
    now = datetime.now(UTC)
    try:
        async with db.uow(SYSTEM_SCOPE) as uow:
            merchant = await create_merchant(
                uow, name="Worker", principal=system_principal(), now=now
            )
            connection = await create_connection(
                uow,
                principal=system_principal(),
                merchant_id=merchant.id,
                kind=Processor.STRIPE,
                base_url=base_url,
                policy=SANDBOX_URLS,
                credentials={"api_key": "sk_test_worker"},
                box=CredentialBox(Settings().secret_key.get_secret_value()),
                now=now,
            )
            await uow.commit()
    finally:
        await db.dispose()
    return connection.id


async def test_worker_lets_the_running_job_finish_on_sigterm_and_exits_0(
    env: dict[str, str], services: Services, queue_name: str
) -> None:
    processor = SlowProcessor(delay=2.0)
    connection_id = await _slow_connection(env["DATABASE_URL"], processor.url)
    async with job_queue(services, queue_name) as queue:
        # On the test's own queue (`env` names it), queued before the worker starts: no other
        # worker can take it, and it is the first job this one sees, ahead of every cron job
        # the worker queues for itself, so even two slots are enough.
        assert await enqueue_poll(queue, connection_id)
        worker = await asyncio.create_subprocess_exec(
            *PORTAL,
            "worker",
            "--concurrency",
            "2",
            env={**env, "PORTAL_WORKER_SHUTDOWN_GRACE_SECONDS": "20"},
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            # The poll job is waiting for the processor's answer: it is in flight.
            if not await asyncio.to_thread(processor.asked.wait, 60):
                worker.kill()
                _, err = await asyncio.wait_for(worker.communicate(), 60)
                said = err.decode()[-3000:]
                raise AssertionError(f"the poll never ran; the worker said:\n{said}")
            worker.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(worker.communicate(), 60)
            still_queued = await queue.zscore(queue_name, poll_job_id(connection_id))
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
            processor.close()
    stderr = err.decode()
    assert worker.returncode == 0, stderr
    assert processor.answered.is_set()
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    # The job finished after the signal, nothing had to be cancelled, the worker closed.
    polled = [e for e in lines if e["event"] == "polled"]
    assert [e["connection_id"] for e in polled] == [str(connection_id)]
    assert events.index("signal received") < events.index("polled") < events.index("worker stopped")
    assert "cancelling running jobs; they will run again" not in events
    assert still_queued is None


def _normalize(*args: str) -> subprocess.CompletedProcess[str]:
    return run_portal(None, "normalize", *args, timeout=60)


# One CLI run per fixture file (about 55 s on a busy two-core machine).
@pytest.mark.timeout(300)
async def test_normalize_prints_one_canonical_object_per_record() -> None:
    done = await asyncio.to_thread(
        _normalize, "stripe", str(PROCESSOR_FIXTURES / "stripe" / "charges_list_page.json")
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) >= 2
    assert set(records[0]) == {
        "processor",
        "processor_payment_id",
        "status",
        "amount_minor",
        "currency",
        "customer_id",
        "card",
        "decline",
        "attempted_at",
        "actor",
        "billing",
    }
    assert records[0]["attempted_at"].endswith("Z")
    assert {r["actor"] for r in records} <= {"portal", "processor", "billing_system", "customer"}
    assert {r["status"] for r in records} <= {"failed", "succeeded"}
    xml = await asyncio.to_thread(
        _normalize,
        "braintree",
        str(PROCESSOR_FIXTURES / "braintree" / "credit_card_transactions.xml"),
    )
    assert xml.returncode == 0, xml.stderr
    assert all(json.loads(line)["processor"] == "braintree" for line in xml.stdout.splitlines())


async def test_normalize_refuses_an_unparseable_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    done = await asyncio.to_thread(_normalize, "stripe", str(broken))
    assert done.returncode != 0
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ")


def test_production_without_a_metrics_token_refuses_to_start_and_says_why(
    tmp_path: Path,
) -> None:
    secret = "a-real-secret-key-" + "s" * 24
    env = {**os.environ, "PORTAL_ENVIRONMENT": "production", "PORTAL_SECRET_KEY": secret}
    env.pop("PORTAL_METRICS_TOKEN", None)
    out = tmp_path / "schema.graphql"
    done = run_portal(env, "export-schema", "--out", str(out))
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: configuration: ")
    assert "PORTAL_METRICS_TOKEN must be set in production" in line
    # The refusal prints no configuration value, secrets included.
    assert secret not in done.stderr + done.stdout
    assert "s" * 24 not in done.stderr + done.stdout
    assert not out.exists()
    env["PORTAL_METRICS_TOKEN"] = "m" * 32
    portal_ok(env, "export-schema", "--out", str(out))
    assert out.exists()
