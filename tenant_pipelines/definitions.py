"""The code location: one Definitions, merged from the domain folders under defs/."""

import dagster as dg

from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.tenants import assets as tenant_assets
from tenant_pipelines.defs.tenants import partitions_assets

MAIN_JOB = "refresh_tenant_registry"

defs = dg.Definitions(
    assets=[tenant_assets.tenant_registry, partitions_assets.tenant_partition],
    asset_checks=[
        tenant_assets.tenant_isolation_holds,
        partitions_assets.default_partition_drained,
        partitions_assets.tenant_partitions_complete,
    ],
    jobs=[tenant_assets.onboard_tenants_job, partitions_assets.tenant_partition_job],
    sensors=[partitions_assets.tenant_onboarding_sensor],
    schedules=[partitions_assets.premake_schedule],
    resources={"billing_db": BillingDatabase()},
)
