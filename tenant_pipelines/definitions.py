"""The code location: one Definitions, merged from the domain folders under defs/."""

from __future__ import annotations

import dagster as dg

from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.tenants import assets as tenant_assets

MAIN_JOB = "refresh_tenant_registry"

defs = dg.Definitions(
    assets=[tenant_assets.tenant_registry],
    asset_checks=[tenant_assets.tenant_isolation_holds],
    jobs=[tenant_assets.onboard_tenants_job],
    resources={"billing_db": BillingDatabase()},
)
