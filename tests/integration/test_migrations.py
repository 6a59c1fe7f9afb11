"""Migrations: up from empty, `alembic check` clean, down to base, up again."""

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest
from alembic import command
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from app.embedded import Services, create_scratch_database, drop_database
from portal.migrate import alembic_config

# A merchant 0...0a with its customer 0...0c, the rows the data-moving revisions' tests start from.
_MERCHANT_AND_CUSTOMER = """
INSERT INTO merchant (id, name, status, created_at)
VALUES ('00000000-0000-0000-0000-00000000000a', 'M', 'active', now());
INSERT INTO customer (id, merchant_id, external_ref, created_at)
VALUES ('00000000-0000-0000-0000-00000000000c', '00000000-0000-0000-0000-00000000000a', 'cus_1',
        now());
"""


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


async def test_upgrade_check_downgrade_upgrade(services: Services) -> None:
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    try:
        await asyncio.to_thread(command.upgrade, cfg, "head")
        assert {"merchant", "payment", "payment_attempt", "retry_policy", "audit_log"} <= (
            await _tables(url)
        )
        # Raises when the models and the migrations disagree.
        await asyncio.to_thread(command.check, cfg)
        await asyncio.to_thread(command.downgrade, cfg, "base")
        assert await _tables(url) == {"alembic_version"}
        await asyncio.to_thread(command.upgrade, cfg, "head")
        assert "payment" in await _tables(url)
    finally:
        await drop_database(services, url)


async def test_attempts_stored_before_per_attempt_cards_get_their_payments_card(
    services: Services,
) -> None:
    """0010 gives each stored attempt its payment's card: the card the ledger counted it
    against until then, so no count changes on upgrade."""
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0009_retry_policy_version")
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute(_MERCHANT_AND_CUSTOMER)
            await conn.execute(
                """
                INSERT INTO card_credential (id, merchant_id, customer_id, brand, funding,
                    last4, exp_month, exp_year, fingerprint, created_at)
                VALUES ('00000000-0000-0000-0000-0000000000cc',
                        '00000000-0000-0000-0000-00000000000a',
                        '00000000-0000-0000-0000-00000000000c',
                        'visa', 'debit', '4242', 4, 2029, 'fpA', now());
                INSERT INTO payment (id, merchant_id, processor, processor_payment_id,
                    amount_minor, currency, customer_id, card_id, first_failed_at,
                    decline_category, decline_retryable, decline_advice, state,
                    attempt_count, created_at, updated_at)
                VALUES
                  ('00000000-0000-0000-0000-000000000001',
                   '00000000-0000-0000-0000-00000000000a', 'stripe', 'ch_1', 2900, 'USD',
                   '00000000-0000-0000-0000-00000000000c',
                   '00000000-0000-0000-0000-0000000000cc', now(),
                   'insufficient_funds', true, 'retry', 'SCHEDULED', 1, now(), now()),
                  ('00000000-0000-0000-0000-000000000002',
                   '00000000-0000-0000-0000-00000000000a', 'stripe', 'ch_2', 2900, 'USD',
                   '00000000-0000-0000-0000-00000000000c', NULL, now(),
                   'insufficient_funds', true, 'retry', 'SCHEDULED', 1, now(), now());
                INSERT INTO payment_attempt (id, merchant_id, payment_id, number, attempted_at,
                    outcome, actor, created_at)
                VALUES
                  ('00000000-0000-0000-0000-0000000000a1',
                   '00000000-0000-0000-0000-00000000000a',
                   '00000000-0000-0000-0000-000000000001', 1, now(), 'declined', 'processor',
                   now()),
                  ('00000000-0000-0000-0000-0000000000a2',
                   '00000000-0000-0000-0000-00000000000a',
                   '00000000-0000-0000-0000-000000000002', 1, now(), 'declined', 'processor',
                   now());
                """
            )
            await asyncio.to_thread(command.upgrade, cfg, "head")
            rows = await conn.fetch("SELECT id::text, card_id::text FROM payment_attempt")
        finally:
            await conn.close()
        assert {r["id"][-2:]: r["card_id"] for r in rows} == {
            "a1": "00000000-0000-0000-0000-0000000000cc",
            "a2": None,
        }
    finally:
        await drop_database(services, url)


_MERCHANT_AND_ENDPOINT = """
INSERT INTO merchant (id, name, status, created_at)
VALUES ('00000000-0000-0000-0000-00000000000a', 'M', 'active', now());
INSERT INTO webhook_endpoint (id, merchant_id, url, secret_encrypted, enabled, created_at)
VALUES ('00000000-0000-0000-0000-0000000000e1', '00000000-0000-0000-0000-00000000000a',
        'https://m.example/hooks', '\\x01'::bytea, true, now());
"""


async def _columns(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT column_name, is_nullable FROM information_schema.columns WHERE table_name = $1",
        table,
    )
    return {r["column_name"]: r["is_nullable"] for r in rows}


