"""Run tags that let Dagster's run queue keep noisy tenants apart.

dagster_home/dagster.yaml limits runs per tag (``concurrency.runs.tag_concurrency_limits``):
one run at a time per ``tenant``, few at a time per lower ``tier``, and backfills together to
part of the slots. ``dagster/priority`` puts a queued enterprise run ahead of a free-tier
backlog. A run that should obey those limits carries the tags from ``tenant_run_tags``.
"""

from __future__ import annotations

from typing import Mapping

import psycopg

from tenant_pipelines.db.session import parse_tenant_id

TENANT_TAG = "tenant"
TIER_TAG = "tier"
PRIORITY_TAG = "dagster/priority"  # higher runs first; Dagster's default is 0
# tier_limits.priority of the seed's tiers (1 is the most important), used when no connection is at hand.
SEED_TIER_PRIORITY = {"enterprise": 1, "growth": 3, "starter": 5, "free": 9}
UNCLASSIFIED_TIER = "free"  # fn_set_tenant_resources treats a tenant without a classification so


def _tier_of(conn: psycopg.Connection, tenant: str) -> tuple[str, int]:
    row = conn.execute(
        """SELECT tl.tier, tl.priority
             FROM tier_limits tl
            WHERE tl.tier = COALESCE((SELECT tc.tier FROM tenant_classifications tc
                                       WHERE tc.organization_id = %s), %s)""",
        (tenant, UNCLASSIFIED_TIER),
    ).fetchone()
    return (row[0], row[1]) if row else (UNCLASSIFIED_TIER, SEED_TIER_PRIORITY[UNCLASSIFIED_TIER])


def tenant_tiers(conn: psycopg.Connection) -> dict[str, str]:
    """Every classified tenant's tier, by tenant id: read once, for ``tenant_run_tags`` of many runs."""
    return dict(conn.execute("SELECT organization_id::text, tier FROM tenant_classifications").fetchall())


def tenant_run_tags(tiers: psycopg.Connection | Mapping[str, str], tenant: object) -> dict[str, str]:
    """``{"tenant": <uuid>, "tier": <tier>, "dagster/priority": <10 - tier priority>}`` for a run
    that works on one tenant. ``tiers`` is an admin connection (the tier and its priority are
    read from tenant_classifications and tier_limits) or a mapping tenant id -> tier already
    read (priorities are then the seed's). An unclassified tenant is free tier."""
    tenant_id = str(parse_tenant_id(tenant))
    if isinstance(tiers, psycopg.Connection):
        tier, priority = _tier_of(tiers, tenant_id)
    else:
        tier = tiers.get(tenant_id, UNCLASSIFIED_TIER)
        priority = SEED_TIER_PRIORITY.get(tier, SEED_TIER_PRIORITY[UNCLASSIFIED_TIER])
    return {TENANT_TAG: tenant_id, TIER_TAG: tier, PRIORITY_TAG: str(10 - priority)}
