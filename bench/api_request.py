"""Per-request cost of the API over HTTP: the fixed cost (`{ viewer { role } }`) and a 50-payment
page, beside a hand-written Starlette + asyncpg endpoint answering the same JSON from the same
data (`bench/api_baseline.py`), measured side by side in one run.

    .venv/bin/python bench/api_request.py [--before PATH] [--pure]

Seeds a scratch database (a merchant with `--payments` payments, a merchant key), then for each
server: starts it as its own process on loopback (`portal serve`, one process, logging JSON
lines to a file as in production; the rate limiter on, its bucket too large to refuse), drives
load from another process (wrk when installed, `apt-get install wrk`; else this script's own
asyncio client), and prints requests/s, p50/p99 latency and CPU-ms per request of the server
process and of its PostgreSQL backends.

`--before PATH` also serves the API from another checkout (the same database, settings, loop and
HTTP parser), first; `--pure` serves this checkout with uvicorn's pure-Python loop and HTTP
parser too (as before `uvicorn[standard]` was a dependency), which isolates what uvloop and
httptools bring.
Uses DATABASE_URL (or the local/embedded default) and REDIS_URL (db 0 by default: set one of
your own); creates and drops its own database.
"""

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.db import Database
from app.embedded import create_scratch_database, drop_database, resolve_services
from app.enums import Role
from app.services.api_key import create_api_key
from app.services.merchant import create_merchant
from app.services.seed import seed_payments
from app.settings import get_settings
from app.tenancy import SYSTEM_SCOPE, system_principal
from portal.migrate import upgrade_database
from procstat import cpu_seconds
from resolvers.ids import encode_id

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
NOW = datetime.now(UTC)

VIEWER = "{ viewer { role } }"
PAGE = """query Payments($merchant: ID!) {
  merchant(id: $merchant) {
    payments(first: 50) {
      edges { cursor node {
        id state processor failedAt nextRetryAt attemptCount
        amount { amountMinor currency }
        decline { category retryable advice rawCode networkAdviceCode }
        card { brand last4 funding country }
      } }
      pageInfo { hasNextPage endCursor }
    }
  }
}"""

# Python modules that make uvicorn's "auto" loop and HTTP choices fall back to asyncio and h11,
# as on an installation without uvloop and httptools.
_HIDE = "raise ImportError('hidden by bench/api_request.py')\n"


@dataclass(frozen=True)
class Request:
    """One HTTP request, as wrk and the fallback client send it."""

    method: str
    path: str
    headers: dict[str, str]
    body: str = ""


