"""The tenant registry: what the UI shows about organizations and their tenant tiers."""


import time
from collections import Counter

import dagster as dg

from tenant_pipelines.core.findings import Finding
from tenant_pipelines.core.security import audit_isolation, audit_tables_carried
from tenant_pipelines.core.tenants import list_tenants
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.shared import ROWS_SHOWN, owned_asset, table_metadata


@owned_asset(
    group_name="tenants",
    description="Organizations and their tenant tiers (free, starter, growth, enterprise), as the "
    "billing database has them. Materialise it to see every tenant, its tenant tier and its active "
    "subscriptions.",
)
def tenant_registry(context: dg.AssetExecutionContext, billing_db: BillingDatabase) -> dg.MaterializeResult:
    started = time.monotonic()
    with billing_db.connection() as conn:
        tenants = list_tenants(conn)
    per_tier = Counter(t.tier for t in tenants)
    table = table_metadata(
        (
            {
                "organization_id": str(t.organization_id),
                "name": t.name,
                "tier": t.tier,
                "active_subscriptions": t.active_subscriptions,
                "created_at": t.created_at.isoformat(),
            }
            for t in tenants
        ),
        [("organization_id", "string"), ("name", "string"), ("tier", "string", "tenant tier"),
         ("active_subscriptions", "int"), ("created_at", "string")],
    )
    context.log.info(f"{len(tenants)} tenants: {dict(per_tier)}")
    return dg.MaterializeResult(
        metadata={
            "tenants": len(tenants),
            **{f"tier/{tier}": per_tier.get(tier, 0) for tier in ("free", "starter", "growth", "enterprise")},
            "registry": table,
            "rows_shown": min(len(tenants), ROWS_SHOWN),
            "duration_s": round(time.monotonic() - started, 3),
        }
    )


def _audit_result(findings: list[Finding]) -> dg.AssetCheckResult:
    """A catalog audit's findings as a check result: an error while there is any, every finding
    a line of the details."""
    return dg.AssetCheckResult(
        passed=not findings,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "findings": len(findings),
            "details": dg.MetadataValue.md("\n".join(f"- {f}" for f in findings) or "none"),
        },
    )


@dg.asset_check(
    asset=tenant_registry,
    blocking=True,
    description="The application role cannot bypass tenant isolation: it is not a superuser, has no "
    "BYPASSRLS, owns no tenant table, every tenant table has RLS enabled, forced and a policy, "
    "and no partition is directly accessible.",
)
def tenant_isolation_holds(billing_db: BillingDatabase) -> dg.AssetCheckResult:
    with billing_db.connection() as conn:
        return _audit_result(audit_isolation(conn))


@dg.asset_check(
    asset=tenant_registry,
    description="Every table that holds tenants' rows is carried by backups, restores and placement moves: "
    "none in public with an organization_id, and none in a tenant schema, that core/placement.py "
    "TENANT_TABLES and SCHEMA_TABLES do not list. A migration that adds a tenant table "
    "and forgets them (sql/README.md, 'a new table') turns this red; its rows are in no backup.",
)
def tenant_tables_carried(billing_db: BillingDatabase) -> dg.AssetCheckResult:
    with billing_db.connection() as conn:
        return _audit_result(audit_tables_carried(conn))


onboard_tenants_job = dg.define_asset_job(
    "refresh_tenant_registry",
    selection=[tenant_registry],
    description="Reads the tenant registry, audits isolation and checks that backups and moves carry every "
    "tenant table. `tenant-pipelines dev` runs it first.",
)
