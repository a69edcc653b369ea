#!/usr/bin/env bash
# make bench-embed-latency: one short query's embed_query() time in the server, by model
# (MODELS, default: the default model and its 8-bit file) and akidb.onnx_threads
# (THREADS, default 1,2), each in a fresh session, measured in turns
# (bench/retrieval/embed_latency.py says how). Results: bench/results/embed-latency-<host>.json and .png.
source "$(dirname "$0")/../scripts/lib.sh"
py="$(bench_setup 15 "tokenizers==0.22.2" "matplotlib==3.10.8")"
start_cluster 15 bench-embed-latency 55473
trap stop_cluster EXIT
"$PGBIN/psql" -X -q -d postgres -c "CREATE EXTENSION akidb"
mkdir -p "$AKIDB_ROOT/bench/results"
PGDATABASE=postgres "$py" "$AKIDB_ROOT/bench/retrieval/embed_latency.py" --queries "$AKIDB_ROOT/bench/data/debian_docs_5k.jsonl.gz" \
    --models "${MODELS:-,$DEFAULT_MODEL-q8}" --threads "${THREADS:-1,2}" \
    --out "$AKIDB_ROOT/bench/results/embed-latency-$(hostname -s)" "$@"
