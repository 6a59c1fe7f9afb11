"""Figures read from summed vectors one at a time are those built all at once."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from app.models.stats import MEASURES, TTR_BUCKETS
from app.services.stats.figures import (
    Breakdown,
    MeasuredFigures,
    Point,
    RecoveryFigures,
    VectorKey,
    Vectors,
    group_vectors,
)
from app.services.stats.query import Granularity, stats_query

FIGURES = (
    "failed_count",
    "failed_amount",
    "eligible_count",
    "eligible_amount",
    "recovered",
    "recovered_count",
    "recovered_amount",
    "eligible_recovered_count",
    "eligible_recovered_amount",
    "in_recovery_count",
    "in_recovery_amount",
    "recovered_retries",
    "ttr_histogram",
    "recovery_rate_by_count",
    "recovery_rate_by_amount",
    "eligible_recovery_rate_by_count",
    "eligible_recovery_rate_by_amount",
    "attempts_per_recovery",
    "median_time_to_recover_seconds",
    "p90_time_to_recover_seconds",
)
# Zeros are common in rollups (an empty day, no recovery yet): drawn often.
measure = st.one_of(st.just(0), st.integers(min_value=0, max_value=10**12))
eligible_vectors = st.lists(measure, min_size=len(MEASURES), max_size=len(MEASURES))
all_vectors = st.lists(
    measure, min_size=len(MEASURES) + TTR_BUCKETS, max_size=len(MEASURES) + TTR_BUCKETS
)


@given(eligible_vectors, all_vectors)
def test_each_figure_read_alone_is_the_one_built_with_the_others(
    eligible: list[int], both: list[int]
) -> None:
    built = RecoveryFigures.of_vectors(eligible, both)
    measured = MeasuredFigures(eligible, both)
    for name in FIGURES:
        assert getattr(measured, name) == getattr(built, name), name


def test_groups_give_the_figures_in_order_with_empty_points() -> None:
    start = datetime(2026, 10, 1, tzinfo=UTC)
    query = stats_query(start, start + timedelta(days=3), Granularity.DAY, "UTC")
    zero = [0] * len(MEASURES)

    def vectors(failed: int) -> Vectors:
        both = [0] * (len(MEASURES) + TTR_BUCKETS)
        both[MEASURES.index("failed_count")] = failed
        return zero, both

    groups: dict[VectorKey, Vectors] = {
        (None, "EUR", "total", None): vectors(5),
        (None, "EUR", "series", 2): vectors(5),
        (None, "EUR", "processor", "stripe"): vectors(3),
        (None, "EUR", "processor", "adyen"): vectors(2),
        (None, "EUR", "processor", "braintree"): vectors(0),
        (None, "USD", "total", None): vectors(0),
    }
    found = group_vectors(query, groups, [None])[None]
    [eur] = found.currencies  # USD's payments all moved away: no entry
    assert [value for value, _ in eur.by_processor] == ["adyen", "stripe"]
    stats = found.figures()
    [figures] = stats.currencies
    assert [p.start.day for p in figures.series] == [1, 2, 3]
    assert [p.figures.failed_count for p in figures.series] == [0, 5, 0]
    assert figures.by_processor == tuple(
        Breakdown(value, RecoveryFigures.of_vectors(*v)) for value, v in eur.by_processor
    )
    assert figures.series[1] == Point(eur.series[1][0], RecoveryFigures.of_vectors(*vectors(5)))
