"""Deterministic demo data: tenants across all four tiers, with subscriptions, invoices,
payment methods and time-ordered usage events.

The same ``seed`` and ``as_of`` day give the same rows. Re-running is safe: organizations
that exist already are left as they are, and only new ones get data.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Callable

import psycopg

from tenant_pipelines.core import citus
from tenant_pipelines.errors import InvalidInput

TIERS = ("free", "starter", "growth", "enterprise")
METRICS = ("api_calls", "compute_seconds", "storage_gb_hours", "messages_sent")
PLANS = {"free": "free", "starter": "starter_monthly", "growth": "growth_annual", "enterprise": "enterprise_custom"}
HISTORY_DAYS = 120  # enough for hot (<30d), warm (30-90d) and cold (>90d) data
# Organizations are created up to a year before the history starts; invoices fall due up to
# 14 days after its last day. Every one of those dates must be a date Python can hold.
CREATED_BEFORE_DAYS = 365
DUE_AFTER_DAYS = 14
MIN_AS_OF = date.min + timedelta(days=HISTORY_DAYS + CREATED_BEFORE_DAYS)
MAX_AS_OF = date.max - timedelta(days=DUE_AFTER_DAYS)
# Upper bounds: the demo numbers its tenants with five digits, and writes each tenant's events
# in one transaction.
MAX_TENANTS = 99_999
MAX_EVENTS_PER_TENANT = 1_000_000
_ADJECTIVES = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Tyrell", "Cyberdyne")
_NOUNS = ("Labs", "Analytics", "Cloud", "Systems", "Robotics", "Media", "Foods", "Logistics", "Health", "Energy")


@dataclass(frozen=True)
class SeedReport:
    tenants_created: int
    tenants_existing: int
    events: int


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _money(rng: random.Random, low: int, high: int) -> Decimal:
    return Decimal(rng.randrange(low * 1_000_000, high * 1_000_000)).scaleb(-6)


def seed_demo(
    conn: psycopg.Connection,
    tenants: int,
    events_per_tenant: int,
    seed: int = 42,
    as_of: date | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> SeedReport:
    """Create ``tenants`` demo organizations with ``events_per_tenant`` usage events each.

    Needs an admin connection (it writes every tenant's rows).
    """
    check_demo_size(tenants, events_per_tenant)
    if as_of is not None:
        check_as_of(as_of)
    rng = random.Random(seed)
    end = datetime.combine(as_of or datetime.now(timezone.utc).date(), time(), tzinfo=timezone.utc)
    start = end - timedelta(days=HISTORY_DAYS)
    if events_per_tenant and citus.is_citus_coordinator(conn):
        # Citus: an event lands in its month, and an event of a month that does not exist yet in
        # the DEFAULT partition (usage_events_mt_outside), which default_partition_drained
        # reports. The demo's history starts months back: its months first.
        made = citus.premake_citus_months(conn, since=start)
        if made:
            log(f"made the months {made[0]} to {made[-1]} for the demo's events (Citus)")
    created = existing = events = 0
    for index in range(tenants):
        tier = TIERS[index % len(TIERS)]
        org_id = _uuid(rng)
        name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {index + 1:05d}"
        # Each tenant's data comes from its own generator, so tenant k is the same whatever N is.
        trng = random.Random(f"{seed}:{org_id}")
        with conn.transaction():
            inserted = conn.execute(
                "INSERT INTO organizations (id, name, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (id) DO NOTHING RETURNING id",
                (org_id, name, start - timedelta(days=trng.randrange(1, 365))),
            ).fetchone()
            if inserted is None:
                existing += 1
                continue
            conn.execute(
                "INSERT INTO tenant_classifications (organization_id, tier, monthly_events_limit, storage_quota_gb,"
                " dedicated_resources, custom_indexes) "
                "SELECT %s, tier, monthly_events_limit, storage_quota_gb, %s, %s FROM tier_limits WHERE tier = %s",
                (org_id, tier == "enterprise", tier == "enterprise", tier),
            )
            conn.execute(
                "INSERT INTO tenant_backup_config (organization_id, backup_frequency, retention_days,"
                " point_in_time_recovery) VALUES (%s, %s, %s, %s)",
                (org_id, timedelta(hours=24 if tier != "free" else 168), 90 if tier == "enterprise" else 30,
                 tier == "enterprise"),
            )
            sub_ids = []
            for s in range(1 + trng.randrange(3 if tier in ("growth", "enterprise") else 1)):
                sub_id = _uuid(trng)
                sub_ids.append(sub_id)
                status = "active" if s == 0 else trng.choice(("active", "canceled", "past_due"))
                conn.execute(
                    "INSERT INTO subscriptions (id, organization_id, plan, status, started_at) VALUES (%s, %s, %s, %s, %s)",
                    (sub_id, org_id, PLANS[tier], status, start),
                )
            for month in range(HISTORY_DAYS // 30):
                conn.execute(
                    "INSERT INTO invoices (id, organization_id, subscription_id, amount, status, issued_at, due_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (_uuid(trng), org_id, sub_ids[0], _money(trng, 0 if tier == "free" else 10, 5000),
                     "paid" if month < 3 else "open",
                     start + timedelta(days=30 * (month + 1)), start + timedelta(days=30 * (month + 1) + 14)),
                )
            conn.execute(
                "INSERT INTO payment_methods (id, organization_id, kind, last4, is_default) VALUES (%s, %s, %s, %s, true)",
                (_uuid(trng), org_id, trng.choice(("card", "bank_account", "invoice")), f"{trng.randrange(10000):04d}"),
            )
            if events_per_tenant:
                step = (end - start) / events_per_tenant
                with conn.cursor().copy(
                    'COPY usage_events_mt (id, organization_id, metric_name, quantity, "timestamp", properties)'
                    " FROM STDIN"
                ) as copy:
                    for e in range(events_per_tenant):
                        metric = trng.choice(METRICS)
                        copy.write_row((
                            _uuid(trng), org_id, metric,
                            Decimal(trng.randrange(0, 10_000_000_000)).scaleb(-6),
                            start + step * e,
                            json.dumps({"region": trng.choice(("eu-west-1", "us-east-1", "ap-south-1")),
                                        "source": "demo"}),
                        ))
                events += events_per_tenant
            created += 1
        if created and created % 100 == 0:
            log(f"seeded {created} tenants")
    return SeedReport(tenants_created=created, tenants_existing=existing, events=events)


def check_demo_size(tenants: int, events_per_tenant: int) -> None:
    """0 to MAX_TENANTS tenants, 0 to MAX_EVENTS_PER_TENANT events each; else InvalidInput."""
    if not 0 <= tenants <= MAX_TENANTS:
        raise InvalidInput(f"demo tenants {tenants}: give 0 to {MAX_TENANTS:,} (the demo numbers its tenants "
                           "with five digits)")
    if not 0 <= events_per_tenant <= MAX_EVENTS_PER_TENANT:
        raise InvalidInput(f"demo events per tenant {events_per_tenant}: give 0 to {MAX_EVENTS_PER_TENANT:,} "
                           "(each tenant's events are written in one transaction)")


def check_as_of(as_of: date) -> None:
    """A last day whose whole demo history fits in the calendar; else InvalidInput."""
    if not MIN_AS_OF <= as_of <= MAX_AS_OF:
        raise InvalidInput(
            f"demo --as-of {as_of.isoformat()}: the demo's dates run from "
            f"{HISTORY_DAYS + CREATED_BEFORE_DAYS} days before it to {DUE_AFTER_DAYS} days after it; "
            f"give a day from {MIN_AS_OF.isoformat()} to {MAX_AS_OF.isoformat()}")


def database_is_empty(conn: psycopg.Connection) -> bool:
    return not conn.execute("SELECT EXISTS (SELECT 1 FROM organizations)").fetchone()[0]
