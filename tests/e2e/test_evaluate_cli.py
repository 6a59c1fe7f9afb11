"""`portal evaluate` end to end: the table has the oracle's row and the gap the model closes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def test_evaluate_prints_the_oracle_and_the_gap_closed(tmp_path: Path) -> None:
    args = ["evaluate", "--failures", "1500", "--seed", "2", "--out", str(tmp_path)]
    done = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [sys.executable, "-m", "portal", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    oracle = report["policies"]["oracle"]
    rows = [line.split() for line in done.stdout.splitlines()]
    [oracle_row] = [r for r in rows if r[:1] == ["oracle"]]
    assert oracle_row[1] == f"{oracle['recovery_rate']:.1%}"
    assert oracle_row[6] == "0"  # rule violations
    share = report["gap_closed"]["share"]
    [gap_line] = [line for line in done.stdout.splitlines() if line.startswith("gap closed")]
    assert f"{share:.1%}" in gap_line
    assert report["checks"]["zero_violations"]
