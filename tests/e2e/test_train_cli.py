"""`portal train --simulated` end to end: a challenger stored with its gate verdict."""

import json
import subprocess

import asyncpg
import pytest

from ml.features import FEATURE_LIST
from resolvers.model import decode_model_id
from tests.support.cli import run_portal

# Every test here trains in a subprocess, some several times (a minute and more when busy).
pytestmark = pytest.mark.timeout(600)


def _portal(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # Training takes longer than the other commands.
    return run_portal(env, *args, timeout=180)


async def test_train_simulated_stores_a_gated_challenger(env: dict[str, str]) -> None:
    assert _portal(env, "migrate").returncode == 0
    done = _portal(env, "train", "--simulated", "3000", "--rounds", "40", "--threads", "1")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == "challenger"
    assert 0.5 < out["auc"] <= 1.0
    # No champion yet: the gate measures the challenger alone on a later simulated window.
    assert out["gate"]["champion_id"] is None
    assert out["gate"]["promote"] is True
    assert "stored" in done.stderr  # the progress bar ends on stderr
    conn = await asyncpg.connect(
        env["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://", 1)
    )
    try:
        row = await conn.fetchrow(
            "SELECT status, feature_list, source, length(artifact) AS size FROM model_version"
        )
    finally:
        await conn.close()
    assert row is not None
    assert dict(row) | {"size": 0} == {
        "status": "challenger",
        "feature_list": FEATURE_LIST.tag,
        "source": "simulated:3000",
        "size": 0,
    }
    assert row["size"] > 1000


async def test_train_from_empty_history_exits_with_a_message(env: dict[str, str]) -> None:
    assert _portal(env, "migrate").returncode == 0
    done = _portal(env, "train")
    assert done.returncode == 1
    assert "too few to train" in done.stderr


async def test_model_commands_promote_shadow_and_regate(env: dict[str, str]) -> None:
    assert _portal(env, "migrate").returncode == 0
    train = ("train", "--simulated", "3000", "--rounds", "30", "--threads", "1")
    first = json.loads(_portal(env, *train).stdout.strip().splitlines()[-1])
    done = _portal(env, "model", "promote", first["model_id"], "--reason", "first model")
    assert (done.returncode, done.stdout.strip()) == (0, "champion"), done.stderr
    second = json.loads(_portal(env, *train, "--seed", "1").stdout.strip().splitlines()[-1])
    # The second challenger was measured against the champion of the time.
    assert second["gate"]["champion_id"] == str(decode_model_id(first["model_id"]))
    done = _portal(env, "model", "gate", second["model_id"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["champion"] is not None
    done = _portal(env, "model", "shadow", second["model_id"], "--reason", "watch it")
    assert (done.returncode, done.stdout.strip()) == (0, "shadow"), done.stderr
    listed = [json.loads(line) for line in _portal(env, "model", "list").stdout.splitlines()]
    assert {(m["id"], m["status"]) for m in listed} == {
        (first["model_id"], "champion"),
        (second["model_id"], "shadow"),
    }
    done = _portal(env, "model", "gate", first["model_id"])
    assert done.returncode == 1
    assert "champion already" in done.stderr