async def test_previous_webhook_secret_columns_are_nullable_and_reversible(
    services: Services,
) -> None:
    """0012 adds the rotated-out secret and its expiry as nullable columns (no rewrite, no
    default): endpoints stored before it have no previous secret; down removes both."""
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    previous = {"previous_secret_encrypted", "previous_secret_expires_at"}
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0011_raw_record_pending")
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute(_MERCHANT_AND_ENDPOINT)
            assert not previous & set(await _columns(conn, "webhook_endpoint"))
            await asyncio.to_thread(command.upgrade, cfg, "0012_webhook_previous_secret")
            columns = await _columns(conn, "webhook_endpoint")
            assert {c: columns[c] for c in previous} == dict.fromkeys(previous, "YES")
            row = await conn.fetchrow(
                "SELECT secret_encrypted, previous_secret_encrypted, previous_secret_expires_at "
                "FROM webhook_endpoint"
            )
            assert row is not None
            assert tuple(row) == (b"\x01", None, None)
            await asyncio.to_thread(command.downgrade, cfg, "0011_raw_record_pending")
            assert not previous & set(await _columns(conn, "webhook_endpoint"))
            assert await conn.fetchval("SELECT count(*) FROM webhook_endpoint") == 1
        finally:
            await conn.close()
    finally:
        await drop_database(services, url)


async def test_pending_raw_index_builds_concurrently_and_reverses(services: Services) -> None:
    """0011 builds its index outside a transaction (CONCURRENTLY) and leaves it valid, also
    when a failed earlier build left an invalid one behind; down removes it."""
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    valid = (
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = 'ix_raw_record_pending'"
    )
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0010_attempt_card")
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            # What an interrupted CREATE INDEX CONCURRENTLY leaves: an index marked invalid.
            await conn.execute(
                "CREATE INDEX ix_raw_record_pending ON raw_record (connection_id); "
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = "
                "'ix_raw_record_pending'::regclass"
            )
            await asyncio.to_thread(command.upgrade, cfg, "0011_raw_record_pending")
            assert await conn.fetchval(valid) is True
            columns = await conn.fetchval(
                "SELECT pg_get_indexdef('ix_raw_record_pending'::regclass)"
            )
            assert "connection_id, received_at" in columns
            assert "WHERE (normalized_at IS NULL)" in columns
            await asyncio.to_thread(command.downgrade, cfg, "0010_attempt_card")
            assert await conn.fetchval(valid) is None
        finally:
            await conn.close()
    finally:
        await drop_database(services, url)


async def test_attempt_decline_columns_are_renamed_in_place_and_back(services: Services) -> None:
    """0013 renames the attempt's decline columns to the payment's spelling, keeping every
    stored value; down gives them their old names back."""
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    old = {"raw_decline_code", "network_decline_code", "network_advice_code"}
    new = {"decline_raw_code", "decline_network_code", "decline_network_advice_code"}
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0012_webhook_previous_secret")
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute(_MERCHANT_AND_CUSTOMER)
            await conn.execute(
                """
                INSERT INTO payment (id, merchant_id, processor, processor_payment_id,
                    amount_minor, currency, customer_id, first_failed_at, decline_category,
                    decline_retryable, decline_advice, state, attempt_count, created_at,
                    updated_at)
                VALUES ('00000000-0000-0000-0000-000000000001',
                        '00000000-0000-0000-0000-00000000000a', 'stripe', 'ch_1', 2900, 'USD',
                        '00000000-0000-0000-0000-00000000000c', now(), 'insufficient_funds',
                        true, 'retry', 'SCHEDULED', 1, now(), now());
                INSERT INTO payment_attempt (id, merchant_id, payment_id, number, attempted_at,
                    outcome, actor, created_at, raw_decline_code, network_decline_code,
                    network_advice_code)
                VALUES ('00000000-0000-0000-0000-0000000000a1',
                        '00000000-0000-0000-0000-00000000000a',
                        '00000000-0000-0000-0000-000000000001', 1, now(), 'declined',
                        'processor', now(), 'insufficient_funds', '51', '24');
                """
            )
            await asyncio.to_thread(command.upgrade, cfg, "0013_attempt_decline_columns")
            assert new <= set(await _columns(conn, "payment_attempt"))
            assert not old & set(await _columns(conn, "payment_attempt"))
            row = await conn.fetchrow(
                "SELECT decline_raw_code, decline_network_code, decline_network_advice_code "
                "FROM payment_attempt"
            )
            assert row is not None
            assert tuple(row) == ("insufficient_funds", "51", "24")
            await asyncio.to_thread(command.downgrade, cfg, "0012_webhook_previous_secret")
            assert old <= set(await _columns(conn, "payment_attempt"))
            assert not new & set(await _columns(conn, "payment_attempt"))
            row = await conn.fetchrow(
                "SELECT raw_decline_code, network_decline_code, network_advice_code "
                "FROM payment_attempt"
            )
            assert row is not None
            assert tuple(row) == ("insufficient_funds", "51", "24")
        finally:
            await conn.close()
    finally:
        await drop_database(services, url)


