#!/usr/bin/env bash
# make install: release build of akidb installed into the server of PG_CONFIG (default:
# Debian's PostgreSQL 15), with everything embed() needs: ONNX Runtime next to the
# extension (PKGLIBDIR/akidb/) and the default model (SHAREDIR/akidb/models/).
source "$(dirname "$0")/lib.sh"
ensure_apt_packages
ensure_cargo_pgrx
PG_CONFIG="${PG_CONFIG:-$(pg_config_for 15)}"
[ -x "$PG_CONFIG" ] || die "PG_CONFIG=$PG_CONFIG is not an executable pg_config"
install_into "$PG_CONFIG" --release
log "installed; in a database: CREATE EXTENSION akidb; SELECT embed('hello');"
