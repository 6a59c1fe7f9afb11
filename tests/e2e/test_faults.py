"""It keeps running: one fault of each kind under API load, then the soak's invariants.

The stack as separate processes (tests/support/stack.py) through a processor 5xx window, a worker
SIGKILL, an API SIGTERM and restart, a PostgreSQL restart and a Redis restart, then drained.
bench/soak.py is the long version with the same invariants.
"""

import pytest

from tests.support.soak.report import SoakConfig, SoakReport
from tests.support.soak.run import run_soak

# The module's fixture runs the whole stack: about three minutes, up to eight with a slow drain.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CONFIG = SoakConfig(
    minutes=2.5,
    faults=(
        (0.08, "processor_5xx"),
        (0.22, "worker_kill"),
        (0.38, "api_restart"),
        (0.55, "postgres_restart"),
        (0.72, "redis_restart"),
    ),
    rate=50.0,
    customers=6000,
    # Long enough that a client which gives up on a connection error does so (a worker that does
    # not reconnect exits within this), short enough for the test's budget.
    outage_seconds=5.0,
    processor_window_seconds=12.0,
    drain_seconds=120.0,
    # pytest captures stdout; the report is attached to each failure instead.
    progress=lambda _line: None,
)


@pytest.fixture(scope="module")
async def report() -> SoakReport:
    found = await run_soak(CONFIG)
    # Shown with `pytest -rP` (or -s) when everything passes; failures carry it in their message.
    print(found.format())
    return found


def _verdict(report: SoakReport, name: str) -> None:
    [found] = [i for i in report.invariants if i.name.startswith(name)]
    assert found.ok, f"{found.name}: {found.detail}\n\n{report.format()}"


async def test_every_fault_was_injected(report: SoakReport) -> None:
    injected = sorted(f.kind for f in report.faults if f.target != "harness")
    assert injected == sorted(kind for _, kind in CONFIG.faults), report.format()
    # The run did real work: failures streamed in, the portal charged, the API was used.
    assert report.generated_failed > 50, report.format()
    assert report.sandbox_charges > 20, report.format()
    # Shed ticks (the in-flight cap reached) are not requests: the API must have been used all
    # along. The floor is a quarter of the ticks, not a throughput target (bench/soak.py and
    # bench/api_request.py measure that): the suite runs other tests beside this one on the
    # same cores, and a loaded machine answers this load at a half to a third of its rate.
    assert len(report.samples) > CONFIG.minutes * 60 * CONFIG.rate * 0.25, report.format()


async def test_no_double_charge(report: SoakReport) -> None:
    _verdict(report, "no double charge")


async def test_sandbox_charges_equal_portal_attempts(report: SoakReport) -> None:
    _verdict(report, "sandbox charges == portal attempts")


async def test_everything_generated_was_ingested(report: SoakReport) -> None:
    _verdict(report, "generated == ingested")


async def test_no_api_error_outside_fault_windows(report: SoakReport) -> None:
    _verdict(report, "no API error outside fault windows")


async def test_only_outage_answers_inside_fault_windows(report: SoakReport) -> None:
    _verdict(report, "inside fault windows only")


async def test_no_process_exits_on_its_own(report: SoakReport) -> None:
    _verdict(report, "no process exited on its own")


async def test_processing_resumes_after_every_fault(report: SoakReport) -> None:
    _verdict(report, "processing resumed")


async def test_drains(report: SoakReport) -> None:
    _verdict(report, "drained")
