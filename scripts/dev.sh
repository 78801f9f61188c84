#!/usr/bin/env bash
# README command 1: set up, start the embedded PostgreSQL, migrate, seed demo tenants,
# run the main job, then open the Dagster UI (http://127.0.0.1:3000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tenant-pipelines dev "$@"
