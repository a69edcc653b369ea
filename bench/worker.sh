#!/usr/bin/env bash
# make bench-worker: the shared embedding worker against per-backend models, both modes
# in one run on one cluster with akidb preloaded (bench/worker/bench_worker.py says what).
# Results: bench/results/worker-<host>.json and .png.
source "$(dirname "$0")/../scripts/lib.sh"
py="$(bench_setup 15 "matplotlib==3.10.8")"
start_cluster 15 bench-worker 55474 "shared_preload_libraries=akidb" "max_connections=100"
trap stop_cluster EXIT
"$PGBIN/psql" -X -q -d postgres -c "CREATE EXTENSION akidb"
mkdir -p "$AKIDB_ROOT/bench/results"
pm="$(head -1 "$CLUSTER_DIR/data/postmaster.pid")"
PGDATABASE=postgres "$py" "$AKIDB_ROOT/bench/worker/bench_worker.py" --postmaster "$pm" \
    --seconds "${SECONDS_PER_POINT:-20}" --out "$AKIDB_ROOT/bench/results/worker-$(hostname -s)" "$@"
