#!/usr/bin/env bash
# Fetches PostgreSQL 13 (the pre-15 replication protocol that Greenplum 7 and
# Cloudberry also speak) from Debian 11's packages, with the libraries Debian
# 12 lacks, and unpacks them with `dpkg -x` into a cache directory (default
# /var/cache/cbdr-test/pg13), never installing them system-wide. Idempotent.
# The tests in tests/pg13.rs find it there (or at $CBDR_PG13_ROOT):
#   bin: $ROOT/usr/lib/postgresql/13/bin
#   LD_LIBRARY_PATH: $ROOT/usr/lib/x86_64-linux-gnu
set -euo pipefail
root="${CBDR_PG13_ROOT:-/var/cache/cbdr-test/pg13}"
bin="$root/usr/lib/postgresql/13/bin"
lib="$root/usr/lib/x86_64-linux-gnu"
if [ -x "$bin/postgres" ] && LD_LIBRARY_PATH="$lib" "$bin/postgres" --version >/dev/null 2>&1; then
    echo "PostgreSQL 13 in $root: $(LD_LIBRARY_PATH="$lib" "$bin/postgres" --version)"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
cat >"$work/sources.list" <<SRC
deb http://deb.debian.org/debian bullseye main
deb http://deb.debian.org/debian-security bullseye-security main
SRC
apt_opts=(
    -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
    -o Debug::NoLocking=1 -o APT::Sandbox::User=root
)
apt-get "${apt_opts[@]}" update >/dev/null
(cd "$work/debs" && apt-get "${apt_opts[@]}" download \
    postgresql-13 postgresql-client-13 libssl1.1 libicu67 libldap-2.4-2 >/dev/null)
mkdir -p "$root.tmp"
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$root.tmp"; done
chmod -R a+rX "$root.tmp"
rm -rf "$root"
mv "$root.tmp" "$root"
LD_LIBRARY_PATH="$lib" "$bin/postgres" --version
