"""The code location: one Definitions, merged from the domain folders under defs/."""

import warnings

import dagster as dg

# backfill_policy is marked beta; the behaviour we rely on (batches of partitions per run) is tested.
warnings.filterwarnings("ignore", category=dg.BetaWarning)

from tenant_pipelines.defs.backups import assets as backup_assets
from tenant_pipelines.defs.backups.resources import BackupStorage
from tenant_pipelines.defs.metrics import assets as metrics_assets
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.tenants import assets as tenant_assets
from tenant_pipelines.defs.tenants import partitions_assets
from tenant_pipelines.defs.tiering import assets as tiering_assets

MAIN_JOB = "rollup_tenant_metrics"

defs = dg.Definitions(
    assets=[tenant_assets.tenant_registry, partitions_assets.tenant_partition, tiering_assets.tier_placement,
            tiering_assets.pool_tier_placement, metrics_assets.tenant_metrics, backup_assets.tenant_backup],
    asset_checks=[
        tenant_assets.tenant_isolation_holds,
        partitions_assets.default_partition_drained,
        partitions_assets.tenant_partitions_complete,
        tiering_assets.tiers_match_policy,
        tiering_assets.pool_tiers_match_policy,
        metrics_assets.monthly_events_quota,
        metrics_assets.storage_quota,
        metrics_assets.tier_limits_in_force,
        backup_assets.backup_restorable,
        backup_assets.tenant_backups_fresh,
    ],
    jobs=[tenant_assets.onboard_tenants_job, partitions_assets.tenant_partition_job, tiering_assets.tiering_job,
          tiering_assets.pool_tiering_job, metrics_assets.metrics_job, backup_assets.backup_job],
    sensors=[partitions_assets.tenant_onboarding_sensor, backup_assets.tenant_backup_sensor],
    schedules=[partitions_assets.premake_schedule, tiering_assets.tiering_schedule,
               tiering_assets.pool_tiering_schedule, metrics_assets.metrics_schedule],
    resources={"billing_db": BillingDatabase(), "backup_storage": BackupStorage()},
)
