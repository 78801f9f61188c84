"""A snapshot of what a command could change in a billing database, to show that a refused
command changed nothing: ``before = snapshot(dsn); <command>; assert_unchanged(before, snapshot(dsn))``.

It takes the roles as pg_authid has them (attributes and password verifier), their
memberships and settings, the tablespaces, the policy tables (storage_tiers, tiering_policy,
partition_config, tier_limits), every relation outside the system schemas with its kind,
tablespace and partition bound, every constraint, and the row count and a content hash of
each tenant table. It needs a superuser's DSN (pg_authid).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import psycopg
from psycopg import sql

TENANT_TABLES = (
    "organizations", "subscriptions", "invoices", "payment_methods", "usage_events_mt",
    "tenant_classifications", "tenant_schemas", "tenant_backup_config",
)
POLICY_TABLES = ("storage_tiers", "tiering_policy", "partition_config", "tier_limits")
_USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'"


@dataclass(frozen=True)
class Snapshot:
    roles: tuple
    memberships: tuple
    role_settings: tuple
    tablespaces: tuple
    policy: tuple
    relations: tuple
    constraints: tuple
    rows: tuple

    def differences(self, other: "Snapshot") -> list[str]:
        """What differs, part by part: what only ``self`` has (-) and only ``other`` has (+)."""
        out = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine != theirs:
                gone = [r for r in mine if r not in theirs]
                new = [r for r in theirs if r not in mine]
                out.append(f"{f.name}: -{gone[:5]} +{new[:5]}")
        return out


def _rows(conn: psycopg.Connection, query: str | sql.Composable) -> tuple:
    return tuple(tuple(r) for r in conn.execute(query).fetchall())


def snapshot(dsn: str) -> Snapshot:
    with psycopg.connect(dsn, autocommit=True) as conn:
        policy = tuple(
            (table, _rows(conn, sql.SQL("SELECT t::text FROM {} t ORDER BY 1").format(sql.Identifier(table))))
            for table in POLICY_TABLES
        )
        counts = tuple(
            (table, *conn.execute(
                sql.SQL("SELECT count(*), md5(COALESCE(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {} t")
                .format(sql.Identifier(table))).fetchone())
            for table in TENANT_TABLES
        )
        return Snapshot(
            roles=_rows(conn, "SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,"
                              " rolreplication, rolbypassrls, rolconnlimit, rolpassword, rolvaliduntil"
                              " FROM pg_authid ORDER BY rolname"),
            memberships=_rows(conn, "SELECT roleid::regrole::text, member::regrole::text, admin_option"
                                    " FROM pg_auth_members ORDER BY 1, 2"),
            role_settings=_rows(conn, "SELECT setrole, setdatabase, setconfig::text FROM pg_db_role_setting ORDER BY 1, 2"),
            tablespaces=_rows(conn, "SELECT spcname, pg_tablespace_location(oid) FROM pg_tablespace ORDER BY 1"),
            policy=policy,
            relations=_rows(conn, f"""
                SELECT n.nspname, c.relname, c.relkind, c.reltablespace, c.relispartition,
                       COALESCE(pg_get_expr(c.relpartbound, c.oid), ''), c.relrowsecurity, c.relforcerowsecurity
                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE {_USER_SCHEMAS}
                 ORDER BY 1, 2"""),
            constraints=_rows(conn, f"""
                SELECT n.nspname, c.conrelid::regclass::text, c.conname, c.contype, c.convalidated
                  FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
                 WHERE {_USER_SCHEMAS}
                 ORDER BY 1, 2, 3"""),
            rows=counts,
        )


def assert_unchanged(before: Snapshot, after: Snapshot, what: str = "the command") -> None:
    differences = before.differences(after)
    assert not differences, f"{what} changed the database: " + "; ".join(differences)