async def test_attempt_decline_rename_gives_up_behind_a_long_transaction(
    services: Services,
) -> None:
    """0013 waits for its lock a few seconds at most: behind a transaction that holds the
    table, it fails and changes nothing (so traffic never queues behind it for long), and
    succeeds when run again once that transaction has ended."""
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0012_webhook_previous_secret")
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            reader = conn.transaction()
            await reader.start()
            await conn.fetch("SELECT * FROM payment_attempt")  # holds ACCESS SHARE until the end
            with pytest.raises(DBAPIError, match="lock timeout"):
                await asyncio.to_thread(command.upgrade, cfg, "0013_attempt_decline_columns")
            await reader.rollback()
            version = "SELECT version_num FROM alembic_version"
            assert await conn.fetchval(version) == "0012_webhook_previous_secret"
            assert "raw_decline_code" in await _columns(conn, "payment_attempt")
            await asyncio.to_thread(command.upgrade, cfg, "0013_attempt_decline_columns")
            assert await conn.fetchval(version) == "0013_attempt_decline_columns"
        finally:
            await conn.close()
    finally:
        await drop_database(services, url)


async def test_webhook_delivery_status_widens_in_place_and_keeps_its_due_index(
    services: Services,
) -> None:
    """0014 stores delivery status like every other enum column (VARCHAR(32)): stored values
    stay as they were, and the index of pending deliveries is built again, valid, with the
    same predicate; down reverses both."""
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    status_type = (
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'webhook_delivery'::regclass AND attname = 'status'"
    )
    due_index = (
        "SELECT pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'ix_webhook_delivery_due'"
    )
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0013_attempt_decline_columns")
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute(_MERCHANT_AND_ENDPOINT)
            await conn.execute(
                """
                INSERT INTO outbox_event (id, merchant_id, event_type, payload, created_at)
                VALUES ('00000000-0000-0000-0000-0000000000b1',
                        '00000000-0000-0000-0000-00000000000a', 'payment.recovered', '{}',
                        now()),
                       ('00000000-0000-0000-0000-0000000000b2',
                        '00000000-0000-0000-0000-00000000000a', 'payment.exhausted', '{}',
                        now());
                INSERT INTO webhook_delivery (id, merchant_id, event_id, endpoint_id, status,
                    attempts, next_attempt_at, created_at)
                VALUES ('00000000-0000-0000-0000-0000000000d1',
                        '00000000-0000-0000-0000-00000000000a',
                        '00000000-0000-0000-0000-0000000000b1',
                        '00000000-0000-0000-0000-0000000000e1', 'pending', 0, now(), now()),
                       ('00000000-0000-0000-0000-0000000000d2',
                        '00000000-0000-0000-0000-00000000000a',
                        '00000000-0000-0000-0000-0000000000b2',
                        '00000000-0000-0000-0000-0000000000e1', 'delivered', 1, now(), now());
                """
            )
            before = await conn.fetchrow(due_index)
            assert before is not None
            assert await conn.fetchval(status_type) == "character varying(16)"
            await asyncio.to_thread(command.upgrade, cfg, "0014_webhook_delivery_status")
            assert await conn.fetchval(status_type) == "character varying(32)"
            assert tuple(await conn.fetchrow(due_index) or ()) == (before[0], True)
            rows = await conn.fetch("SELECT status FROM webhook_delivery ORDER BY id")
            assert [r["status"] for r in rows] == ["pending", "delivered"]
            await asyncio.to_thread(command.downgrade, cfg, "0013_attempt_decline_columns")
            assert await conn.fetchval(status_type) == "character varying(16)"
            assert tuple(await conn.fetchrow(due_index) or ()) == (before[0], True)
        finally:
            await conn.close()
    finally:
        await drop_database(services, url)


_POLICY = """
INSERT INTO retry_policy (id, merchant_id, version, enabled, max_attempts, window_days,
    min_hours_between_attempts, timezone, excluded_decline_categories, strategy,
    fixed_schedule_days, end_action, created_at, created_by)
VALUES ('00000000-0000-0000-0000-0000000000f1', '00000000-0000-0000-0000-00000000000a', {version},
        true, 4, 14, 24, 'UTC', '{{}}', 'model', '{{1,3}}', 'mark_exhausted', now(), 'test');
"""


