"""Simulator parameters: typed sections with calibrated defaults, loaded from TOML or JSON."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "default.toml"

CAUSES: tuple[str, ...] = (
    "funds",
    "issuer_block",
    "velocity_hold",
    "processing_fault",
    "new_card_data",
    "never",
)
RETRYABLE_CAUSES: frozenset[str] = frozenset(
    {"funds", "issuer_block", "velocity_hold", "processing_fault"}
)
PAY_CYCLES: tuple[str, ...] = ("weekly", "biweekly", "semimonthly", "monthly")


@dataclass(frozen=True)
class PopulationConfig:
    """Who fails: card mix, geography, amounts and the timing of billing runs."""

    credit_share: float = 0.53
    prepaid_share: float = 0.03
    brand_shares: dict[str, float] = field(
        default_factory=lambda: {"visa": 0.55, "mastercard": 0.30, "amex": 0.10, "discover": 0.05}
    )
    country_shares: dict[str, float] = field(
        default_factory=lambda: {
            "US": 0.55,
            "GB": 0.12,
            "CA": 0.08,
            "DE": 0.08,
            "FR": 0.06,
            "AU": 0.05,
            "BR": 0.06,
        }
    )
    amount_median_minor: float = 2900.0
    amount_sigma: float = 0.7
    billing_hour_utc_mean: float = 6.0
    billing_hour_utc_sd: float = 3.0
    past_recoveries_mean: float = 1.5
    renewal_history_probability: float = 0.8


@dataclass(frozen=True)
class CauseConfig:
    """Hidden cause shares by card funding (each row sums to one)."""

    credit: dict[str, float] = field(
        default_factory=lambda: {
            "funds": 0.36,
            "issuer_block": 0.24,
            "velocity_hold": 0.16,
            "processing_fault": 0.09,
            "new_card_data": 0.05,
            "never": 0.10,
        }
    )
    debit: dict[str, float] = field(
        default_factory=lambda: {
            "funds": 0.52,
            "issuer_block": 0.14,
            "velocity_hold": 0.12,
            "processing_fault": 0.07,
            "new_card_data": 0.05,
            "never": 0.10,
        }
    )


def _emission_defaults() -> dict[str, dict[str, float]]:
    return {
        "funds_credit": {
            "insufficient_funds": 0.18,
            "do_not_honor": 0.66,
            "velocity_exceeded": 0.12,
            "not_permitted": 0.02,
            "processing_error": 0.02,
        },
        "funds_debit": {
            "insufficient_funds": 0.55,
            "do_not_honor": 0.35,
            "velocity_exceeded": 0.06,
            "not_permitted": 0.02,
            "processing_error": 0.02,
        },
        "issuer_block": {
            "do_not_honor": 0.80,
            "fraud_suspected": 0.08,
            "velocity_exceeded": 0.05,
            "processing_error": 0.03,
            "not_permitted": 0.02,
            "lost_stolen": 0.02,
        },
        "velocity_hold": {
            "velocity_exceeded": 0.72,
            "do_not_honor": 0.22,
            "processing_error": 0.06,
        },
        "processing_fault": {
            "processing_error": 0.70,
            "do_not_honor": 0.25,
            "velocity_exceeded": 0.05,
        },
        "new_card_data": {
            "card_expired": 0.55,
            "invalid_account": 0.15,
            "lost_stolen": 0.10,
            "do_not_honor": 0.20,
        },
        "never": {
            "lost_stolen": 0.30,
            "fraud_suspected": 0.20,
            "do_not_honor": 0.22,
            "invalid_account": 0.08,
            "not_permitted": 0.10,
            "payment_revoked": 0.05,
            "card_expired": 0.05,
        },
    }


@dataclass(frozen=True)
class CodeConfig:
    """How observed decline categories are emitted from hidden causes, and how noisy they are."""

    emission: dict[str, dict[str, float]] = field(default_factory=_emission_defaults)
    # Share of each emission row replaced by the funding's overall category mix.
    noise: float = 0.15
    mastercard_advice_new_card: float = 0.5
    mastercard_advice_never: float = 0.5
    mastercard_advice_velocity: float = 0.3


@dataclass(frozen=True)
class PayCycleConfig:
    """Pay cycles and paydays, which decide when low balances clear."""

    shares: dict[str, float] = field(
        default_factory=lambda: {
            "weekly": 0.32,
            "biweekly": 0.37,
            "semimonthly": 0.20,
            "monthly": 0.11,
        }
    )
    # Weekday of weekly/bi-weekly paydays, Monday = 0.
    weekday_shares: dict[str, float] = field(
        default_factory=lambda: {"4": 0.60, "3": 0.15, "2": 0.10, "0": 0.15}
    )
    monthly_day_shares: dict[str, float] = field(
        default_factory=lambda: {"1": 0.45, "15": 0.20, "25": 0.20, "28": 0.15}
    )
    deposit_hour_min: float = 1.0
    deposit_hour_max: float = 7.0
    irregular_share: float = 0.10
    irregular_jitter_days: float = 2.0


@dataclass(frozen=True)
class OutcomeConfig:
    """Success probability of an attempt given the hidden state."""

    funds_coverage_a: float = 3.0
    funds_coverage_b: float = 1.3
    payday_effect: float = 1.0
    funds_p_before_payday: float = 0.04
    spend_days_median: float = 2.5
    spend_days_sigma: float = 0.6
    block_clear_hours_median: float = 16.0
    block_clear_sigma: float = 0.9
    block_p_before: float = 0.05
    block_p_after: float = 0.70
    velocity_clear_hours: float = 12.0
    velocity_clear_extra_hours_mean: float = 4.0
    velocity_p_before: float = 0.03
    velocity_p_after: float = 0.72
    processing_clear_hours_mean: float = 3.0
    processing_p_before: float = 0.20
    processing_p_after: float = 0.88
    new_card_p: float = 0.0
    never_p: float = 0.0
    # A failed attempt in the same state (same payday window, same cleared block) says the
    # money or the issuer is still not there: later tries in that window succeed less.
    repeat_penalty: float = 0.55
    recent_attempt_hours: float = 20.0
    recent_penalty: float = 0.7
    night_factor: float = 0.8
    churn_days: float = 40.0


@dataclass(frozen=True)
class CardConfig:
    """Card life cycle used by the charge stream."""

    annual_change_rate: float = 0.30
    account_updater_coverage: float = 0.85


@dataclass(frozen=True)
class StreamConfig:
    """Merchant-level stream: customers, renewal failure rate."""

    customers_per_merchant: int = 2000
    first_failure_rate: float = 0.10


@dataclass(frozen=True)
class SimulatorConfig:
    """All simulator parameters; defaults are the calibrated ones."""

    population: PopulationConfig = field(default_factory=PopulationConfig)
    causes: CauseConfig = field(default_factory=CauseConfig)
    codes: CodeConfig = field(default_factory=CodeConfig)
    pay_cycles: PayCycleConfig = field(default_factory=PayCycleConfig)
    outcome: OutcomeConfig = field(default_factory=OutcomeConfig)
    cards: CardConfig = field(default_factory=CardConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)


class ConfigError(ValueError):
    """A parameter file has an unknown key or a value of the wrong shape."""


def _merge(section: Any, data: dict[str, Any], where: str) -> Any:
    changes: dict[str, Any] = {}
    known = {f.name: f for f in dataclasses.fields(section)}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"unknown simulator parameter {where}{key}")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{key} must be a table")
            changes[key] = _merge(current, value, f"{where}{key}.")
        elif isinstance(current, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{key} must be a table")
            # A table replaces the whole mapping, so shares cannot mix two files.
            changes[key] = value
        elif isinstance(current, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}{key} must be a number")
        else:
            changes[key] = type(current)(value)
    return dataclasses.replace(section, **changes)


def config_from_dict(data: dict[str, Any]) -> SimulatorConfig:
    """Overlay a (possibly partial) parameter mapping on the defaults."""
    config: SimulatorConfig = _merge(SimulatorConfig(), data, "")
    return config


def load_config(path: str | Path | None = None) -> SimulatorConfig:
    """Read a TOML or JSON parameter file; None means the shipped default file."""
    source = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    text = source.read_bytes()
    data: dict[str, Any]
    if source.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        data = tomllib.loads(text.decode("utf-8"))
    return config_from_dict(data)


def config_to_dict(config: SimulatorConfig) -> dict[str, Any]:
    """Plain mapping of every parameter, for reports and artifacts."""
    return dataclasses.asdict(config)


def dump_toml(config: SimulatorConfig) -> str:
    """Render a config as TOML (the subset of TOML this module's sections need)."""
    lines: list[str] = []

    def scalar(value: Any) -> str:
        if isinstance(value, float):
            return repr(value)
        return str(value)

    def table(prefix: str, section: Any) -> None:
        plain = []
        nested = []
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if dataclasses.is_dataclass(value) or isinstance(value, dict):
                nested.append((f.name, value))
            else:
                plain.append((f.name, value))
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{name} = {scalar(value)}" for name, value in plain)
        lines.append("")
        for name, value in nested:
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(value, dict):
                mapping(path, value)
            else:
                table(path, value)

    def mapping(path: str, value: dict[str, Any]) -> None:
        inner = [(k, v) for k, v in value.items() if isinstance(v, dict)]
        lines.append(f"[{path}]")
        lines.extend(f'"{k}" = {scalar(v)}' for k, v in value.items() if not isinstance(v, dict))
        lines.append("")
        for k, v in inner:
            mapping(f"{path}.{k}", v)

    table("", config)
    return "\n".join(lines).strip() + "\n"
