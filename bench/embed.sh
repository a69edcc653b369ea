#!/usr/bin/env bash
# make bench-embed: embed() against raw ONNX Runtime (Python) on this machine.
# Release build into PostgreSQL 15, a throwaway cluster, then bench/embed/bench_embed.py.
# Results: bench/results/embed-<host>.json and .png.
source "$(dirname "$0")/../scripts/lib.sh"
py="$(bench_setup 15 "tokenizers==0.22.2" "matplotlib==3.10.8")"
start_cluster 15 bench-embed 55460
trap stop_cluster EXIT
"$PGBIN/psql" -X -q -d postgres -c "CREATE EXTENSION akidb"
mkdir -p "$AKIDB_ROOT/bench/results"
"$py" "$AKIDB_ROOT/bench/embed/bench_embed.py" --model-dir "$AKIDB_ROOT/models/$DEFAULT_MODEL" \
    --docs "$AKIDB_ROOT/bench/data/debian_docs.jsonl" --threads "${THREADS:-2}" \
    --out "$AKIDB_ROOT/bench/results/embed-$(hostname -s)" "$@"
