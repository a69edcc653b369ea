#!/usr/bin/env bash
# System tests: installs akidb into PostgreSQL $1, starts a throwaway cluster and runs
# pytest over tests/system (embeddings, HTTP provider, ...), which drive the server from
# outside. Prints "N passed, N failed".
source "$(dirname "$0")/lib.sh"
v="${1:-15}"
install_extension "$v"
# No error a client provokes may carry a Rust backtrace, even with backtraces on.
export RUST_BACKTRACE=1
start_cluster "$v" "system-$v" $((55300 + v)) "log_min_messages=warning"
trap stop_cluster EXIT
"$PGBIN/psql" -X -q -d postgres -c "CREATE EXTENSION akidb"
export AKIDB_SERVER_LOG="$CLUSTER_DIR/server.log" PGDATABASE=postgres
run_pytest "$AKIDB_ROOT/tests/system"
