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


def tier_priorities(conn: psycopg.Connection) -> dict[str, int]:
    """tier_limits.priority of every tier (1 is the most important)."""
    return dict(conn.execute("SELECT tier, priority FROM tier_limits").fetchall())


def run_tags_for_tenants(
    tenants: list[str], tiers: Mapping[str, str], priorities: Mapping[str, int] | None = None
) -> dict[str, str]:
    """The run-queue tags of a run over ``tenants`` (tenant id -> tier in ``tiers``; a tenant
    missing there is free tier; ``priorities`` from tier_limits, else the seed's).

    One tenant: ``tenant_run_tags``. Several (a backfill's batch, the premake schedule's): no
    ``tenant`` (a run tag names one value), and the tier and priority of the least important
    tier among them, so a batch holding one free-tier tenant waits behind the free tier's limit
    like that tenant's own run would; a batch cannot jump the queue by mixing tiers."""
    priorities = priorities or SEED_TIER_PRIORITY
    fallback = priorities.get(UNCLASSIFIED_TIER, SEED_TIER_PRIORITY[UNCLASSIFIED_TIER])

    def priority(tier: str) -> int:
        return priorities.get(tier, fallback)

    ids = [str(parse_tenant_id(t)) for t in tenants]
    tier = max((tiers.get(t, UNCLASSIFIED_TIER) for t in ids), key=priority)
    tags = {TIER_TAG: tier, PRIORITY_TAG: str(10 - priority(tier))}
    return {TENANT_TAG: ids[0], **tags} if len(ids) == 1 else tags