async def test_policy_control_group_column_defaults_existing_policies_to_ten_percent(
    services: Services,
) -> None:
    """0015 adds `control_group_percent` with a server default (no rewrite): policies stored
    before it read 10, the share in force until then; the range is checked; the rollups'
    control arm (now drawn at the deciding policy version's share) is unchanged for them;
    down removes the column and the rollups count as before."""
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    arms = (
        "SELECT control_group, sum(failed_count) FROM recovery_rollup GROUP BY 1 "
        "HAVING sum(failed_count) > 0 ORDER BY 1"
    )
    payments = """
        INSERT INTO customer (id, merchant_id, external_ref, created_at)
        VALUES ('00000000-0000-0000-0000-0000000000c1', '00000000-0000-0000-0000-00000000000a',
                'cus', now());
        INSERT INTO payment (id, merchant_id, processor, processor_payment_id, amount_minor,
            currency, customer_id, first_failed_at, decline_category, decline_retryable,
            decline_advice, attempt_count, created_at, updated_at, policy_version, state)
        SELECT gen_random_uuid(), '00000000-0000-0000-0000-00000000000a', 'stripe',
            'ch_' || i, 100, 'EUR', '00000000-0000-0000-0000-0000000000c1', now(),
            'insufficient_funds', true, 'retry', 1, now(), now(), 1, 'PENDING'
        FROM generate_series(1, 300) AS i;
    """
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0014_webhook_delivery_status")
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute(_MERCHANT_AND_ENDPOINT)
            await conn.execute(_POLICY.format(version=1))
            await conn.execute(payments)
            before = [tuple(r) for r in await conn.fetch(arms)]
            assert len(before) == 2  # both arms counted
            await asyncio.to_thread(command.upgrade, cfg, "0015_policy_control_group")
            assert (await _columns(conn, "retry_policy"))["control_group_percent"] == "NO"
            assert await conn.fetchval("SELECT control_group_percent FROM retry_policy") == 10
            assert [tuple(r) for r in await conn.fetch(arms)] == before
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute("UPDATE retry_policy SET control_group_percent = 51")
            # Payments decided under a version without a control group leave the control arm.
            await conn.execute(_POLICY.format(version=2).replace("0000000000f1", "0000000000f2"))
            await conn.execute(
                "UPDATE retry_policy SET control_group_percent = 0 WHERE version = 2"
            )
            await conn.execute("UPDATE payment SET policy_version = 2")
            assert [tuple(r) for r in await conn.fetch(arms)] == [(False, 300)]
            await conn.execute("UPDATE payment SET policy_version = 1")
            assert [tuple(r) for r in await conn.fetch(arms)] == before
            # The older triggers would count version 2's payments on the wrong arm: refused.
            with pytest.raises(RuntimeError, match="control-group share other than 10%"):
                await asyncio.to_thread(command.downgrade, cfg, "0014_webhook_delivery_status")
            assert "control_group_percent" in await _columns(conn, "retry_policy")
            await conn.execute("DELETE FROM retry_policy WHERE version = 2")
            await asyncio.to_thread(command.downgrade, cfg, "0014_webhook_delivery_status")
            assert "control_group_percent" not in await _columns(conn, "retry_policy")
            await conn.execute("UPDATE payment SET policy_version = 2")
            assert [tuple(r) for r in await conn.fetch(arms)] == before
        finally:
            await conn.close()
    finally:
        await drop_database(services, url)


async def test_model_decision_index_by_model_role_and_time_replaces_the_model_index(
    services: Services,
) -> None:
    """0016 builds `ix_model_decision_model_role_at` concurrently (valid, also over an invalid
    leftover of an interrupted build) and drops the single-column model index; down reverses."""
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    indexes = (
        "SELECT c.relname, i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = 'model_decision'::regclass AND c.relname LIKE 'ix_model_decision_mo%'"
    )
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0015_policy_control_group")
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            # What an interrupted CREATE INDEX CONCURRENTLY leaves: an index marked invalid.
            await conn.execute(
                "CREATE INDEX ix_model_decision_model_role_at ON model_decision (role); "
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = "
                "'ix_model_decision_model_role_at'::regclass"
            )
            await asyncio.to_thread(command.upgrade, cfg, "0016_model_decision_by_model")
            [(name, valid, definition)] = await conn.fetch(indexes)
            assert (name, valid) == ("ix_model_decision_model_role_at", True)
            assert "(model_version_id, role, decided_at)" in definition
            await asyncio.to_thread(command.downgrade, cfg, "0015_policy_control_group")
            [(name, valid, definition)] = await conn.fetch(indexes)
            assert (name, valid) == ("ix_model_decision_model_version_id", True)
            assert "(model_version_id)" in definition
        finally:
            await conn.close()
    finally:
        await drop_database(services, url)


