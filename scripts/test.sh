#!/usr/bin/env bash
# README command 2: set up, then run the whole test suite. The suite starts its own
# throwaway PostgreSQL server (initdb/pg_ctl on a free loopback port).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
