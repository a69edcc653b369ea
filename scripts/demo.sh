#!/usr/bin/env bash
# make demo: a local PostgreSQL with akidb, a small table of vectors, and a
# nearest-neighbour query answered. Leaves the server running and says how to connect.
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
log "the server keeps running: $PGBIN/psql -h $PGHOST -p $PGPORT -U postgres"
log "stop it with: runuser -u postgres -- $PGBIN/pg_ctl -D $CLUSTER_DIR/data stop"
