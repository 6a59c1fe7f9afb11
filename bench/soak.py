"""Soak with faults: the whole stack as separate processes under steady API load for M minutes.

    .venv/bin/python bench/soak.py --minutes 10

Starts a private PostgreSQL and Redis (free loopback ports, files in a temporary folder), the
sandbox processors (Stripe, Braintree and Adyen accounts), two `portal serve` and two
`portal worker` processes on an accelerated shared clock (PORTAL_CLOCK_START/SPEED), then runs
a mixed GraphQL load from merchant, partner and support keys while it restarts PostgreSQL and
Redis, SIGKILLs a worker twice, SIGTERMs an API process and opens processor 429 and 5xx windows.
After a drain it prints error rates inside and outside the fault windows, latency, the
sandbox's charges against the portal's attempts, payments generated against ingested, time to
resume after each fault and memory per process, and exits 1 when an invariant fails.

Redis runs without persistence, as a job queue usually does: its restart loses the arq queue,
and the portal must derive the lost jobs again from PostgreSQL. `--keep DIR` leaves the data and
every process's log in DIR.
"""

import argparse
import asyncio
import sys
import time
from pathlib import Path

# tests/support is the project's harness, not an installed package: import it from the root.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.soak.report import SoakConfig  # noqa: E402
from tests.support.soak.run import default_faults, run_soak  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="load phase (faults inside)")
    parser.add_argument("--rate", type=float, default=60.0, help="API requests per second")
    parser.add_argument("--speed", type=float, default=3600.0, help="simulated seconds per second")
    parser.add_argument("--customers", type=int, default=10_000, help="per sandbox account")
    parser.add_argument(
        "--outage", type=float, default=5.0, help="seconds PostgreSQL/Redis stay down"
    )
    parser.add_argument("--drain", type=float, default=180.0, help="most seconds to settle")
    parser.add_argument("--keep", type=Path, help="keep data and logs in this folder")
    args = parser.parse_args()
    if not 0.5 <= args.minutes <= 240 or not 1 <= args.rate <= 500:
        parser.error("--minutes must be in [0.5, 240] and --rate in [1, 500]")
    began = time.monotonic()
    config = SoakConfig(
        minutes=args.minutes,
        faults=default_faults(),
        rate=args.rate,
        speed=args.speed,
        customers=args.customers,
        outage_seconds=args.outage,
        processor_window_seconds=min(30.0, args.minutes * 60 * 0.05),
        drain_seconds=args.drain,
        keep=args.keep,
        progress=lambda line: print(f"[{time.monotonic() - began:6.0f} s] {line}", flush=True),
    )
    report = asyncio.run(run_soak(config))
    print(report.format(), flush=True)
    if report.failed:
        print(f"{len(report.failed)} invariant(s) failed", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