async def test_preflight_method_column_and_end_action_table_are_added_and_reversible(
    services: Services,
) -> None:
    """0017 adds `payment_attempt.payment_method_ref` (nullable, no default: no rewrite;
    attempts stored before it were sent on the customer's default) and the `end_action` table
    (one row per payment, tenant-owned); down removes both and keeps the attempts."""
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    payment_and_attempt = """
        INSERT INTO payment (id, merchant_id, processor, processor_payment_id, amount_minor,
            currency, customer_id, first_failed_at, decline_category, decline_retryable,
            decline_advice, state, attempt_count, created_at, updated_at)
        VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-00000000000a',
            'stripe', 'ch_1', 2900, 'USD', '00000000-0000-0000-0000-00000000000c', now(),
            'insufficient_funds', true, 'retry', 'EXHAUSTED', 1, now(), now());
        INSERT INTO payment_attempt (id, merchant_id, payment_id, number, attempted_at, outcome,
            actor, created_at)
        VALUES ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-00000000000a',
            '00000000-0000-0000-0000-000000000001', 1, now(), 'declined', 'portal', now());
    """
    end_action = """
        INSERT INTO end_action (id, merchant_id, payment_id, action, status, tries,
            next_attempt_at, created_at, updated_at)
        VALUES (gen_random_uuid(), '00000000-0000-0000-0000-00000000000a',
            '00000000-0000-0000-0000-000000000001', 'cancel_subscription', 'pending', 0, now(),
            now(), now())
    """
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0016_model_decision_by_model")
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute(_MERCHANT_AND_CUSTOMER)
            await conn.execute(payment_and_attempt)
            assert "end_action" not in await _tables(url)
            await asyncio.to_thread(command.upgrade, cfg, "0017_preflight_end_actions")
            assert (await _columns(conn, "payment_attempt"))["payment_method_ref"] == "YES"
            assert await conn.fetchval("SELECT payment_method_ref FROM payment_attempt") is None
            await conn.execute(end_action)
            # One end action per payment.
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(end_action)
            indexes = await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE tablename = $1", "end_action"
            )
            assert {"ix_end_action_due", "ix_end_action_merchant_id"} <= {
                r["indexname"] for r in indexes
            }
            await asyncio.to_thread(command.downgrade, cfg, "0016_model_decision_by_model")
            assert "end_action" not in await _tables(url)
            assert "payment_method_ref" not in await _columns(conn, "payment_attempt")
            assert await conn.fetchval("SELECT count(*) FROM payment_attempt") == 1
        finally:
            await conn.close()
    finally:
        await drop_database(services, url)


async def test_a_short_lock_timeout_is_given_back_to_the_transaction(services: Services) -> None:
    """Revisions run one after another in one transaction: the short lock timeout a revision
    takes for its ALTERs must not bind the revisions after it, online or in a rendered script."""
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0012_webhook_previous_secret")
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.exec_driver_sql("SET LOCAL lock_timeout = '7s'")

                def upgrade(sync_conn: Connection) -> None:
                    cfg.attributes["connection"] = sync_conn
                    command.upgrade(cfg, "0013_attempt_decline_columns")

                await conn.run_sync(upgrade)
                assert (await conn.exec_driver_sql("SHOW lock_timeout")).scalar_one() == "7s"
        finally:
            await engine.dispose()
    finally:
        await drop_database(services, url)


async def test_redundant_ingestion_indexes_are_dropped_and_reversible(services: Services) -> None:
    """0020 drops the single-column indexes a composite index leads with (and the raw rows'
    unread merchant index), concurrently; down rebuilds them, valid."""
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    dropped = {
        "ix_customer_merchant_id",
        "ix_card_credential_merchant_id",
        "ix_payment_merchant_id",
        "ix_payment_attempt_merchant_id",
        "ix_payment_attempt_payment_id",
        "ix_raw_record_merchant_id",
    }
    indexes = (
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = ANY($1::text[])"
    )
    leading = {
        "uq_customer_merchant_id_external_ref",
        "uq_card_credential_merchant_id_fingerprint_exp_month_exp_year",
        "uq_payment_merchant_id_processor_processor_payment_id",
        "ix_payment_attempt_processor_attempt",
        "uq_payment_attempt_payment_id_number",
        "uq_raw_record_connection_id_content_hash",
    }
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0019_payment_search")
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            assert dict(await conn.fetch(indexes, sorted(dropped))) == dict.fromkeys(dropped, True)
            await asyncio.to_thread(command.upgrade, cfg, "0020_ingest_indexes")
            assert await conn.fetch(indexes, sorted(dropped)) == []
            assert dict(await conn.fetch(indexes, sorted(leading))) == dict.fromkeys(leading, True)
            await asyncio.to_thread(command.downgrade, cfg, "0019_payment_search")
            assert dict(await conn.fetch(indexes, sorted(dropped))) == dict.fromkeys(dropped, True)
        finally:
            await conn.close()
    finally:
        await drop_database(services, url)


_PAYMENT_WITH_HISTORY = """
INSERT INTO payment (id, merchant_id, processor, processor_payment_id, amount_minor, currency,
    customer_id, first_failed_at, decline_category, decline_retryable, decline_advice, state,
    attempt_count, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-00000000000a',
        'stripe', 'ch_1', 2900, 'USD', '00000000-0000-0000-0000-00000000000c', now(),
        'insufficient_funds', true, 'retry', 'SCHEDULED', 1, now(), now());
INSERT INTO payment_transition (merchant_id, id, payment_id, seq, from_state, to_state, event,
    reason, actor, at)
SELECT '00000000-0000-0000-0000-00000000000a', gen_random_uuid(),
       '00000000-0000-0000-0000-000000000001', n, 'FAILED', 'SCHEDULED', 'decided', 'r',
       'portal', timestamptz '2027-06-15 12:00+00' - make_interval(days => n)
FROM generate_series(0, 99) AS n;
INSERT INTO model_decision (merchant_id, id, payment_id, role, source, decided_at,
    expected_recovered_minor, reason, explanation)
SELECT '00000000-0000-0000-0000-00000000000a', gen_random_uuid(),
       '00000000-0000-0000-0000-000000000001', 'acting', 'model',
       timestamptz '2026-11-01 00:00+00' + make_interval(hours => n), 0, 'r', '[]'
FROM generate_series(0, 49) AS n;
"""

