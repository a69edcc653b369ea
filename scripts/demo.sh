#!/usr/bin/env bash
# make demo: a local PostgreSQL with akidb; a sample corpus (Debian package
# descriptions) embedded inside the database and semantic queries answered; plus the
# vector type on a small hand-made table. Leaves the server running and says how to connect.
source "$(dirname "$0")/lib.sh"
v="${PG:-15}"
ensure_apt_packages
ensure_cargo_pgrx
pgrx_init "$v"
install_extension "$v" --release
start_cluster "$v" demo 55432
psql() { "$PGBIN/psql" -X -v ON_ERROR_STOP=1 -d postgres "$@"; }
log "loading a small table of 3-d 'product' vectors"
psql -q <<'SQL'
CREATE EXTENSION akidb;
CREATE TABLE items (id serial PRIMARY KEY, name text, embedding vector(3));
INSERT INTO items (name, embedding) VALUES
    ('brake pads',        '[0.9, 0.1, 0.0]'),
    ('brake discs',       '[0.8, 0.2, 0.1]'),
    ('wiper blades',      '[0.1, 0.9, 0.1]'),
    ('windscreen washer', '[0.0, 0.8, 0.3]'),
    ('spare tyre',        '[0.2, 0.1, 0.9]'),
    ('tyre jack',         '[0.3, 0.0, 0.8]');
SQL
log "nearest neighbours of [0.25, 0.05, 0.85] ('how do I change a tire'), by three distances"
psql -c "SELECT name, round((embedding <-> '[0.25,0.05,0.85]')::numeric, 4) AS l2,
                round((embedding <=> '[0.25,0.05,0.85]')::numeric, 4) AS cosine,
                round((embedding <#> '[0.25,0.05,0.85]')::numeric, 4) AS neg_inner
         FROM items ORDER BY embedding <-> '[0.25,0.05,0.85]' LIMIT 3;"
psql -c "SELECT avg(embedding) AS centroid, akidb_simd() AS simd FROM items;"

n="${DEMO_DOCS:-500}"
log "a sample corpus: $n Debian package descriptions (bench/data/debian_docs.jsonl)"
psql -q -c "CREATE TABLE docs (id serial PRIMARY KEY, package text, synopsis text, body text, embedding vector(384));"
python3 -c '
import csv, json, sys
w = csv.writer(sys.stdout)
for line in list(open(sys.argv[1], encoding="utf-8"))[:int(sys.argv[2])]:
    d = json.loads(line)
    w.writerow([d["package"], d["query"], d["body"]])
' "$AKIDB_ROOT/bench/data/debian_docs.jsonl" "$n" | psql -q -c "\copy docs (package, synopsis, body) FROM STDIN WITH (FORMAT csv)"
log "embedding them inside PostgreSQL: one embed(text[]) call (all-MiniLM-L6-v2 on ONNX Runtime)"
psql -c "\timing on" -c "UPDATE docs SET embedding = e.v
           FROM (SELECT unnest(ids) AS id, unnest(embed(bodies)) AS v
                 FROM (SELECT array_agg(id) AS ids, array_agg(body) AS bodies FROM docs) s) e
          WHERE docs.id = e.id;"
# Each psql is a new backend that loads the model again; its fallback NOTICE was shown above.
export PGOPTIONS="-c client_min_messages=warning"
for q in "play chess against the computer" "edit photos" "read email in a terminal"; do
    log "semantic query: '$q'"
    psql -c "SELECT package, synopsis, round((embedding <=> embed_query('$q'))::numeric, 3) AS distance
             FROM docs ORDER BY embedding <=> embed_query('$q') LIMIT 5;"
done
log "the server keeps running: $PGBIN/psql -h $PGHOST -p $PGPORT -U postgres"
log "stop it with: runuser -u postgres -- $PGBIN/pg_ctl -D $CLUSTER_DIR/data stop"
