"""`portal model compare`'s tables: a shadow against the champion, and what the payments did."""

from rich.table import Table

from app.services.model_comparison import MIN_PAYMENTS, WINDOW, Comparison, OutcomeGroup
from resolvers.ids import encode_id

REALIZED_CAVEAT = (
    "The champion acted on every payment, so outcomes exist for its choices only. Where the "
    "models agreed, the outcome stands for both; where they disagreed, nothing says what the "
    "shadow's time would have recovered, and the two groups differ in make-up: a gap between "
    "them describes those payments, not the shadow's worth."
)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _chance(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def _decisions(c: Comparison, margin: float) -> Table:
    minutes = int(c.tolerance.total_seconds() // 60)
    table = Table(title="Decisions at the same decision points", title_justify="left")
    table.add_column("decisions")
    table.add_column("value", justify="right")
    table.add_row(f"shadow decisions read (newest, up to {WINDOW:,})", f"{c.shadow_decisions:,}")
    table.add_row("paired with the champion's", f"{c.paired_decisions:,}")
    table.add_row(f"agreeing (within {minutes} min, or both stop)", f"{c.agreeing_decisions:,}")
    table.add_row("identical choices", f"{c.identical_decisions:,}")
    table.add_row("agreement rate", _share(c.agreement_rate))
    p = c.predicted
    if p is None:
        table.add_row("predicted chance", "no pair with both chances known")
        return table
    table.add_row("pairs with both chances known", f"{p.decisions:,} ({p.payments:,} payments)")
    table.add_row("mean predicted chance, shadow", f"{p.shadow_mean:.4f}")
    table.add_row("mean predicted chance, champion", f"{p.champion_mean:.4f}")
    table.add_row("difference, shadow - champion", _chance(p.difference))
    if p.lower is None or p.upper is None:
        interval = f"needs {MIN_PAYMENTS} payments"
        verdict = "undecided"
    else:
        interval = f"{_chance(p.lower)} to {_chance(p.upper)}"
        verdict = "yes" if p.not_worse(margin) else "no"
    table.add_row("95% interval (clustered by payment)", interval)
    table.add_row(f"not worse (lower bound >= -{margin:.4f})", verdict)
    return table


def _group_rows(table: Table, name: str, group: OutcomeGroup) -> None:
    table.add_row(
        name,
        "all",
        f"{group.payments:,}",
        f"{group.settled_payments:,}",
        f"{group.recovered_payments:,}",
        _share(group.recovery_rate),
        "",
        "",
    )
    for c in group.currencies:
        rate = None if c.settled_payments == 0 else c.recovered_payments / c.settled_payments
        table.add_row(
            "",
            c.currency,
            f"{c.payments:,}",
            f"{c.settled_payments:,}",
            f"{c.recovered_payments:,}",
            _share(rate),
            f"{c.settled_amount:,}",
            f"{c.recovered_amount:,}",
        )


def _realized(c: Comparison) -> Table:
    gap = c.realized_difference
    caption = (
        f"disagreement - agreement recovery rate: needs {MIN_PAYMENTS} settled payments a side"
        if gap is None
        else (
            f"disagreement - agreement recovery rate: {gap.difference:+.1%} "
            f"(95% interval {gap.lower:+.1%} to {gap.upper:+.1%})"
        )
    )
    table = Table(
        title="Realized recovery of the payments (amounts in minor units, per currency)",
        title_justify="left",
        caption=caption,
        caption_justify="left",
    )
    for name in ("payments", "currency", "count", "settled", "recovered", "rate"):
        table.add_column(name, justify="left" if name in ("payments", "currency") else "right")
    table.add_column("settled amount", justify="right")
    table.add_column("recovered amount", justify="right")
    _group_rows(table, "agreement", c.agreement)
    _group_rows(table, "disagreement", c.disagreement)
    return table


def comparison_heading(comparison: Comparison) -> str:
    """Which models are compared (ids in full, on a line of their own)."""
    shadow = encode_id("Model", comparison.shadow_id)
    return f"Shadow {shadow} against champion {encode_id('Model', comparison.champion_id)}"


def comparison_tables(comparison: Comparison, *, margin: float) -> list[Table]:
    """The decisions compared, then the payments' realized recovery by group and currency."""
    return [_decisions(comparison, margin), _realized(comparison)]
