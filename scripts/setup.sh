#!/usr/bin/env bash
# Sets up everything the project needs on a fresh Debian/Ubuntu machine; safe to re-run.
#   - PostgreSQL 15+ server binaries (Debian's `postgresql` package) when none are found
#   - PgBouncer (Debian's `pgbouncer` package) when it is missing
#   - Citus, built from vendor/citus/ into Debian's PostgreSQL 15 when it is missing
#   - pgBackRest (Debian's `pgbackrest` package) when it is missing: WAL archive and point-in-time restore
#   - a virtualenv in .venv with the project and its pinned dependencies
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

have_pg_server() {
    local bindir
    bindir=$(pg_config --bindir 2>/dev/null || true)
    [ -n "$bindir" ] && [ -x "$bindir/initdb" ] && [ -x "$bindir/pg_ctl" ] && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

# Debian puts pgbouncer in /usr/sbin, which is not on every user's PATH.
have_pgbouncer() {
    command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || [ -x /usr/local/sbin/pgbouncer ]
}

have_pgbackrest() {
    command -v pgbackrest >/dev/null 2>&1 || [ -x /usr/bin/pgbackrest ]
}

missing=()
if ! have_pg_server; then
    log "PostgreSQL server binaries not found: installing Debian's 'postgresql' package"
    missing+=(postgresql)
fi
if ! have_pgbouncer; then
    log "PgBouncer not found: installing Debian's 'pgbouncer' package"
    missing+=(pgbouncer)
fi
if ! have_pgbackrest; then
    log "pgBackRest not found: installing Debian's 'pgbackrest' package"
    missing+=(pgbackrest)
fi
# Another apt or dpkg (unattended-upgrades on a fresh machine, say) may hold apt's locks: wait
# for it, up to APT_LOCK_TIMEOUT seconds, instead of failing at once. apt-get install waits by
# itself with DPkg::Lock::Timeout; apt-get update of apt < 2.7 ignores it for its lists lock,
# so a refused lock is also retried here until the same deadline.
APT_LOCK_TIMEOUT=${APT_LOCK_TIMEOUT:-600}
apt_get() {
    local deadline=$((SECONDS + APT_LOCK_TIMEOUT)) err said=""
    err=$(mktemp)
    while :; do
        if $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="$APT_LOCK_TIMEOUT" "$@" 2>"$err"; then
            cat "$err" >&2
            rm -f "$err"
            return 0
        fi
        if grep -qE 'Could not get lock|Unable to lock|Unable to acquire' "$err" && [ "$SECONDS" -lt "$deadline" ]; then
            [ -n "$said" ] || log "apt-get $1: another apt/dpkg process holds the lock ($(grep -m1 -oE '(/var/[^ ]*lock[^ .]*|held by process [0-9]+ \([^)]*\))' "$err" | tr '\n' ' ')); waiting for it, up to ${APT_LOCK_TIMEOUT}s (APT_LOCK_TIMEOUT)"
            said=1
            sleep 5
            continue
        fi
        cat "$err" >&2
        rm -f "$err"
        return 1
    done
}

if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    log "apt-get waits up to ${APT_LOCK_TIMEOUT}s (APT_LOCK_TIMEOUT) if another apt or dpkg process holds its lock"
    apt_get update -qq
    apt_get install -y -qq "${missing[@]}" >/dev/null
fi

# Citus (issue 19: the scale-out mode and its tests). No registry here serves it: vendor/citus/
# builds it from source into Debian's PostgreSQL 15, about 5.5 min the first time (build
# packages) and 85 s after; it does nothing when Citus 13.2.2 is installed. Without it the
# Citus tests skip, saying how to install it. TENANT_PIPELINES_CITUS=skip leaves it out.
if [ "${TENANT_PIPELINES_CITUS:-build}" != skip ]; then
    if [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
        log "Citus: vendor/citus/build.sh builds for Debian's PostgreSQL 15 only; not built (install your distribution's Citus package for your server)"
    elif [ "$(id -u)" -eq 0 ]; then
        bash vendor/citus/build.sh >&2
    elif command -v sudo >/dev/null 2>&1; then
        sudo bash vendor/citus/build.sh >&2
    else
        log "Citus: not built (vendor/citus/build.sh needs root); run 'bash vendor/citus/build.sh' as root"
    fi
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    log "Python 3.11 or newer is needed; found $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11"
    exit 2
fi

if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.tenant-pipelines-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    log "installing the project and its pinned dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    .venv/bin/python -m pip check >&2
    # dagster-postgres must import: a mismatched pin silently falls back to a 2021 release.
    .venv/bin/python -c 'import dagster_postgres, psycopg2, psycopg' >&2
    echo "$want" > "$stamp"
fi
log "ready"
