"""Settings: URL forms, the PORTAL_ prefix, what production refuses, the simulated clock."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from arq.constants import default_queue_name
from pydantic import ValidationError

from app.clock import SystemClock, clock_from_settings
from app.embedded import redact_url
from app.settings import Settings, normalize_database_url
from app.urls import UrlPolicy
from jobs.retry import CLAIM_BATCH, CLAIM_LANES
from jobs.worker import build_worker
from portal.asgi import queue_client
from portal.demo import demo_settings


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h:5432/db",
        "postgres://u@h:5432/db",
        "postgresql+asyncpg://u@h:5432/db",
        "postgresql+psycopg://u@h:5432/db",
    ],
)
def test_database_url_forms(url: str) -> None:
    assert normalize_database_url(url) == "postgresql+asyncpg://u@h:5432/db"


@pytest.mark.parametrize("url", ["mysql://u@h/db", "not a url"])
def test_other_databases_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="DATABASE_URL"):
        normalize_database_url(url)


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://a@b:1/c")
    monkeypatch.setenv("REDIS_URL", "redis://r:6379/2")
    monkeypatch.setenv("PORTAL_PORT", "9001")
    settings = Settings()
    assert settings.database_url == "postgresql+asyncpg://a@b:1/c"
    assert settings.redis_url == "redis://r:6379/2"
    assert settings.port == 9001


# What a production deployment must set; each test below leaves out or changes one thing.
PRODUCTION: dict[str, Any] = {
    "environment": "production",
    "secret_key": "x" * 40,
    "metrics_token": "m" * 32,
}


def test_production_refuses_placeholder_secret() -> None:
    with pytest.raises(ValidationError, match="PORTAL_SECRET_KEY"):
        Settings(**{**PRODUCTION, "secret_key": "development-only-key"})
    assert Settings(**PRODUCTION).environment == "production"


@pytest.mark.parametrize("token", [None, "", "changeme", "  "])
def test_production_refuses_to_start_without_a_metrics_token(token: str | None) -> None:
    with pytest.raises(ValidationError, match="PORTAL_METRICS_TOKEN must be set in production"):
        Settings(**{**PRODUCTION, "metrics_token": token})
    with pytest.raises(ValidationError, match="PORTAL_METRICS_TOKEN must be at least 16"):
        Settings(**{**PRODUCTION, "metrics_token": "m" * 15})
    # Elsewhere /metrics may stay open (local scrapes, the demo).
    assert Settings(environment="development").metrics_token is None


def test_production_refuses_loopback_webhooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTAL_ALLOW_LOOPBACK_URLS", "true")
    with pytest.raises(ValidationError, match="PORTAL_ALLOW_LOOPBACK_URLS"):
        Settings(**PRODUCTION)
    allowed = Settings(environment="test")
    assert allowed.url_policy == UrlPolicy(require_https=False, allow_loopback=True)
    monkeypatch.delenv("PORTAL_ALLOW_LOOPBACK_URLS")
    assert Settings(**PRODUCTION).url_policy == UrlPolicy(require_https=True, allow_loopback=False)
    assert Settings().url_policy == UrlPolicy(require_https=False, allow_loopback=False)


def test_introspection_is_off_in_production_unless_set() -> None:
    assert Settings(environment="development").introspection_enabled is True
    assert Settings(environment="test").introspection_enabled is True
    assert Settings(environment="development", introspection=False).introspection_enabled is False
    assert Settings(**PRODUCTION).introspection_enabled is False
    assert Settings(**PRODUCTION, introspection=True).introspection_enabled is True


def test_production_refuses_graphiql_without_explicit_introspection() -> None:
    with pytest.raises(ValidationError, match="PORTAL_GRAPHIQL in production"):
        Settings(**PRODUCTION, graphiql=True)
    with pytest.raises(ValidationError, match="PORTAL_GRAPHIQL in production"):
        Settings(**PRODUCTION, graphiql=True, introspection=False)
    assert Settings(**PRODUCTION, graphiql=True, introspection=True).graphiql is True
    assert Settings(environment="development", graphiql=True).introspection_enabled is True


def test_redact_url_hides_passwords() -> None:
    assert redact_url("postgresql://u:hunter2@h:5/d") == "postgresql://u:***@h:5/d"
    assert "hunter2" not in redact_url("redis://:hunter2@h:6379/0")


def test_the_demo_allows_loopback_webhooks_outside_production() -> None:
    assert demo_settings(Settings(environment="development")).url_policy == UrlPolicy(
        require_https=False, allow_loopback=True
    )
    assert Settings(environment="development").allow_loopback_urls is False
    assert demo_settings(Settings(**PRODUCTION)).allow_loopback_urls is False


@pytest.mark.parametrize(
    "given",
    [
        {"environment": "production", "graphiql": True, "secret_key": "hunter2hunter2"},
        {"environment": "production", "secret_key": "x" * 40, "metrics_token": "changeme"},
        {"environment": "production", "secret_key": "hunter2hunter2", "metrics_token": "metr1c"},
    ],
)
def test_refusals_never_print_the_secrets_they_were_given(given: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="in production") as refused:
        Settings(**given)
    shown = str(refused.value)
    for name in ("secret_key", "metrics_token"):
        assert str(given.get(name, "x" * 40)) not in shown


def test_simulated_clock_is_shared_by_processes_started_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start = datetime.now(UTC) - timedelta(seconds=10)
    monkeypatch.setenv("PORTAL_CLOCK_START", start.isoformat())
    monkeypatch.setenv("PORTAL_CLOCK_SPEED", "3600")
    first = clock_from_settings(Settings())
    later = clock_from_settings(Settings())
    # Ten wall seconds after the anchor at 3600x: ten simulated hours, in both processes.
    for clock in (first, later):
        ahead = clock.now() - start
        assert timedelta(hours=10) <= ahead < timedelta(hours=10, minutes=30)
    assert abs(first.now() - later.now()) < timedelta(minutes=5)


def test_system_clock_without_a_start() -> None:
    assert isinstance(clock_from_settings(Settings()), SystemClock)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORTAL_CLOCK_SPEED": "60"}, "needs PORTAL_CLOCK_START"),
        ({"PORTAL_CLOCK_START": "2026-11-02T12:00:00"}, "UTC offset"),
        (
            {"PORTAL_CLOCK_START": "2026-11-02T12:00:00Z", "PORTAL_ENVIRONMENT": "production"},
            "refused in production",
        ),
    ],
)
def test_simulated_clock_refusals(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("PORTAL_SECRET_KEY", "a-real-secret-for-this-test")
    monkeypatch.setenv("PORTAL_METRICS_TOKEN", "a-metrics-token-for-this-test")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_queue_name_defaults_to_arqs_and_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PORTAL_QUEUE_NAME", raising=False)
    assert Settings().queue_name == default_queue_name
    monkeypatch.setenv("PORTAL_QUEUE_NAME", "arq:queue:staging")
    assert Settings().queue_name == "arq:queue:staging"


@pytest.mark.parametrize("name", ["", "arq queue", "arq:queue\n", "x" * 201])
def test_unusable_queue_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="queue_name"):
        Settings(queue_name=name)


def test_workers_and_the_api_use_the_settings_queue() -> None:
    settings = Settings(queue_name="arq:queue:tenant-a")
    worker = build_worker("redis://127.0.0.1:9/0", {"settings": settings})
    assert worker.queue_name == "arq:queue:tenant-a"
    assert queue_client("redis://127.0.0.1:9/0", settings.queue_name).default_queue_name == (
        "arq:queue:tenant-a"
    )


def test_workers_take_their_charge_and_other_slots_from_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PORTAL_WORKER_CONCURRENCY", "4")
    monkeypatch.setenv("PORTAL_WORKER_CHARGE_CONCURRENCY", "48")
    settings = Settings()
    assert (settings.worker_concurrency, settings.worker_charge_concurrency) == (4, 48)
    worker = build_worker("redis://127.0.0.1:9/0", {"settings": settings})
    assert (worker.concurrency, worker.charge_concurrency, worker.max_jobs) == (4, 48, 52)
    given = build_worker(
        "redis://127.0.0.1:9/0", {"settings": settings}, concurrency=2, charge_concurrency=8
    )
    assert (given.concurrency, given.charge_concurrency, given.max_jobs) == (2, 8, 10)
    # Other jobs queued behind the charge backlog claiming allows are still read: the claim's
    # limit, two claim runs' lanes of a batch each, five workers' running jobs.
    claims = 2 * CLAIM_LANES * CLAIM_BATCH
    assert given.queue_read_limit == settings.claim_queue_limit + claims + 5 * 10
    monkeypatch.setenv("PORTAL_CLAIM_QUEUE_LIMIT", "5000")
    assert build_worker("redis://127.0.0.1:9/0", {"settings": Settings()}).queue_read_limit == (
        5000 + claims + 5 * 52
    )
    with pytest.raises(TypeError, match="concurrency \\+ charge_concurrency"):
        build_worker("redis://127.0.0.1:9/0", {"settings": settings}, max_jobs=10)
    with pytest.raises(ValueError, match="must be at least 1, not 2 and 0"):
        build_worker(
            "redis://127.0.0.1:9/0", {"settings": settings}, concurrency=2, charge_concurrency=0
        )


def test_charge_slots_default_to_32_and_must_be_positive() -> None:
    assert Settings().worker_charge_concurrency == 32
    with pytest.raises(ValidationError, match="worker_charge_concurrency"):
        Settings(worker_charge_concurrency=0)
