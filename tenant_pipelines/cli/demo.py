"""``tenant-pipelines demo seed``: deterministic demo tenants and usage events."""

from __future__ import annotations

import argparse

from tenant_pipelines.cli.common import admin_dsn, command, command_group, demo_day, demo_events, demo_tenants, log


def cmd_seed(args: argparse.Namespace) -> int:
    from tenant_pipelines.local.dev import seed

    seed(admin_dsn(), args.tenants, args.events_per_tenant, args.seed, args.as_of, log=log)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    demo_sub = command_group(sub, "demo", help="demo data", description="Demo data.")
    p = command(
        demo_sub, "seed", cmd_seed, help="create deterministic demo tenants and usage events",
        description="Create demo organizations across the four tiers, with subscriptions, invoices, "
        "payment methods and time-ordered usage events. The same --seed gives the same data; "
        "existing tenants are left alone.",
    )
    p.add_argument("--tenants", type=demo_tenants, default=12, help="how many tenants, 0 to 99,999 (default 12)")
    p.add_argument("--events-per-tenant", type=demo_events, default=2000,
                   help="usage events each, 0 to 1,000,000 (default 2000)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--as-of", type=demo_day, default=None, help="last day of the event history (default today, UTC)")
