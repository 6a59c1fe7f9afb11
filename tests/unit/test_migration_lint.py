"""The migration linter: what squawk flags in rendered SQL, and how waivers are counted."""

from collections import Counter
from pathlib import Path

from migrations.lint import (
    Finding,
    _config,
    lint,
    problems,
    render,
    revision_id_problems,
)

BLOCKING_INDEX = """BEGIN;
CREATE INDEX ix_payment_amount ON payment (amount);
COMMIT;
"""


def test_a_blocking_index_build_is_flagged(tmp_path: Path) -> None:
    rules = {f.rule for f in lint("0099_example", BLOCKING_INDEX, tmp_path)}
    assert "require-concurrent-index-creation" in rules


def test_a_concurrent_build_outside_a_transaction_passes(tmp_path: Path) -> None:
    sql = (
        "SET lock_timeout = '5s';\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_p ON payment (amount);\n"
    )
    assert lint("0099_example", sql, tmp_path) == []


def test_waivers_cover_findings_by_revision_and_rule_and_go_stale() -> None:
    findings = [
        Finding("0099_x", "renaming-column", 3, "m"),
        Finding("0099_x", "renaming-column", 5, "m"),
    ]
    assert problems(findings, Counter({("0099_x", "renaming-column"): 2})) == []
    assert len(problems(findings, Counter({("0099_x", "renaming-column"): 1}))) == 2
    assert problems([], Counter({("0099_x", "renaming-column"): 1})) == [
        "stale waiver: 0099_x renaming-column waives 1, found 0"
    ]


def test_a_revision_renders_alone_with_its_lock_timeout_saved_and_restored() -> None:
    sql = render(_config(), "0013_attempt_decline_columns", "0012_webhook_previous_secret")
    assert "0012_webhook_previous_secret" in sql
    assert "CREATE TABLE" not in sql
    saved = sql.index("current_setting('lock_timeout')")
    short = sql.index("SET LOCAL lock_timeout = '3s'")
    rename = sql.index("RENAME")
    restored = sql.index("current_setting('portal.saved_lock_timeout')")
    assert saved < short < rename < restored


def test_a_revision_id_longer_than_the_version_table_holds_is_a_problem() -> None:
    assert revision_id_problems(["0034_merchant_processor_stats"]) == []
    [problem] = revision_id_problems(["0034_payment_merchant_processor_statistics"])
    assert "42 characters, at most 32" in problem
