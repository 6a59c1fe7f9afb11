"""The one settings object, read from the environment (DATABASE_URL, REDIS_URL, PORTAL_*)."""

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.urls import UrlPolicy

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# arq's default queue name (`arq.constants.default_queue_name`; the core does not import arq).
DEFAULT_QUEUE_NAME = "arq:queue"

_PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "development-only-key"})
_MIN_METRICS_TOKEN = 16


def normalize_database_url(url: str) -> str:
    """Accept `postgresql://`, `postgres://` and driver-suffixed URLs; return the asyncpg form."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("DATABASE_URL has no scheme: expected postgresql://user@host:port/db")
    base = scheme.split("+", 1)[0]
    if base not in {"postgresql", "postgres"}:
        raise ValueError(f"DATABASE_URL scheme {scheme!r} is not PostgreSQL")
    return f"postgresql+asyncpg://{rest}"


class Settings(BaseSettings):
    """Every setting of the portal; the CLI, the server and the worker all read this one."""

    # Errors leave the input out: pydantic would print it (secrets included) in the start-up
    # failure a refused production configuration produces.
    model_config = SettingsConfigDict(
        env_prefix="PORTAL_", extra="ignore", hide_input_in_errors=True
    )

    environment: Literal["development", "test", "production"] = "development"
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "PORTAL_DATABASE_URL")
    )
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "PORTAL_REDIS_URL")
    )
    # Where the embedded PostgreSQL and Redis keep their files when no URL is set.
    data_dir: Path = PROJECT_ROOT / "var"
    local_database_url: str = "postgresql://postgres@127.0.0.1:5432/portal"
    local_redis_url: str = "redis://127.0.0.1:6379/0"

    host: str = "127.0.0.1"
    port: int = 8000
    # How long the API keeps an idle client connection open for its next request (uvicorn's
    # own default is 5 s). Whoever reuses connections must drop an idle one first: a request
    # sent on a connection the server is closing at that moment fails with a reset (an HTTP
    # client's ReadError, a load balancer's 502). Longer than any client's or proxy's idle
    # timeout in front of the API (load balancers commonly keep 60 s).
    keep_alive_seconds: int = Field(default=75, gt=0, le=3600)
    graphiql: bool = False
    log_level: str = "INFO"
    log_json: bool = True

    secret_key: SecretStr = SecretStr("development-only-key")

    max_query_depth: int = 10
    max_aliases: int = 30
    max_tokens: int = 2000
    default_page_size: int = 20
    max_page_size: int = 100

    # Leaky bucket per API key (or client IP) in query-cost units; see resolvers/cost.py.
    rate_limit_enabled: bool = True
    rate_limit_capacity: int = Field(default=50_000, gt=0)
    rate_limit_leak_per_second: float = Field(default=1_000.0, gt=0)
    # An API key's lookup (role, grants, revocation) is trusted for this long by the process
    # that made it: a revoked key stops working on every API process within this bound (at
    # once on the process that revoked it). 0 looks the key up on every request.
    auth_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # When set, /metrics requires `Authorization: Bearer <token>`; production requires it.
    metrics_token: SecretStr | None = None

    # Safe defaults for production; each is refused or forced there by `_production_safe`.
    # Webhook and processor URLs may point at loopback: for the demo's and the tests' sandbox
    # and receivers on 127.0.0.1 only, refused in production. Production also requires https
    # (app/urls.py).
    allow_loopback_urls: bool = False
    # Schema introspection (`__schema`, `__type`). Unset: on outside production, off in
    # production. GraphiQL reads the schema by introspection, so production refuses
    # PORTAL_GRAPHIQL unless PORTAL_INTROSPECTION=true is set explicitly too.
    introspection: bool | None = None
    # An accelerated clock for the stack run as separate processes (soak, fault tests): simulated
    # time is clock_start + (wall time - clock_start) x clock_speed. Anchored to the wall clock,
    # not to each process's start, so every API and worker process agrees on "now" and a
    # restarted one resumes the same timeline. Unset: the system clock. Refused in production.
    clock_start: datetime | None = None
    clock_speed: float = Field(default=1.0, gt=0, le=1e6)

    # History pruned by the `prune_history` cron (app/services/retention.py), in days; 0 keeps
    # everything. Outbox events once fanned out and every delivery of theirs finished, and
    # finished webhook deliveries. Raw processor records are never pruned: replay needs them.
    # Both tables are partitioned by month: a whole month past the window is archived and
    # dropped by the `maintain_partitions` cron, the rest deleted in batches.
    outbox_retention_days: int = Field(default=30, ge=0, le=3650)
    webhook_delivery_retention_days: int = Field(default=30, ge=0, le=3650)
    # Monthly partitions of the append-only tables (app/models/partitioning.py): how many
    # months ahead the `maintain_partitions` cron keeps created, and per table how many days a
    # month is kept once it has ended (0 keeps every month: the default, since a payment's page
    # shows its whole timeline and decision). A month past its window is archived to
    # `archive_dir` (gzip CSV and a manifest with its row count and SHA-256), then dropped.
    partition_months_ahead: int = Field(default=3, ge=1, le=24)
    timeline_retention_days: int = Field(default=0, ge=0, le=36500)
    model_decision_retention_days: int = Field(default=0, ge=0, le=36500)
    # Raw processor records too, though replay needs them: set it only with the archive kept
    # where replay can be fed from it. Their once-only keys are never dropped.
    raw_record_retention_days: int = Field(default=0, ge=0, le=36500)
    archive_dir: Path = Path("archive")

    # Connections each process keeps to PostgreSQL (opened on demand, then kept). Overflow
    # connections beyond the pool are closed as soon as they are returned, so under a load
    # that needs more than the pool they are opened and closed per request (asyncpg's
    # connection set-up costs more CPU than the request): size the pool, not the overflow.
    db_pool_size: int = Field(default=20, gt=0)
    db_max_overflow: int = Field(default=0, ge=0)

    # PostgreSQL or Redis unreachable: a request that needed it answers 503 with this
    # `Retry-After` (seconds), so API clients and processors retry instead of seeing a bug.
    # Short: the usual outage is a restart or a failover, over in seconds.
    outage_retry_after_seconds: int = Field(default=5, gt=0, le=3600)

    # Worker resilience, liveness and shutdown (jobs/supervisor.py, /readyz).
    # Waiting out a PostgreSQL or Redis outage: the first retry after `initial`, doubling up to
    # `max`; outage retries of a job are deferred by the same rule.
    worker_backoff_initial_seconds: float = Field(default=0.5, gt=0)
    worker_backoff_max_seconds: float = Field(default=10.0, gt=0)
    # Each worker writes a heartbeat this often while its poll loop turns and PostgreSQL answers.
    worker_heartbeat_seconds: float = Field(default=5.0, gt=0)
    # A worker whose last heartbeat is older than this is stale; after the TTL it is forgotten.
    worker_stale_after_seconds: float = Field(default=30.0, gt=0)
    worker_heartbeat_ttl_seconds: float = Field(default=600.0, gt=0)
    # On SIGTERM/SIGINT running jobs get this long to finish before they are cancelled
    # (arq queues cancelled jobs again).
    worker_shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # Jobs other than charges one worker runs at once; `portal worker --concurrency` overrides.
    worker_concurrency: int = Field(default=10, gt=0)
    # Charges (`attempt_payment`) one worker runs at once, beside those: a charge mostly waits
    # on the processor, and concurrent charges share their statements (up to 32 a group).
    # `portal worker --charge-concurrency` overrides it. arq's max_jobs is the sum of the two.
    worker_charge_concurrency: int = Field(default=32, gt=0)
    # /readyz answers 503 when no worker has a fresh heartbeat (for deployments that run one).
    readyz_require_worker: bool = False
    # The Redis key of the job queue: the API and the workers enqueue on it, the workers take
    # from it, and worker heartbeats are kept beside it. The default is arq's own queue name;
    # deployments (or test runs) that share one Redis database keep apart with one each.
    queue_name: str = Field(default=DEFAULT_QUEUE_NAME, min_length=1, max_length=200)
    # A claim run takes no more due payments while this many jobs wait in the queue, ready
    # to start, beside the charges live workers may be running (`jobs.retry._backlog_limit`):
    # charge jobs queue first in, first out with every other job (cron runs and polls
    # included), so the backlog a billing day leaves ahead of them is held to about what the
    # workers charge between two claim ticks (10 s; two workers charged about 50 a second
    # through the sandbox, `bench/burst.py`). It also bounds the charge rate to about a tenth
    # of it a second: raise it with the workers. Workers read this far down the queue and more
    # (`jobs.worker.read_limit`).
    claim_queue_limit: int = Field(default=500, gt=0)

    # Promoting a model over a champion (`promoteModel`, `portal model promote`) may also need
    # the model's shadow decisions to compare well with that champion's at the same decision
    # points (app/services/model_comparison.py): at least this many paired decisions (0: no
    # comparison needed), and a predicted chance of success not worse than the champion's by
    # more than the margin (the 95% interval's lower bound of shadow minus champion >= -margin).
    model_promotion_min_paired_decisions: int = Field(default=0, ge=0)
    model_promotion_margin: float = Field(default=0.01, ge=0, le=1)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        return normalize_database_url(value) if value else None

    @field_validator("queue_name")
    @classmethod
    def _plain_queue_name(cls, value: str) -> str:
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("PORTAL_QUEUE_NAME must not contain spaces or control characters")
        return value

    @field_validator("clock_start")
    @classmethod
    def _aware_clock_start(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("PORTAL_CLOCK_START needs a UTC offset, e.g. 2026-11-02T12:00:00Z")
        return value

    @model_validator(mode="after")
    def _refuse_simulated_time(self) -> "Settings":
        accelerated = self.clock_start is not None or self.clock_speed != 1.0
        if accelerated and self.environment == "production":
            raise ValueError("PORTAL_CLOCK_START and PORTAL_CLOCK_SPEED are refused in production")
        if self.clock_speed != 1.0 and self.clock_start is None:
            raise ValueError("PORTAL_CLOCK_SPEED needs PORTAL_CLOCK_START, the shared anchor")
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> "Settings":
        if (
            self.environment == "production"
            and self.secret_key.get_secret_value() in _PLACEHOLDER_SECRETS
        ):
            raise ValueError("PORTAL_SECRET_KEY must be set to a real secret in production")
        return self

    @model_validator(mode="after")
    def _production_safe(self) -> "Settings":
        if self.environment != "production":
            return self
        token = None if self.metrics_token is None else self.metrics_token.get_secret_value()
        if token is None or token.strip() in _PLACEHOLDER_SECRETS:
            raise ValueError(
                "PORTAL_METRICS_TOKEN must be set in production: without it /metrics is "
                "public (scrapers send it as `Authorization: Bearer <token>`)"
            )
        if len(token.strip()) < _MIN_METRICS_TOKEN:
            raise ValueError(
                f"PORTAL_METRICS_TOKEN must be at least {_MIN_METRICS_TOKEN} characters in "
                "production: a short bearer token can be guessed"
            )
        if self.allow_loopback_urls:
            raise ValueError(
                "PORTAL_ALLOW_LOOPBACK_URLS is for the demo and tests: refused in production"
            )
        if self.graphiql and self.introspection is not True:
            raise ValueError(
                "PORTAL_GRAPHIQL in production needs PORTAL_INTROSPECTION=true set explicitly "
                "(the IDE reads the schema by introspection, which production turns off)"
            )
        return self

    @property
    def introspection_enabled(self) -> bool:
        """Whether clients may introspect the schema: as set, else everywhere but production."""
        if self.introspection is None:
            return self.environment != "production"
        return self.introspection

    @property
    def url_policy(self) -> UrlPolicy:
        """Where the portal may send requests for its users (webhook deliveries, processor
        connections): https only in production, loopback only if set."""
        return UrlPolicy(
            require_https=self.environment == "production",
            allow_loopback=self.allow_loopback_urls,
        )


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
