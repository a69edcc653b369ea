#!/usr/bin/env bash
# make bench-retrieval: retrieval quality (nDCG@10, Recall@10) in SQL against Python
# onnxruntime, query latency, bulk embedding throughput (bench/retrieval/bench_retrieval.py
# says how). Quality on the committed 6,088-document set; latency on the whole Debian
# corpus (about 59,000 descriptions, built here from apt's Translation-en) when FULL=1,
# else on the same 6,088. Results: bench/results/retrieval-<host>.json and .png.
source "$(dirname "$0")/../scripts/lib.sh"
py="$(bench_setup 15 "tokenizers==0.22.2" "matplotlib==3.10.8")"
extra=()
if [ "${FULL:-0}" = 1 ]; then
    full="$AKIDB_OPT/debian_docs_all.jsonl.gz"
    if [ ! -f "$full" ]; then
        log "building the whole Debian corpus from apt's Translation-en"
        as_root apt-get update -qq -o Acquire::Languages=en
        tr="$(ls /var/lib/apt/lists/*_debian_dists_bookworm_main_i18n_Translation-en.lz4 | head -1)"
        unlz4 -q -c "$tr" > "$AKIDB_OPT/Translation-en"
        python3 "$AKIDB_ROOT/bench/data/make_debian_docs.py" "$AKIDB_OPT/Translation-en" "$full" 1
    fi
    extra=(--latency-docs "$full")
fi
start_cluster 15 bench-retrieval 55472 "shared_buffers=1GB" "max_wal_size=4GB"
trap stop_cluster EXIT
"$PGBIN/psql" -X -q -d postgres -c "CREATE EXTENSION akidb"
mkdir -p "$AKIDB_ROOT/bench/results"
PGDATABASE=postgres "$py" "$AKIDB_ROOT/bench/retrieval/bench_retrieval.py" --model-dir "$AKIDB_ROOT/models/$DEFAULT_MODEL" \
    --docs "$AKIDB_ROOT/bench/data/debian_docs_5k.jsonl.gz" --threads "${THREADS:-2}" \
    --also-model "$DEFAULT_MODEL-q8" --also-model-dir "$AKIDB_ROOT/models/$DEFAULT_MODEL-q8" \
    --latency-threads "${LATENCY_THREADS:-0}" --out "$AKIDB_ROOT/bench/results/retrieval-$(hostname -s)" "${extra[@]}" "$@"