_PARTITIONS = """
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass ORDER BY c.relname
"""


async def test_timeline_and_decisions_become_monthly_partitions_keeping_rows_and_indexes(
    services: Services,
) -> None:
    """0021: each table becomes the first partition of a partitioned table of its name, up to a
    month boundary after its newest row; its indexes are adopted, not rebuilt; the default
    partition and the next months follow. The downgrade gives back one plain table."""
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0023_recovery_day_rollups")
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute("SET TimeZone = 'UTC'")
            await conn.execute(_MERCHANT_AND_CUSTOMER + _PAYMENT_WITH_HISTORY)
            before = await conn.fetchval("SELECT 'ix_payment_transition_payment_at'::regclass::oid")
            await asyncio.to_thread(command.upgrade, cfg, "0024_partition_timelines")
            assert await conn.fetchval("SELECT count(*) FROM payment_transition") == 100
            assert await conn.fetchval("SELECT count(*) FROM model_decision") == 50
            kinds = await conn.fetch(
                "SELECT relname, relkind::text FROM pg_class WHERE relname = ANY($1::text[])",
                ["payment_transition", "model_decision"],
            )
            assert {r["relkind"] for r in kinds} == {"p"}
            # The newest row is in June 2027: the first partition ends on 1 July.
            parts = {
                r["relname"]: r["bound"]
                for r in await conn.fetch(_PARTITIONS, "payment_transition")
            }
            assert parts["payment_transition_p_initial"] == (
                "FOR VALUES FROM (MINVALUE) TO ('2027-07-01 00:00:00+00')"
            )
            assert parts["payment_transition_default"] == "DEFAULT"
            assert {"payment_transition_p202707", "payment_transition_p202709"} <= set(parts)
            adopted = await conn.fetchval(
                "SELECT 'ix_payment_transition_p_initial_payment_at'::regclass::oid"
            )
            assert adopted == before
            key = await conn.fetchval(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conname = 'pk_payment_transition'"
            )
            assert key == "PRIMARY KEY (id, at)"
            # A row of a month without a partition lands in the default one.
            await conn.execute(
                "INSERT INTO payment_transition SELECT merchant_id, gen_random_uuid(), payment_id,"
                " 0, 'SCHEDULED', 'RETRYING', 'claimed', 'r', 'portal', '2031-01-05' "
                "FROM payment_transition LIMIT 1"
            )
            where = await conn.fetchval(
                "SELECT tableoid::regclass::text FROM payment_transition WHERE at = '2031-01-05'"
            )
            assert where == "payment_transition_default"

            await asyncio.to_thread(command.downgrade, cfg, "0023_recovery_day_rollups")
            assert await conn.fetchval("SELECT count(*) FROM payment_transition") == 101
            assert await conn.fetchval("SELECT count(*) FROM model_decision") == 50
            assert (
                await conn.fetchval(
                    "SELECT relkind::text FROM pg_class WHERE relname = 'payment_transition'"
                )
                == "r"
            )
        finally:
            await conn.close()
    finally:
        await drop_database(services, url)


_RAW_HISTORY = """
INSERT INTO processor_connection (id, merchant_id, kind, name, base_url, credentials_encrypted,
    status, cursor, created_at)
VALUES ('00000000-0000-0000-0000-0000000000b1', '00000000-0000-0000-0000-00000000000a',
        'stripe', 'S', 'http://127.0.0.1:1', '\\x01'::bytea, 'active', '{}', now());
INSERT INTO raw_record (merchant_id, id, connection_id, processor, received_at, content_hash,
    payload)
SELECT '00000000-0000-0000-0000-00000000000a', gen_random_uuid(),
       '00000000-0000-0000-0000-0000000000b1', 'stripe',
       timestamptz '2026-10-01 00:00+00' + make_interval(hours => n), 'h' || n, '{}'
FROM generate_series(1, 25000) AS n;
INSERT INTO dead_letter (merchant_id, id, connection_id, raw_record_id, normalizer_version,
    reason, created_at)
SELECT merchant_id, gen_random_uuid(), connection_id, id, 1, 'bad', now()
FROM raw_record WHERE content_hash = 'h7';
"""


