#!/usr/bin/env bash
# SQL regression tests: installs akidb into PostgreSQL $1, starts a throwaway cluster,
# runs PostgreSQL's own pg_regress over tests/regress/sql/*.sql against
# tests/regress/expected/*.out, and prints "N passed, N failed".
source "$(dirname "$0")/lib.sh"
v="${1:-15}"
install_extension "$v"
start_cluster "$v" "regress-$v" $((55400 + v))
trap stop_cluster EXIT
pgxs="$(dirname "$("$(pg_config_for "$v")" --pgxs)")"
out="$AKIDB_RUN/regress-$v/out"
mkdir -p "$out"
tests=$(cd "$AKIDB_ROOT/tests/regress/sql" && ls *.sql | sed 's/\.sql$//')
log "pg_regress on PostgreSQL $v: $(echo $tests | wc -w) test files"
set +e
"$pgxs/../test/regress/pg_regress" \
    --inputdir="$AKIDB_ROOT/tests/regress" --outputdir="$out" --bindir="$PGBIN" \
    --host="$PGHOST" --port="$PGPORT" --user=postgres --dbname=akidb_regress \
    $tests | tee "$out/summary.txt"
rc=${PIPESTATUS[0]}
set -e
passed=$(grep -cE '^ *(ok [0-9]+|test [a-z_0-9]+ +\.\.\. ok)' "$out/summary.txt" || true)
failed=$(grep -cE '^ *(not ok [0-9]+|test [a-z_0-9]+ +\.\.\. FAILED)' "$out/summary.txt" || true)
[ -f "$out/regression.diffs" ] && [ "$failed" -gt 0 ] && cat "$out/regression.diffs"
echo "$passed passed, $failed failed"
[ "$rc" = 0 ] && [ "$failed" = 0 ]
