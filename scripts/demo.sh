#!/usr/bin/env bash
# make demo: the product's story on a local PostgreSQL. 6,088 Debian package
# descriptions (bench/data/debian_docs_5k.jsonl.gz, checksum pinned) are embedded inside
# the database by CALL akidb_embed_column (all-MiniLM-L6-v2 on ONNX Runtime, progress
# shown), indexed with akidb_hnsw (progress shown), and questions in plain English are
# answered from psql with the time to embed each question and the time to search. The
# server keeps running; the last lines say how to connect.
#   PG          PostgreSQL major version (default 15)
#   DEMO_PORT   port of the demo server (default 55432)
#   DEMO_DOCS   how many of the documents to load (default: all)
source "$(dirname "$0")/lib.sh"
v="${PG:-15}"
port="${DEMO_PORT:-55432}"
started=$SECONDS
ensure_apt_packages
ensure_cargo_pgrx
pgrx_init "$v"
if [ ! -f "$AKIDB_ROOT/target/release/libakidb.so" ] && [ ! -f "${CARGO_TARGET_DIR:-$AKIDB_ROOT/target}/release/libakidb.so" ]; then
    log "first build of the extension (release, fat LTO): about 6 minutes on 2 cores; later runs take seconds"
fi
install_extension "$v" --release
log "setup done in $((SECONDS - started)) s"
start_cluster "$v" "demo-$port" "$port"
demo_started=$SECONDS
psql() { "$PGBIN/psql" -X -v ON_ERROR_STOP=1 -d postgres "$@"; }

corpus="$AKIDB_ROOT/bench/data/debian_docs_5k.jsonl.gz"
want="$(cat "$AKIDB_ROOT/bench/data/debian_docs_5k.sha256")"
got="$(gunzip -c "$corpus" | sha256sum | cut -d' ' -f1)"
[ "$got" = "$want" ] || die "$corpus: checksum $got, expected $want"
n="${DEMO_DOCS:-0}"
log "loading Debian package descriptions (checksum ok) into table docs"
psql -q <<'SQL'
CREATE EXTENSION akidb;
CREATE TABLE docs (id serial PRIMARY KEY, package text NOT NULL, synopsis text, body text, embedding vector(384));
SQL
gunzip -c "$corpus" | python3 -c '
import csv, json, sys
n = int(sys.argv[1])
w = csv.writer(sys.stdout)
for i, line in enumerate(sys.stdin):
    if n and i >= n:
        break
    d = json.loads(line)
    w.writerow([d["package"], d["query"], d["body"]])
' "$n" | psql -q -c "\copy docs (package, synopsis, body) FROM STDIN WITH (FORMAT csv)"
psql -At -c "SELECT '    ' || (SELECT count(*) FROM docs) || ' documents, for example ' || package || ': '
                || replace(left(body, 100), E'\n', ' ') || '...' FROM docs ORDER BY id LIMIT 1"

log "embedding them inside PostgreSQL: CALL akidb_embed_column('docs', 'body', 'embedding')"
log "(batches of 256 through embed(text[]), committed one by one; another session can watch akidb.embedding_progress)"
# One server session doing the bulk work may use every core (the default, a quarter of
# them, is for a server with many backends embedding at once).
psql -c "SET akidb.onnx_threads = $(nproc)" -c "CALL akidb_embed_column('docs', 'body', 'embedding')" 2>&1 | sed -u -n 's/^NOTICE:  /    /p'
psql -c "SELECT state, rows_done, rows_total, rows_per_second FROM akidb.embedding_progress"

log "building the index: CREATE INDEX ON docs USING akidb_hnsw (embedding vector_cosine_ops)"
psql -q -c "CREATE INDEX docs_embedding_idx ON docs USING akidb_hnsw (embedding vector_cosine_ops)" &
build=$!
while kill -0 "$build" 2>/dev/null; do
    line=$(psql -At -F' ' -c "SELECT phase, tuples_done, tuples_total FROM pg_stat_progress_create_index" 2>/dev/null || true)
    [ -n "$line" ] && echo "$line" | awk '{t=$NF; d=$(NF-1); $NF=""; $(NF-1)="";
        printf "    %s(%s tuples%s)\n", $0, d, (t > 0 ? " of " t : "")}'
    sleep 0.5
done
wait "$build"
psql -q -c "ANALYZE docs"
psql -At -c "SELECT '    index: ' || pg_size_pretty(pg_relation_size('docs_embedding_idx')) || ', table: ' || pg_size_pretty(pg_table_size('docs'))"

# ask(question): embeds the question, searches, and says how long each step took.
psql -q <<'SQL'
CREATE FUNCTION ask(question text, k integer DEFAULT 5)
RETURNS TABLE (package text, synopsis text, distance numeric) LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
    q  vector;
    t1 timestamptz;
BEGIN
    q := embed_query(question);
    t1 := clock_timestamp();
    RETURN QUERY SELECT d.package, d.synopsis, round((d.embedding <=> q)::numeric, 3)
                 FROM docs d ORDER BY d.embedding <=> q LIMIT k;
    RAISE NOTICE 'embedding the question: % ms, searching % documents: % ms',
        round(extract(epoch FROM t1 - t0)::numeric * 1000, 1),
        (SELECT reltuples::bigint FROM pg_class WHERE oid = 'docs'::regclass),
        round(extract(epoch FROM clock_timestamp() - t1)::numeric * 1000, 1);
END $$;
SQL
log "the plan of a prepared question: an akidb_hnsw index scan, the question embedded once"
psql -q -c "SET client_min_messages = warning" \
    -c "PREPARE q(text) AS SELECT package FROM docs ORDER BY embedding <=> embed_query(\$1) LIMIT 5" \
    -c "SET plan_cache_mode = force_generic_plan" -c "EXPLAIN (COSTS OFF) EXECUTE q('edit photos')"

log "questions in plain English, answered from psql: SELECT * FROM ask('...')"
{
    echo "SET client_min_messages = warning;"
    echo "SELECT akidb_load_model('') AS execution_provider;"
    echo "RESET client_min_messages;"
    for q in "play chess against the computer" \
             "edit photos on the desktop" \
             "read my email in a terminal" \
             "keep the clock synchronised over the network" \
             "find out which program is using all the disk space"; do
        echo "\\echo '>>> $q'"
        echo "SELECT * FROM ask('$q');"
    done
} | psql 2>&1 | sed -u 's/^NOTICE:  /    /'

log "demo done in $((SECONDS - demo_started)) s (setup $((demo_started - started)) s before it)"
log "the server keeps running. Try a question of your own:"
log "    $PGBIN/psql -h $PGHOST -p $PGPORT -U postgres -c \"SELECT * FROM ask('convert videos to another format')\""
log "stop it with: runuser -u postgres -- $PGBIN/pg_ctl -D $CLUSTER_DIR/data stop"
