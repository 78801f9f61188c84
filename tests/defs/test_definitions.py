"""The code location loads, its names are stable, and its assets run against a real database
with Dagster's own storage in PostgreSQL (dagster_home/dagster.yaml)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from tenant_pipelines.settings import PROJECT_DIR
from tenant_pipelines.local.demo import seed_demo
from tenant_pipelines.local.target import dagster_storage_env, with_database
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.tenants.assets import tenant_isolation_holds, tenant_registry

# A renamed or dropped asset, check, job, schedule or sensor is a visible diff here.
EXPECTED = {
    "assets": ["cluster_backup", "pool_tier_placement", "shard_balance", "tenant_backup", "tenant_metrics", "tenant_partition",
               "tenant_placement", "tenant_registry", "tier_placement"],
    "asset_checks": [
        "cluster_backup:pitr_windows_kept",
        "cluster_backup:wal_archive_healthy",
        "pool_tier_placement:pool_tiers_match_policy",
        "shard_balance:workers_balanced",
        "tenant_backup:backup_restorable",
        "tenant_backup:tenant_backups_fresh",
        "tenant_metrics:monthly_events_quota",
        "tenant_metrics:storage_quota",
        "tenant_metrics:tier_limits_in_force",
        "tenant_partition:default_partition_drained",
        "tenant_partition:tenant_partitions_complete",
        "tenant_placement:placements_match_policy",
        "tenant_registry:tenant_isolation_holds",
        "tenant_registry:tenant_tables_carried",
        "tier_placement:tiers_match_policy",
    ],
    "jobs": ["back_up_cluster", "back_up_tenants", "balance_shards", "create_tenant_partitions", "move_tenant_placements", "refresh_tenant_registry", "rollup_tenant_metrics", "tier_pool_storage",
             "tier_storage"],
    "schedules": ["cluster_diff_backup_schedule", "cluster_full_backup_schedule", "metrics_schedule", "pool_tiering_schedule", "premake_schedule", "shard_balance_schedule",
                  "tiering_schedule"],
    "sensors": ["tenant_backup_sensor", "tenant_onboarding_sensor", "tenant_placement_sensor"],
}


def _snapshot(defs: dg.Definitions) -> dict[str, list[str]]:
    graph = defs.resolve_asset_graph()
    return {
        "assets": sorted(k.to_user_string() for k in graph.get_all_asset_keys()),
        "asset_checks": sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys),
        "jobs": sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")),
        "schedules": sorted(s.name for s in defs.schedules or []),
        "sensors": sorted(s.name for s in defs.sensors or []),
    }


def test_definitions_load_and_match_the_snapshot() -> None:
    from tenant_pipelines.definitions import defs

    dg.Definitions.validate_loadable(defs)
    assert _snapshot(defs) == EXPECTED


def test_every_asset_has_group_description_kind_and_owner() -> None:
    from tenant_pipelines.definitions import defs

    for spec in defs.resolve_all_asset_specs():
        assert spec.group_name and spec.group_name != "default", spec.key
        assert spec.description, spec.key
        assert spec.kinds, spec.key
        assert spec.owners, spec.key


def test_tenant_registry_materialises_with_its_isolation_check(admin_dsn: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        seed_demo(conn, tenants=8, events_per_tenant=10)
    result = dg.materialize(
        [tenant_registry, tenant_isolation_holds],
        resources={"billing_db": BillingDatabase(dsn=admin_dsn)},
    )
    assert result.success
    (mat,) = result.get_asset_materialization_events()
    metadata = mat.materialization.metadata
    assert metadata["tenants"].value == 8
    assert {metadata[f"tier/{t}"].value for t in ("free", "starter", "growth", "enterprise")} == {2}
    assert len(metadata["registry"].value.records) == 8
    (check,) = result.get_asset_check_evaluations()
    assert check.passed, check.metadata


def test_isolation_check_fails_when_isolation_is_weakened(admin_dsn: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE invoices NO FORCE ROW LEVEL SECURITY")
        conn.execute("GRANT SELECT ON usage_events_mt_default TO billing_app")
    result = dg.materialize(
        [tenant_registry, tenant_isolation_holds],
        resources={"billing_db": BillingDatabase(dsn=admin_dsn)},
        raise_on_error=False,
    )
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed
    details = check.metadata["details"].value
    assert "invoices" in details and "FORCE ROW LEVEL SECURITY" in details
    assert "usage_events_mt_default" in details


def test_runs_are_stored_in_postgres_through_dagster_yaml(admin_dsn: str, tmp_path: Path, monkeypatch) -> None:
    """dagster_home/dagster.yaml: dagster-postgres, psycopg2 scheme, a database of its own."""
    with psycopg.connect(with_database(admin_dsn, "postgres"), autocommit=True) as conn:
        name = f"dagster_{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_DIR / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = dagster_storage_env(admin_dsn)
    env["DAGSTER_PG_DB"] = name
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = dg.materialize(
            [tenant_registry], instance=instance, resources={"billing_db": BillingDatabase(dsn=admin_dsn)}
        )
        assert result.success
        assert instance.get_run_by_id(result.run_id) is not None
    with psycopg.connect(with_database(admin_dsn, name)) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    with psycopg.connect(with_database(admin_dsn, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
