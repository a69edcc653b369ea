#!/usr/bin/env bash
# The Jetson image's entry point (Dockerfile): a cluster in $PGDATA on the first start,
# set up for akidb on the GPU (TensorRT first, then CUDA, then CPU; engine caches in
# $AKIDB_TRT_CACHE; models in $AKIDB_MODELS), then the server in the foreground; its
# arguments go to postgres. scripts/firstrun.sh runs it (PGBIN and AKIDB_DEFAULT_MODELS
# pointing at a PostgreSQL 16 from PyPI) in make test.
set -euo pipefail
bin="${PGBIN:-/usr/lib/postgresql/16/bin}"
if [ ! -s "$AKIDB_MODELS/all-MiniLM-L6-v2/akidb.json" ]; then
    cp -r "${AKIDB_DEFAULT_MODELS:-/opt/akidb/default-models}/." "$AKIDB_MODELS/"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    "$bin/initdb" -D "$PGDATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    cat >> "$PGDATA/postgresql.auto.conf" <<CONF
listen_addresses = '*'
akidb.model_path = '$AKIDB_MODELS'
akidb.execution_providers = 'tensorrt,cuda,cpu'
akidb.tensorrt_cache_path = '$AKIDB_TRT_CACHE'
akidb.tensorrt_fp16 = on
CONF
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
fi
exec "$bin/postgres" -D "$PGDATA" "$@"
