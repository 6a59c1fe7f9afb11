"""The soak's configuration, its records (requests, faults, exits, resumes) and its report.

Time in the soak is the harness's monotonic clock (seconds); the portal's simulated clock only
decides how fast payments fail, are retried and recover.
"""

from __future__ import annotations

import re
import statistics
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.enums import Processor
from tests.support.stack import Usage

# A line that names an exception, as a traceback's last line does.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")

# After a dependency or an API process is back, its clients get this long to reconnect before
# an error counts as "outside a fault window" (pools find their dead connections on first use).
GRACE_SECONDS = 5.0
# Processing must be visible again (a new payment transition) this soon after each fault.
RESUME_BOUND_SECONDS = 60.0
# A process supervisor restarts a dead process after this pause.
SUPERVISOR_DELAY = 1.0
REQUEST_TIMEOUT = 10.0
# Errors outside the fault windows listed one by one, with when they happened.
STRAY_ERRORS_LISTED = 10
# The load never has more requests in flight than this: at the cap a tick is shed, not queued.
MAX_IN_FLIGHT = 32

# Transport errors where the server closed the connection before any answer.
CLOSED_WITHOUT_ANSWER = frozenset({"ReadError", "RemoteProtocolError", "WriteError"})
# Faults the schedule knows. API-affecting ones open windows for the API error figures.
API_FAULTS = frozenset({"postgres_restart", "redis_restart", "api_restart"})
FAULT_KINDS = (
    "postgres_restart",
    "redis_restart",
    "worker_kill",
    "api_restart",
    "processor_429",
    "processor_5xx",
)


@dataclass(frozen=True)
class SoakConfig:
    """How long, how hard, and which faults when (each at a fraction of the load phase)."""

    minutes: float
    faults: tuple[tuple[float, str], ...]
    rate: float = 60.0
    speed: float = 3600.0
    processors: tuple[Processor, ...] = (Processor.STRIPE, Processor.BRAINTREE, Processor.ADYEN)
    customers: int = 8000
    history_days: int = 2
    # How long PostgreSQL or Redis stays down in a restart: long enough to be an outage that
    # clients notice, as a crash and restart by a supervisor is.
    outage_seconds: float = 3.0
    processor_window_seconds: float = 15.0
    drain_seconds: float = 120.0
    seed: int = 7
    keep: Path | None = None
    progress: Callable[[str], None] = print

    def __post_init__(self) -> None:
        unknown = {kind for _, kind in self.faults} - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")


@dataclass
class Tenant:
    """One merchant of the soak, connected to one sandbox account."""

    name: str
    processor: Processor
    merchant_id: uuid.UUID
    merchant_gid: str
    connection_id: uuid.UUID
    account_id: str
    token: str


@dataclass
class Tenants:
    """The merchants, and the keys that act on them."""

    merchants: list[Tenant]
    partner_token: str
    partner_merchants: list[str]
    support_token: str


@dataclass
class Sample:
    """One API request: when, where, what, and how it ended."""

    op: str
    api: int
    start: float
    end: float
    status: int | None
    code: str
    retry_after: bool = False

    @property
    def label(self) -> str:
        """'status code' as the report counts it ('-' when no HTTP answer came)."""
        return f"{self.status or '-'} {self.code}"

    @property
    def ok(self) -> bool:
        # A version conflict is the optimistic lock doing its job between concurrent editors.
        return self.code in {"OK", "VERSION_CONFLICT"}


@dataclass
class FaultRecord:
    """One injected fault: from when it started until the service was back."""

    kind: str
    target: str
    start: float
    end: float = 0.0
    detail: str = ""

    @property
    def affects_api(self) -> bool:
        return self.kind in API_FAULTS


@dataclass
class MonitorSample:
    """What the monitor saw at one instant."""

    at: float
    transitions: int | None
    heartbeats: dict[str, str] | None
    ready: list[int | None]
    ready_bodies: list[dict[str, Any] | None]


@dataclass
class ExitRecord:
    """A process that ended without being asked to."""

    name: str
    code: int
    at: float
    tail: str

    @property
    def cause(self) -> str:
        """The last exception named in the log's tail (with the line a wrap put after it)."""
        lines = [line.strip() for line in self.tail.splitlines()]
        for i in range(len(lines) - 1, -1, -1):
            if _EXCEPTION_LINE.match(lines[i]):
                following = lines[i + 1] if i + 1 < len(lines) else ""
                joined = (
                    f"{lines[i]} {following}" if following[:1] not in {"", "-", "{"} else lines[i]
                )
                return joined[:240]
        return lines[-1][:240] if lines else "no output"


@dataclass
class Invariant:
    """One property the run must keep."""

    name: str
    ok: bool
    detail: str


@dataclass
class Resume:
    """How long after a fault's end each sign of life came back (seconds, None: never)."""

    fault: FaultRecord
    processing: float | None
    ready: float | None
    heartbeat: float | None
    heartbeat_seen: bool
    # /readyz's worker state back to "ok" on every API (a portal that reports one).
    worker_ready: float | None = None
    worker_seen: bool = False


