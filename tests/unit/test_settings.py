"""Settings: URL forms, the PORTAL_ prefix, and refusing placeholder secrets in production."""

import pytest
from pydantic import ValidationError

from app.embedded import redact_url
from app.settings import Settings, normalize_database_url


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


def test_production_refuses_placeholder_secret() -> None:
    with pytest.raises(ValidationError, match="PORTAL_SECRET_KEY"):
        Settings(environment="production")
    assert Settings(environment="production", secret_key="x" * 40).environment == "production"


def test_redact_url_hides_passwords() -> None:
    assert redact_url("postgresql://u:hunter2@h:5/d") == "postgresql://u:***@h:5/d"
    assert "hunter2" not in redact_url("redis://:hunter2@h:6379/0")
