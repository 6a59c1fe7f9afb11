"""`portal model compare` and a promotion that requires the comparison, end to end."""

import uuid
from datetime import UTC, datetime

import pytest

from app.db import Database
from app.enums import PaymentState
from resolvers.ids import encode_id
from tests.support.cli import portal_ok, run_portal
from tests.support.model_rows import make_shadowed, settle

T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)


async def _seed(url: str) -> tuple[str, str]:
    """A champion and a better shadow paired on 40 payments; ten recovered, five exhausted."""
    db = Database.from_url(url)
    try:
        champion, shadow, payments = await make_shadowed(
            db, payments=40, shadow_p=0.30, champion_p=0.20, now=T0
        )
        for payment in payments[:10]:
            await settle(db, payment, PaymentState.RECOVERED)
        for payment in payments[10:15]:
            await settle(db, payment, PaymentState.EXHAUSTED, currency="USD")
    finally:
        await db.dispose()
    return encode_id("Model", champion.id), encode_id("Model", shadow.id)


def _lines(output: str) -> dict[str, str]:
    """The decisions table's rows: label -> value (rich draws cells between box characters)."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 2 and cells[0]:
            rows[cells[0]] = cells[1]
    return rows


@pytest.mark.timeout(300)  # about ten `portal` processes, each starting an interpreter
async def test_model_compare_prints_the_figures_and_gates_promotion(env: dict[str, str]) -> None:
    assert portal_ok(env, "migrate") == "database at head"
    done = run_portal(env, "model", "compare")
    assert done.returncode == 1
    assert "no shadow model to compare" in done.stderr
    champion, shadow = await _seed(env["DATABASE_URL"])

    output = portal_ok(env, "model", "compare")
    assert f"Shadow {shadow} against champion {champion}" in output
    rows = _lines(output)
    assert rows["paired with the champion's"] == "40"
    assert rows["agreeing (within 60 min, or both stop)"] == "20"
    assert rows["agreement rate"] == "50.0%"
    assert rows["pairs with both chances known"] == "40 (40 payments)"
    assert rows["not worse (lower bound >= -0.0100)"] == "yes"
    assert float(rows["difference, shadow - champion"]) > 0.09
    # Realized recovery: the agreement group's ten EUR recoveries of fifteen settled.
    assert "agreement" in output
    assert "66.7%" in output
    assert "needs 30 settled payments a side" in output
    assert "outcomes exist for its choices only" in output.replace("\n", " ")

    exact = _lines(
        portal_ok(env, "model", "compare", "--shadow", shadow, "--tolerance-minutes", "0")
    )
    assert exact["agreeing (within 0 min, or both stop)"] == "20"
    done = run_portal(env, "model", "compare", "--tolerance-minutes", "2000")
    assert done.returncode == 2
    done = run_portal(env, "model", "compare", "--champion", encode_id("Model", uuid.uuid4()))
    assert done.returncode == 1
    assert "no such model to compare with" in done.stderr

    strict = {**env, "PORTAL_MODEL_PROMOTION_MIN_PAIRED_DECISIONS": "41"}
    done = run_portal(strict, "model", "promote", shadow, "--reason", "compared")
    assert done.returncode == 1
    assert "promotion needs at least 41" in done.stderr
    enough = {**env, "PORTAL_MODEL_PROMOTION_MIN_PAIRED_DECISIONS": "40"}
    assert portal_ok(enough, "model", "promote", shadow, "--reason", "compared") == "champion"