@dataclass(frozen=True)
class Figures:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_ms: float
    db_cpu_ms: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def row(self, server: str, case: str) -> str:
        per = self.requests or 1
        return (
            f"{server:<40} {case:<16} {self.per_second:>8.0f} {self.p50_ms:>8.1f} "
            f"{self.p99_ms:>8.1f} {self.server_cpu_ms / per:>9.2f} {self.db_cpu_ms / per:>9.2f}"
            f" {self.errors:>6}"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _lua(request: Request) -> str:
    lines = [f'wrk.method = "{request.method}"', f"wrk.body = {json.dumps(request.body)}"]
    lines += [f'wrk.headers["{k}"] = {json.dumps(v)}' for k, v in request.headers.items()]
    lines.append(
        "function done(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        '  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests,\n'
        "    summary.duration, latency:percentile(50), latency:percentile(99),\n"
        "    e.connect + e.read + e.write + e.status + e.timeout))\n"
        "end\n"
    )
    return "\n".join(lines)


def run_wrk(port: int, request: Request, seconds: float, connections: int) -> tuple[int, ...]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_lua(request))
        script.flush()
        out = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [  # noqa: S607 - wrk from PATH, as installed by apt
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                script.name,
                f"http://127.0.0.1:{port}{request.path}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return tuple(int(v) for v in line.split()[1:])


async def _client_loop(
    port: int, raw: bytes, until: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


async def _python_load(port: int, request: Request, seconds: float, connections: int) -> None:
    body = request.body.encode()
    head = f"{request.method} {request.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    raw = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(
        *(_client_loop(port, raw, until, latencies, errors) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    p50 = latencies[n // 2] if n else 0.0
    p99 = latencies[min(n - 1, int(n * 0.99))] if n else 0.0
    result = [n, int(elapsed * 1e6), int(p50 * 1e6), int(p99 * 1e6), len(errors)]
    print("RESULT " + " ".join(str(v) for v in result))


def run_python_client(
    port: int, request: Request, seconds: float, connections: int
) -> tuple[int, ...]:
    """The fallback load generator: this script in another process (--load)."""
    spec = json.dumps(
        {"port": port, "request": request.__dict__, "seconds": seconds, "c": connections}
    )
    out = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [sys.executable, __file__, "--load", spec], capture_output=True, text=True, check=True
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return tuple(int(v) for v in line.split()[1:])


class Server:
    """One API process on loopback; its CPU time and its PostgreSQL backends' CPU time."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log: Path,
        database: str,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.port = free_port()
        self._argv = [a.replace("{port}", str(self.port)) for a in argv]
        self._env = env
        self._log = log
        self._database = database
        # `python -m` puts the working directory first on sys.path: the tree served.
        self._cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator["Server"]:
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                self._argv, env=self._env, stdout=log, stderr=subprocess.STDOUT, cwd=self._cwd
            )
            try:
                self._wait_ready()
                yield self
            finally:
                self._process.terminate()
                try:
                    self._process.wait(10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self._log}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not listen within 60 s; see {self._log}")

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def db_cpu_seconds(self, admin: asyncpg.Connection) -> float:
        """CPU time of the PostgreSQL backends serving the benchmark's database (its pool)."""
        pids = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            self._database,
        )
        total = 0.0
        for row in pids:
            with contextlib.suppress(OSError):
                total += cpu_seconds(row["pid"])
        return total


async def measure(
    server: Server,
    request: Request,
    *,
    seconds: float,
    warmup: float,
    connections: int,
    admin: asyncpg.Connection,
    client: str,
) -> Figures:
    load = run_wrk if client == "wrk" else run_python_client
    await asyncio.to_thread(load, server.port, request, warmup, connections)
    cpu0, db0 = cpu_seconds(server.pid), await server.db_cpu_seconds(admin)
    n, micros, p50, p99, errors = await asyncio.to_thread(
        load, server.port, request, seconds, connections
    )
    cpu1, db1 = cpu_seconds(server.pid), await server.db_cpu_seconds(admin)
    return Figures(
        requests=n,
        seconds=micros / 1e6,
        p50_ms=p50 / 1000,
        p99_ms=p99 / 1000,
        errors=errors,
        server_cpu_ms=(cpu1 - cpu0) * 1000,
        db_cpu_ms=(db1 - db0) * 1000,
    )


def _hiding_dir(tmp: Path) -> Path:
    hide = tmp / "hide"
    hide.mkdir(exist_ok=True)
    for name in ("uvloop", "httptools"):
        (hide / f"{name}.py").write_text(_HIDE)
    return hide


async def answer(port: int, request: Request) -> Any:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        response = await http.request(
            request.method, request.path, headers=request.headers, content=request.body
        )
        response.raise_for_status()
        return response.json()


async def main(args: argparse.Namespace) -> None:
    settings = get_settings()
    services = await resolve_services(settings)
    url = await create_scratch_database(services, "portal_bench_api")
    database = url.partition("?")[0].rsplit("/", 1)[1]
    tmp = Path(tempfile.mkdtemp(prefix="bench_api_"))
    try:
        await asyncio.to_thread(upgrade_database, url)
        db = Database.from_url(url)
        async with db.uow(SYSTEM_SCOPE) as uow:
            merchant = await create_merchant(
                uow, name="Bench", principal=system_principal(), now=NOW
            )
            await seed_payments(uow, merchant_id=merchant.id, count=args.payments, now=NOW)
            _, token = await create_api_key(
                uow, name="bench", role=Role.MERCHANT, merchant_ids=[merchant.id], now=NOW
            )
            await uow.commit()
        await db.dispose()
        # Planner statistics, as a database in service has them (autovacuum would take a while).
        admin = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await admin.execute("ANALYZE")
        finally:
            await admin.close()
        merchant_gid = encode_id("Merchant", merchant.id)
        auth = {"Authorization": f"Bearer {token}"}
        graphql = {**auth, "Content-Type": "application/json"}
        cases = {
            "viewer/role": Request("POST", "/graphql", graphql, json.dumps({"query": VIEWER})),
            "50-payment page": Request(
                "POST",
                "/graphql",
                graphql,
                json.dumps({"query": PAGE, "variables": {"merchant": merchant_gid}}),
            ),
        }
        baseline_case = Request("GET", f"/payments?merchant={merchant_gid}&first=50", auth)

        env = {
            **os.environ,
            "DATABASE_URL": url,
            "REDIS_URL": services.redis_url,
            "PORTAL_LOG_LEVEL": "INFO",
            "PORTAL_LOG_JSON": "true",
            # The limiter runs (one Redis script per request) but never refuses the load.
            "PORTAL_RATE_LIMIT_CAPACITY": "1000000000",
            "PORTAL_RATE_LIMIT_LEAK_PER_SECOND": "1000000000",
        }
        env.pop("PORTAL_CLOCK_START", None)
        env.pop("PORTAL_CLOCK_SPEED", None)
        hide = str(_hiding_dir(tmp))
        serve = [sys.executable, "-m", "portal", "serve", "--port", "{port}"]
        servers: list[tuple[Server, dict[str, Request]]] = []
        if args.before:
            before = args.before
            servers.append(
                (
                    Server(
                        "before",
                        serve,
                        {**env, "PYTHONPATH": before},
                        tmp / "before.log",
                        database,
                        Path(before),
                    ),
                    cases,
                )
            )
        if args.pure:
            servers.append(
                (
                    Server(
                        "portal, asyncio+h11",
                        serve,
                        {**env, "PYTHONPATH": os.pathsep.join([hide, str(ROOT)])},
                        tmp / "pure.log",
                        database,
                    ),
                    cases,
                )
            )
        servers.append(
            (
                Server(
                    "portal", serve, {**env, "PYTHONPATH": str(ROOT)}, tmp / "portal.log", database
                ),
                cases,
            )
        )
        uvicorn = [sys.executable, "-m", "uvicorn", "--factory", "api_baseline:create_app"]
        uvicorn += ["--port", "{port}", "--no-access-log", "--log-level", "warning"]
        base_env = {**env, "PYTHONPATH": str(BENCH), "BASELINE_DATABASE_URL": url}
        for check, label in (("true", "key checked"), ("false", "no key check")):
            servers.append(
                (
                    Server(
                        f"hand-written, {label}",
                        uvicorn,
                        {**base_env, "BASELINE_CHECK_KEY": check},
                        tmp / f"baseline-{check}.log",
                        database,
                        BENCH,
                    ),
                    {"50-payment page": baseline_case},
                )
            )

        loader = "wrk" if args.client == "wrk" else "this script's asyncio client"
        print(
            f"{args.payments} payments; {args.connections} connections from {loader}; "
            f"{args.warmup:g} s warm-up then {args.seconds:g} s per case; one server process"
        )
        header = f"{'server':<40} {'case':<16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
        print(header + f" {'CPU-ms/req':>9} {'PG-ms/req':>9} {'errors':>6}")
        admin = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        results: dict[tuple[str, str], Figures] = {}
        expected: Any = None
        try:
            for server, server_cases in servers:
                with server.running():
                    for case, request in server_cases.items():
                        body = await answer(server.port, request)
                        if case == "50-payment page":
                            # Every server must answer the same JSON, or the comparison is void.
                            data = body.get("data")
                            if len(data["merchant"]["payments"]["edges"]) != 50:
                                raise RuntimeError(f"{server.name}: not a 50-payment page")
                            if expected is None:
                                expected = data
                            elif data != expected:
                                raise RuntimeError(f"{server.name} answers other JSON: {body}")
                        elif body.get("errors") or body.get("data") != {
                            "viewer": {"role": "MERCHANT"}
                        }:
                            raise RuntimeError(f"{server.name}: {body}")
                        figures = await measure(
                            server,
                            request,
                            seconds=args.seconds,
                            warmup=args.warmup,
                            connections=args.connections,
                            admin=admin,
                            client=args.client,
                        )
                        results[server.name, case] = figures
                        print(figures.row(server.name, case), flush=True)
        finally:
            await admin.close()
        for case in cases:
            now, then = results.get(("portal", case)), results.get(("before", case))
            if now is not None and then is not None:
                print(f"{case}, portal / before: {_per(now) / _per(then):.2f}x CPU-ms per request")
        page = results.get(("portal", "50-payment page"))
        for name in ("hand-written, key checked", "hand-written, no key check"):
            hand = results.get((name, "50-payment page"))
            if page is None or hand is None:
                continue
            print(
                f"50-payment page, portal / {name}: {page.per_second / hand.per_second:.2f}x "
                f"req/s, {_per(hand) / _per(page):.2f}x CPU-ms per request (API process)"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        await drop_database(services, url)


def _per(figures: Figures) -> float:
    return figures.server_cpu_ms / max(1, figures.requests)


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--payments", type=int, default=5_000, help="payments of the merchant")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured load per case")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured load first")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument("--before", help="also serve the API from this checkout")
    parser.add_argument("--pure", action="store_true", help="also serve it with asyncio+h11")
    parser.add_argument(
        "--client",
        choices=["wrk", "python"],
        default="wrk" if shutil.which("wrk") else "python",
        help="load generator (wrk when installed)",
    )
    parser.add_argument("--load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        spec = json.loads(args.load)
        request = Request(**spec["request"])
        asyncio.run(_python_load(spec["port"], request, spec["seconds"], spec["c"]))
        return
    if args.before:
        args.before = os.path.abspath(args.before)
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