@dataclass
class SoakReport:
    """Everything a run measured; `failed` lists the broken invariants."""

    config: SoakConfig
    load_seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    shed: int = 0
    faults: list[FaultRecord] = field(default_factory=list)
    exits: list[ExitRecord] = field(default_factory=list)
    resumes: list[Resume] = field(default_factory=list)
    usage_start: dict[str, Usage] = field(default_factory=dict)
    usage_end: dict[str, Usage] = field(default_factory=dict)
    generated_failed: int = 0
    ingested_failed: int = 0
    sandbox_charges: int = 0
    portal_attempts: int = 0
    sandbox_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    keys: int = 0
    replays: int = 0
    webhook_deliveries: int = 0
    webhook_duplicates: int = 0
    drain_seconds: float | None = None
    retrying_left: int = 0
    in_flight_left: int = 0
    payment_states: dict[str, int] = field(default_factory=dict)
    states_at_load_end: dict[str, int] = field(default_factory=dict)
    invariants: list[Invariant] = field(default_factory=list)
    # The monitor's readings that failed, by what it read and the error's type.
    monitor_failures: dict[str, dict[str, int]] = field(default_factory=dict)
    # What the portal holds about charges it made but did not record as its own attempts.
    evidence: list[str] = field(default_factory=list)
    # The portal attempts left in flight after the drain, what the portal holds about each.
    in_flight_evidence: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Invariant]:
        return [i for i in self.invariants if not i.ok]

    def windows(self, sample: Sample) -> list[FaultRecord]:
        """The API-affecting fault windows (grace included) a request overlapped."""
        return [
            f
            for f in self.faults
            if f.affects_api and sample.start <= f.end + GRACE_SECONDS and sample.end >= f.start
        ]

    def inside(self, sample: Sample) -> bool:
        """Whether a request overlapped an API-affecting fault window."""
        return bool(self.windows(sample))

    def outage_answer(self, sample: Sample) -> bool:
        """Whether a failed request failed the way an outage must show: 503 with
        SERVICE_UNAVAILABLE and Retry-After, or no connection at all. A connection the server
        closed without answering counts as none only from the API process being restarted
        (HTTP keep-alive races its shutdown); anywhere else it is a dropped request."""
        if sample.status == 503 and sample.code == "SERVICE_UNAVAILABLE":
            return sample.retry_after
        if sample.code == "CONNECTION_REFUSED":
            return True
        if sample.status is None and sample.code in CLOSED_WITHOUT_ANSWER:
            return any(
                f.kind == "api_restart" and f.target == f"api{sample.api + 1}"
                for f in self.windows(sample)
            )
        return False

    def errors(self, *, inside: bool) -> Counter[str]:
        """Errors by 'status code' label, inside or outside the fault windows."""
        return Counter(s.label for s in self.samples if not s.ok and self.inside(s) is inside)

    def errors_by_fault(self) -> Counter[str]:
        """Errors inside windows, by the faults they overlapped and their label."""
        return Counter(
            f"{'+'.join(sorted({f.kind for f in self.windows(s)}))}: {s.label}"
            + ("" if self.outage_answer(s) else " (not an outage answer)")
            for s in self.samples
            if not s.ok and self.inside(s)
        )

    def _nearest_fault(self, sample: Sample, t0: float) -> str:
        """The fault closest in time to a request, as the report words it."""
        if not self.faults:
            return "no fault injected"
        f = min(
            self.faults, key=lambda f: min(abs(sample.start - f.end), abs(sample.end - f.start))
        )
        return f"nearest fault {f.kind} ({f.target}) t={f.start - t0:.1f}-{f.end - t0:.1f} s"

    def format(self) -> str:
        """The figures, as the soak prints them."""
        lines: list[str] = []
        total = len(self.samples)
        rate = total / self.load_seconds if self.load_seconds else 0.0
        outside = [s for s in self.samples if not self.inside(s)]
        inside = [s for s in self.samples if self.inside(s)]
        lines.append(
            f"load: {total:,} requests in {self.load_seconds:.0f} s ({rate:.1f}/s), "
            f"{self.shed} shed at the in-flight cap of {MAX_IN_FLIGHT}"
        )
        by_op = Counter(s.op for s in self.samples)
        lines.append("  by operation: " + ", ".join(f"{k} {v}" for k, v in sorted(by_op.items())))
        conflicts = sum(1 for s in self.samples if s.code == "VERSION_CONFLICT")
        lines.append(f"  version conflicts (expected, optimistic locking): {conflicts}")
        for label, group, inside_flag in (("outside", outside, False), ("inside", inside, True)):
            errors = self.errors(inside=inside_flag)
            share = sum(errors.values()) / len(group) if group else 0.0
            detail = ", ".join(f"{k}: {v}" for k, v in errors.most_common()) or "none"
            lines.append(
                f"API errors {label} fault windows: {sum(errors.values())} of {len(group)} "
                f"({share:.2%}) - {detail}"
            )
        for fault_label, n in sorted(self.errors_by_fault().items()):
            lines.append(f"  {fault_label}: {n}")
        t0 = self.samples[0].start if self.samples else 0.0
        stray = [s for s in outside if not s.ok]
        for s in stray[:STRAY_ERRORS_LISTED]:
            lines.append(
                f"  outside: t={s.start - t0:.1f}-{s.end - t0:.1f} s api{s.api + 1} "
                f"{s.op}: {s.label}; {self._nearest_fault(s, t0)}"
            )
        ok = [s.end - s.start for s in self.samples if s.ok]
        ok_out = [s.end - s.start for s in outside if s.ok]
        lines.append(
            f"latency (ok requests): {_percentiles(ok)}; outside windows: {_percentiles(ok_out)}"
        )
        for op in sorted(by_op):
            times = [s.end - s.start for s in outside if s.ok and s.op == op]
            lines.append(f"  {op:9s} {_percentiles(times)} (outside windows)")
        lines.append("faults (t = seconds since load start):")
        t0 = self.samples[0].start if self.samples else 0.0
        for r in self.resumes:
            f = r.fault
            heartbeat = (
                seconds_text(r.heartbeat)
                if r.heartbeat_seen
                else "n/a (no worker heartbeat in Redis)"
            )
            if r.worker_seen:
                heartbeat += f", /readyz worker ok {seconds_text(r.worker_ready)}"
            down = f.end - f.start
            lines.append(
                f"  {f.kind:17s} {f.target:9s} t={f.start - t0:6.1f} down {down:5.1f} s; resumed:"
                f" processing {seconds_text(r.processing)}, /readyz {seconds_text(r.ready)},"
                f" heartbeat {heartbeat}" + (f" ({f.detail})" if f.detail else "")
            )
        for e in self.exits:
            lines.append(f"  UNEXPECTED EXIT {e.name} code {e.code} at t={e.at - t0:.1f}")
        for read, by_error in sorted(self.monitor_failures.items()):
            detail = ", ".join(f"{k} {v}" for k, v in sorted(by_error.items()))
            lines.append(f"  monitor readings missing, {read}: {detail}")
        lines.append(
            f"payments: sandbox generated {self.generated_failed:,} failed charges, portal "
            f"ingested {self.ingested_failed:,}"
        )
        lines.append(
            f"charges: sandbox made {self.sandbox_charges:,} retry charges under {self.keys:,} "
            f"keys ({self.replays:,} idempotent replays); portal recorded "
            f"{self.portal_attempts:,} attempts"
        )
        lines.append(f"sandbox charges by kind and status: {self.sandbox_counts}")
        lines.append(f"payment states at load end: {self.states_at_load_end}")
        lines.append(f"payment states after the drain (merchants paused): {self.payment_states}")
        lines.append(
            f"webhooks received: {self.webhook_deliveries:,} deliveries "
            f"({self.webhook_duplicates:,} repeated)"
        )
        drained = (
            seconds_text(self.drain_seconds) if self.drain_seconds is not None else "not drained"
        )
        lines.append(
            f"drain: {drained}; payments left RETRYING: {self.retrying_left}, portal attempts "
            f"left in flight: {self.in_flight_left}"
        )
        lines.append(
            "memory (MiB; RSS, PostgreSQL as PSS summed over its processes) 10 s into the load"
            " -> load end, and CPU seconds between (a process restarted since has none):"
        )
        for name, start in self.usage_start.items():
            end = self.usage_end.get(name)
            cpu = f"{end.cpu - start.cpu:7.1f} s" if end and end.pid == start.pid else "restarted"
            rss = end.rss_kib / 1024 if end else 0.0
            lines.append(f"  {name:24s} {start.rss_kib / 1024:7.1f} -> {rss:7.1f}   CPU {cpu}")
        lines.append("invariants:")
        for inv in self.invariants:
            lines.append(f"  [{'ok' if inv.ok else 'FAIL'}] {inv.name}: {inv.detail}")
        if self.evidence:
            lines.append(
                "charged but not recorded as the portal's attempts, what the portal holds:"
            )
            lines.extend(f"  {line}" for line in self.evidence)
        if self.in_flight_evidence:
            lines.append("portal attempts left in flight, what the portal holds:")
            lines.extend(f"  {line}" for line in self.in_flight_evidence)
        return "\n".join(lines)


def seconds_text(value: float | None) -> str:
    """A duration for the report; None is "never"."""
    return "never" if value is None else f"{value:.1f} s"


def _percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    cuts = statistics.quantiles(values, n=100)
    return f"p50 {cuts[49] * 1000:.0f} ms, p99 {cuts[98] * 1000:.0f} ms"
