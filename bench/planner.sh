#!/usr/bin/env bash
# make bench-planner: akidb_hnsw's cost estimate against measured seq scan and index scan
# times, and the plan PostgreSQL picks at default settings, over dimensions x rows x
# ef_search (bench/planner/bench_planner.py says how). Results:
# bench/results/planner-<host>.json and .png. Arguments go to the Python script
# (--dims 50,384 --rows 1000,10000 --ef 40,200).
source "$(dirname "$0")/../scripts/lib.sh"
v="${PG:-15}"
py="$(bench_setup "$v" "matplotlib==3.10.8")"
start_cluster "$v" bench-planner 55471 "shared_buffers=4GB" "max_wal_size=8GB" "checkpoint_timeout=30min"
trap stop_cluster EXIT
"$PGBIN/psql" -X -q -d postgres -c "CREATE EXTENSION akidb"
mkdir -p "$AKIDB_ROOT/bench/results"
PGDATABASE=postgres "$py" "$AKIDB_ROOT/bench/planner/bench_planner.py" --out "$AKIDB_ROOT/bench/results/planner-$(hostname -s)" "$@"
