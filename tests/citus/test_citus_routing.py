"""The application path routes to one shard on Citus (issue 19): ingest and tenant sessions
name the tenant explicitly (organization_id = $1), which Citus routes to the tenant's shard
(EXPLAIN: Task Count: 1); a policy alone fans out to every shard."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import Decimal

import psycopg
from psycopg import sql

from tenant_pipelines.core.ingest import CITUS_ROWS_PER_STATEMENT, citus_insert_statement, ingest_usage_events, on_citus
from tenant_pipelines.db.session import tenant_session
from tests.citus.conftest import SHARD_COUNT, make_citus_tenant

# Statements of the application path, each with the tenant named explicitly.
TENANT_QUERIES = {
    "usage": "SELECT metric_name, sum(quantity) FROM usage_events WHERE organization_id = %(t)s"
             " AND \"timestamp\" >= now() - interval '30 days' GROUP BY 1",
    "subscriptions-invoices": "SELECT s.plan, sum(i.amount) FROM subscriptions s JOIN invoices i"
                              " ON i.organization_id = s.organization_id AND i.subscription_id = s.id"
                              " WHERE s.organization_id = %(t)s GROUP BY 1",
    "payment-methods": "SELECT kind, count(*) FROM payment_methods WHERE organization_id = %(t)s GROUP BY 1",
    "organization": "SELECT name FROM organizations WHERE id = %(t)s",
    "tier": "SELECT tc.tier, tl.work_mem FROM tenant_classifications tc JOIN tier_limits tl USING (tier)"
            " WHERE tc.organization_id = %(t)s",
    "update-invoice": "UPDATE invoices SET status = 'void' WHERE organization_id = %(t)s AND status = 'draft'",
    "delete-events": "DELETE FROM usage_events_mt WHERE organization_id = %(t)s AND metric_name = 'none'",
}


def task_count(tx: psycopg.Connection, statement: sql.Composable | str, params: object) -> int:
    query = sql.SQL("EXPLAIN ") + (sql.SQL(statement) if isinstance(statement, str) else statement)
    plan = "\n".join(row[0] for row in tx.execute(query, params).fetchall())
    counts = [int(n) for n in re.findall(r"Task Count: (\d+)", plan)]
    assert counts, plan
    return max(counts)


def shard_count(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT shard_count FROM citus_tables WHERE table_name = 'usage_events_mt'::regclass"
                        ).fetchone()[0]


def test_every_application_statement_routes_to_one_shard(citus_admin: psycopg.Connection) -> None:
    tenant = make_citus_tenant(citus_admin)
    with tenant_session(citus_admin, tenant) as tx:  # billing_app, the tenant's context, its limits
        assert on_citus(tx)
        counts = {name: task_count(tx, query, {"t": tenant}) for name, query in TENANT_QUERIES.items()}
        now = datetime.now(timezone.utc)
        for rows in (1, CITUS_ROWS_PER_STATEMENT):
            params = [v for _ in range(rows) for v in (tenant, "api_calls", Decimal(1), now, "{}")]
            counts[f"ingest-{rows}"] = task_count(tx, citus_insert_statement(rows), params)
    assert counts == {name: 1 for name in counts}, "every statement of the application path on one shard"


def test_a_policy_alone_fans_out_to_every_shard(citus_admin: psycopg.Connection) -> None:
    tenant = make_citus_tenant(citus_admin)
    shards = shard_count(citus_admin)
    assert shards >= SHARD_COUNT  # more once a test has isolated a tenant (test_citus_placement.py)
    with tenant_session(citus_admin, tenant) as tx:
        assert task_count(tx, "SELECT count(*) FROM usage_events", None) == shards
        assert task_count(tx, "SELECT count(*) FROM usage_events WHERE organization_id = fn_current_tenant_id()",
                          None) == shards


def test_ingest_lands_on_the_tenants_shard_only(citus_admin: psycopg.Connection) -> None:
    tenant = make_citus_tenant(citus_admin)
    now = datetime.now(timezone.utc)
    n = CITUS_ROWS_PER_STATEMENT + 7  # two statements
    assert ingest_usage_events(citus_admin, tenant, [("api_calls", Decimal(i), now, "{}") for i in range(n)]) == n
    shard = citus_admin.execute("SELECT get_shard_id_for_distribution_column('usage_events_mt', %s)",
                                (tenant,)).fetchone()[0]
    # Run on each placement of usage_events_mt: %s is the shard's name there (run_command_on_placements).
    command = sql.SQL("SELECT count(*) FROM %s WHERE organization_id = {}").format(
        sql.Literal(str(tenant))).as_string(citus_admin)
    counts = dict(citus_admin.execute(
        "SELECT shardid, result::bigint FROM run_command_on_placements('usage_events_mt', %s)", (command,)).fetchall())
    assert len(counts) == shard_count(citus_admin)
    assert {shard_id: rows for shard_id, rows in counts.items() if rows} == {shard: n}
