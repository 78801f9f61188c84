"""``tenant-pipelines dev``: README command 1 after setup: the whole local stack, the main job,
then the Dagster UI."""

from __future__ import annotations

import argparse
import os
import sys

from tenant_pipelines.cli.common import command, demo_events, demo_tenants, log, port
from tenant_pipelines.settings import PROJECT_DIR


def cmd_dev(args: argparse.Namespace) -> int:
    from tenant_pipelines.local.dev import prepare, run_main_job

    env = prepare(tenants=args.tenants, events_per_tenant=args.events_per_tenant, random_seed=args.seed, log=log)
    run_main_job(env, log=log)
    if args.no_ui:
        return 0
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "dagster"), "dev",
        "-w", str(PROJECT_DIR / "workspace.yaml"), "-h", args.host, "-p", str(args.port),
    ]
    log(f"opening the Dagster UI on http://{args.host}:{args.port} (Ctrl-C stops it)")
    os.chdir(PROJECT_DIR)
    os.execve(cmd[0], cmd, {**os.environ, **env})


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "dev", cmd_dev, help="up, migrate, seed if empty, run the main job, open the Dagster UI",
        description="Bring up the embedded cluster (or use $BILLING_DATABASE_URL), apply migrations, seed "
        "demo data into an empty database, run the main job, then start `dagster dev`.",
    )
    p.add_argument("--tenants", type=demo_tenants, default=12, help="demo tenants when seeding (default 12)")
    p.add_argument("--events-per-tenant", type=demo_events, default=2000, help="demo events each (default 2000)")
    p.add_argument("--seed", type=int, default=42, help="demo random seed (default 42)")
    p.add_argument("--host", default="127.0.0.1", help="UI host (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=3000, help="UI port (default 3000)")
    p.add_argument("--no-ui", action="store_true", help="stop after the main job; do not start the UI")
