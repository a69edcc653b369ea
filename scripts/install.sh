#!/usr/bin/env bash
# make install: release build of akidb installed into the server of PG_CONFIG
# (default: Debian's PostgreSQL 15).
source "$(dirname "$0")/lib.sh"
ensure_apt_packages
ensure_cargo_pgrx
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
v="$("$PG_CONFIG" --version | grep -oE '[0-9]+' | head -1)"
cfg="$HOME/.pgrx/config.toml"
grep -q "^pg$v = \"$PG_CONFIG\"" "$cfg" 2>/dev/null || cargo pgrx init "--pg$v" "$PG_CONFIG" >/dev/null
log "building (release) and installing akidb into $("$PG_CONFIG" --version) at $("$PG_CONFIG" --pkglibdir)"
cd "$AKIDB_ROOT" && cargo pgrx install --release --pg-config "$PG_CONFIG" --no-default-features --features "pg$v"