async def test_raw_records_become_partitions_with_their_once_only_key_in_a_table_of_its_own(
    services: Services,
) -> None:
    """0022: every stored record gets its key row (in batches); dead letters and attempts refer
    to the key; a record landed again is skipped by the trigger, before and after the swap; the
    downgrade gives back the unique constraint and the foreign keys to the rows."""
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    land = (
        "INSERT INTO raw_record (merchant_id, id, connection_id, processor, received_at, "
        "content_hash, payload) VALUES ('00000000-0000-0000-0000-00000000000a', "
        "gen_random_uuid(), '00000000-0000-0000-0000-0000000000b1', 'stripe', $1, $2, '{}') "
        "RETURNING id"
    )
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0024_partition_timelines")
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute(_MERCHANT_AND_CUSTOMER + _RAW_HISTORY)
            await asyncio.to_thread(command.upgrade, cfg, "0025_partition_raw_records")

            assert await conn.fetchval("SELECT count(*) FROM raw_record") == 25000
            keys = await conn.fetchval(
                "SELECT count(*) FROM raw_record_key k JOIN raw_record r "
                "ON r.id = k.raw_record_id AND r.content_hash = k.content_hash"
            )
            assert keys == 25000
            assert (
                await conn.fetchval(
                    "SELECT confrelid::regclass::text FROM pg_constraint "
                    "WHERE conname = 'fk_dead_letter_raw_record_id_raw_record_key'"
                )
                == "raw_record_key"
            )
            # Seen before: skipped, whether its month is the first partition's or a later one.
            later = datetime(2027, 9, 1, tzinfo=UTC)
            assert await conn.fetch(land, later, "h7") == []
            fresh = await conn.fetch(land, later, "new")
            assert len(fresh) == 1
            assert await conn.fetch(land, datetime(2026, 12, 1, tzinfo=UTC), "new") == []
            assert await conn.fetchval("SELECT count(*) FROM raw_record") == 25001

            await asyncio.to_thread(command.downgrade, cfg, "0024_partition_timelines")
            assert await conn.fetchval("SELECT count(*) FROM raw_record") == 25001
            assert "raw_record_key" not in await _tables(url)
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.fetch(land, later, "new")
        finally:
            await conn.close()
    finally:
        await drop_database(services, url)


async def test_event_feed_columns_keep_existing_events_and_are_reversible(
    services: Services,
) -> None:
    """0021 adds `outbox_event.position` (null: existing events wait for the sequencer) and
    `version` (existing events read 1), the sequence and the two partial indexes, valid;
    down removes them all."""
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    indexes = ["ix_outbox_event_feed", "ix_outbox_event_unsequenced"]
    valid = (
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = ANY($1::text[])"
    )
    sequence = "SELECT count(*) FROM pg_class WHERE relname = 'outbox_event_position_seq'"
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0025_partition_raw_records")
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute(_MERCHANT_AND_CUSTOMER)
            await conn.execute(
                "INSERT INTO outbox_event (id, merchant_id, event_type, payload, created_at) "
                "VALUES (gen_random_uuid(), '00000000-0000-0000-0000-00000000000a', "
                "'payment.scheduled', '{}', now())"
            )
            await asyncio.to_thread(command.upgrade, cfg, "0026_event_feed")
            assert await conn.fetchrow("SELECT position, version FROM outbox_event") == (None, 1)
            columns = await _columns(conn, "outbox_event")
            assert (columns["position"], columns["version"]) == ("YES", "NO")
            assert dict(await conn.fetch(valid, indexes)) == dict.fromkeys(indexes, True)
            assert await conn.fetchval(sequence) == 1
            await asyncio.to_thread(command.downgrade, cfg, "0025_partition_raw_records")
            assert {"position", "version"}.isdisjoint(await _columns(conn, "outbox_event"))
            assert await conn.fetch(valid, indexes) == []
            assert await conn.fetchval(sequence) == 0
        finally:
            await conn.close()
    finally:
        await drop_database(services, url)


_OUTBOX_HISTORY = (
    _MERCHANT_AND_ENDPOINT
    + """
INSERT INTO webhook_endpoint (id, merchant_id, url, secret_encrypted, enabled, created_at)
VALUES ('00000000-0000-0000-0000-0000000000e2', '00000000-0000-0000-0000-00000000000a',
        'https://m.example/other', '\\x01'::bytea, true, now());
INSERT INTO outbox_event (id, merchant_id, event_type, payload, created_at, dispatched_at,
    position)
SELECT gen_random_uuid(), '00000000-0000-0000-0000-00000000000a', 'payment.recovered', '{}',
       timestamptz '2026-09-01 00:00+00' + make_interval(mins => 5 * n),
       timestamptz '2026-09-01 00:00+00' + make_interval(mins => 5 * n),
       CASE WHEN n % 2 = 0 THEN nextval('outbox_event_position_seq') END
FROM generate_series(1, 11000) AS n;
INSERT INTO webhook_delivery (id, merchant_id, event_id, endpoint_id, status, attempts,
    next_attempt_at, created_at)
SELECT gen_random_uuid(), merchant_id, id, endpoint, 'delivered', 1, created_at, created_at
FROM outbox_event, (VALUES ('00000000-0000-0000-0000-0000000000e1'::uuid),
                           ('00000000-0000-0000-0000-0000000000e2'::uuid)) AS e (endpoint);
INSERT INTO webhook_delivery (id, merchant_id, event_id, endpoint_id, status, attempts,
    next_attempt_at, created_at, redelivery_of)
SELECT gen_random_uuid(), merchant_id, event_id, endpoint_id, 'pending', 0, now(), now(), id
FROM webhook_delivery ORDER BY id LIMIT 300;
"""
)


