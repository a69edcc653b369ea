#!/usr/bin/env bash
# make test: every test tier, from a fresh machine.
#   PG            versions that get every tier (default "15 18")
#   PG_BUILD_ONLY versions that are only built (default "16 17" when PG is the default)
# Tiers: core unit tests (cargo test; again for aarch64 under qemu: the NEON kernels) and
# embedding-engine unit tests, #[pg_test] in a real server
# (cargo pgrx test), SQL regression (pg_regress), system tests that drive a real server
# from outside (pytest), pgvector compatibility (PG 18 with pgvector 0.8.6), and a first
# run of make demo and make install with none of this machine's state (scripts/firstrun.sh).
# Prints one "N passed, N failed" line at the end; exits non-zero on any failure.
source "$(dirname "$0")/lib.sh"
PG="${PG:-15 18}"
if [ -z "${PG_BUILD_ONLY+x}" ]; then
    [ "$PG" = "15 18" ] && PG_BUILD_ONLY="16 17" || PG_BUILD_ONLY=""
fi

ensure_apt_packages
ensure_cargo_pgrx
pgrx_init $PG $PG_BUILD_ONLY

total_passed=0 total_failed=0
declare -a report
# Runs a tier, reads its "N passed, N failed" (cargo's "N passed; N failed" too).
tier() { # name command...
    local name="$1"; shift
    log "tier: $name"
    local out; out="$(mktemp)"
    set +e
    "$@" 2>&1 | tee "$out"
    local rc=${PIPESTATUS[0]}
    set -e
    local p f summary
    # A tier script ends with its own "N passed, N failed"; cargo prints a
    # "test result: ... N passed; N failed" line per test binary, which are summed.
    summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -1 || true)
    [ -n "$summary" ] || summary=$(grep -E '^test result:' "$out" || true)
    p=$(echo "$summary" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' | paste -sd+ | bc)
    f=$(echo "$summary" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' | paste -sd+ | bc)
    p=${p:-0} f=${f:-0}
    if [ "$rc" != 0 ] && [ "$f" = 0 ]; then f=1; fi   # a tier that died counts as a failure
    rm -f "$out"
    total_passed=$((total_passed + p)) total_failed=$((total_failed + f))
    report+=("$(printf '%-40s %5s passed, %s failed' "$name" "$p" "$f")")
}

build_only() { # version
    cargo build --no-default-features --features "pg$1" && echo "1 passed, 0 failed"
}

pg_test() { # version
    local dir="$AKIDB_RUN/pgtest-$1"
    rm -rf "$dir" && mkdir -p "$dir" && chown postgres: "$dir"
    cargo pgrx test "pg$1" --runas postgres --pgdata "$dir"
}

# What the embedding tests need: ONNX Runtime, the default model, unpacked fixtures.
ensure_onnxruntime >/dev/null
ensure_default_model
ensure_test_fixtures

cd "$AKIDB_ROOT"
tier "core unit tests (cargo test)" cargo test -p akidb-core
# The same on aarch64 (the Jetson's CPU): the NEON kernels against the scalar reference,
# cross-compiled and run under qemu (AARCH64=0 skips it).
if [ "${AARCH64:-1}" = 1 ]; then
    ensure_aarch64_cross
    tier "core unit tests, aarch64 NEON (qemu)" cargo test -p akidb-core --target aarch64-unknown-linux-gnu
fi
tier "embedding engine (cargo test)" env AKIDB_ORT_LIBRARY="$(ensure_onnxruntime)" cargo test -p akidb-embed
for v in $PG; do
    tier "pg_test, PostgreSQL $v" pg_test "$v"
    tier "SQL regression, PostgreSQL $v" bash scripts/regress.sh "$v"
    tier "system tests, PostgreSQL $v" bash scripts/system.sh "$v"
done
[[ " $PG " == *" 18 "* ]] && tier "pgvector 0.8.6 compatibility, PG 18" bash scripts/compat.sh
for v in $PG_BUILD_ONLY; do
    tier "build, PostgreSQL $v" build_only "$v"
done
# A fresh machine's first run: make demo and make install with an empty PGRX_HOME and
# AKIDB_OPT (FIRST_RUN=0 skips it, e.g. for make test PG=16 during development).
[ "${FIRST_RUN:-1}" = 1 ] && tier "first run: make demo, make install (fresh state)" bash scripts/firstrun.sh

echo
printf '%s\n' "${report[@]}"
echo "$total_passed passed, $total_failed failed"
[ "$total_failed" = 0 ]
