#!/usr/bin/env bash
# First-run tier of make test: what a new user meets on a fresh machine, with none of
# this machine's state. A clone of the checkout runs `make demo` and `make install`
# with an empty cargo-pgrx home (PGRX_HOME), an empty state directory (AKIDB_OPT: no
# PostgreSQL builds, no ONNX Runtime, no Python environment, no downloads) and an empty
# run directory, so every first-run branch of the scripts executes. The compiled crates
# are shared with the checkout (CARGO_TARGET_DIR), since a build from nothing is no
# different a second time. The three directories do not exist when it starts. Checks:
#   1. make demo succeeds and its questions get answers through the index;
#   2. make install PG_CONFIG=<PostgreSQL 16 from PyPI> installs everything embed()
#      needs: a fresh server of that version runs CREATE EXTENSION and embed('x');
#   3. the Jetson image's steps (Dockerfile), as far as they run here: scripts/install.sh
#      with a build of ONNX Runtime of one's own (AKIDB_ONNXRUNTIME_DIR, provider
#      libraries beside it), then the image's entry point (scripts/thor-entrypoint.sh)
#      makes a cluster, starts it, and embed() works, twice (first and later start).
# Prints "N passed, N failed".
source "$(dirname "$0")/lib.sh"
fresh="$(mktemp -d /tmp/akidb-firstrun.XXXXXX)"
chmod 755 "$fresh"
export PGRX_HOME="$fresh/pgrx" AKIDB_OPT="$fresh/opt" AKIDB_RUN="$fresh/run"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$AKIDB_ROOT/target}"
# None of the three exists yet: the scripts must create them, as on a new machine.
passed=0 failed=0
check() { # description command...
    local what="$1"; shift
    if "$@"; then passed=$((passed + 1)); echo "ok: $what"
    else failed=$((failed + 1)); echo "FAILED: $what"; fi
}
cleanup() {
    # Whatever clusters the run left (the demo's keeps running): a fast shutdown by
    # signal, whichever PostgreSQL version it is.
    local pidfile pid
    for pidfile in "$AKIDB_RUN"/*/data/postmaster.pid; do
        [ -f "$pidfile" ] || continue
        pid="$(head -1 "$pidfile")"
        kill -INT "$pid" 2>/dev/null || continue
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    rm -rf "$fresh"
}
trap cleanup EXIT

log "first run: a clone of the checkout in $fresh/akidb"
git clone -q "$AKIDB_ROOT" "$fresh/akidb"
# Uncommitted changes of the checkout go with it, so the tier tests the working tree.
(cd "$AKIDB_ROOT" && git diff HEAD --binary) | (cd "$fresh/akidb" && git apply --allow-empty 2>/dev/null || true)
(cd "$AKIDB_ROOT" && git ls-files --others --exclude-standard -z) | (cd "$AKIDB_ROOT" && xargs -0 -r cp --parents -t "$fresh/akidb")
chmod -R a+rX "$fresh/akidb"

demo_log="$fresh/demo.log"
demo_ok() {
    (cd "$fresh/akidb" && DEMO_PORT=55439 make demo) 2>&1 | tee "$demo_log"
    [ "${PIPESTATUS[0]}" = 0 ] || return 1
    # The demo told how to connect, the plan used the index, every question got 5 answers.
    grep -q "Try a question of your own" "$demo_log" &&
        grep -q "Index Scan using docs_embedding_idx" "$demo_log" &&
        [ "$(grep -c '^(5 rows)' "$demo_log")" -ge 5 ] &&
        grep -q "rows embedded in" "$demo_log"
}
check "make demo on a fresh machine (empty PGRX_HOME and AKIDB_OPT)" demo_ok
check "cargo-pgrx registered PostgreSQL ${PG:-15} in the fresh PGRX_HOME" grep -q "^pg${PG:-15} = " "$PGRX_HOME/config.toml"

install_ok() {
    local pgc; pgc="$(pg_config_for 16)"
    (cd "$fresh/akidb" && make install PG_CONFIG="$pgc") || return 1
    start_cluster 16 firstrun-16 55438
    local got
    got="$("$PGBIN/psql" -X -At -d postgres -c "CREATE EXTENSION akidb" \
        -c "SELECT vector_dims(embed('x')) || ' ' || round(vector_norm(embed('x'))::numeric, 3)" 2>&1)"
    stop_cluster
    echo "embed('x') on a fresh PostgreSQL 16: $got"
    [ "$(echo "$got" | tail -1)" = "384 1.000" ]
}
check "make install PG_CONFIG=<fresh PostgreSQL 16>: embed('x') works" install_ok

thor_ok() {
    local pgc lib ort dir="$AKIDB_RUN/thor"
    pgc="$(pg_config_for 16)"
    # An ONNX Runtime "built from source": the wheel's library and a provider library
    # beside it (not loadable here: a cuda request falls back to the CPU).
    ort="$fresh/ort-build"
    mkdir -p "$ort" && cp "$(ensure_onnxruntime)" "$ort/" && echo "not a library" > "$ort/libonnxruntime_providers_cuda.so"
    (cd "$fresh/akidb" && AKIDB_ONNXRUNTIME_DIR="$ort" PG_CONFIG="$pgc" bash scripts/install.sh) || return 1
    lib="$("$pgc" --pkglibdir)/akidb"
    [ -f "$lib/libonnxruntime_providers_cuda.so" ] || { echo "provider library not installed in $lib"; return 1; }
    rm -rf "$dir" && mkdir -p "$dir/models" "$dir/trt" && chown -R postgres: "$dir" && chmod 755 "$dir"
    local env=(PGBIN="$(dirname "$pgc")" PGDATA="$dir/data" AKIDB_MODELS="$dir/models" AKIDB_TRT_CACHE="$dir/trt"
               AKIDB_DEFAULT_MODELS="$("$pgc" --sharedir)/akidb/models")
    local start got
    for start in first second; do
        run_as_postgres env "${env[@]}" bash "$fresh/akidb/scripts/thor-entrypoint.sh" -p 55437 -k "$dir" -c listen_addresses= \
            > "$dir/server-$start.log" 2>&1 &
        for _ in $(seq 300); do [ -S "$dir/.s.PGSQL.55437" ] && break; sleep 0.1; done
        # As the postgres user: the image's cluster authenticates local connections by peer.
        got="$(run_as_postgres "$(dirname "$pgc")/psql" -X -q -At -h "$dir" -p 55437 -d postgres \
            -c "CREATE EXTENSION IF NOT EXISTS akidb" -c "SHOW akidb.model_path" -c "SHOW akidb.tensorrt_cache_path" \
            -c "SELECT akidb_load_model('')" -c "SELECT vector_dims(embed('x'))" 2>"$dir/psql-$start.err")"
        kill -INT "$(head -1 "$dir/data/postmaster.pid")" 2>/dev/null
        wait
        echo "the Jetson entry point, $start start: $(echo $got)"
        if [ "$(echo $got)" != "$dir/models $dir/trt cpu 384" ]; then
            cat "$dir/psql-$start.err" "$dir/server-$start.log"
            return 1
        fi
    done
    [ -s "$dir/models/all-MiniLM-L6-v2/model.onnx" ]
}
check "the Jetson image's steps: install with an own ONNX Runtime build, entry point starts twice" thor_ok

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
