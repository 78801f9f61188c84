#!/usr/bin/env bash
# Build Citus 13.2.2 from the archive beside this script and install it into
# Debian 12's PostgreSQL 15 (postgresql-15 must already be installed).
# Run as root. Idempotent: does nothing if this Citus version is installed.
#   env: CITUS_BUILD_DIR (default: citus-build under $TMPDIR), KEEP_BUILD=1 keeps it.
set -euo pipefail

VERSION=13.2.2
HERE="$(cd "$(dirname "$0")" && pwd)"
PGBIN=/usr/lib/postgresql/15/bin
LIBDIR=/usr/lib/postgresql/15/lib
EXTDIR=/usr/share/postgresql/15/extension
BUILD="${CITUS_BUILD_DIR:-${TMPDIR:-/tmp}/citus-build}"

# (e) Skip when the same version is installed: citus.so carries "Citus 13.2.2 on ...".
if [ -f "$EXTDIR/citus.control" ] && grep -aq "Citus $VERSION on" "$LIBDIR/citus.so" 2>/dev/null; then
  echo "citus $VERSION already installed in $LIBDIR; nothing to do"
  exit 0
fi
START=$SECONDS

# (a) Build deps. Pin the server headers to the installed server's version
# (never upgrade the server itself: running clusters use its binaries); fall
# back to the newest headers if that exact version has left the archive.
PGVER="$(dpkg-query -W -f='${Version}' postgresql-15)"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout="${APT_LOCK_TIMEOUT:-600}" update -q
apt-get -o DPkg::Lock::Timeout="${APT_LOCK_TIMEOUT:-600}" install -y -q --no-install-recommends build-essential patch liblz4-dev libzstd-dev \
  libkrb5-dev  # gssapi/gssapi.h, included by the server headers (libpq-be.h)
apt-get -o DPkg::Lock::Timeout="${APT_LOCK_TIMEOUT:-600}" install -y -q --no-install-recommends "postgresql-server-dev-15=$PGVER" \
  || apt-get -o DPkg::Lock::Timeout="${APT_LOCK_TIMEOUT:-600}" install -y -q --no-install-recommends postgresql-server-dev-15

# (b) Verify and unpack the archive (a fresh tree each run).
(cd "$HERE" && sha256sum -c SHA256SUMS)
rm -rf "$BUILD" && mkdir -p "$BUILD"
tar -xzf "$HERE/citus-$VERSION.tar.gz" -C "$BUILD"
cd "$BUILD/citus-$VERSION"

# (c) Rename Citus's static have_createdb_privilege() copy: required for
# 15.20+ headers, harmless for older 15.x ones.
patch -p1 < "$HERE/pg15.20-have_createdb_privilege.patch"

# (d) Configure (no libcurl: Citus only uses it for anonymous usage statistics),
# build, install. with_llvm=no skips the LLVM bitcode (used only for JIT
# inlining), which more than halves the build time.
./configure PG_CONFIG="$PGBIN/pg_config" --without-libcurl
make -j2 with_llvm=no
make install with_llvm=no

[ "${KEEP_BUILD:-0}" = 1 ] || rm -rf "$BUILD"
echo "citus $VERSION installed into $LIBDIR in $((SECONDS - START))s"
