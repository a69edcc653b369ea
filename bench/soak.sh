#!/usr/bin/env bash
# make soak: akidb_hnsw's soak and fault suite (bench/soak/soak.py says what it runs),
# on PostgreSQL ${SOAK_PG:-15}, bounded: MINUTES (default 10) per timed scenario, KILLS
# (default 20) kill -9s per kind. First the core's fuzz harness feeds the vector text
# parser FUZZ_INPUTS (default 10 million) inputs. Results: bench/results/soak-<host>.json.
source "$(dirname "$0")/../scripts/lib.sh"
v="${SOAK_PG:-15}"
py="$(bench_setup "$v")"
mkdir -p "$AKIDB_ROOT/bench/results"
fuzz="$AKIDB_ROOT/bench/results/tmp/fuzz_text.json"
mkdir -p "$(dirname "$fuzz")"
log "fuzzing the vector text parser (${FUZZ_INPUTS:-10000000} inputs)"
(cd "$AKIDB_ROOT" && cargo run -q --release -p akidb-core --example fuzz_text -- "${FUZZ_INPUTS:-10000000}") | tee "$fuzz"
PGBIN="$(dirname "$(pg_config_for "$v")")"
export PGBIN AKIDB_RUN
"$py" "$AKIDB_ROOT/bench/soak/soak.py" --out "$AKIDB_ROOT/bench/results/soak-$(hostname -s)" \
    --minutes "${MINUTES:-10}" --kills "${KILLS:-20}" --fuzz-json "$fuzz" "$@"
