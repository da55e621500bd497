#!/usr/bin/env bash
# Install what is missing on a fresh Debian machine (run as root): PostgreSQL 15
# with server headers and pg_cron, clang, sudo, cargo-pgrx 0.18.0, pgrx init,
# and the Python packages the integration tests use. Idempotent and quiet.
set -euo pipefail
need_apt=()
for p in postgresql-15 postgresql-server-dev-15 postgresql-15-cron libclang-dev clang sudo python3-venv; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The Debian package starts a cluster on 5432; we use private ones instead.
if [ "$(cargo pgrx --version 2>/dev/null | awk '{print $2}')" != "0.18.0" ]; then
  echo "setup: installing cargo-pgrx 0.18.0 (takes a few minutes)"
  cargo install cargo-pgrx --version 0.18.0 --locked --quiet
fi
if ! grep -q 'pg15' "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
  cargo pgrx init --pg15 /usr/lib/postgresql/15/bin/pg_config >/dev/null
fi
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/target/venv"
if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/python" -c 'import psycopg' 2>/dev/null; then
  echo "setup: creating the test virtualenv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'pytest>=7' 'psycopg[binary]>=3.1'
fi