async def test_outbox_and_deliveries_become_partitions_keeping_rows_and_one_delivery_per_event(
    services: Services,
) -> None:
    """0028, 0029: every delivery gets its event's time (in batches: 22,300 rows), the deliveries
    refer to the event by (id, created_at); both tables become monthly partitions keeping
    every row, the feed's positions and indexes; one first delivery per event and endpoint
    still holds, redeliveries are further rows. The downgrade gives back the plain tables."""
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    first = (
        "INSERT INTO webhook_delivery (id, merchant_id, event_id, event_created_at, endpoint_id,"
        " status, attempts, next_attempt_at, created_at, redelivery_of) SELECT"
        " gen_random_uuid(), merchant_id, id, $1, '00000000-0000-0000-0000-0000000000e1',"
        " 'pending', 0, now(), now(), $2::uuid FROM outbox_event WHERE position = 2"
    )
    counts = (
        "SELECT (SELECT count(*) FROM outbox_event), (SELECT count(position) FROM outbox_event),"
        " (SELECT count(*) FROM webhook_delivery),"
        " (SELECT count(*) FROM webhook_delivery WHERE redelivery_of IS NULL)"
    )
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0027_payment_orders")
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute("SET TimeZone = 'UTC'")
            await conn.execute(_OUTBOX_HISTORY)
            before = tuple(await conn.fetchrow(counts) or ())
            assert before == (11000, 5500, 22300, 22000)
            feed = await conn.fetchval("SELECT 'ix_outbox_event_feed'::regclass::oid")
            await asyncio.to_thread(command.upgrade, cfg, "0029_partition_webhook_delivery")

            assert tuple(await conn.fetchrow(counts) or ()) == before
            matched = await conn.fetchval(
                "SELECT count(*) FROM webhook_delivery d JOIN outbox_event e "
                "ON e.id = d.event_id AND e.created_at = d.event_created_at"
            )
            assert matched == 22300
            kinds = await conn.fetch(
                "SELECT relname, relkind::text FROM pg_class WHERE relname = ANY($1::text[])",
                ["outbox_event", "webhook_delivery"],
            )
            assert {r["relkind"] for r in kinds} == {"p"}
            # The newest event is on 8 October 2026: its first partition ends on 1 November,
            # or two months after the migration ran, whichever is later.
            parts = {
                r["relname"]: r["bound"] for r in await conn.fetch(_PARTITIONS, "outbox_event")
            }
            assert parts["outbox_event_default"] == "DEFAULT"
            assert parts["outbox_event_p_initial"].startswith("FOR VALUES FROM (MINVALUE)")
            adopted = await conn.fetchval("SELECT 'ix_outbox_event_p_initial_feed'::regclass::oid")
            assert adopted == feed
            keys = {
                r["conname"]: r["def"]
                for r in await conn.fetch(
                    "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
                    "WHERE conrelid = ANY(ARRAY['outbox_event', 'webhook_delivery']::regclass[])"
                    " AND contype IN ('p', 'f') AND conparentid = 0"
                )
            }
            assert keys["pk_outbox_event"] == "PRIMARY KEY (id, created_at)"
            assert keys["pk_webhook_delivery"] == "PRIMARY KEY (id, event_created_at)"
            assert keys["fk_webhook_delivery_event_outbox_event"] == (
                "FOREIGN KEY (event_id, event_created_at) REFERENCES outbox_event(id, created_at)"
            )
            at = await conn.fetchval("SELECT created_at FROM outbox_event WHERE position = 2")
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(first, at, None)
            # A redelivery is a further row; a delivery at another time than its event's is
            # refused by the foreign key.
            await conn.execute(first, at, "00000000-0000-0000-0000-0000000000d1")
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await conn.execute(first, datetime(2031, 1, 1, tzinfo=UTC), None)
            # Nothing left of the steps: the trigger, the procedure, the not-null check.
            leftovers = await conn.fetchval(
                "SELECT count(*) FROM pg_proc WHERE proname LIKE 'webhook_delivery_event%'"
            )
            assert leftovers == 0

            await asyncio.to_thread(command.downgrade, cfg, "0027_payment_orders")
            assert tuple(await conn.fetchrow(counts) or ()) == (11000, 5500, 22301, 22000)
            assert "event_created_at" not in await _columns(conn, "webhook_delivery")
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(
                    "INSERT INTO webhook_delivery (id, merchant_id, event_id, endpoint_id, "
                    "status, attempts, next_attempt_at, created_at) SELECT gen_random_uuid(), "
                    "merchant_id, id, '00000000-0000-0000-0000-0000000000e1', 'pending', 0, "
                    "now(), now() FROM outbox_event WHERE position = 2"
                )
        finally:
            await conn.close()
    finally:
        await drop_database(services, url)
